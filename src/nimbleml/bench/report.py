"""BenchmarkReport: JSON (schema 1, with machine info), a text table, PNG charts."""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import storage_error
from .machine import machine_info
from .stats import LatencyStats

REPORT_SCHEMA = 1


@dataclass(frozen=True)
class PerformanceMetrics:
    """The headline figures of one model at one batch size."""

    total_time: float  # seconds spent in timed calls
    samples_per_second: float
    peak_memory_gb: float  # growth of resident memory during inference (separate pass)
    gpu_memory_gb: float | None
    gpu_utilization: float | None
    model_size_mb: float
    num_parameters: int


@dataclass(frozen=True)
class BenchmarkResult:
    name: str
    framework: str
    batch_size: int
    latency: LatencyStats
    performance: PerformanceMetrics
    metric_name: str | None = None
    metric_value: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "framework": self.framework,
            "batch_size": self.batch_size,
            "latency_ms": self.latency.to_dict(),
            "performance": asdict(self.performance),
            "metric": {"name": self.metric_name, "value": self.metric_value},
        }


@dataclass
class BenchmarkReport:
    """Results of one benchmark run; the first model named is the baseline for ratios."""

    results: list[BenchmarkResult]
    machine: dict[str, Any] = field(default_factory=lambda: machine_info().to_dict())
    created_at: str = field(
        default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    )

    @property
    def baseline(self) -> str:
        return self.results[0].name

    def get(self, name: str, batch_size: int) -> BenchmarkResult:
        for r in self.results:
            if r.name == name and r.batch_size == batch_size:
                return r
        raise KeyError(f"no result for {name!r} at batch size {batch_size}")

    def ratios(self, result: BenchmarkResult) -> dict[str, float]:
        """speedup (baseline p50 / this p50), throughput and size ratios vs the baseline."""
        base = self.get(self.baseline, result.batch_size)
        return {
            "speedup_p50": base.latency.p50_ms / result.latency.p50_ms,
            "throughput_ratio": result.performance.samples_per_second
            / base.performance.samples_per_second,
            "size_ratio": base.performance.model_size_mb / result.performance.model_size_mb
            if result.performance.model_size_mb
            else float("nan"),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": REPORT_SCHEMA,
            "created_at": self.created_at,
            "baseline": self.baseline,
            "machine": self.machine,
            "results": [{**r.to_dict(), "vs_baseline": self.ratios(r)} for r in self.results],
        }

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            write_whole(Path(path), text)
        return text

    def table(self) -> str:
        head = (
            f"{'model':<24} {'batch':>5} {'n':>6} {'p50 ms':>9} {'p99 ms':>9} "
            f"{'samples/s':>11} {'size MB':>8} {'params':>9} {'metric':>8} {'speedup':>8} {'smaller':>8}"
        )
        lines = [head, "-" * len(head)]
        marked = False
        for r in self.results:
            ratio = self.ratios(r)
            marked = marked or "*" in r.latency.fmt("p50") + r.latency.fmt("p99")
            metric = "" if r.metric_value is None else f"{r.metric_value:.4f}"
            lines.append(
                f"{r.name[:24]:<24} {r.batch_size:>5} {r.latency.n:>6} {r.latency.fmt('p50'):>9} "
                f"{r.latency.fmt('p99'):>9} {r.performance.samples_per_second:>11.1f} "
                f"{r.performance.model_size_mb:>8.3f} {r.performance.num_parameters:>9} "
                f"{metric:>8} {ratio['speedup_p50']:>7.2f}x {ratio['size_ratio']:>7.2f}x"
            )
        if marked:  # the footnote only where a mark needs it
            lines.append("* = too few samples for this percentile to be meaningful (see n)")
        return "\n".join(lines)

    def plot(self, directory: str | Path) -> list[Path]:
        from .plots import comparison_chart, latency_chart

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        return [
            latency_chart(self, out / "latency.png"),
            comparison_chart(self, out / "comparison.png"),
        ]

    def save(self, directory: str | Path, plots: bool = True) -> list[Path]:
        """Write report.json, report.txt and (with matplotlib) the PNG charts."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self.to_json(out / "report.json")
        (out / "report.txt").write_text(self.table() + "\n")
        written = [out / "report.json", out / "report.txt"]
        if plots:
            written += self.plot(out)
        return written


def write_whole(path: Path, text: str) -> None:
    """``text`` into ``path`` whole or not at all (written beside it, then renamed): a full or
    read-only disk is a StorageError naming ``path``, and no partial file is left."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise storage_error(path, exc) from exc
