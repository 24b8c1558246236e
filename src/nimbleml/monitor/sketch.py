"""A mergeable log-bucket quantile sketch (DDSketch-style) with 1% relative error.

Bucket i holds values in (γ^(i-1), γ^i] with γ = (1+α)/(1-α); a quantile answers with the
bucket's midpoint 2γ^i/(γ+1), within α of the true value. Sketches merge by adding counts,
so windows, models and processes combine exactly.
"""

from __future__ import annotations

import math

import numpy as np

ALPHA = 0.01
GAMMA = (1 + ALPHA) / (1 - ALPHA)
LOG_GAMMA = math.log(GAMMA)
LOW, HIGH = 1e-6, 1e7  # milliseconds: 1 ns to ~3 hours
OFFSET = math.floor(math.log(LOW) / LOG_GAMMA)
SIZE = math.ceil(math.log(HIGH) / LOG_GAMMA) - OFFSET + 1


class LogSketch:
    """Counts per log bucket over [LOW, HIGH] ms; values outside are clamped."""

    __slots__ = ("counts", "n")

    def __init__(self) -> None:
        self.counts = np.zeros(SIZE, dtype=np.int64)
        self.n = 0

    def add(self, values: np.ndarray) -> None:
        v = np.clip(np.asarray(values, dtype=np.float64), LOW, HIGH)
        if v.size == 0:
            return
        idx = np.ceil(np.log(v) / LOG_GAMMA).astype(np.int64) - OFFSET
        self.counts += np.bincount(np.clip(idx, 0, SIZE - 1), minlength=SIZE)
        self.n += int(v.size)

    def merge(self, other: LogSketch) -> LogSketch:
        self.counts += other.counts
        self.n += other.n
        return self

    def quantile(self, q: float) -> float | None:
        if self.n == 0:
            return None
        rank = q * (self.n - 1)
        i = int(np.searchsorted(np.cumsum(self.counts), rank + 1, side="left"))
        return 2 * GAMMA ** (i + OFFSET) / (GAMMA + 1)

    def to_bytes(self) -> bytes:
        nz = np.flatnonzero(self.counts).astype(np.int32)
        return (
            nz.size.to_bytes(4, "little")
            + nz.tobytes()
            + self.counts[nz].astype(np.int64).tobytes()
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> LogSketch:
        k = int.from_bytes(data[:4], "little")
        idx = np.frombuffer(data, dtype=np.int32, count=k, offset=4)
        vals = np.frombuffer(data, dtype=np.int64, count=k, offset=4 + 4 * k)
        sketch = cls()
        sketch.counts[idx] = vals
        sketch.n = int(vals.sum())
        return sketch
