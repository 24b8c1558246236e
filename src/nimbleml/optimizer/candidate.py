"""One candidate model and its figures, and the Pareto front of a set of them: the one type that
the optimizer (recipes under an accuracy budget) and the architecture search (search/nas.py)
both fill in, and the one front both take.

The optimizer fills in a recipe, its metric drop, p50/p99, throughput and size; the
architecture search a trial number, the architecture's parameters, p50/p95 at its batch size,
the latency re-timed beside the rest of the front, and where its package was saved. The
search sits above the optimizer in the layer stack, so it imports this module, never the
reverse."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import ConfigError
from ..models.base import Model

# the architecture search's own fields: in to_dict() only when set (the optimizer's report
# keeps the keys it always had)
SEARCH_FIELDS = ("trial", "params", "p95_ms", "retimed_ms", "path")


@dataclass
class Candidate:
    """One candidate tried (or skipped), with why."""

    name: str
    status: str = "skipped"
    reason: str | None = None
    recipe: list[dict[str, Any]] = field(default_factory=list)
    metric: float | None = None
    drop: float | None = None
    p50_ms: float | None = None  # at the batch size that decides (NAS: its ``batch_size``)
    p99_ms: float | None = None
    n: int = 0  # the samples behind the percentiles
    samples_per_second: float | None = None
    batch_size: int | None = None
    threads: int | None = None
    size_bytes: int | None = None
    num_parameters: int | None = None
    cosine: float | None = None
    seconds: float = 0.0  # what evaluating it cost: building, scoring, checking, timing
    engine: str | None = None  # the runtime that runs it: onnxruntime, openvino, torch...
    # p50/p99 (ms), n and samples/s at each batch size timed; score: lower is better (see
    # optimizer/evaluate.py): p50 ms, the worst ratio to the original over several batch
    # sizes, or ms per sample for throughput
    timings: dict[int, dict[str, float]] = field(default_factory=dict)
    score: float | None = None
    model: Model | None = field(default=None, repr=False)
    # the architecture search's: the Optuna trial (the N of trial-N.nimble), its parameters,
    # p95 at batch_size, p50 when the front is timed again side by side, the saved package
    trial: int | None = None
    params: dict[str, Any] = field(default_factory=dict)
    p95_ms: float | None = None
    retimed_ms: float | None = None
    path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {
            k: v
            for k, v in self.__dict__.items()
            if k != "model" and (k not in SEARCH_FIELDS or v not in (None, {}))
        }
        out["timings"] = {str(bs): t for bs, t in self.timings.items()}
        return out

    @property
    def timed(self) -> bool:
        return self.p50_ms is not None

    @property
    def latency_ms(self) -> float | None:
        """p50 in ms at the deciding batch size (the architecture search's name for it)."""
        return self.p50_ms

    @property
    def size_mb(self) -> float | None:
        """The size in MiB (2**20 bytes), as the architecture search shows it."""
        return None if self.size_bytes is None else self.size_bytes / 2**20


# a figure of a candidate (None: not measured) and whether lower or higher is better
Objective = tuple[Callable[[Candidate], float | None], Literal["min", "max"]]

# the optimizer's: metric drop, p50 latency and size, all the lower the better
COMPRESSION: tuple[Objective, ...] = (
    (lambda c: c.drop, "min"),
    (lambda c: c.p50_ms, "min"),
    (lambda c: None if c.size_bytes is None else float(c.size_bytes), "min"),
)


def _fastest(c: Candidate) -> tuple[bool, float]:
    return (c.p50_ms is None, c.p50_ms or 0.0)


def pareto(
    candidates: Sequence[Candidate],
    objectives: Sequence[Objective] = COMPRESSION,
    order: Callable[[Candidate], Any] | None = _fastest,
) -> list[Candidate]:
    """The candidates no other beats on all ``objectives`` at once: one that is at least as
    good on every objective and better on one dominates; equals do not (both stay on the
    front). A candidate lacking a figure for any objective (None) is not on the front.
    ``order`` sorts the front (stably; None keeps the given order): fastest p50 first."""
    for _, sense in objectives:
        if sense not in ("min", "max"):
            raise ConfigError(f"an objective's sense is 'min' or 'max', got {sense!r}")
    pool: list[tuple[Candidate, tuple[float, ...]]] = []
    for c in candidates:
        values = [key(c) for key, _ in objectives]
        known = [float(v) for v in values if v is not None]
        if len(known) == len(values):  # all to be minimised: a "max" objective negated
            signs = (1.0 if sense == "min" else -1.0 for _, sense in objectives)
            pool.append((c, tuple(s * v for s, v in zip(signs, known, strict=True))))
    front = [
        c
        for c, mine in pool
        if not any(
            all(a <= b for a, b in zip(theirs, mine, strict=True)) and theirs != mine
            for _, theirs in pool
        )
    ]
    return front if order is None else sorted(front, key=order)
