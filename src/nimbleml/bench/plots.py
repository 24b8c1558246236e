"""PNG charts of a BenchmarkReport (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._deps import require

if TYPE_CHECKING:
    from .report import BenchmarkReport


def _pyplot() -> Any:
    matplotlib = require("matplotlib", "benchmark charts")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def latency_chart(report: BenchmarkReport, path: Path) -> Path:
    """p50 bars with p90/p99 whiskers per model and batch size (log scale)."""
    plt = _pyplot()
    sizes = sorted({r.batch_size for r in report.results})
    fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 4), squeeze=False)
    for ax, bs in zip(axes[0], sizes, strict=True):
        rs = [r for r in report.results if r.batch_size == bs]
        x = range(len(rs))
        p50 = [r.latency.p50_ms for r in rs]
        ax.bar(x, p50, color="#4c72b0", label="p50")
        ax.scatter(
            x, [r.latency.p90_ms for r in rs], marker="_", s=300, color="#dd8452", label="p90"
        )
        ax.scatter(
            x, [r.latency.p99_ms for r in rs], marker="_", s=300, color="#c44e52", label="p99"
        )
        ax.set_xticks(list(x), [f"{r.name}\nn={r.latency.n}" for r in rs], fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("latency (ms)")
        ax.set_title(f"batch size {bs}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def comparison_chart(report: BenchmarkReport, path: Path) -> Path:
    """Size, p50 latency at the smallest batch, and metric, side by side."""
    plt = _pyplot()
    bs = min(r.batch_size for r in report.results)
    rs = [r for r in report.results if r.batch_size == bs]
    names = [r.name for r in rs]
    panels = [
        ("size on disk (MB)", [r.performance.model_size_mb for r in rs]),
        (f"p50 latency at batch {bs} (ms)", [r.latency.p50_ms for r in rs]),
    ]
    if any(r.metric_value is not None for r in rs):
        panels.append((rs[0].metric_name or "metric", [r.metric_value or 0.0 for r in rs]))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False)
    for ax, (title, values) in zip(axes[0], panels, strict=True):
        ax.bar(range(len(values)), values, color="#55a868")
        ax.set_xticks(range(len(values)), names, fontsize=8, rotation=15)
        ax.set_title(title)
        for i, v in enumerate(values):
            ax.annotate(f"{v:.3g}", (i, v), ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
