"""nimbleml.optimize: the fastest model on this machine within an accuracy budget.

Every candidate is built from registered recipes, verified against the original, scored on
the validation data and timed here with the benchmark harness. The search orders candidates
by expected gain, stops timing one as soon as it is clearly slower than the best so far,
skips candidates that cannot win, and stays inside the time budget.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..compress.base import get_recipe
from ..compress.pipeline import Prepared, agreement, build, make_manifest, prepare
from ..compress.quantize import DYNAMIC_OPS, STATIC_OPS, quantizable_nodes
from ..errors import ConfigError
from ..metrics import Metric, resolve
from ..models.onnx_model import OnnxModel
from ..package import write_package
from .evaluate import TIE, Search, deciding_sizes, score_fn
from .result import Candidate, OptimizationResult
from .space import GRAPH, INT8_DYN, INT8_QDQ, OV_FP32, OV_INT8, Spec, _p, model_kind, search_space

OBJECTIVES = ("latency", "throughput")
DEFAULT_BUDGET_S = 180.0
# the share of the budget kept back for what follows the last candidate: checking the best
# against the original once more and writing its package (a 22M-parameter encoder: ~5 s)
RESERVE, RESERVE_MIN_S, RESERVE_MAX_S = 0.05, 1.0, 15.0


def _mixed_precision(s: Search, spec: Spec) -> list[Candidate]:
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
            return [Candidate(f"{spec.name} mixed", reason=f"time budget spent (after measuring "
                              f"{len(sensitivity)}/{len(nodes)} node sensitivities)")]  # fmt: skip
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
    batch_sizes: Sequence[int] | Mapping[int, float] | None = None,
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
    """Search recipes, runtimes and their settings; return the fastest candidate within the
    budget.

    ``val``: (X, y), y may be None for 'cosine'/'agreement'. ``max_drop``: absolute, or a
    share of the baseline's metric with ``relative=True``. ``objective``: 'latency' (p50 at
    ``batch_size``) or 'throughput' (samples/s at the best batch size). ``batch_sizes``: the
    sizes the model will run at, for the latency objective: every candidate is timed at each,
    and the one whose worst ratio to the original over them is lowest wins; a mapping
    ``{1: 3, 32: 1}`` weights the ratios instead (a weighted mean). ``calib``: calibration
    inputs for static int8 and OpenVINO int8 (default: the validation inputs).
    ``try_compile``: also measure torch.compile (costs its compile time; reported, never
    packaged). ``time_budget_s``: seconds for everything (conversion, verification,
    calibration, timing, the package), 180 by default; None for no limit. Candidates that
    would not fit are skipped and listed as such. ``progress(candidate, best_so_far)`` is
    called when a candidate starts (status "running") and again when it has its figures.
    ``train_data``: (X, y) or a Dataset; with it, a PyTorch model whose post-training int8
    candidates all break the budget gets one more, quantization-aware training + int8-static
    (``qat_options``: the ``qat`` recipe's, e.g. ``{"epochs": 5}``).
    """
    max_drop = _check_options(objective, batch_size, max_drop, time_budget_s, val)
    sizes, weights = deciding_sizes(batch_sizes, batch_size, objective)
    _check_qat(train_data, qat_options)
    started = time.perf_counter()
    p = prepare(model, example_inputs, calib, val, trust_pickle=trust_pickle)
    if p.ctx.calib is None:
        p.ctx.calib = p.val_feeds
    metric_obj = resolve(metric, p.source.task)
    p.ctx.score = score_fn(p, metric_obj)
    s = Search(
        p=p, metric=metric_obj, base_value=p.metric_of(metric_obj, p.source), max_drop=max_drop,
        relative=relative, objective=objective, sizes=sizes, weights=weights,
        exhaustive=exhaustive, deadline=_deadline(started, time_budget_s), timing_s=timing_s,
        say=progress or (lambda _c, _b: None),
    )  # fmt: skip
    baseline = _baseline(s, p)
    kind = model_kind(p.baseline)
    candidates = _sweep(s, p, baseline, kind, prune, mixed_precision)
    if train_data is not None:
        candidates.append(_qat(s, candidates, train_data, qat_options or {}))
        s.say(candidates[-1], s.best or baseline)
    if try_compile and p.source.framework == "torch" and not s.out_of_time():
        candidates.append(_torch_compile(s))
        s.say(candidates[-1], s.best or baseline)
    best = _final_choice(s, candidates, baseline)
    assert best.model is not None
    return _result(s, best, baseline, candidates, started, metric_obj, max_drop, kind)


def _check_options(objective: str, batch_size: Any, max_drop: Any,
                   time_budget_s: float | None, val: Any) -> float:  # fmt: skip
    """ConfigError for a bad option before anything runs; ``max_drop`` as a float."""
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
    return max_drop


def _baseline(s: Search, p: Prepared) -> Candidate:
    """The original, scored and timed: the candidate every other one is measured against."""
    baseline = Candidate(f"original ({p.source.framework})", status="baseline",
                         metric=s.base_value, drop=0.0, size_bytes=p.source.size_bytes(),
                         num_parameters=p.source.num_parameters(), cosine=1.0)  # fmt: skip
    baseline.model = s.time(baseline, p.source)
    s.best = baseline
    s.say(baseline, baseline)
    return baseline


def _sweep(s: Search, p: Prepared, baseline: Candidate, kind: str, prune: bool,
           mixed_precision: bool) -> list[Candidate]:  # fmt: skip
    """Every candidate of the search space tried in turn (or skipped, with why), then the
    int8 refinements of those that broke the budget; the baseline first."""
    assert s.best is not None  # the baseline, from the start
    candidates = [baseline]
    specs = search_space(
        p.source, p.ctx.caps, has_calib=p.ctx.calib is not None, prune=prune, kind=kind
    )
    if not p.converted:
        specs = [sp for sp in specs if not sp.onnx]
    unusable = _unusable(p, specs)
    refine: list[tuple[Spec, Candidate]] = []
    slow_classes: dict[str, str] = {}
    broken: dict[str, float] = {}  # family -> least aggressive level that broke the budget
    fits: dict[str, float] = {}  # family -> most aggressive level that fit it
    for spec in specs:
        if spec.name in unusable:
            status, why = unusable[spec.name]
            candidates.append(Candidate(spec.name, status=status, reason=why))
            s.say(candidates[-1], s.best)
            continue
        if s.out_of_time() or s.cannot_afford(candidates):
            candidates.append(Candidate(spec.name, reason="time budget spent"))
            continue
        if not s.exhaustive:
            cannot = _cannot_win(spec, slow_classes, broken, fits)
            if cannot:
                candidates.append(Candidate(spec.name, reason=cannot))
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
        if c.status == "over-budget" and (
            spec.speed_class == OV_INT8
            or (mixed_precision and spec.speed_class in (INT8_DYN, INT8_QDQ) and not spec.source)
        ):
            refine.append((spec, c))
    # int8 that broke the budget, refined once every other candidate was measured: the
    # refinements cost many builds (a sensitivity per node), and a lossless candidate measured
    # first may already beat what they could reach
    for spec, c in refine:
        if spec.speed_class == OV_INT8:
            candidates.append(_accuracy_control(s, spec, c))
            s.say(candidates[-1], s.best)
        elif not any(x.status == "ok" and x.name.startswith(spec.name) for x in candidates):
            for m in _mixed_precision(s, spec):
                candidates.append(m)
                s.say(m, s.best)
    return candidates


def _unusable(p: Prepared, specs: list[Spec]) -> dict[str, tuple[str, str]]:
    """Candidates listed at no cost with why they cannot run here: OpenVINO's when it is not
    installed, structured pruning's when the model cannot be pruned (one fx trace decides,
    instead of every pruning candidate failing in turn)."""
    from ..models.openvino_model import openvino_missing

    out: dict[str, tuple[str, str]] = {}
    for spec in specs:
        if spec.speed_class.startswith(OV_FP32) or spec.speed_class.startswith(OV_INT8):
            missing = openvino_missing(nncf=spec.speed_class.startswith(OV_INT8))
            if missing:
                out[spec.name] = ("not-installed", missing)
    pruning = [sp for sp in specs if any(n == "prune-structured" for n, _ in sp.source)]
    if pruning:
        from ..compress.prune import structured_pruning_check

        reason = structured_pruning_check(getattr(p.source, "module", None), p.ctx.example)
        for spec in pruning if reason else []:
            out[spec.name] = ("not-applicable", f"not applicable: {reason}")
    return out


AWARE_REACH = 10  # NNCF's accuracy control is tried when int8's drop is within 10x the budget
AWARE_COST = 4  # ... and at least 4x what the int8 candidate cost is left


def _accuracy_control(s: Search, spec: Spec, int8: Candidate) -> Candidate:
    """OpenVINO int8 broke the budget: NNCF's accuracy-aware quantization keeps the layers
    that cost the most accuracy in float until the drop fits (budget absolute, as NNCF
    measures it on the metric made higher-is-better). Not tried where it cannot pay: an int8
    drop far past the budget would send most layers back to float (on the BERT-layout
    encoder at max_drop=1e-6 it ran 321 s and found nothing), or too little time left."""
    name = f"{spec.name} accuracy-aware"
    limit = s.max_drop * abs(s.base_value) if s.relative else s.max_drop
    if (int8.drop or 0.0) > AWARE_REACH * s.max_drop:
        return Candidate(name, reason=f"cannot win: int8's drop {int8.drop:.3g} is over "
                                      f"{AWARE_REACH}x max_drop {s.max_drop:g}")  # fmt: skip
    if time.perf_counter() + AWARE_COST * int8.seconds > s.deadline:
        return Candidate(name, reason="time budget spent")
    aware = Spec(name, OV_INT8 + "-aware", spec.prior,
                 onnx=(("openvino-int8", _p(accuracy_control=True, max_drop=limit)),))  # fmt: skip
    assert s.best is not None
    s.say(Candidate(aware.name, status="running"), s.best)
    return s.evaluate(aware)


QAT = "qat + int8"


def _qat(s: Search, candidates: list[Candidate], train_data: Any,
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
    # what the recipe recorded as it ran (its layout, the calibration rows it used) is not
    # an argument to build it again
    recorded = ("layout", "calibration_rows", "transformer")
    params = {k: v for k, v in step["params"].items() if k not in recorded}
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
    for key in ("quantize", "per_channel"):
        if key in (options or {}):
            raise ConfigError(f"qat_options: {key} is chosen by the search; drop it")
    get_recipe("qat", **(options or {}))  # checks the options (registered from nimbleml.distill)


def _full_int8(c: Candidate) -> bool:
    """A post-training candidate with every quantizable layer in int8 (no float kept)."""
    steps = c.recipe
    return bool(steps) and all(r["stage"] == "onnx" for r in steps) and any(
        r["step"] in ("int8", "int8-static") and not r["params"].get("exclude_nodes")
        and r["params"].get("include_nodes") is None for r in steps
    )  # fmt: skip


def _final_choice(s: Search, candidates: list[Candidate], baseline: Candidate) -> Candidate:
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


def _bench_entry(baseline: Candidate, best: Candidate, bs: int) -> dict[str, Any]:
    """The manifest's benchmark layout that compress writes too (docs/package-format.md):
    original and package at batch size ``bs``."""

    def timing(c: Candidate) -> dict[str, Any]:
        t = c.timings.get(bs)
        if t is None:  # throughput: the original timed at the batch size best for it
            return {"p50_ms": c.p50_ms, "p99_ms": c.p99_ms, "n": c.n,
                    "samples_per_second": c.samples_per_second, "batch_size": c.batch_size}  # fmt: skip
        return {"p50_ms": t.get("p50_ms"), "p99_ms": t.get("p99_ms"), "n": t.get("n", 0),
                "samples_per_second": t.get("samples_per_second"), "batch_size": bs}  # fmt: skip

    entry: dict[str, Any] = {"original": timing(baseline), "package": timing(best)}
    base, pkg = entry["original"], entry["package"]
    same = base["batch_size"] == pkg["batch_size"] and base["p50_ms"] and pkg["p50_ms"]
    entry["speedup_p50"] = base["p50_ms"] / pkg["p50_ms"] if same else None
    if base["samples_per_second"] and pkg["samples_per_second"]:
        entry["speedup_throughput"] = pkg["samples_per_second"] / base["samples_per_second"]
    return entry


def _why_runtime(s: Search, best: Candidate, candidates: list[Candidate]) -> str:
    """Why the package runs on its runtime, from the figures measured here: the best
    candidate against the fastest one on another runtime."""
    if best.status == "baseline":
        return "no candidate within the budget beat the original here (measured)"
    others = [c for c in candidates if c.status in ("ok", "slower", "baseline")
              and c.engine != best.engine and c.score]  # fmt: skip
    if not others or not best.score:
        return f"{best.name}: the fastest candidate within the budget here (measured)"
    rival = min(others, key=lambda c: c.score or 0.0)
    return (
        f"{best.name} measured {(rival.score or 0.0) / best.score:.2f}x as fast as the fastest "
        f"{rival.engine} candidate ({rival.name}) on this machine"
    )


def _deadline(started: float, budget: float | None) -> float:
    """When candidates must stop, keeping back a reserve for writing the result."""
    if budget is None:
        return float("inf")
    reserve = min(RESERVE_MAX_S, max(RESERVE_MIN_S, RESERVE * budget))
    return started + max(budget - reserve, budget / 2)


def _torch_compile(s: Search) -> Candidate:
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
    s: Search,
    best: Candidate,
    baseline: Candidate,
    candidates: list[Candidate],
    started: float,
    metric: Metric,
    max_drop: float,
    kind: str,
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
    sizes = sorted(best.timings) if s.objective == "latency" else [best.batch_size or 1]
    bench = {f"batch_{bs}": _bench_entry(baseline, best, bs) for bs in sizes}
    together: dict[int, dict[str, float]] = {}
    if best is not baseline and s.objective == "latency" and baseline.model is not None:
        together = s.side_by_side(baseline.model, chosen)
        for bs, figures in together.items():
            bench[f"batch_{bs}"]["interleaved"] = figures
    manifest = make_manifest(
        p, [], validation, None, bench,
        runtime={"intra_op_num_threads": best.threads, "batch_size": best.batch_size,
                 "why": _why_runtime(s, best, candidates)},  # the engine: write_package's
        optimization={
            "best": best.name, "candidates": len(candidates), "objective": s.objective,
            "seconds": time.perf_counter() - started, "model_kind": kind,
            "batch_sizes": s.sizes, "batch_weights": s.weights,
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
            "batch_size": s.sizes[0],
            "batch_sizes": s.sizes,
            "batch_weights": s.weights,
            "model_kind": kind,
            "exhaustive": s.exhaustive,
        },
        seconds=time.perf_counter() - started,
        interleaved=together,
    )
