"""nimbleml.benchmark: several models, the same inputs, side by side in one run."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import BenchmarkError, ConfigError
from ..inputs import Feeds, batch_size, rows
from ..metrics import Metric, evaluate, infer_task, resolve
from ..models.base import Model
from .report import BenchmarkReport, BenchmarkResult, PerformanceMetrics
from .timer import TimingConfig, peak_rss_bytes, time_interleaved


@dataclass
class Entry:
    """A model to benchmark: its name, adapter, size on disk and parameter count."""

    name: str
    model: Model
    size_bytes: int
    num_parameters: int


def as_entry(obj: Any, name: str | None, example: Any) -> Entry:
    from ..models.loader import load_model
    from ..package import Package, load

    if (isinstance(obj, str) and obj.endswith(".nimble")) or _is_package_dir(obj):
        obj = load(obj)
    if isinstance(obj, Package):
        label = name or obj.name
        return Entry(label, obj.model, obj.size_bytes(), obj.num_parameters())
    model = load_model(obj, example)
    label = name or _default_name(obj, model)
    return Entry(label, model, model.size_bytes(), model.num_parameters())


def _is_package_dir(obj: Any) -> bool:
    from pathlib import Path

    return isinstance(obj, str | Path) and (Path(obj) / "manifest.json").is_file()


def _default_name(obj: Any, model: Model) -> str:
    from pathlib import Path

    if isinstance(obj, str | Path):
        return Path(obj).name
    return f"{model.framework}:{type(obj).__name__}"


def run_chunked(model: Model, feeds: Feeds, chunk: int = 256) -> list[np.ndarray]:
    """All outputs for all rows, computed ``chunk`` rows at a time."""
    n = batch_size(feeds)
    parts = [model.run({k: v[i : i + chunk] for k, v in feeds.items()}) for i in range(0, n, chunk)]
    return [np.concatenate([p[j] for p in parts]) for j in range(len(parts[0]))]


def _gpu_memory_gb() -> float | None:
    from .._deps import loaded

    torch = loaded("torch")
    if torch is not None and torch.cuda.is_available():
        return float(torch.cuda.max_memory_allocated() / 2**30)
    return None


def benchmark(
    models: Sequence[Any],
    inputs: Any,
    batch_sizes: Sequence[int] = (1, 32),
    *,
    names: Sequence[str] | None = None,
    val: tuple[Any, Any] | None = None,
    metric: str | Callable[..., float] | Metric | None = None,
    timing: TimingConfig | None = None,
    measure_memory: bool = True,
    progress: Callable[[str], None] | None = None,
) -> BenchmarkReport:
    """Time every model on the same inputs at each batch size; the first is the baseline.
    Every model/batch setting is timed in the same interleaved rounds (``time_interleaved``),
    so their ratios are taken in the same stretch of the machine's time.

    ``models``: packages, model objects, or files. ``inputs``: an array or dict of arrays to
    draw batches from (rows repeat when a batch is larger). ``val``: (X, y) to compute
    ``metric`` for each model (y may be None for 'cosine'/'agreement').
    """
    if not models:
        raise ConfigError("benchmark needs at least one model")
    if names is not None and len(names) != len(models):
        raise ConfigError(f"got {len(names)} names for {len(models)} models")
    sizes = [int(b) for b in batch_sizes]
    if not sizes or any(b < 1 for b in sizes):
        raise ConfigError(f"batch sizes must be positive integers, got {list(batch_sizes)}")
    timing = timing or TimingConfig()
    entries = [as_entry(m, names[i] if names else None, inputs) for i, m in enumerate(models)]
    task = infer_task(entries[0].model.task, val[1]) if val is not None else None
    metric_obj = resolve(metric, task) if val is not None else None
    results: list[BenchmarkResult] = []
    reference: list[np.ndarray] | None = None
    say = progress or (lambda _msg: None)
    settings: list[tuple[Entry, int, Callable[[], object], float | None]] = []
    for entry in entries:
        feeds_all = entry.model.feeds(inputs)
        if batch_size(feeds_all) == 0:
            raise BenchmarkError("the benchmark inputs have no rows")
        metric_value = None
        if val is not None and metric_obj is not None:
            outputs = run_chunked(entry.model, entry.model.feeds(val[0]))
            reference = outputs if reference is None else reference
            metric_value = evaluate(metric_obj, outputs, val[1], reference, task)
        for bs in sizes:
            feeds = rows(feeds_all, bs)
            try:
                entry.model.run(feeds)
            except Exception as exc:
                raise BenchmarkError(f"{entry.name} failed at batch {bs}: {exc}") from exc
            settings.append((entry, bs, functools.partial(entry.model.run, feeds), metric_value))
    say(f"timing {len(settings)} model/batch settings side by side")
    timed = time_interleaved([call for _, _, call, _ in settings], timing)
    for (entry, bs, call, metric_value), stats in zip(settings, timed, strict=True):
        say(f"{entry.name} batch={bs}: p50 {stats.p50_ms:.3f} ms")
        peak = peak_rss_bytes(call) if measure_memory else 0
        total_s = stats.mean_ms * stats.n / 1e3
        perf = PerformanceMetrics(
            total_time=total_s,
            samples_per_second=bs * 1e3 / stats.mean_ms if stats.mean_ms else 0.0,
            peak_memory_gb=peak / 2**30,
            gpu_memory_gb=_gpu_memory_gb(),
            gpu_utilization=None,
            model_size_mb=entry.size_bytes / 2**20,
            num_parameters=entry.num_parameters,
        )
        results.append(
            BenchmarkResult(
                name=entry.name,
                framework=entry.model.framework,
                batch_size=bs,
                latency=stats,
                performance=perf,
                metric_name=metric_obj.name if metric_obj else None,
                metric_value=metric_value,
            )
        )
    return BenchmarkReport(results)
