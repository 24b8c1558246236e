"""Peak memory of a stretch of work, measured without touching its timing.

CPU: the growth of this process's resident memory above its level at ``start``, read from the
kernel's own high-water mark (VmHWM in /proc/self/status), which ``start`` resets to the
current level (/proc/self/clear_refs, Linux 4.0+): exact, nothing sampled, no thread competing
with the work. The heap's free pages are handed back first (glibc ``malloc_trim``), so that
the work cannot reuse memory freed before it and seem to need none. Where the mark cannot be
reset, a thread samples the resident memory every 2 ms, and ``describe`` says so.

Resident memory is what the operating system sees, the allocator included: glibc keeps freed
blocks in its heap once its mmap threshold has risen, so a saving in live tensors shows up
smaller, or not at all (activation checkpointing on a 24-layer MLP at batch 2048: 54% less
with the threshold fixed by ``MALLOC_MMAP_THRESHOLD_=65536``, 17% less with glibc's defaults;
benchmarks/train.py measures both).

CUDA: ``torch.cuda.max_memory_allocated`` after a reset (tensors, weights included; not the
caching allocator's reserve).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import threading
from typing import Any

MB = 2**20


def status_bytes(key: str) -> int | None:
    """A figure of /proc/self/status (VmRSS, VmHWM) in bytes; None where there is no /proc."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_high_water() -> bool:
    """Set the kernel's peak-RSS mark to the current RSS; False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return status_bytes("VmHWM") is not None


def trim_heap() -> None:
    """Hand the heap's free pages back to the OS (glibc; a no-op elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """``start()``, the work, ``stop()`` -> peak MB (CPU: growth above the start; CUDA: max
    allocated). ``describe()`` says how it was measured."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = str(device)
        self.cuda = self.device.startswith("cuda")
        self.how = ""
        self.base = 0
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None
        self._high = 0

    def describe(self) -> str:
        if self.cuda:
            return "torch.cuda.max_memory_allocated, reset at the start"
        how = self.how or "kernel high-water mark (VmHWM), reset at the start"
        return f"growth of this process's resident memory ({how})"

    def start(self) -> None:
        gc.collect()
        if self.cuda:
            torch = _torch()
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        trim_heap()
        self.base = status_bytes("VmRSS") or 0
        if reset_high_water():
            self.how = "kernel high-water mark (VmHWM), reset at the start"
            return
        import psutil

        self.how = "resident memory sampled every 2 ms"
        process, stop = psutil.Process(), threading.Event()
        self.base = self._high = process.memory_info().rss

        def sample() -> None:
            while not stop.wait(0.002):
                self._high = max(self._high, process.memory_info().rss)

        self._stop, self._thread = stop, threading.Thread(target=sample, daemon=True)
        self._thread.start()

    def stop(self) -> float | None:
        if self.cuda:
            torch = _torch()
            torch.cuda.synchronize(self.device)
            return float(torch.cuda.max_memory_allocated(self.device)) / MB
        if self._stop is not None and self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._stop = self._thread = None
            return max(0, self._high - self.base) / MB
        high = status_bytes("VmHWM")
        return None if high is None else max(0, high - self.base) / MB


def _torch() -> Any:
    from .._deps import require

    return require("torch", "CUDA memory measurement")
