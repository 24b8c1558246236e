"""PyTorch models (nn.Module, TorchScript) under ``torch.profiler``, and the helpers the
training-step profile shares: the op table, the trace, FLOPs.

The profiler runs with a wait / warm-up / active schedule (1 / 2 / the profiled runs): the
warm-up steps are profiled and thrown away, so lazy initialisation and the profiler's own
start-up stay out of the figures; ``record_shapes`` is on (the top ops carry their input
shapes), stacks are off (they multiply the profiler's cost). The op time of a run is the sum
of the ops' *self* CPU time (each op's time minus its children's), so nothing counts twice;
the rest of the wall time is Python and the dispatcher between ops.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .._deps import require
from ..bench.memory import PeakMemory
from ..inputs import Feeds
from .common import TOP_NODES, Settings, batches_of, median_ms, shape_text, timed
from .report import BatchProfile, NodeStat, OpStat, ProfileReport

WAIT, WARMUP = 1, 2  # the profiler's schedule before its active steps
# active steps at most: torch.profiler's post-processing costs ~10 µs an event (key_averages,
# the trace), 54 s for 500 training steps of a 3-layer MLP; 50 steps hold the median well
MAX_ACTIVE = 50
REGIONS = ("data_loading", "forward", "backward", "optimizer")  # record_function names
QUANTIZED_PREFIXES = ("quantized::", "aten::quantize_per", "aten::_fake_quantize")
FLOAT_COMPUTE = ("aten::addmm", "aten::mm", "aten::bmm", "aten::matmul", "aten::linear",
                 "aten::conv", "aten::_convolution", "aten::mkldnn_convolution")  # fmt: skip


def profile_torch(model: Any, feeds: Feeds, sizes: list[int], settings: Settings,
                  name: str) -> ProfileReport:  # fmt: skip
    """Profile a TorchModel's forward pass (inference mode) at each batch size."""
    torch = require("torch", "profiling a PyTorch model")
    batches, traces, quantized = [], {}, set()
    for size in sizes:
        inputs = batches_of(feeds, size)
        k = len(inputs)

        def call(i: int, _inputs: list[Feeds] = inputs, _k: int = k) -> None:
            model.run(_inputs[i % _k])

        def flops(_first: Feeds = inputs[0]) -> float | None:
            return forward_flops(model, _first)

        batch, trace, seen = profile_calls(call, size, settings, f"trace-torch-b{size}.json",
                                           flops=flops,
                                           device=model.device)  # fmt: skip
        traces[batch.trace or ""] = trace
        quantized |= seen
        batches.append(batch)
    runtime = {"engine": f"torch {torch.__version__}", "device": model.device,
               "threads": torch.get_num_threads(), "mode": "inference_mode"}  # fmt: skip
    notes = [
        f"torch.profiler, schedule wait={WAIT} warmup={WARMUP} active=<runs>, record_shapes on, "
        "stacks off; op time = the ops' self CPU time",
        "latency and samples/s: the same number of runs without the profiler, after "
        f"{settings.warmup} warm-up run(s); profiling overhead = profiled / unprofiled - 1",
        "peak memory: growth of resident memory (CPU) or max allocated (CUDA) over 5 runs, "
        "in a pass of its own",
    ]
    return ProfileReport(model=name, kind="torch", runtime=runtime, batches=batches,
                         quantized_ops=sorted(quantized), traces=traces, notes=notes)  # fmt: skip


def profile_calls(call: Callable[[int], object], size: int, settings: Settings, trace_name: str,
                  flops: Callable[[], float | None], device: str = "cpu",
                  regions: tuple[str, ...] = ()) -> tuple[BatchProfile, Any, set[str]]:  # fmt: skip
    """Warm up, time ``runs`` calls without the profiler, measure peak memory, then profile
    the same number under the schedule. ``call(i)`` is one run (or training step)."""
    warm = timed(call, settings.warmup)
    runs = settings.count(float(np.median(warm)), 1)
    unprofiled = timed(call, runs)
    memory = PeakMemory(device)
    memory.start()
    for i in range(5):
        call(i)
    peak = memory.stop()
    active = min(runs, MAX_ACTIVE)
    prof, profiled, trace = _profiled(call, active, device, trace_name)
    ops, nodes, op_ms, quantized = op_tables(prof, active, regions)
    latency = median_ms(unprofiled)
    mean = float(profiled.mean()) * 1e3
    count = _safe_flops(flops)
    batch = BatchProfile(
        batch_size=size, runs=active, warmup=settings.warmup, timed_runs=runs, latency_ms=latency,
        profiled_ms=median_ms(profiled), samples_per_s=size / (latency / 1e3), op_ms=op_ms,
        runtime_ms=None, coverage=op_ms / mean if mean > 0 else 0.0,
        overhead=median_ms(profiled) / latency - 1, ops=ops, nodes=nodes, flops=count,
        gflops_per_s=count / (latency / 1e3) / 1e9 if count else None,
        peak_memory_mb=peak, trace=trace_name,
    )  # fmt: skip
    return batch, trace, quantized


def _profiled(call: Callable[[int], object], runs: int, device: str,
              trace_name: str) -> tuple[Any, np.ndarray, Any]:  # fmt: skip
    """Run the schedule; (profiler, wall seconds of each active step, the Chrome trace)."""
    torch = require("torch", "profiling a PyTorch model")
    from torch.profiler import ProfilerActivity, profile, schedule

    activities = [ProfilerActivity.CPU]
    if str(device).startswith("cuda"):
        activities.append(ProfilerActivity.CUDA)
    trace: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="nimbleml-profile-") as tmp:
        path = Path(tmp) / trace_name

        def ready(p: Any) -> None:  # the active window only: the trace is bounded
            p.export_chrome_trace(str(path))
            trace.update(json.loads(path.read_text()))

        wall = np.empty(runs)
        with _quiet_kineto(), profile(activities=activities, record_shapes=True, with_stack=False,
                     schedule=schedule(wait=WAIT, warmup=WARMUP, active=runs, repeat=1),
                     on_trace_ready=ready) as prof:  # fmt: skip
            clock = time.perf_counter
            for step in range(WAIT + WARMUP + runs):
                t0 = clock()
                call(step)
                if str(device).startswith("cuda"):
                    torch.cuda.synchronize(device)
                if step >= WAIT + WARMUP:
                    wall[step - WAIT - WARMUP] = clock() - t0
                prof.step()
    trace.setdefault("otherData", {}).update(
        {"source": "torch.profiler", "profiled_steps": runs, "warmup_steps_dropped": WARMUP}
    )
    return prof, wall, trace


@contextlib.contextmanager
def _quiet_kineto() -> Iterator[None]:
    """Kineto (torch.profiler's C++ side) writes 'USDT: ... profiler_start/stop' lines to the
    process's stderr whatever its log level: stderr (fd 2) goes to a temporary file while
    the profiler runs, and everything else written there is passed on afterwards."""
    import os
    import sys

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (a notebook's): nothing to hide
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            kept = [line for line in sink.read().decode(errors="replace").splitlines(True)
                    if not line.startswith("USDT:")]  # fmt: skip
            if kept:
                sys.stderr.write("".join(kept))


def _self_us(event: Any) -> float:
    device = float(getattr(event, "self_device_time_total", 0.0) or 0.0)
    return device if device > 0 else float(event.self_cpu_time_total)


def op_tables(prof: Any, runs: int, regions: tuple[str, ...] = ()
              ) -> tuple[list[OpStat], list[NodeStat], float, set[str]]:  # fmt: skip
    """(op types, top ops by input shape, op ms per run, quantized op names)."""
    skip = ("ProfilerStep", *regions)
    averages = [e for e in prof.key_averages() if not e.key.startswith(skip)]
    total = sum(_self_us(e) for e in averages) or 1e-9
    shapes: dict[str, int] = defaultdict(int)
    by_shape = [e for e in prof.key_averages(group_by_input_shape=True)
                if not e.key.startswith(skip)]  # fmt: skip
    for e in by_shape:
        shapes[e.key] += 1
    ops = [
        OpStat(
            op=e.key,
            nodes=shapes.get(e.key, 1),
            calls=e.count / runs,
            ms=_self_us(e) / runs / 1e3,
            share=_self_us(e) / total,
            provider="cuda" if getattr(e, "self_device_time_total", 0) else "cpu",
        )
        for e in sorted(averages, key=lambda e: -_self_us(e))
        if _self_us(e) > 0
    ]
    quantized = {e.key for e in averages if e.key.startswith(QUANTIZED_PREFIXES)}
    nodes: list[NodeStat] = []
    for e in sorted(by_shape, key=lambda e: -_self_us(e)):
        stayed = bool(quantized) and e.key.startswith(FLOAT_COMPUTE)
        if len(nodes) < TOP_NODES or stayed:
            inputs = [shape_text("", s) for s in (e.input_shapes or []) if s]
            nodes.append(NodeStat(name=e.key, op=e.key, ms=_self_us(e) / runs / 1e3,
                                  share=_self_us(e) / total, inputs=inputs, outputs=[],
                                  provider="cpu", stayed_float=stayed))  # fmt: skip
    return ops, nodes, total / runs / 1e3, quantized


def _safe_flops(count: Callable[[], float | None]) -> float | None:
    try:
        return count()
    except Exception:  # a model the flop counter cannot trace: FLOPs are not stated
        return None


def forward_flops(model: Any, feeds: Feeds) -> float | None:
    """FLOPs of one forward pass (torch.utils.flop_counter: 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        model.run(feeds)
    return float(counter.get_total_flops()) or None
