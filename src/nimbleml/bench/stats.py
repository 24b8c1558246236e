"""Latency statistics that carry their sample count and say when a percentile is not one."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

PERCENTILES = {"p50": 50.0, "p90": 90.0, "p95": 95.0, "p99": 99.0}
# a percentile needs at least 10 samples beyond it to mean anything
MIN_SAMPLES = {name: int(np.ceil(10 / (1 - q / 100))) for name, q in PERCENTILES.items()}


@dataclass(frozen=True)
class LatencyStats:
    """Latency in milliseconds over ``n`` timed calls; ``unreliable`` lists the percentiles
    with too few samples behind them (see MIN_SAMPLES)."""

    n: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float
    iqr_ms: float
    stable: bool
    unreliable: list[str] = field(default_factory=list)

    @property
    def spread(self) -> float:
        """IQR / median: below 0.1 counts as stable."""
        return self.iqr_ms / self.p50_ms if self.p50_ms > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fmt(self, name: str) -> str:
        value = getattr(self, f"{name}_ms")
        mark = "*" if name in self.unreliable else ""
        return f"{value:.3f}{mark}"


def summarize(samples_ns: np.ndarray, stable: bool) -> LatencyStats:
    if samples_ns.size == 0:
        raise ValueError("no samples to summarise")
    ms = samples_ns.astype(np.float64) / 1e6
    q = np.percentile(ms, [25, 50, 75, 90, 95, 99])
    return LatencyStats(
        n=int(ms.size),
        mean_ms=float(ms.mean()),
        p50_ms=float(q[1]),
        p90_ms=float(q[3]),
        p95_ms=float(q[4]),
        p99_ms=float(q[5]),
        min_ms=float(ms.min()),
        max_ms=float(ms.max()),
        iqr_ms=float(q[2] - q[0]),
        stable=stable,
        unreliable=[name for name, need in MIN_SAMPLES.items() if ms.size < need],
    )


def is_stable(samples_ns: np.ndarray, target: float) -> bool:
    if samples_ns.size < 10:
        return False
    q1, med, q3 = np.percentile(samples_ns, [25, 50, 75])
    return bool(med > 0 and (q3 - q1) / med < target)
