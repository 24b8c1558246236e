"""The distillation report: teacher, student without the teacher, distilled student (and its
optimized package) measured side by side in one run: the validation metric, p50 latency at
batch 1 and 32 with their sample counts, size, parameters; a plain verdict on whether
distillation beat training the student alone, which of the two students was returned, the
views, the unlabeled rows used, the temperature/alpha search and the seconds each run took."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..bench import TimingConfig, benchmark

BATCHES = (1, 32)
TIMING = TimingConfig(warmup_s=0.2, min_samples=200, time_budget_s=1.0)


@dataclass
class Row:
    name: str
    metric: float | None
    p50_ms: dict[int, float]  # batch -> p50 latency
    n: dict[int, int]  # batch -> timed calls
    size_mb: float
    parameters: int


@dataclass
class DistillReport:
    rows: list[Row]
    temperature: float
    alpha: float
    cache: str
    metric: str = "accuracy"
    verdict: str = ""
    notes: list[str] = field(default_factory=list)
    views: str = "none"  # the views the student and the teacher saw ("mixup", ...)
    unlabeled: int = 0  # rows of unlabeled= the teacher labelled
    returned: str = "distilled"  # which student distill returned: "distilled" or "alone"
    returned_why: str = ""
    search: dict[str, Any] | None = None  # the temperature/alpha search, when one ran
    seconds: dict[str, float] = field(default_factory=dict)  # search, distilled, alone

    def carry(self, old: DistillReport) -> None:
        """What the run said that a new timing of the models does not change."""
        for name in ("views", "unlabeled", "returned", "returned_why", "search", "seconds"):
            setattr(self, name, getattr(old, name))
        self.notes = [*self.notes, *(n for n in old.notes if n not in self.notes)]

    def row(self, name: str) -> Row:
        return next(r for r in self.rows if r.name == name)

    def table(self) -> str:
        head = (f"{'model':<28} {self.metric:>9} {'p50 b=1 ms':>11} {'p50 b=32 ms':>12} "
                f"{'size MB':>8} {'params':>10} {'vs teacher b=1':>15}")  # fmt: skip
        lines = [f"distillation (T={self.temperature:g}, alpha={self.alpha:g}, teacher "
                 f"{self.cache})", head, "-" * len(head)]  # fmt: skip
        teacher = self.rows[0] if self.rows else None
        for r in self.rows:
            speed = (teacher.p50_ms[1] / r.p50_ms[1]) if teacher and r.p50_ms.get(1) else 0.0
            metric = f"{r.metric:.4f}" if r.metric is not None else "-"
            lines.append(
                f"{r.name:<28} {metric:>9} {_ms(r, 1):>11} {_ms(r, 32):>12} "
                f"{r.size_mb:>8.3f} {r.parameters:>10,} {speed:>14.1f}x"
            )
        lines.append(f"latency: p50 of n timed calls (n at b=1: "
                     f"{', '.join(str(r.n.get(1, 0)) for r in self.rows)})")  # fmt: skip
        if self.verdict:
            lines.append(self.verdict)
        lines += self.summary()
        lines += self.notes
        return "\n".join(lines)

    def summary(self) -> list[str]:
        lines = [f"views: {self.views}"]
        if self.unlabeled:
            lines.append(f"unlabeled rows labelled by the teacher: {self.unlabeled:,}")
        if self.search:
            s = self.search
            tried = ", ".join(f"T={t['temperature']:g}/a={t['alpha']:g}: {t['score']:.4f}"
                              for t in s["tried"])  # fmt: skip
            lines.append(f"T={s['temperature']:g}, alpha={s['alpha']:g} chosen by a search on "
                         f"{s['held_out']} held-out training rows ({s['metric']} "
                         f"{s['score']:.4f}; {s['epochs']} epochs a try; tried {tried})")  # fmt: skip
        who = "the distilled student" if self.returned == "distilled" else (
            "the student trained alone")  # fmt: skip
        lines.append(f"returned: {who}" + (f" ({self.returned_why})" if self.returned_why else ""))
        if self.seconds:
            sec = self.seconds
            ratio = (f" ({sec['distilled'] / sec['alone']:.1f}x the alone run)"
                     if sec.get("alone") else "")  # fmt: skip
            lines.append(f"training seconds: distilled {sec['distilled']:.1f}{ratio}, alone "
                         f"{sec.get('alone', 0):.1f}, search {sec.get('search', 0):.1f}")  # fmt: skip
        return lines

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, directory: str | Path) -> list[Path]:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        (out / "distill.json").write_text(json.dumps(self.to_dict(), indent=2, default=str))
        (out / "distill.txt").write_text(self.table() + "\n")
        return [out / "distill.json", out / "distill.txt"]


def _ms(r: Row, b: int) -> str:
    return f"{r.p50_ms[b]:.3f}" if b in r.p50_ms else "-"


def compare(teacher: Any, baseline: Any, student: Any, val: tuple[Any, Any], *,
            package: Any = None, temperature: float, alpha: float, cache: str,
            metric: str | None = None, packaged: str = "distilled") -> DistillReport:  # fmt: skip
    """Every model timed on the same validation inputs in one run, the metric on val."""
    from ..package import load

    models: list[tuple[str, Any]] = [("teacher", teacher)]
    if baseline is not None:
        models.append(("student (no teacher)", baseline))
    models.append(("student (distilled)", student))
    notes = []
    if package is not None:
        models.append(("student (package)", package))
        steps = [str(s.get("step", s)) for s in package.manifest.get("recipe") or []]
        who = "distilled student" if packaged == "distilled" else "student trained alone"
        notes.append(f"student (package): the {who} optimized, recipe "
                     f"{' + '.join(steps) or 'none'}")  # fmt: skip
    models = [(n, load(m) if isinstance(m, str | Path) else m) for n, m in models]
    X, y = val
    report = benchmark([m for _, m in models], X, BATCHES, names=[n for n, _ in models],
                       val=(X, y), metric=metric, timing=TIMING, measure_memory=False)  # fmt: skip
    rows = []
    for name, _ in models:
        by_batch = {r.batch_size: r for r in report.results if r.name == name}
        first = next(iter(by_batch.values()))
        rows.append(Row(
            name=name,
            metric=first.metric_value,
            p50_ms={b: r.latency.p50_ms for b, r in by_batch.items()},
            n={b: r.latency.n for b, r in by_batch.items()},
            size_mb=first.performance.model_size_mb,
            parameters=int(first.performance.num_parameters or 0),
        ))  # fmt: skip
    out = DistillReport(rows=rows, temperature=temperature, alpha=alpha, cache=cache,
                        metric=report.results[0].metric_name or "metric")  # fmt: skip
    out.verdict = _verdict(out)
    out.notes = notes
    return out


def _verdict(report: DistillReport) -> str:
    names = {r.name: r for r in report.rows}
    kd, alone = names.get("student (distilled)"), names.get("student (no teacher)")
    if kd is None or alone is None or kd.metric is None or alone.metric is None:
        return ""
    diff = kd.metric - alone.metric
    if diff > 0:
        return (f"distillation helped: {report.metric} {kd.metric:.4f} against {alone.metric:.4f} "
                f"for the same student trained alone (+{diff:.4f})")  # fmt: skip
    return (f"distillation did NOT beat training the student alone: {report.metric} "
            f"{kd.metric:.4f} against {alone.metric:.4f} ({diff:+.4f}); it happens (a strong "
            "student, an easy task, a weak teacher): try another temperature or alpha, or keep "
            "the student trained alone")  # fmt: skip
