"""nimbleml.optimize: the fastest model on this machine within an accuracy budget.

Every candidate is built from registered recipes, verified against the original, scored on
the validation data and timed here with the benchmark harness. The search orders candidates
by expected gain, stops timing one as soon as it is clearly slower than the best so far,
skips candidates that cannot win, and stays inside the time budget.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..bench.timer import TimingConfig, time_calls
from ..compress.pipeline import Prepared, agreement, build, make_manifest, prepare
from ..compress.quantize import DYNAMIC_OPS, STATIC_OPS, quantizable_nodes
from ..errors import ConfigError
from ..inputs import rows
from ..metrics import Metric, resolve
from ..models.base import Model
from ..models.onnx_model import OnnxModel
from ..package import write_package
from .result import Candidate, OptimizationResult
from .space import GRAPH, INT8_DYN, INT8_QDQ, Spec, _p, search_space

OBJECTIVES = ("latency", "throughput")
THROUGHPUT_SIZES = (8, 32, 128, 256)
CLEARLY_SLOWER = 1.5  # a probe this much slower than the best stops the candidate's timing
PROBE_CALLS = 30
PROBE_ROUNDS = 5
TIE = 0.03  # latencies within 3% are a tie: the more accurate, then smaller, candidate wins
DEFAULT_BUDGET_S = 180.0
# the share of the budget kept back for what follows the last candidate: checking the best
# against the original once more and writing its package (a 22M-parameter encoder: ~5 s)
RESERVE, RESERVE_MIN_S, RESERVE_MAX_S = 0.05, 1.0, 15.0


@dataclass
class _Search:
    p: Prepared
    metric: Metric
    base_value: float
    max_drop: float
    relative: bool
    objective: str
    batch_size: int
    exhaustive: bool
    deadline: float
    timing_s: float
    say: Callable[[Candidate, Candidate], None]
    best: Candidate | None = None

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

    def out_of_time(self) -> bool:
        return time.perf_counter() > self.deadline

    def cannot_afford(self, done: list[Candidate]) -> bool:
        """True when the next candidate would likely run past the deadline: it is expected
        to take as long as the median candidate evaluated so far."""
        spent = sorted(c.seconds for c in done if c.status not in ("skipped", "baseline"))
        expected = spent[len(spent) // 2] if spent else 0.0
        return time.perf_counter() + expected > self.deadline

    # -- timing -----------------------------------------------------------------
    def _probe(self, model: Model, bs: int, calls: int = PROBE_CALLS) -> float:
        feeds = rows(self.p.base_feeds, bs)
        model.run(feeds)
        ts = []
        for _ in range(calls):
            t0 = time.perf_counter_ns()
            model.run(feeds)
            ts.append(time.perf_counter_ns() - t0)
        return float(np.median(ts)) / 1e6

    def time(self, c: Candidate, model: Model) -> Model:
        """Time ``model`` for the objective, trying thread settings for ONNX models; stop
        early when a probe shows it clearly slower than the best. Returns the model with
        the thread setting chosen."""
        sizes = [self.batch_size] if self.objective == "latency" else sorted(
            {self.batch_size, *THROUGHPUT_SIZES}
        )  # fmt: skip
        variants: list[tuple[int | None, Model]] = [(None, model)]
        if isinstance(model, OnnxModel):
            variants.append((1, model.with_threads(1)))
        settings = [(threads, m, bs) for threads, m in variants for bs in sizes]
        # interleaved rounds, so that every setting sees the same machine noise
        medians: list[list[float]] = [[] for _ in settings]
        for _ in range(PROBE_ROUNDS):
            for i, (_threads, m, bs) in enumerate(settings):
                medians[i].append(self._probe(m, bs, calls=PROBE_CALLS // PROBE_ROUNDS + 1))
        probes = []
        for (threads, m, bs), ms in zip(settings, medians, strict=True):
            value = float(np.median(ms))
            probes.append((value / bs if self.objective == "throughput" else value, threads, m, bs))
        score, threads, chosen, bs = min(probes, key=lambda t: t[0])
        best_score = self._score_of(self.best)
        if not self.exhaustive and best_score is not None and score > CLEARLY_SLOWER * best_score:
            c.status = "slower"
            c.reason = f"early stop: probe {score * 1e3:.1f} µs vs best {best_score * 1e3:.1f} µs"
            c.p50_ms = score * (bs if self.objective == "throughput" else 1)
            c.batch_size, c.threads = bs, threads
            c.samples_per_second = bs * 1e3 / c.p50_ms
            return chosen
        stats = time_calls(
            functools.partial(chosen.run, rows(self.p.base_feeds, bs)),
            TimingConfig(warmup_s=0.05, min_samples=300, time_budget_s=self.timing_s),
        )
        c.p50_ms, c.p99_ms, c.n = stats.p50_ms, stats.p99_ms, stats.n
        c.samples_per_second = bs * 1e3 / stats.mean_ms
        c.batch_size, c.threads = bs, threads
        return chosen

    def _score_of(self, c: Candidate | None) -> float | None:
        """Lower is better: p50 latency, or milliseconds per sample for throughput."""
        if c is None or c.p50_ms is None:
            return None
        if self.objective == "throughput":
            return 1e3 / c.samples_per_second if c.samples_per_second else None
        return c.p50_ms

    # -- one candidate ----------------------------------------------------------
    def evaluate(self, spec: Spec) -> Candidate:
        c = Candidate(spec.name)
        start = time.perf_counter()
        try:
            model, applied = build(self.p, spec.steps())
            c.recipe = [s.describe() for s in applied]
            if self.out_of_time():  # between stages, so one candidate overruns by one stage
                return self._stopped(c, "built", start)
            c.metric = self.p.metric_of(self.metric, model)
            c.drop = self.drop_of(c.metric)
            c.size_bytes, c.num_parameters = model.size_bytes(), model.num_parameters()
            c.cosine = min(a["cosine"] or 1.0 for a in agreement(self.p, model))
            if self.out_of_time():
                return self._stopped(c, "scored", start)
            if c.drop > self.max_drop:
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
        """A short timing of an over-budget candidate, for the Pareto front."""
        ms = self._probe(model, self.batch_size, calls=PROBE_CALLS)
        c.p50_ms, c.n, c.batch_size = ms, PROBE_CALLS, self.batch_size
        c.samples_per_second = self.batch_size * 1e3 / ms


def _mixed_precision(s: _Search, spec: Spec) -> list[Candidate]:
    """Keep the most sensitive nodes in float until the budget holds.

    Sensitivity of a node = the metric drop when only that node is quantised. Nodes are then
    kept in float most-sensitive first, one more at a time, until the drop fits.
    """
    step = spec.onnx[0][0]
    ops = DYNAMIC_OPS if step == "int8" else STATIC_OPS
    assert isinstance(s.p.baseline, OnnxModel)
    nodes = quantizable_nodes(s.p.baseline, ops)
    if len(nodes) < 2:
        return []
    sensitivity: dict[str, float] = {}
    for node in nodes:
        if s.out_of_time():
            return []
        alone = spec.with_onnx(step, f"only {node}", include_nodes=(node,))
        model, _ = build(s.p, alone.steps())
        sensitivity[node] = s.drop_of(s.p.metric_of(s.metric, model))
    ranked = sorted(nodes, key=lambda n: -sensitivity[n])
    tried = []
    for k in range(1, len(nodes)):
        if s.out_of_time():
            break
        keep = tuple(ranked[:k])
        mixed = spec.with_onnx(step, f"mixed ({k}/{len(nodes)} float)", exclude_nodes=keep)
        c = s.evaluate(mixed)
        c.reason = (c.reason + "; " if c.reason else "") + (
            f"float: {', '.join(keep)} (sensitivity {', '.join(f'{sensitivity[n]:.3g}' for n in keep)})"
        )
        tried.append(c)
        if c.status in ("ok", "slower"):
            break
    return tried


def optimize(
    model: Any,
    val: Any,
    metric: str | Callable[..., float] | None = "accuracy",
    max_drop: float = 0.01,
    objective: str = "latency",
    batch_size: int = 1,
    time_budget_s: float | None = DEFAULT_BUDGET_S,
    example_inputs: Any = None,
    *,
    calib: Any = None,
    relative: bool = False,
    exhaustive: bool = False,
    prune: bool = True,
    mixed_precision: bool = True,
    timing_s: float = 1.0,
    try_compile: bool = False,
    trust_pickle: bool = False,
    train_data: Any = None,
    qat_options: dict[str, Any] | None = None,
    progress: Callable[[Candidate, Candidate], None] | None = None,
) -> OptimizationResult:
    """Search recipes and runtime settings; return the fastest candidate within the budget.

    ``val``: (X, y), y may be None for 'cosine'/'agreement'. ``max_drop``: absolute, or a
    share of the baseline's metric with ``relative=True``. ``objective``: 'latency' (p50 at
    ``batch_size``) or 'throughput' (samples/s at the best batch size). ``calib``:
    calibration inputs for static int8 (default: the validation inputs). ``try_compile``:
    also measure torch.compile (costs its compile time; reported, never packaged).
    ``time_budget_s``: seconds for everything (conversion, verification, calibration,
    timing, the package), 180 by default; None for no limit. Candidates that would not fit
    are skipped and listed as such. ``progress(candidate, best_so_far)`` is called when a
    candidate starts (status "running") and again when it has its figures. ``train_data``:
    (X, y) or a Dataset; with it, a PyTorch model whose post-training int8 candidates all
    break the budget gets one more, quantization-aware training + int8-static
    (``qat_options``: the ``qat`` recipe's, e.g. ``{"epochs": 5}``).
    """
    if objective not in OBJECTIVES:
        raise ConfigError(f"objective must be one of: {', '.join(OBJECTIVES)}; got {objective!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    try:
        max_drop = float(max_drop)
    except (TypeError, ValueError):
        raise ConfigError(f"max_drop must be a number, got {max_drop!r}") from None
    if max_drop < 0:
        raise ConfigError(f"max_drop must be >= 0, got {max_drop}")
    if time_budget_s is not None and time_budget_s <= 0:
        raise ConfigError(f"time_budget_s must be > 0 seconds, got {time_budget_s}")
    if val is None:
        raise ConfigError(
            "optimize needs validation data: val=(X, y), or (X, None) with metric='cosine'"
        )
    _check_qat(train_data, qat_options)
    started = time.perf_counter()
    p = prepare(model, example_inputs, calib, val, trust_pickle=trust_pickle)
    if p.ctx.calib is None:
        p.ctx.calib = p.val_feeds
    metric_obj = resolve(metric, p.source.task)
    s = _Search(
        p=p, metric=metric_obj, base_value=p.metric_of(metric_obj, p.source), max_drop=max_drop,
        relative=relative, objective=objective, batch_size=batch_size, exhaustive=exhaustive,
        deadline=_deadline(started, time_budget_s), timing_s=timing_s,
        say=progress or (lambda _c, _b: None),
    )  # fmt: skip
    baseline = Candidate(
        f"original ({p.source.framework})", status="baseline", metric=s.base_value, drop=0.0
    )
    baseline.size_bytes, baseline.num_parameters = p.source.size_bytes(), p.source.num_parameters()
    baseline.cosine = 1.0
    baseline.model = s.time(baseline, p.source)
    s.best = baseline
    s.say(baseline, baseline)
    candidates = [baseline]
    specs = search_space(p.source, p.ctx.caps, has_calib=p.ctx.calib is not None, prune=prune)
    if not p.converted:
        specs = [sp for sp in specs if not sp.onnx]
    slow_classes: dict[str, str] = {}
    broken: dict[str, float] = {}  # family -> least aggressive level that broke the budget
    fits: dict[str, float] = {}  # family -> most aggressive level that fit it
    for spec in specs:
        if s.out_of_time() or s.cannot_afford(candidates):
            candidates.append(Candidate(spec.name, reason="time budget spent"))
            continue
        if not s.exhaustive:
            why = _cannot_win(spec, slow_classes, broken, fits)
            if why:
                candidates.append(Candidate(spec.name, reason=why))
                continue
        s.say(Candidate(spec.name, status="running"), s.best)
        c = s.evaluate(spec)
        candidates.append(c)
        s.say(c, s.best)
        if c.status == "slower" and spec.speed_class not in slow_classes:
            slow_classes[spec.speed_class] = spec.name
        if c.status == "over-budget" and spec.family:
            broken[spec.family] = min(broken.get(spec.family, 1.0), spec.level)
        if c.status in ("ok", "slower") and spec.family:
            fits[spec.family] = max(fits.get(spec.family, 0.0), spec.level)
        if (
            c.status == "over-budget"
            and mixed_precision
            and spec.speed_class in (INT8_DYN, INT8_QDQ)
            and not spec.source
            and p.converted
            and not any(x.status == "ok" and x.name.startswith(spec.name) for x in candidates[:-1])
        ):
            for m in _mixed_precision(s, spec):
                candidates.append(m)
                s.say(m, s.best)
    if train_data is not None:
        candidates.append(_qat(s, candidates, train_data, qat_options or {}))
        s.say(candidates[-1], s.best)
    if try_compile and p.source.framework == "torch" and not s.out_of_time():
        candidates.append(_torch_compile(s))
        s.say(candidates[-1], s.best)
    best = _final_choice(s, candidates, baseline)
    assert best.model is not None
    return _result(s, best, baseline, candidates, started, metric_obj, max_drop)


QAT = "qat + int8"


def _qat(s: _Search, candidates: list[Candidate], train_data: Any,
         options: dict[str, Any]) -> Candidate:  # fmt: skip
    """Quantization-aware training, tried only when every post-training int8 candidate broke
    the budget (it costs a fine-tuning run, and cannot beat an int8 that already fits): for
    the kind of int8 (dynamic or static, per channel or not) that ran fastest."""
    if s.p.source.framework != "torch" or not s.p.converted:
        return Candidate(QAT, reason="quantization-aware training needs a PyTorch model that "
                                     "converts to ONNX")  # fmt: skip
    int8 = [c for c in candidates if _full_int8(c)]
    if any(c.status in ("ok", "slower") for c in int8):
        return Candidate(QAT, reason="a post-training int8 candidate (all layers int8) met the "
                                     "budget")  # fmt: skip
    timed = sorted((c for c in int8 if c.p50_ms), key=lambda c: c.p50_ms or 0.0)
    if not timed:
        return Candidate(QAT, reason="no post-training int8 candidate was measured to compare")
    if s.out_of_time():
        return Candidate(QAT, reason="time budget spent")
    step = next(r for r in timed[0].recipe if r["step"] in ("int8", "int8-static"))
    params = {k: v for k, v in step["params"].items() if k != "layout"}
    qat = {"quantize": step["step"], "per_channel": params["per_channel"], **options}
    name = f"qat + {timed[0].name.removeprefix('onnx ')}"
    s.p.ctx.train = train_data
    assert s.best is not None
    s.say(Candidate(name, status="running"), s.best)
    spec = Spec(name, INT8_QDQ, 1.9, source=(("qat", _p(**qat)),),
                onnx=((step["step"], _p(**params)), GRAPH))  # fmt: skip
    return s.evaluate(spec)


def _check_qat(train_data: Any, options: dict[str, Any] | None) -> None:
    """Bad QAT options fail before the search, not after it."""
    if train_data is None:
        if options:
            raise ConfigError("qat_options need train_data=(X, y) to train on")
        return
    from ..search.qat import QuantAwareTraining  # registers the "qat" recipe

    for key in ("quantize", "per_channel"):
        if key in (options or {}):
            raise ConfigError(f"qat_options: {key} is chosen by the search; drop it")
    QuantAwareTraining(**(options or {}))


def _full_int8(c: Candidate) -> bool:
    """A post-training candidate with every quantizable layer in int8 (no float kept)."""
    steps = c.recipe
    return bool(steps) and all(r["stage"] == "onnx" for r in steps) and any(
        r["step"] in ("int8", "int8-static") and not r["params"].get("exclude_nodes")
        and r["params"].get("include_nodes") is None for r in steps
    )  # fmt: skip


def _final_choice(s: _Search, candidates: list[Candidate], baseline: Candidate) -> Candidate:
    """Among the candidates strictly faster than the original, those within TIE of the
    fastest; of these the most accurate, then the smallest. Chosen once at the end because
    ties decided one pair at a time do not chain: A, then a smaller B 2% slower, then a C 3.5%
    faster than B but larger, would leave B, 3.5% slower than C."""
    base = s._score_of(baseline)
    pool = [
        c for c in candidates
        if c.status == "ok" and c.model is not None
        and (score := s._score_of(c)) is not None and base is not None and score < base
    ]  # fmt: skip
    if not pool:
        return baseline
    fastest = min(s._score_of(c) or 0.0 for c in pool)
    near = [c for c in pool if (s._score_of(c) or 0.0) <= fastest * (1 + TIE)]
    return min(near, key=lambda c: (c.drop or 0.0, c.size_bytes or 0, s._score_of(c) or 0.0))


def _bench_entry(baseline: Candidate, best: Candidate) -> dict[str, Any]:
    """The manifest's benchmark layout that compress writes too (docs/package-format.md):
    original and package at the batch size the objective chose."""

    def timing(c: Candidate) -> dict[str, Any]:
        return {"p50_ms": c.p50_ms, "p99_ms": c.p99_ms, "n": c.n,
                "samples_per_second": c.samples_per_second, "batch_size": c.batch_size}  # fmt: skip

    same = baseline.batch_size == best.batch_size and best.p50_ms
    speedup = (baseline.p50_ms or 0.0) / best.p50_ms if same and best.p50_ms else None
    entry = {"original": timing(baseline), "package": timing(best), "speedup_p50": speedup}
    if baseline.samples_per_second and best.samples_per_second:
        entry["speedup_throughput"] = best.samples_per_second / baseline.samples_per_second
    return entry


def _deadline(started: float, budget: float | None) -> float:
    """When candidates must stop, keeping back a reserve for writing the result."""
    if budget is None:
        return float("inf")
    reserve = min(RESERVE_MAX_S, max(RESERVE_MIN_S, RESERVE * budget))
    return started + max(budget - reserve, budget / 2)


def _torch_compile(s: _Search) -> Candidate:
    """torch.compile of the original, measured for the record: a compiled module cannot be
    saved, so it is reported (and would be worth a runtime flag) but never packaged."""
    import torch

    from ..models.torch_model import TorchModel

    c = Candidate("torch.compile (eager runtime)", recipe=[{"step": "torch.compile"}])
    start = time.perf_counter()
    try:
        assert isinstance(s.p.source, TorchModel)
        compiled = s.p.source.with_module(torch.compile(s.p.source.module))
        c.metric = s.p.metric_of(s.metric, compiled)
        c.drop = s.drop_of(c.metric)
        c.size_bytes = s.p.source.size_bytes()
        s.time(c, compiled)
        if c.status != "slower":
            c.status = "not-packageable"
            c.reason = "a compiled module cannot be saved into a package; measured for the record"
    except Exception as exc:
        c.status, c.reason = "failed", f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
    c.seconds = time.perf_counter() - start
    return c


def _cannot_win(
    spec: Spec, slow_classes: dict[str, str], broken: dict[str, float], fits: dict[str, float]
) -> str | None:
    if spec.speed_class in slow_classes:
        return f"cannot win: runs the kernels of '{slow_classes[spec.speed_class]}', clearly slower than the best"
    if spec.family in broken and spec.level > broken[spec.family]:
        return f"cannot win: {spec.family} at {broken[spec.family]:g} already broke the budget"
    if spec.family in fits and spec.level < fits[spec.family]:
        return f"cannot win: {spec.family} at {fits[spec.family]:g} fits the budget and is smaller"
    return None


def _result(
    s: _Search,
    best: Candidate,
    baseline: Candidate,
    candidates: list[Candidate],
    started: float,
    metric: Metric,
    max_drop: float,
) -> OptimizationResult:
    p = s.p
    chosen = best.model
    assert chosen is not None
    if best is baseline:
        best.reason = "no candidate within the budget beat the original on this machine"
    validation = {
        "metric": metric.name,
        "higher_is_better": metric.higher_is_better,
        "baseline": s.base_value,
        "package": best.metric,
        "drop": best.drop,
        "max_drop": max_drop,
        "relative": s.relative,
        "agreement": agreement(p, chosen),
    }
    bench = {f"batch_{best.batch_size}": _bench_entry(baseline, best)}
    manifest = make_manifest(
        p, [], validation, None, bench,
        runtime={"intra_op_num_threads": best.threads, "batch_size": best.batch_size},
        optimization={
            "best": best.name, "candidates": len(candidates), "objective": s.objective,
            "seconds": time.perf_counter() - started,
        },
    )  # fmt: skip
    manifest["recipe"] = best.recipe
    package = write_package(manifest, chosen, p.baseline, same=chosen is p.baseline)
    for c in candidates:  # free the models; the package keeps the one that matters
        c.model = None
    return OptimizationResult(
        best=package,
        best_name=best.name,
        baseline=baseline,
        candidates=candidates,
        objective=s.objective,
        settings={
            "metric": metric.name,
            "max_drop": max_drop,
            "relative": s.relative,
            "batch_size": s.batch_size,
            "exhaustive": s.exhaustive,
        },
        seconds=time.perf_counter() - started,
    )
