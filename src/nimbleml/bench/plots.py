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


def new_figure(figsize: tuple[float, float]) -> Any:
    """A matplotlib Figure outside pyplot: nothing global to close, no GUI backend; builders
    return it so that tests can look at what a PNG will show."""
    require("matplotlib", "charts")
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)


def latency_figure(report: BenchmarkReport) -> Any:
    """p50 bars with p90/p99 marks per model and batch size, on a linear axis from zero, each
    bar labelled with its p50 and its speedup over the baseline. A log axis made a 1.37x
    difference look like 5x."""
    sizes = sorted({r.batch_size for r in report.results})
    fig = new_figure((5 * len(sizes), 4.5))
    axes = fig.subplots(1, len(sizes), squeeze=False)
    for ax, bs in zip(axes[0], sizes, strict=True):
        rs = [r for r in report.results if r.batch_size == bs]
        x = range(len(rs))
        ax.bar(x, [r.latency.p50_ms for r in rs], color="#4c72b0", label="p50")
        ax.scatter(x, [r.latency.p90_ms for r in rs], marker="_", s=300, color="#dd8452",
                   label="p90", zorder=3)  # fmt: skip
        ax.scatter(x, [r.latency.p99_ms for r in rs], marker="_", s=300, color="#c44e52",
                   label="p99", zorder=3)  # fmt: skip
        top = max(max(r.latency.p50_ms, r.latency.p90_ms, r.latency.p99_ms) for r in rs)
        for i, r in enumerate(rs):
            text = f"p50 {r.latency.fmt('p50')} ms"
            if r.name != report.baseline:
                speedup = report.ratios(r)["speedup_p50"]
                text += (
                    f"\n{speedup:.2f}x faster" if speedup >= 1 else f"\n{1 / speedup:.2f}x slower"
                )
            high = max(r.latency.p50_ms, r.latency.p90_ms, r.latency.p99_ms)
            ax.annotate(text, (i, high), xytext=(0, 4), textcoords="offset points",
                        ha="center", va="bottom", fontsize=8)  # fmt: skip
        ax.set_xticks(list(x), [f"{r.name}\nn={r.latency.n}" for r in rs], fontsize=8)
        ax.set_ylim(0, top * 1.35)  # from zero, with room for the labels and the legend
        ax.set_ylabel("latency (ms)")
        ax.set_title(f"batch size {bs}")
        ax.legend(fontsize=8, loc="upper center", ncol=3)
    fig.tight_layout()
    return fig


def latency_chart(report: BenchmarkReport, path: Path) -> Path:
    latency_figure(report).savefig(path, dpi=100)
    return path


def comparison_chart(report: BenchmarkReport, path: Path) -> Path:
    """Size, p50 latency at the smallest batch, and metric, side by side."""
    bs = min(r.batch_size for r in report.results)
    rs = [r for r in report.results if r.batch_size == bs]
    names = [r.name for r in rs]
    panels = [
        ("size on disk (MB)", [r.performance.model_size_mb for r in rs]),
        (f"p50 latency at batch {bs} (ms)", [r.latency.p50_ms for r in rs]),
    ]
    if any(r.metric_value is not None for r in rs):
        panels.append((rs[0].metric_name or "metric", [r.metric_value or 0.0 for r in rs]))
    fig = new_figure((4.5 * len(panels), 4))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (title, values) in zip(axes[0], panels, strict=True):
        ax.bar(range(len(values)), values, color="#55a868")
        ax.set_xticks(range(len(values)), names, fontsize=8, rotation=15)
        ax.set_title(title)
        for i, v in enumerate(values):
            ax.annotate(f"{v:.3g}", (i, v), ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


RING = ((1, 1), (1, -1), (-1, 1), (-1, -1), (0, 1), (0, -1), (1, 0), (-1, 0))


def place_labels(
    ax: Any,
    points: list[tuple[float, float]],
    texts: list[str],
    sizes: list[float],
    colors: list[str],
    fontsize: float = 8,
) -> list[Any]:
    """Annotate each point with its text where the text overlaps no label placed before it
    and no marker: a greedy search over rings of offsets around the point, nearest first.
    ``sizes`` are the markers' areas (points², as scatter takes them). Call it once the axes'
    limits and layout are final: it measures in display pixels."""
    if not points:
        return []
    px = ax.figure.dpi / 72.0
    xy = ax.transData.transform(points)
    blocked = [
        (x - r, y - r, x + r, y + r)
        for (x, y), s in zip(xy, sizes, strict=True)
        for r in [(s**0.5 / 2 + 1) * px]
    ]
    out = []
    for (x, y), point, text, color in zip(xy, points, texts, colors, strict=True):
        w, h = (0.65 * fontsize * len(text) + 3) * px, (fontsize + 3) * px
        choice = None
        for dist in (3, 6, 10, 15, 22, 30, 40):
            for dx, dy in RING:
                cx, cy = x + dx * dist * px, y + dy * dist * px
                x0 = cx if dx > 0 else cx - w if dx < 0 else cx - w / 2
                y0 = cy if dy > 0 else cy - h if dy < 0 else cy - h / 2
                box = (x0, y0, x0 + w, y0 + h)
                if not any(_overlap(box, b) for b in blocked):
                    choice = (dx, dy, dist, box)
                    break
            if choice:
                break
        dx, dy, dist, box = choice or (1, 1, 3, (x, y, x + w, y + h))  # nowhere free: near it
        blocked.append(box)
        ha = {1: "left", -1: "right", 0: "center"}[dx]
        va = {1: "bottom", -1: "top", 0: "center"}[dy]
        label = ax.annotate(text, point, xytext=(dx * dist, dy * dist), textcoords="offset points",
                            ha=ha, va=va, fontsize=fontsize, color=color)  # fmt: skip
        out.append(label)
    return out


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
