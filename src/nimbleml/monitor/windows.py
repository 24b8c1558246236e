"""Per-window summaries, off the hot path: a latency sketch with exact request and error counts
for each (model, window start), folded in on every flush and merged over a span when someone
asks (``latency()``, the alert rules).

A flush turns the records it took into one small sketch per (model, window) it touched
(``aggregate``), adds them to the in-memory windows and the per-model totals (``fold``) and
hands the store a merge function per window (``for_store``), so that a window written by
several flushes (or processes) ends as one sketch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .sketch import LogSketch

MIN_SAMPLES = {"p50": 20, "p95": 200, "p99": 1000}  # below these a percentile is 'unreliable'

Key = tuple[str, float]  # (model, window start)


@dataclass
class Window:
    """One window of one model, as the questions read it."""

    sketch: LogSketch = field(default_factory=LogSketch)
    requests: int = 0
    errors: int = 0


@dataclass
class Delta:
    """What one flush adds to one window: counts, the sampled latencies' sketch and sum."""

    requests: int = 0
    errors: int = 0
    sketch: LogSketch = field(default_factory=LogSketch)
    latency_sum: float = 0.0


def aggregate(
    ts_col: Sequence[float],
    lat_col: Sequence[float],
    model_col: Sequence[str],
    deltas: dict[str, tuple[int, int]],
    window_s: float,
    now: float,
) -> dict[Key, Delta]:
    """A flush's records (columns) and exact counter deltas -> one Delta per window touched.

    Sampled latencies go to the window of their timestamp; the counts (exact, kept by the hot
    path's counters without a time) go to the window that holds ``now``."""
    ts = np.asarray(ts_col, dtype=np.float64)
    lat = np.asarray(lat_col, dtype=np.float64)
    models = np.asarray(model_col, dtype=object)
    starts = np.floor(ts / window_s) * window_s
    current = float(np.floor(now / window_s) * window_s)
    touched: dict[Key, Delta] = {}
    for model in set(model_col) | set(deltas):
        mask = models == model
        for start in np.unique(starts[mask]).tolist():
            chosen = lat[mask & (starts == start)]
            sk = LogSketch()
            sk.add(chosen)
            touched[(model, start)] = Delta(sketch=sk, latency_sum=float(chosen.sum()))
        req, err = deltas.get(model, (0, 0))
        if req or err:
            delta = touched.setdefault((model, current), Delta())
            delta.requests += req
            delta.errors += err
    return touched


def fold(
    touched: dict[Key, Delta],
    windows: dict[Key, Window],
    totals: dict[str, LogSketch],
    latency_sum: dict[str, float],
) -> None:
    """Add a flush's deltas to the in-memory windows, the per-model sketch of every latency
    so far and the per-model latency sum (Prometheus' histogram ``_sum``)."""
    for (model, start), delta in touched.items():
        window = windows.setdefault((model, start), Window())
        window.sketch.merge(delta.sketch)
        window.requests += delta.requests
        window.errors += delta.errors
        totals.setdefault(model, LogSketch()).merge(delta.sketch)
        latency_sum[model] = latency_sum.get(model, 0.0) + delta.latency_sum


def for_store(touched: dict[Key, Delta], window_s: float) -> list[tuple[Any, ...]]:
    """The store's window rows: model, start, length, counts, n, and a merge function."""
    return [
        (m, s, window_s, d.requests, d.errors, d.sketch.n, merger(d.sketch))
        for (m, s), d in touched.items()
    ]


def merged(
    windows: dict[Key, Window], model: str, since: float | None
) -> tuple[LogSketch, int, int]:
    """One sketch and the request and error counts of ``model``'s windows from ``since``."""
    sk, req, err = LogSketch(), 0, 0
    for (m, start), w in list(windows.items()):
        if m == model and (since is None or start >= since):
            sk.merge(w.sketch)
            req += w.requests
            err += w.errors
    return sk, req, err


def forget_before(windows: dict[Key, Window], horizon: float) -> None:
    """Drop the in-memory windows that start before ``horizon`` (the store keeps them)."""
    for key in [k for k in windows if k[1] < horizon]:
        del windows[key]


def merger(sketch: LogSketch) -> Callable[[bytes | None], bytes]:
    """A function from the stored sketch of a window (None: none yet) to it merged with this."""

    def merge(existing: bytes | None) -> bytes:
        if existing is None:
            return sketch.to_bytes()
        return LogSketch.from_bytes(existing).merge(sketch).to_bytes()

    return merge
