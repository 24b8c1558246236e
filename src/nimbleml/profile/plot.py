"""profile.png: per batch size, horizontal bars of the op types' time per run (the top 10,
each labelled with its share), and for a training step the phases of the step. A linear
axis from zero: the bars compare as the times do."""

from __future__ import annotations

from typing import Any

from ..bench.plots import new_figure
from .report import ProfileReport

TOP = 10


def figure(report: ProfileReport) -> Any:
    panels = len(report.batches) * (2 if report.kind == "train" else 1)
    fig = new_figure((7.5, 1.2 + 0.32 * (TOP + 2) * panels))
    axes = fig.subplots(panels, 1, squeeze=False)[:, 0]
    unit = "step" if report.kind == "train" else "run"
    i = 0
    for b in report.batches:
        ax = axes[i]
        i += 1
        ops = list(reversed(b.ops[:TOP]))
        ys = range(len(ops))
        colors = ["#c44e52" if o.op in report.quantized_ops else "#4c72b0" for o in ops]
        ax.barh(list(ys), [o.ms for o in ops], color=colors)
        for y, o in zip(ys, ops, strict=True):
            ax.annotate(f" {100 * o.share:.0f}%", (o.ms, y), va="center", fontsize=8)
        ax.set_yticks(list(ys), [o.op[:40] for o in ops], fontsize=8)
        ax.set_xlim(0, max((o.ms for o in ops), default=1) * 1.2)
        ax.set_xlabel(f"ms per {unit} (self time, profiled)")
        ax.set_title(f"batch {b.batch_size}: ops are {100 * b.coverage:.0f}% of the {unit}, "
                     f"{b.samples_per_s:,.0f} samples/s", fontsize=9)  # fmt: skip
        if report.kind == "train":
            ax = axes[i]
            i += 1
            phases = list(reversed(b.phases))
            ax.barh([p.name.replace("_", " ") for p in phases], [p.ms for p in phases],
                    color=["#dd8452" if p.name == "data_loading" else "#55a868" for p in phases])  # fmt: skip
            for y, p in enumerate(phases):
                ax.annotate(f" {100 * p.share:.0f}%", (p.ms, y), va="center", fontsize=8)
            ax.set_xlim(0, max((p.ms for p in phases), default=1) * 1.2)
            ax.set_xlabel("ms per step (without the profiler)")
            ax.set_title(f"batch {b.batch_size}: phases of a step ({report.verdict})", fontsize=9)
    fig.suptitle(f"profile of {report.model}", fontsize=10)
    fig.tight_layout()
    return fig
