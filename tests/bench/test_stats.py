import itertools
import time

import numpy as np
import pytest

from nimbleml.bench.stats import MIN_SAMPLES, is_stable, summarize
from nimbleml.bench.timer import TimingConfig, peak_rss_bytes, time_calls


def test_summarize_matches_numpy_percentiles():
    rng = np.random.default_rng(0)
    ns = rng.integers(1_000, 100_000, size=2000)
    s = summarize(ns, stable=True)
    ms = ns / 1e6
    assert s.n == 2000
    assert s.p50_ms == pytest.approx(np.percentile(ms, 50))
    assert s.p99_ms == pytest.approx(np.percentile(ms, 99))
    assert s.unreliable == []


def test_percentiles_with_too_few_samples_are_marked():
    s = summarize(np.arange(1, 151) * 1000, stable=False)
    assert s.unreliable == ["p95", "p99"]
    assert s.fmt("p99").endswith("*") and not s.fmt("p50").endswith("*")
    assert MIN_SAMPLES["p99"] == 1000


def test_stability_is_iqr_over_median():
    assert is_stable(np.full(100, 1000), 0.1)
    assert not is_stable(np.array([1, 1000] * 50), 0.1)


def test_time_calls_stops_on_budget_and_counts_samples():
    s = time_calls(lambda: None, TimingConfig(warmup_s=0.0, min_samples=200, time_budget_s=0.5))
    assert s.n >= 200 and s.p50_ms < 1.0


def test_timing_config_validates():
    with pytest.raises(ValueError):
        TimingConfig(time_budget_s=0)
    with pytest.raises(ValueError):
        TimingConfig(min_samples=10, max_samples=5)


def test_peak_memory_sees_an_allocation():
    held = []

    def allocate():
        held.append(np.ones(8 * 2**20 // 8))  # 8 MiB each, touched

    grown = peak_rss_bytes(allocate, calls=4)
    assert grown >= 16 * 2**20


def test_interleaved_timing_alternates_and_keeps_each_calls_own_samples():
    from nimbleml.bench.timer import ROUNDS, time_interleaved

    log: list[str] = []

    def sleeper(name: str, seconds: float):
        def call():
            log.append(name)
            time.sleep(seconds)

        return call

    config = TimingConfig(warmup_s=0.0, min_samples=20, time_budget_s=0.5)
    fast, slow = time_interleaved([sleeper("a", 0.0005), sleeper("b", 0.002)], config)
    # the calls took turns: a..b..b..a..a..b.. (forward, then backward: a switch a round);
    # timed one after the other they would switch once
    switches = sum(1 for x, y in itertools.pairwise(log) if x != y)
    assert switches >= ROUNDS
    assert fast.n >= 20 and slow.n >= 20
    assert fast.n + slow.n < log.count("a") + log.count("b")  # warm-up calls are not timed
    assert 2.0 < slow.p50_ms / fast.p50_ms < 6.0  # each kept its own figures


def test_interleaved_timing_of_one_call_is_plain_timing():
    from nimbleml.bench.timer import time_interleaved

    (s,) = time_interleaved([lambda: None], TimingConfig(warmup_s=0.0, min_samples=200,
                                                         time_budget_s=0.5))  # fmt: skip
    assert s.n >= 200


def test_an_unsteady_call_gets_more_rounds_within_the_budgets():
    from nimbleml.bench.timer import time_interleaved

    calls = itertools.count()

    def unsteady():
        time.sleep(0.002 if next(calls) % 2 else 0.0)

    config = TimingConfig(warmup_s=0.0, min_samples=20, time_budget_s=0.3)
    started = time.monotonic()
    steady, shaky = time_interleaved([lambda: time.sleep(0.001), unsteady], config)
    took = time.monotonic() - started
    assert steady.stable and not shaky.stable
    assert shaky.n > 20  # rounds went on past the first five, looking for a stable figure
    assert took < 2 * 0.3 + 1.0  # the two budgets, plus warm-ups and the round under way
