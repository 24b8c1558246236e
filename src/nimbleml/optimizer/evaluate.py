"""One search's state and how it judges a candidate: build it from its recipes, score it on the
validation data, check it against the original, and time it at the batch sizes that decide.

Scores are "lower is better": the p50 latency at the one batch size given; with several
(``batch_sizes=[1, 32]``) the worst ratio to the original over them, or their weighted mean
when weights are given; milliseconds per sample for the throughput objective.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..bench.timer import TimingConfig, time_calls
from ..compress.pipeline import Prepared, agreement, build
from ..errors import ConfigError
from ..inputs import rows
from ..metrics import Metric
from ..models.base import Model
from ..package import engine_of
from .result import Candidate
from .space import Spec

THROUGHPUT_SIZES = (8, 32, 128, 256)
CLEARLY_SLOWER = 1.5  # a probe this much slower than the best stops the candidate's timing
PROBE_CALLS = 30
PROBE_ROUNDS = 5
TIE = 0.03  # latencies within 3% are a tie: the more accurate, then smaller, candidate wins
# a probe round lasts about this long whatever the model: a 64-input MLP (0.05 ms a call)
# gets 7 calls a round, a 22M-parameter encoder (8 ms) 2
PROBE_ROUND_S = 0.02
# the timed calls that follow a probe: enough for a stable median in about this long, never
# fewer than 30 nor more than 300 (a 22M-parameter encoder: 37 calls where it took 125 in 1 s)
TIMED_S, MIN_TIMED, MAX_TIMED = 0.3, 30, 300
SIDE_BY_SIDE_ROUNDS = 8  # the final original-vs-package re-timing, order alternating
# a drop this small is float rounding, not a loss: the original's own cosine to itself came
# out 1 - 1.2e-14, and with max_drop=0 every lossless candidate was called over budget
ROUNDING = 1e-9


@dataclass
class Search:
    p: Prepared
    metric: Metric
    base_value: float
    max_drop: float
    relative: bool
    objective: str
    sizes: list[int]  # the batch sizes that decide (latency) or are tried (throughput)
    weights: dict[int, float] | None  # None: the worst ratio over ``sizes`` decides
    exhaustive: bool
    deadline: float
    timing_s: float
    say: Callable[[Candidate, Candidate], None]
    best: Candidate | None = None
    base_ms: dict[int, float] = field(default_factory=dict)  # the original's p50 per size

    # -- scoring ----------------------------------------------------------------
    def drop_of(self, value: float) -> float:
        drop = self.metric.drop(self.base_value, value)
        return drop / abs(self.base_value) if self.relative and self.base_value else drop

    def better(self, a: Candidate, b: Candidate | None) -> bool:
        """a beats b when clearly faster, or as fast (within TIE) and more accurate or
        smaller; nothing beats the baseline without being strictly faster."""
        if b is None:
            return True
        sa, sb = self._score_of(a), self._score_of(b)
        if sa is None or sb is None:
            return sb is None
        if b.status == "baseline" or (a.drop == b.drop and a.size_bytes == b.size_bytes):
            return sa < sb
        if sa < sb * (1 - TIE):
            return True
        return sa <= sb * (1 + TIE) and (a.drop or 0, a.size_bytes or 0) < (
            b.drop or 0,
            b.size_bytes or 0,
        )

    def score(self, ms: dict[int, float]) -> tuple[float, int]:
        """(score, batch size it came from) for p50 milliseconds by batch size."""
        if self.objective == "throughput":
            bs = min(ms, key=lambda b: ms[b] / b)
            return ms[bs] / bs, bs
        if len(self.sizes) == 1 or not self.base_ms:
            return ms[self.sizes[0]], self.sizes[0]
        ratios = {bs: ms[bs] / self.base_ms[bs] for bs in self.sizes}
        if self.weights:
            total = sum(self.weights.values())
            return sum(self.weights[bs] * r for bs, r in ratios.items()) / total, self.sizes[0]
        return max(ratios.values()), self.sizes[0]

    def _score_of(self, c: Candidate | None) -> float | None:
        return None if c is None else c.score

    def out_of_time(self) -> bool:
        return time.perf_counter() > self.deadline

    def cannot_afford(self, done: list[Candidate]) -> bool:
        """True when the next candidate would likely run past the deadline: it is expected
        to take as long as the median candidate evaluated so far."""
        spent = sorted(c.seconds for c in done if c.status not in ("skipped", "baseline"))
        spent = [s for s in spent if s > 0]
        expected = spent[len(spent) // 2] if spent else 0.0
        return time.perf_counter() + expected > self.deadline

    # -- timing -----------------------------------------------------------------
    def _probe(self, model: Model, bs: int, calls: int | None = None) -> float:
        """Median milliseconds of a few calls at batch ``bs`` after one untimed call; as many
        calls as fit in PROBE_ROUND_S (2 to 7) unless ``calls`` says."""
        feeds = rows(self.p.base_feeds, bs)
        t0 = time.perf_counter_ns()
        model.run(feeds)
        first = time.perf_counter_ns() - t0
        if calls is None:
            fits = int(PROBE_ROUND_S * 1e9 / max(first, 1))
            calls = max(2, min(PROBE_CALLS // PROBE_ROUNDS + 1, fits))
        ts = []
        for _ in range(calls):
            t0 = time.perf_counter_ns()
            model.run(feeds)
            ts.append(time.perf_counter_ns() - t0)
        return float(np.median(ts)) / 1e6

    def _sizes(self) -> list[int]:
        if self.objective == "latency":
            return self.sizes
        return sorted({*self.sizes, *THROUGHPUT_SIZES})

    def time(self, c: Candidate, model: Model) -> Model:
        """Time ``model`` for the objective, trying a single-thread setting where the runtime
        has one; stop early when a probe shows it clearly slower than the best. Returns the
        model with the thread setting chosen."""
        sizes = self._sizes()
        variants: list[tuple[int | None, Model]] = [(None, model)]
        with_threads = getattr(model, "with_threads", None)  # ONNX Runtime, OpenVINO
        if callable(with_threads):
            variants.append((1, with_threads(1)))
        settings = [(threads, m, bs) for threads, m in variants for bs in sizes]
        # interleaved rounds, so that every setting sees the same machine noise
        medians: list[list[float]] = [[] for _ in settings]
        for _ in range(PROBE_ROUNDS):
            for i, (_threads, m, bs) in enumerate(settings):
                medians[i].append(self._probe(m, bs))
        per_variant: dict[int | None, dict[int, float]] = {}
        for (threads, _m, b), probes in zip(settings, medians, strict=True):
            per_variant.setdefault(threads, {})[b] = float(np.median(probes))
        scored = [(*self.score(ms), threads, m) for (threads, m), ms in
                  zip(variants, per_variant.values(), strict=True)]  # fmt: skip
        score, bs, threads, chosen = min(scored, key=lambda t: t[0])
        c.engine = engine_of(model)
        best_score = self._score_of(self.best)
        if not self.exhaustive and best_score is not None and score > CLEARLY_SLOWER * best_score:
            c.status = "slower"
            probe = per_variant[threads]
            c.reason = (
                f"early stop: probe {self._describe(score)} vs best {self._describe(best_score)}"
            )
            c.timings = {b: {"p50_ms": probe[b], "n": 0} for b in probe}
            c.p50_ms, c.batch_size, c.threads, c.score = probe[bs], bs, threads, score
            c.samples_per_second = bs * 1e3 / probe[bs]
            return chosen
        timed = sizes if self.objective == "latency" else [bs]
        for b in timed:
            probe_ms = per_variant[threads][b]
            n = int(min(MAX_TIMED, max(MIN_TIMED, TIMED_S * 1e3 / max(probe_ms, 1e-6))))
            stats = time_calls(
                functools.partial(chosen.run, rows(self.p.base_feeds, b)),
                TimingConfig(warmup_s=0.05, min_samples=n, time_budget_s=self.timing_s),
            )
            c.timings[b] = {"p50_ms": stats.p50_ms, "p99_ms": stats.p99_ms, "n": stats.n,
                            "samples_per_second": b * 1e3 / stats.mean_ms}  # fmt: skip
        first = c.timings[timed[0]]
        c.p50_ms, c.p99_ms, c.n = first["p50_ms"], first["p99_ms"], int(first["n"])
        c.samples_per_second = first["samples_per_second"]
        c.batch_size, c.threads = timed[0], threads
        if c.status == "baseline" and self.objective == "latency":
            self.base_ms = {b: t["p50_ms"] for b, t in c.timings.items()}
        c.score = self.score({b: t["p50_ms"] for b, t in c.timings.items()})[0]
        return chosen

    def side_by_side(self, original: Model, package: Model) -> dict[int, dict[str, float]]:
        """The original and the package re-timed in alternating probe rounds at each deciding
        batch size: the ratio of two medians taken in the same stretch of the machine's time.
        The candidates' own figures were taken minutes apart, and torch's p50 on the encoder
        moved from 12.9 to 28.9 ms between runs."""
        out: dict[int, dict[str, float]] = {}
        for bs in self.sizes:
            a: list[float] = []
            b: list[float] = []
            for r in range(SIDE_BY_SIDE_ROUNDS):
                pair = [(original, a), (package, b)]
                for model, into in pair if r % 2 == 0 else pair[::-1]:
                    into.append(self._probe(model, bs))
            base, pkg = float(np.median(a)), float(np.median(b))
            out[bs] = {"original_p50_ms": base, "package_p50_ms": pkg,
                       "speedup_p50": base / pkg, "rounds": SIDE_BY_SIDE_ROUNDS}  # fmt: skip
        return out

    def _describe(self, score: float) -> str:
        if self.objective == "latency" and len(self.sizes) > 1 and self.base_ms:
            return f"{1 / score:.2f}x the original"
        return f"{score * 1e3:.1f} µs" + (" per sample" if self.objective == "throughput" else "")

    # -- one candidate ----------------------------------------------------------
    def evaluate(self, spec: Spec) -> Candidate:
        c = Candidate(spec.name)
        start = time.perf_counter()
        try:
            model, applied = build(self.p, spec.steps())
            c.recipe = [s.describe() for s in applied]
            c.engine = engine_of(model)
            if self.out_of_time():  # between stages, so one candidate overruns by one stage
                return self._stopped(c, "built", start)
            c.metric = self.p.metric_of(self.metric, model)
            c.drop = self.drop_of(c.metric)
            c.size_bytes, c.num_parameters = model.size_bytes(), model.num_parameters()
            c.cosine = min(a["cosine"] or 1.0 for a in agreement(self.p, model))
            if self.out_of_time():
                return self._stopped(c, "scored", start)
            if c.drop > self.max_drop + ROUNDING:
                c.status = "over-budget"
                c.reason = f"{self.metric.name} drop {c.drop:.4g} > max_drop {self.max_drop:g}"
                self._time_quietly(c, model)
            else:
                c.status = "ok"
                c.model = self.time(c, model)
                if c.status == "ok" and self.better(c, self.best):
                    self.best = c
        except Exception as exc:  # a candidate that crashes is recorded, not fatal
            c.status = "failed"
            c.reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
        c.seconds = time.perf_counter() - start
        return c

    @staticmethod
    def _stopped(c: Candidate, stage: str, start: float) -> Candidate:
        c.status, c.reason = "skipped", f"time budget spent (stopped once {stage})"
        c.seconds = time.perf_counter() - start
        return c

    def _time_quietly(self, c: Candidate, model: Model) -> None:
        """A short timing of an over-budget candidate at each deciding size, for the Pareto
        front."""
        ms = {bs: self._probe(model, bs, calls=PROBE_CALLS) for bs in self.sizes}
        c.timings = {bs: {"p50_ms": v, "n": PROBE_CALLS} for bs, v in ms.items()}
        c.score = self.score(ms)[0]
        c.p50_ms, c.n, c.batch_size = ms[self.sizes[0]], PROBE_CALLS, self.sizes[0]
        c.samples_per_second = self.sizes[0] * 1e3 / c.p50_ms


def deciding_sizes(
    given: Sequence[int] | Mapping[int, float] | None, batch_size: int, objective: str
) -> tuple[list[int], dict[int, float] | None]:
    """The deciding batch sizes (the first is the one the table and manifest lead with) and
    their weights (None: the worst ratio decides); ConfigError naming a bad one."""
    if given is None:
        return [batch_size], None
    if objective != "latency":
        raise ConfigError(
            "batch_sizes= is for objective='latency'; the throughput objective tries batch "
            "sizes itself (pass batch_size= to add one)"
        )
    weights = dict(given) if isinstance(given, Mapping) else None
    try:
        sizes = list(given)
    except TypeError:
        raise ConfigError(
            f"batch_sizes must be a list of sizes, e.g. [1, 32]; got {given!r}"
        ) from None
    if not sizes:
        raise ConfigError("batch_sizes is empty; give at least one size, e.g. [1, 32]")
    for bs in sizes:
        if isinstance(bs, bool) or not isinstance(bs, int) or bs < 1:
            raise ConfigError(f"batch_sizes must hold positive integers; got {bs!r}")
    if len(set(sizes)) != len(sizes):
        raise ConfigError(f"batch_sizes lists a size twice: {sizes}")
    if weights is not None:
        for bs, w in weights.items():
            if isinstance(w, bool) or not isinstance(w, int | float) or not w > 0:
                raise ConfigError(f"the weight of batch size {bs} must be a number > 0; got {w!r}")
    return sizes, weights


def score_fn(p: Prepared, metric: Metric) -> Callable[[Model], Any]:
    """The metric of a model on the validation data, higher is better (what NNCF's accuracy
    control maximises)."""
    sign = 1.0 if metric.higher_is_better else -1.0
    return lambda model: sign * p.metric_of(metric, model)
