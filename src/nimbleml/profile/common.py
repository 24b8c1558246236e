"""What the ONNX and PyTorch profilers share: how many runs to profile, the inputs of each
batch size, medians, shapes as text, and the limits that keep a trace bounded."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..inputs import Feeds, rows

MIN_RUNS, MAX_RUNS = 10, 500  # profiled runs per batch size, when chosen by the time budget
MAX_EVENTS = 200_000  # op events kept per trace: runs are capped so that runs x ops fits
TOP_NODES = 15  # nodes kept per batch size in the report
BATCHES = 4  # distinct input batches cycled through at each batch size


@dataclass(frozen=True)
class Settings:
    """How long to profile: ``warmup`` untimed runs, then ``runs`` profiled runs (None:
    as many as fit ``time_budget_s`` per batch size, between MIN_RUNS and MAX_RUNS)."""

    warmup: int = 5
    runs: int | None = None
    time_budget_s: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 1:
            raise ConfigError(
                f"warmup must be an integer >= 1 (runs before timing), got {self.warmup!r}"
            )
        if self.runs is not None and (
            isinstance(self.runs, bool) or not isinstance(self.runs, int) or self.runs < 1
        ):
            raise ConfigError(f"runs must be an integer >= 1, got {self.runs!r}")
        if not isinstance(self.time_budget_s, int | float) or not self.time_budget_s > 0:
            raise ConfigError(f"time_budget_s must be > 0 seconds, got {self.time_budget_s!r}")

    def count(self, seconds_per_run: float, ops_per_run: int) -> int:
        """Runs to profile: as asked, or as fit the budget; never more than MAX_EVENTS ops."""
        wanted = self.runs
        if wanted is None:
            fit = int(self.time_budget_s / max(seconds_per_run, 1e-7))
            wanted = min(MAX_RUNS, max(MIN_RUNS, fit))
        return max(1, min(wanted, MAX_EVENTS // max(1, ops_per_run)))


def check_batch_sizes(batch_sizes: Any) -> list[int]:
    sizes = [batch_sizes] if isinstance(batch_sizes, int) else list(batch_sizes or [])
    if not sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in sizes):
        raise ConfigError(
            f"batch_sizes must be positive integers like (1, 32), got {batch_sizes!r}"
        )
    return sorted(dict.fromkeys(sizes))


def batches_of(feeds: Feeds, size: int) -> list[Feeds]:
    """Up to BATCHES distinct batches of ``size`` rows (rows repeat when the data is short)."""
    total = len(next(iter(feeds.values())))
    count = max(1, min(BATCHES, total // size))
    return [
        {k: np.ascontiguousarray(v) for k, v in rows(feeds, size, i * size).items()}
        for i in range(count)
    ]


def timed(fn: Callable[[int], object], n: int) -> np.ndarray:
    """Seconds of each of ``n`` calls ``fn(i)``."""
    clock = time.perf_counter
    out = np.empty(n)
    for i in range(n):
        t0 = clock()
        fn(i)
        out[i] = clock() - t0
    return out


def shape_text(dtype: str, shape: Any) -> str:
    dims = ",".join(str(d) for d in shape) if shape is not None else "?"
    return f"{dtype}[{dims}]"


def median_ms(seconds: np.ndarray) -> float:
    return float(np.median(seconds)) * 1e3 if len(seconds) else float("nan")
