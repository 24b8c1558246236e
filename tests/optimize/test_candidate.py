"""The one Pareto front of nimbleml.optimizer.candidate, shared by optimize() and the
architecture search: dominance, ties, missing figures, "max" and "min" objectives, order."""

import pytest

from nimbleml.errors import ConfigError
from nimbleml.optimizer import Candidate
from nimbleml.optimizer.candidate import COMPRESSION, pareto
from nimbleml.optimizer.result import Candidate as FromResult
from nimbleml.optimizer.result import pareto as from_result

UP_AND_DOWN = [(lambda c: c.metric, "max"), (lambda c: c.p50_ms, "min")]


def point(name, metric=None, p50=None, drop=None, size=None):
    return Candidate(name, status="ok", metric=metric, p50_ms=p50, drop=drop, size_bytes=size)


def names(front):
    return [c.name for c in front]


def test_one_candidate_and_one_front_at_both_old_homes():
    assert FromResult is Candidate and from_result is pareto


def test_a_dominated_point_leaves_the_front_max_and_min_objectives():
    fast = point("fast", metric=0.80, p50=1.0)
    accurate = point("accurate", metric=0.95, p50=3.0)
    worse = point("worse", metric=0.79, p50=1.5)  # slower and less accurate than "fast"
    # as accurate as "accurate" but slower: dominated though equal on one objective
    as_good_slower = point("as-good-slower", metric=0.95, p50=3.5)
    front = pareto([accurate, worse, fast, as_good_slower], UP_AND_DOWN)
    assert names(front) == ["fast", "accurate"]  # fastest first
    # the same points with the metric's sense reversed: now lower metric wins
    reversed_front = pareto([accurate, worse, fast, as_good_slower],
                            [(lambda c: c.metric, "min"), (lambda c: c.p50_ms, "min")])  # fmt: skip
    assert names(reversed_front) == ["fast", "worse"]


def test_ties_stay_on_the_front_together():
    a, b = point("a", metric=0.9, p50=2.0), point("b", metric=0.9, p50=2.0)
    c = point("c", metric=0.95, p50=1.0)  # beats both on both: they leave together
    assert names(pareto([a, b], UP_AND_DOWN)) == ["a", "b"]
    assert names(pareto([a, b, c], UP_AND_DOWN)) == ["c"]


def test_a_missing_figure_keeps_a_candidate_off_the_front():
    timed = point("timed", metric=0.5, p50=9.0)
    untimed = point("untimed", metric=0.99)  # skipped or failed: never timed
    assert names(pareto([untimed, timed], UP_AND_DOWN)) == ["timed"]
    assert pareto([], UP_AND_DOWN) == [] and pareto([untimed], UP_AND_DOWN) == []


def test_order_none_keeps_the_given_order():
    slow, fast = point("slow", metric=0.9, p50=5.0), point("fast", metric=0.1, p50=1.0)
    assert names(pareto([slow, fast], UP_AND_DOWN)) == ["fast", "slow"]
    assert names(pareto([slow, fast], UP_AND_DOWN, order=None)) == ["slow", "fast"]


def test_the_optimizers_objectives_drop_latency_and_size():
    small = point("small", drop=0.02, p50=2.0, size=100)
    quick = point("quick", drop=0.02, p50=1.0, size=400)
    exact = point("exact", drop=0.0, p50=3.0, size=400)
    bigger = point("bigger", drop=0.02, p50=2.0, size=101)  # "small" beats it on size only
    assert names(pareto([small, quick, exact, bigger], COMPRESSION)) == ["quick", "small", "exact"]
    assert pareto([small, quick, exact, bigger]) == pareto(
        [small, quick, exact, bigger], COMPRESSION
    )


def test_a_bad_sense_is_refused():
    with pytest.raises(ConfigError, match="'min' or 'max'"):
        pareto([point("a", metric=1.0)], [(lambda c: c.metric, "up")])


def test_search_fields_and_their_views():
    c = Candidate("trial-3", trial=3, params={"width": 8}, p50_ms=0.5, size_bytes=2**19)
    assert c.latency_ms == 0.5 and c.size_mb == 0.5
    assert Candidate("x").size_mb is None
    assert {"trial", "params"} <= set(c.to_dict())
    # the optimizer's report keeps the keys it always had
    assert not {"trial", "params", "p95_ms", "retimed_ms", "path"} & set(Candidate("x").to_dict())
