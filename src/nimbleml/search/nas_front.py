"""The architecture search's front: ``ArchitectureFront`` (table, front.json, front.png, the
best package under a latency), the front taken from a study's completed trials with the
optimizer's one ``pareto`` (metric up, latency down), and the side-by-side timing of packages
that both the search and its final re-timing use."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..optimizer.candidate import Candidate, Objective, pareto

# the search's two objectives: the metric measured on the package up, its p50 latency down
ARCHITECTURE: tuple[Objective, ...] = ((lambda c: c.metric, "max"), (lambda c: c.p50_ms, "min"))


def _f(value: float | None) -> float:
    """A figure every candidate of a front has (metric, p50, size)."""
    return float("nan") if value is None else value


def as_row(c: Candidate) -> dict[str, Any]:
    """A front candidate as front.json has always written it."""
    return {"trial": c.trial, "params": dict(c.params), "metric": c.metric,
            "latency_ms": c.latency_ms, "retimed_ms": c.retimed_ms, "p95_ms": c.p95_ms,
            "n": c.n, "size_mb": c.size_mb, "path": c.path}  # fmt: skip


@dataclass
class ArchitectureFront:
    pareto: list[Candidate]
    trials: int
    pruned: dict[str, int]  # reason -> count
    metric: str
    batch_size: int
    machine: dict[str, Any] = field(default_factory=dict)
    baseline: Candidate | None = None

    def table(self) -> str:
        head = (f"{'trial':>5} {self.metric:>9} {'p50 ms':>8} {'re-timed':>9} {'p95 ms':>8} "
                f"{'n':>6} {'size MB':>8}  parameters")  # fmt: skip
        lines = [f"Pareto front: {len(self.pareto)} of {self.trials} trials, latency at batch "
                 f"{self.batch_size}; not trained: {self.pruned or 'none'}", head,
                 "-" * len(head)]  # fmt: skip
        rows = ([self.baseline] if self.baseline else []) + self.pareto
        for c in rows:
            retimed = f"{c.retimed_ms:.4f}" if c.retimed_ms is not None else "-"
            name = "base" if c is self.baseline else str(c.trial)
            params = ", ".join(f"{k}={v}" for k, v in c.params.items())
            lines.append(f"{name:>5} {_f(c.metric):>9.4f} {_f(c.latency_ms):>8.4f} {retimed:>9} "
                         f"{_f(c.p95_ms):>8.4f} {c.n:>6} {_f(c.size_mb):>8.3f}  {params}")  # fmt: skip
        return "\n".join(lines)

    def best(self, max_latency_ms: float | None = None) -> Any:
        """The package of the most accurate Pareto point within ``max_latency_ms``."""
        from ..package import load

        fits = [c for c in self.pareto
                if max_latency_ms is None or _f(c.latency_ms) <= max_latency_ms]  # fmt: skip
        if not fits:
            fastest = min(_f(c.latency_ms) for c in self.pareto) if self.pareto else float("nan")
            raise ConfigError(
                f"no Pareto point runs within {max_latency_ms} ms (the fastest: {fastest:.4f} "
                "ms); give a larger max_latency_ms"
            )
        chosen = max(fits, key=lambda c: _f(c.metric))
        if chosen.path is None:
            raise ConfigError("the front was searched without out_dir: no packages were kept")
        return load(chosen.path)

    def to_dict(self) -> dict[str, Any]:
        return {"pareto": [as_row(c) for c in self.pareto], "trials": self.trials,
                "pruned": dict(self.pruned), "metric": self.metric,
                "batch_size": self.batch_size, "machine": dict(self.machine),
                "baseline": None if self.baseline is None else as_row(self.baseline)}  # fmt: skip

    def plot(self, path: str | Path) -> Path:
        from ..bench.plots import new_figure

        fig = new_figure((6, 4))
        ax = fig.subplots()
        xs, ys = [c.latency_ms for c in self.pareto], [c.metric for c in self.pareto]
        ax.plot(xs, ys, marker="o", label="Pareto front (packages)")
        if self.baseline is not None:
            ax.scatter([self.baseline.latency_ms], [self.baseline.metric], marker="s",
                       color="black", label="hand-designed baseline")  # fmt: skip
        ax.set(xlabel=f"p50 latency at batch {self.batch_size} (ms)", ylabel=self.metric,
               title="architecture search: metric vs latency")  # fmt: skip
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        return Path(path)


def timed(packages: list[Any], X: Any, batch_size: int, windows: int = 3) -> list[dict[str, Any]]:
    """p50 / p95 / n of each package at ``batch_size``: the window with the lowest p50 of
    ``windows`` short ones, the packages taking turns. At tens of microseconds this machine
    switches between speeds ~2x apart for seconds at a time; the fastest window is the
    machine's own speed, which is what a search must compare candidates on."""
    from ..bench import TimingConfig, benchmark

    timing = TimingConfig(warmup_s=0.05, min_samples=200, time_budget_s=0.25)
    best: list[Any] = [None] * len(packages)
    for _ in range(windows):
        report = benchmark(packages, X, (batch_size,), timing=timing, measure_memory=False,
                           names=[f"p{i}" for i in range(len(packages))])  # fmt: skip
        for i, r in enumerate(report.results):
            if best[i] is None or r.latency.p50_ms < best[i].p50_ms:
                best[i] = r.latency
    return [{"p50_ms": b.p50_ms, "p95_ms": b.p95_ms, "n": b.n} for b in best]


def _candidate(t: Any) -> Candidate:
    """A completed trial: its objectives as Optuna holds them; the rest from its attributes
    (a trial of an earlier run of a resumed study may lack them: it has no package either)."""
    timed_at = t.user_attrs.get("search_latency") or {}
    final = t.user_attrs.get("final") or {}
    return Candidate(f"trial-{t.number}", status="ok", trial=t.number, params=dict(t.params),
                     metric=t.values[0], p50_ms=t.values[1], p95_ms=timed_at.get("p95_ms"),
                     n=timed_at.get("n", 0), size_bytes=final.get("size_bytes"),
                     path=t.user_attrs.get("package"))  # fmt: skip


def front_of(study: Any, folder: Path | None, work: Path, Xv: Any, batch_size: int, metric: str,
             pruned: dict[str, int], machine: dict[str, Any]) -> ArchitectureFront:  # fmt: skip
    """The Pareto front of the study's completed trials (earlier runs' too, when resumed),
    fastest first; their packages moved to ``folder`` (the others deleted), re-timed side by
    side in one run."""
    from optuna.trial import TrialState

    from ..package import load

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    front: list[Candidate] = []
    for c in pareto([_candidate(t) for t in done], ARCHITECTURE):
        src = Path(c.path) if c.path else None
        if src is None or not src.exists():  # an earlier run's point of a resumed study
            pruned["earlier run's, no package"] = pruned.get("earlier run's, no package", 0) + 1
            continue
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"trial-{c.trial}.nimble"
            if path.exists():
                shutil.rmtree(path)
            shutil.move(str(src), path)
            c.path = str(path)
        front.append(c)
    if front:
        # eight rounds, the packages taking turns: over ~2 s a package, every one of them
        # meets the machine in its fast phase at least once (three rounds were not enough)
        again = timed([load(str(c.path)) for c in front], Xv, batch_size, windows=8)
        for c, t in zip(front, again, strict=True):
            c.retimed_ms = t["p50_ms"]
    if folder is None:
        for c in front:
            c.path = None
    shutil.rmtree(work, ignore_errors=True)  # the dominated candidates' packages
    return ArchitectureFront(pareto=front, trials=len(study.trials), pruned=pruned,
                             metric=metric, batch_size=batch_size, machine=machine)  # fmt: skip
