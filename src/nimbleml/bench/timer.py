"""Time a call honestly: warm up, repeat until stable or out of time, measure memory apart."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .stats import LatencyStats, is_stable, summarize


@dataclass(frozen=True)
class TimingConfig:
    """warmup_s of untimed calls, then timed calls until the IQR/median falls below
    ``target_spread`` with at least ``min_samples`` (1000 makes p99 meaningful), or until
    ``time_budget_s`` is spent."""

    warmup_s: float = 0.2
    min_samples: int = 1000
    max_samples: int = 100_000
    time_budget_s: float = 3.0
    target_spread: float = 0.10

    def __post_init__(self) -> None:
        if self.time_budget_s <= 0 or self.warmup_s < 0:
            raise ValueError("time_budget_s must be > 0 and warmup_s >= 0")
        if self.min_samples < 1 or self.max_samples < self.min_samples:
            raise ValueError("need 1 <= min_samples <= max_samples")


def time_calls(fn: Callable[[], object], config: TimingConfig) -> LatencyStats:
    _warm(fn, config.warmup_s)
    timed, stable = _collect(fn, config)
    return summarize(timed, stable or is_stable(timed, config.target_spread))


# time_interleaved: at least ROUNDS rounds, more (up to MAX_ROUNDS) while a call's samples
# are not yet stable and the budget lasts; each call's slice of a round is first warmed this
# long, which also lets the thread pool of the call before it quiet down
ROUNDS = 5
MAX_ROUNDS = 20
SLICE_WARMUP_S = 0.005


def time_interleaved(
    fns: Sequence[Callable[[], object]], config: TimingConfig, rounds: int = ROUNDS
) -> list[LatencyStats]:
    """Several calls timed side by side, in rounds that run them in turn forward and
    backward, so that every call sees the same stretches of the machine's noise (timed one
    after the other, the same package measured 0.17 ms and 0.37 ms at batch 1 in two runs a
    minute apart). A round gives each call 1/``rounds`` of ``min_samples`` or of its time
    budget, whichever comes first; after ``rounds`` rounds, more follow while some call's
    samples are not stable (``target_spread``), until the calls' budgets together are spent.
    Each call's samples from every round are summarised together."""
    if len(fns) == 1:
        return [time_calls(fns[0], config)]
    rounds = min(max(1, rounds), MAX_ROUNDS)
    for fn in fns:
        _warm(fn, config.warmup_s)
    share = max(1, -(-config.min_samples // rounds))
    part = TimingConfig(
        warmup_s=0.0,
        min_samples=share,
        max_samples=max(share, config.max_samples // rounds),
        time_budget_s=config.time_budget_s / rounds,
        target_spread=config.target_spread,
    )
    deadline = time.perf_counter() + config.time_budget_s * len(fns)
    samples: list[list[np.ndarray]] = [[] for _ in fns]
    for r in range(MAX_ROUNDS):
        order = range(len(fns)) if r % 2 == 0 else range(len(fns) - 1, -1, -1)
        for i in order:
            _warm(fns[i], SLICE_WARMUP_S)
            samples[i].append(_collect(fns[i], part, until_stable=False)[0])
        if r + 1 < rounds:
            continue
        merged = [np.concatenate(s) for s in samples]
        stable = [is_stable(m, config.target_spread) for m in merged]
        if all(stable) or time.perf_counter() > deadline:
            break
    return [summarize(m, ok) for m, ok in zip(merged, stable, strict=True)]


def _warm(fn: Callable[[], object], seconds: float) -> None:
    """One untimed call, then more until ``seconds`` have passed."""
    end = time.perf_counter() + seconds
    fn()
    while time.perf_counter() < end:
        fn()


def _collect(
    fn: Callable[[], object], config: TimingConfig, until_stable: bool = True
) -> tuple[np.ndarray, bool]:
    """Timed calls (ns) until stable with ``min_samples`` (``until_stable=False``: until
    ``min_samples``), or out of budget; and whether the last check found them stable."""
    clock = time.perf_counter_ns
    samples = np.empty(config.max_samples, dtype=np.int64)
    n = 0
    deadline = time.perf_counter() + config.time_budget_s
    check_every = 50
    stable = False
    while n < config.max_samples:
        t0 = clock()
        fn()
        samples[n] = clock() - t0
        n += 1
        if not until_stable:
            if n >= config.min_samples or (n >= 3 and time.perf_counter() > deadline):
                break
        elif n % check_every == 0:
            stable = n >= config.min_samples and is_stable(samples[:n], config.target_spread)
            if stable or time.perf_counter() > deadline:
                break
        elif n < check_every and time.perf_counter() > deadline and n >= 3:
            break
    return samples[:n], stable


def peak_rss_bytes(fn: Callable[[], object], calls: int = 20, interval_s: float = 0.0005) -> int:
    """Peak resident memory growth (bytes) while running ``fn`` ``calls`` times, sampled
    by a watcher thread in a pass of its own (not mixed with timing)."""
    import gc

    import psutil

    proc = psutil.Process()
    gc.collect()
    base = proc.memory_info().rss
    peak = base
    done = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, proc.memory_info().rss)
            time.sleep(interval_s)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        for _ in range(calls):
            fn()
    finally:
        done.set()
        watcher.join()
    peak = max(peak, proc.memory_info().rss)
    return max(0, peak - base)
