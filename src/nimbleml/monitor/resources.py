"""System resources, sampled by the monitor's background thread."""

from __future__ import annotations

import functools
import shutil
import subprocess
from typing import Any


@functools.lru_cache(maxsize=1)
def _process() -> Any:
    import psutil

    proc = psutil.Process()
    proc.cpu_percent(None)  # the first call primes the counter
    return proc


def prime() -> None:
    """Start the process CPU counter, so that the first sample measures from here."""
    _process()


def gpu() -> tuple[float | None, float | None]:
    """(memory used MB, utilisation %) of the first NVIDIA GPU, or (None, None)."""
    if not shutil.which("nvidia-smi"):
        return None, None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used,utilization.gpu", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip().splitlines()[0]  # fmt: skip
        mem, util = (float(p) for p in out.split(","))
        return mem, util
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None, None


def sample() -> tuple[float, float, float | None, float | None]:
    """(process CPU %, resident MB, GPU memory MB, GPU utilisation %)."""
    proc = _process()
    mem, util = gpu()
    return proc.cpu_percent(None), proc.memory_info().rss / 2**20, mem, util
