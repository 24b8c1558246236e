"""What optimize() found: every candidate with its figures and fate, the Pareto front, the
best package, and a report (JSON, text table, Pareto chart). ``Candidate`` and ``pareto``
live in optimizer/candidate.py (shared with the architecture search) and are re-exported here."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..package import Package
from .candidate import COMPRESSION, Candidate, pareto

__all__ = ["REPORT_SCHEMA", "STATUSES", "Candidate", "OptimizationResult", "pareto"]

REPORT_SCHEMA = 1
STATUSES = (
    "baseline", "running", "ok", "over-budget", "slower", "failed", "skipped", "not-packageable",
    "not-applicable", "not-installed",
)  # fmt: skip


@dataclass
class OptimizationResult:
    """``best`` is a Package; ``candidates`` holds every one tried, the baseline first."""

    best: Package
    best_name: str
    baseline: Candidate
    candidates: list[Candidate]
    objective: str
    settings: dict[str, Any]
    seconds: float
    # the original and the best re-timed side by side at the end, per deciding batch size
    # ({bs: {original_p50_ms, package_p50_ms, speedup_p50, rounds}}); empty when the original
    # won or for the throughput objective
    interleaved: dict[int, dict[str, float]] = field(default_factory=dict)

    @property
    def pareto(self) -> list[Candidate]:
        """Candidates no other beats on metric drop, p50 latency and size at once, fastest
        first."""
        return pareto(self.candidates, COMPRESSION)

    @property
    def speedup(self) -> float:
        """How much faster than the original: by the score that decided (the worst ratio
        over several batch sizes), else p50 latency or throughput."""
        best = next(c for c in self.candidates if c.name == self.best_name)
        if self.objective == "latency" and len(self.settings.get("batch_sizes") or []) > 1:
            return 1.0 / best.score if best.score else 1.0
        if self.objective == "throughput":
            return (best.samples_per_second or 0) / (self.baseline.samples_per_second or 1)
        return (self.baseline.p50_ms or 0) / (best.p50_ms or 1)

    def to_dict(self) -> dict[str, Any]:
        from ..bench.machine import machine_info

        return {
            "schema": REPORT_SCHEMA,
            "objective": self.objective,
            "settings": self.settings,
            "seconds": self.seconds,
            "best": self.best_name,
            "speedup": self.speedup,
            "baseline": self.baseline.to_dict(),
            "candidates": [c.to_dict() for c in self.candidates],
            "pareto": [c.name for c in self.pareto],
            "interleaved": {str(bs): v for bs, v in self.interleaved.items()},
            "machine": machine_info().to_dict(),
        }

    def table(self) -> str:
        """One row per candidate: status, metric, drop, p50 at every deciding batch size (with
        the ratio to the original when several decide), samples/s, threads, size, and the
        seconds it cost; a reason line under each one that is not ok."""
        sizes = [
            int(b)
            for b in self.settings.get("batch_sizes") or [self.settings.get("batch_size") or 1]
        ]
        multi = self.objective == "latency" and len(sizes) > 1
        p50 = [f"p50@{b}" for b in sizes] if multi else ["p50 ms"]
        head = (
            f"{'candidate':<38} {'status':<14} {'metric':>8} {'drop':>8} "
            + " ".join(f"{h:>9}" for h in [*p50, *(["vs orig"] if multi else [])])
            + f" {'samples/s':>10} {'bs':>4} {'thr':>4} {'size KB':>9} {'seconds':>8}"
        )
        lines = [head, "-" * len(head)]
        for c in self.candidates:
            mark = "*" if c.name == self.best_name else " "

            def f(v: float | None, fmt: str) -> str:
                return "" if v is None else format(v, fmt)

            if multi:
                cells = [f((c.timings.get(b) or {}).get("p50_ms"), ".4f") for b in sizes]
                cells.append(f"{1 / c.score:.2f}x" if c.score else "")
            else:
                cells = [f(c.p50_ms, ".4f")]
            lines.append(
                f"{mark}{c.name[:37]:<37} {c.status:<14} {f(c.metric, '.4f'):>8} "
                f"{f(c.drop, '.4f'):>8} "
                + " ".join(f"{x:>9}" for x in cells)
                + f" {f(c.samples_per_second, '.0f'):>10} {c.batch_size or '':>4} {c.threads or 'auto':>4} "
                f"{f((c.size_bytes or 0) / 1024 if c.size_bytes else None, '.1f'):>9} "
                f"{f(c.seconds if c.seconds else None, '.1f'):>8}"
            )
            if c.reason and c.status not in ("ok", "baseline"):
                lines.append(f"    {c.reason}")  # whole: the advice is often at the end
        lines.append(f"* best: {self.best_name} ({self._gain()})")
        return "\n".join(lines)

    def _gain(self) -> str:
        if self.best_name == self.baseline.name:
            return "the original: no candidate within the budget beat it here"
        what = "faster" if self.objective == "latency" else "the throughput"
        if self.objective == "latency":
            again = "".join(
                f"; {v['speedup_p50']:.2f}x at batch {bs} re-timed side by side"
                for bs, v in self.interleaved.items()
            )
            return f"{self.speedup:.2f}x {what} than the original{again}"
        return f"{self.speedup:.2f}x {what} of the original"

    def report(self, directory: str | Path) -> list[Path]:
        """Write optimization.json, optimization.txt and pareto.png into ``directory``."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        (out / "optimization.json").write_text(json.dumps(self.to_dict(), indent=2, default=str))
        (out / "optimization.txt").write_text(self.table() + "\n")
        return [out / "optimization.json", out / "optimization.txt", self._plot(out / "pareto.png")]

    def _plot(self, path: Path) -> Path:
        self._figure().savefig(path, dpi=100)
        return path

    def _figure(self) -> Any:
        """Metric against p50 latency, one numbered point per timed candidate, the key to the
        numbers beside the chart. Names written next to their points piled into one unreadable
        block where candidates timed alike; numbers are short and placed where they overlap
        no other number and no point."""
        from ..bench.plots import new_figure, place_labels

        timed = [c for c in self.candidates if c.timed and c.metric is not None]
        fig = new_figure((11, 5.5))
        ax = fig.add_subplot()
        front = {c.name for c in self.pareto}
        biggest = max((c.size_bytes or 1 for c in timed), default=1)
        colors = [
            "#c44e52" if c.name == self.best_name else "#4c72b0" if c.name in front else "#999999"
            for c in timed
        ]
        sizes = [30 + 200 * (c.size_bytes or 0) / biggest for c in timed]
        points = [(c.p50_ms or 0.0, c.metric or 0.0) for c in timed]
        handles = []
        for (x, y), size, color in zip(points, sizes, colors, strict=True):
            handles.append(ax.scatter(x, y, s=size, color=color, alpha=0.8))
        line = sorted((c for c in timed if c.name in front), key=lambda c: c.p50_ms or 0)
        ax.plot([c.p50_ms for c in line], [c.metric for c in line], color="#4c72b0", lw=1)
        ax.set_xscale("log")
        from matplotlib.ticker import FuncFormatter, NullFormatter

        plain = FuncFormatter(lambda v, _: f"{v:g}")  # 0.6, not 6x10^-1
        xs = [x for x, _ in points if x > 0]
        ax.xaxis.set_major_formatter(plain)  # within a decade, label the 0.2 ... 0.9 ticks too
        ax.xaxis.set_minor_formatter(plain if xs and max(xs) < 10 * min(xs) else NullFormatter())
        ax.set_xlabel(f"p50 latency at batch {self.settings.get('batch_size')} (ms, log)")
        ax.set_ylabel(str(self.settings.get("metric")))
        ax.set_title("candidates: Pareto front in blue, best in red, size as area")
        names = [
            f"{i}  {c.name}" + ("  (best)" if c.name == self.best_name else "")
            for i, c in enumerate(timed, 1)
        ]
        if timed:
            ax.legend(handles, names, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7,
                      markerscale=0.5, ncol=1 + (len(timed) - 1) // 25, title="candidates")  # fmt: skip
        ax.margins(0.08)
        fig.tight_layout()
        fig.draw_without_rendering()  # limits and layout final: labels are placed in pixels
        place_labels(ax, points, [str(i) for i in range(1, len(timed) + 1)], sizes, colors)
        return fig
