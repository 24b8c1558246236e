"""The steps compress() and optimize() share: prepare (adapt, convert, verify), build a
candidate from recipes, check it, time it, and describe it in a manifest."""

from __future__ import annotations

import datetime as _dt
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..bench.core import run_chunked
from ..bench.machine import cpu_caps, machine_info
from ..errors import (
    ConfigError,
    ConversionError,
    ConversionWarning,
    DataError,
    running_user_code,
    warn,
)
from ..inputs import Feeds, batch_size, cast_to_specs, refuse_missing, rows
from ..metrics import Metric, evaluate, infer_task
from ..models.base import Model
from ..models.loader import load_model
from ..models.onnx_model import OnnxModel
from ..verify import check, compare_outputs, hard_cases, variants
from .base import Context, Recipe

Say = Callable[[str], None]


@dataclass
class Prepared:
    """A model adapted, converted to a verified ONNX baseline, with its data as feeds."""

    model_obj: Any
    source: Model
    baseline: Model
    conversion: dict[str, Any]
    base_feeds: Feeds
    cases: list[tuple[str, Feeds]]
    ctx: Context
    val_feeds: Feeds | None = None
    val_y: Any = None
    synthetic: str | None = None  # how the inputs were made when the user gave none
    _reference: list[np.ndarray] | None = field(default=None, repr=False)
    _case_reference: list[list[np.ndarray]] | None = field(default=None, repr=False)

    @property
    def converted(self) -> bool:
        return isinstance(self.baseline, OnnxModel)

    def reference(self) -> list[np.ndarray]:
        """The original model's outputs on the validation inputs (computed once)."""
        if self._reference is None:
            assert self.val_feeds is not None
            self._reference = run_chunked(self.source, self.val_feeds)
        return self._reference

    def case_reference(self) -> list[list[np.ndarray]]:
        """The original's outputs on every verification case (computed once: rerunning a
        22M-parameter encoder on them cost 2.2 s of every candidate a search scored)."""
        if self._case_reference is None:
            self._case_reference = [self.source.run(f) for _name, f in self.cases]
        return self._case_reference

    def metric_of(self, metric: Metric, model: Model) -> float:
        assert self.val_feeds is not None
        outputs = self.reference() if model is self.source else run_chunked(model, self.val_feeds)
        return evaluate(metric, outputs, self.val_y, self.reference(), self.source.task)


def val_parts(val: Any) -> tuple[Any, Any]:
    if val is None:
        return None, None
    if not isinstance(val, tuple | list) or len(val) != 2:
        raise ConfigError(
            "val must be a pair (X, y); use (X, None) with metric='cosine' or 'agreement'"
        )
    return val[0], val[1]


def head(x: Any, n: int = 16) -> Any:
    """The first ``n`` rows of an array, tensor, tuple or dict (for example inputs)."""
    if x is None:
        return None
    if isinstance(x, dict):
        return {k: v[:n] for k, v in x.items()}
    if isinstance(x, tuple | list) and x and hasattr(x[0], "shape"):
        return type(x)(v[:n] for v in x)
    if isinstance(x, list) and x and isinstance(x[0], str):  # texts
        return x[:n]
    return x[:n] if hasattr(x, "shape") else x


def onnx_runner(model: OnnxModel) -> Callable[[Feeds], list[np.ndarray]]:
    specs = model.inputs
    return lambda feeds: model.run(cast_to_specs(feeds, specs))


def convert_verified(
    model: Model, cases: Sequence[tuple[str, Feeds]]
) -> tuple[OnnxModel, dict[str, Any]]:
    """Convert to ONNX and compare with the original on every case; try the next exporter
    (torch: legacy, then dynamo; scikit-learn: float, then double) when one disagrees.

    The missing-value cases decide whether the package takes missing values, not whether it
    ships: the first conversion that agrees on every case wins, else the first that agrees
    on all the others, and then the package refuses missing values (the manifest says why)."""
    from ..errors import NoConverterError

    if isinstance(model, OnnxModel):
        return model, {"converter": "none (already ONNX)", "cases": []}
    attempts = {
        "torch": [("exporter", "legacy"), ("exporter", "dynamo")],
        "sklearn": [("precision", "float"), ("precision", "double")],
    }.get(model.framework)
    if attempts is None:
        raise ConversionError(f"no ONNX conversion for {model.framework} models")
    # the larger batch: torch.export specialises a dimension of size 1 (0/1 specialisation)
    example = cases[1][1] if len(cases) > 1 else cases[0][1]
    required = [c for c in cases if not is_missing_case(c[0])]
    optional = [c for c in cases if is_missing_case(c[0])]
    tolerance = getattr(model, "tolerance", {})  # text and tables: 1e-5
    failures: list[str] = []
    partial: tuple[OnnxModel, dict[str, Any]] | None = None
    for key, value in attempts:
        what = f"ONNX ({key}={value})"
        try:
            onnx_model = model.to_onnx(example, **{key: value})
            report = check(model.run, onnx_runner(onnx_model), required, what=what, **tolerance)
        except NoConverterError:
            raise
        except ConversionError as exc:
            failures.append(str(exc))
            continue
        onnx_model.task = model.task
        conversion: dict[str, Any] = {"converter": f"{key}={value}", "cases": report}
        try:
            report += check(model.run, onnx_runner(onnx_model), optional, what=what, **tolerance)
        except ConversionError as exc:
            conversion["missing_values"] = "refused: " + " ".join(str(exc).split())[:600]
            partial = partial or (onnx_model, conversion)
            continue
        return onnx_model, conversion
    if partial is not None:
        return partial
    hint = getattr(model, "conversion_hint", "")  # what usually causes this, for this model
    raise ConversionError(
        "the model could not be converted to ONNX with outputs that match the original:\n"
        + "\n".join(failures)
        + (f"\n{hint}" if hint else "")
    )


def is_missing_case(name: str) -> bool:
    from ..verify import MISSING_NUMBERS

    return name.startswith(MISSING_NUMBERS) or name == "missing value in each column"


def check_finite(model: Model, feeds: Feeds, what: str) -> None:
    """DataError for infinite inputs, and for NaN inputs the model cannot take (its outputs on
    them are not finite: a metric over them measures nothing). NaN stays allowed where the
    original handles missing values (an imputer, trees with NaN support)."""
    from ..errors import DataError

    for name, arr in feeds.items():
        if arr.dtype.kind != "f" or not arr.ndim:
            continue
        rows = arr.reshape(len(arr), -1)
        for kind, bad in (
            ("infinity", np.isinf(rows).any(axis=1)),
            ("NaN", np.isnan(rows).any(axis=1)),
        ):
            if not bad.any():
                continue
            first = int(np.argmax(bad))
            where = (
                f"{what} input '{name}' has {int(bad.sum())} row(s) holding {kind} (first: row "
                f"{first})"
            )
            if kind == "infinity":
                raise DataError(f"{where}; remove or fix those rows")
            try:
                outputs = model.run({k: v[first : first + 1] for k, v in feeds.items()})
            except Exception:  # the original refuses missing values (no imputer)
                outputs = None
            if outputs is None or not all(
                np.isfinite(o).all() for o in outputs if np.asarray(o).dtype.kind == "f"
            ):
                refuse_missing(feeds, f"{what} (the model does not take missing values)")


def _synthetic(model: Any, trust_pickle: bool) -> tuple[Any, str]:
    """Inputs inferred from an nn.Module's first layer, or ConfigError saying what to pass."""
    from .._deps import loaded

    torch = loaded("torch")
    if torch is not None and isinstance(model, torch.nn.Module):
        from ..models.torch_inputs import synthetic_inputs

        return synthetic_inputs(model)
    if isinstance(model, str | Path):
        # a missing, unreadable or corrupt file is named first: opening the model reads it
        load_model(model, trust_pickle=trust_pickle).inputs  # noqa: B018
    raise ConfigError("pass example_inputs=, calib= or val= so nimbleml can run the model")


def prepare(
    model: Any,
    example_inputs: Any,
    calib: Any,
    val: Any,
    *,
    trust_pickle: bool = False,
    say: Say | None = None,
) -> Prepared:
    """Adapt ``model``, normalise the data, and convert it to a verified ONNX baseline."""
    say = say or (lambda _msg: None)
    val_x, val_y = val_parts(val)
    for what, data in (("example_inputs", example_inputs), ("calib", calib), ("val", val_x)):
        if data is not None and _row_count(data) == 0:
            raise DataError(f"{what} holds no rows: give at least one sample")
    example_raw = next((x for x in (example_inputs, calib, val_x) if x is not None), None)
    synthetic = None
    if example_raw is None:
        example_raw, synthetic = _synthetic(model, trust_pickle)
    say("adapting the model")
    source = load_model(model, head(example_raw), trust_pickle=trust_pickle)
    source.task = infer_task(source.task, val_y)
    val_feeds = source.feeds(val_x) if val_x is not None else None
    calib_feeds = source.feeds(calib) if calib is not None else None
    for what, feeds in (("val", val_feeds), ("calib", calib_feeds)):
        if feeds is not None:
            check_finite(source, feeds, what)
    base_feeds = next((f for f in (val_feeds, calib_feeds) if f is not None), None) or source.feeds(
        example_raw
    )
    if val_feeds is not None and val_y is not None and len(val_y) != batch_size(val_feeds):
        raise ConfigError(f"val X has {batch_size(val_feeds)} rows but y has {len(val_y)}")
    which = "val" if val_feeds is not None else "calib" if calib_feeds is not None else "example"
    with running_user_code(  # the user's model on the user's data: their error if it raises
        f"the original model on the first rows of {which}",
        "that the model runs on this data in its own framework (shapes, dtypes, columns)",
    ):
        source.run(rows(base_feeds, min(2, batch_size(base_feeds))))
    cases = variants(base_feeds) + [c for c in hard_cases(base_feeds) if _runs(source, c[1])]
    named = {name for name, _ in cases}
    cases += [  # every validation row, tree thresholds, a missing value in each column...
        c for c in source.verification_cases(base_feeds, every=val_feeds is not None)
        if c[0] not in named
    ]  # fmt: skip
    ctx = Context(
        example=rows(base_feeds, min(16, batch_size(base_feeds))),
        calib=calib_feeds,
        caps=cpu_caps(),
    )
    say("converting to ONNX and verifying")
    baseline: Model
    try:
        baseline, conversion = convert_verified(source, cases)
        if "missing_values" in conversion:  # not verified there: the package refuses them
            cases = [c for c in cases if not is_missing_case(c[0])]
    except ConversionError as exc:
        from ..errors import NoConverterError

        if not isinstance(exc, NoConverterError):
            raise
        warn(str(exc), ConversionWarning)
        baseline, conversion = source, {"converter": None, "reason": str(exc), "cases": []}
    return Prepared(
        synthetic=synthetic,
        model_obj=model,
        source=source,
        baseline=baseline,
        conversion=conversion,
        base_feeds=base_feeds,
        cases=cases,
        ctx=ctx,
        val_feeds=val_feeds,
        val_y=val_y,
    )


def _runs(model: Model, feeds: Feeds) -> bool:
    """Whether the original answers a hard case at all (an encoder fitted with
    handle_unknown="error" rejects unseen categories): only then is there a reference."""
    try:
        model.run(feeds)
    except Exception:
        return False
    return True


def build(
    p: Prepared, steps: tuple[list[Recipe], list[Recipe], list[Recipe]], say: Say | None = None
) -> tuple[Model, list[Recipe]]:
    """Apply (source, torch, onnx) recipes; the ONNX stage starts from the verified baseline,
    or from a fresh verified conversion of the pruned model."""
    say = say or (lambda _msg: None)
    source_steps, torch_steps, onnx_steps = steps
    for step in source_steps + torch_steps:
        step.check(p.source, p.ctx)
    candidate: Model = p.source
    applied: list[Recipe] = []
    for step in source_steps + torch_steps:
        say(f"applying {step.name}")
        candidate = step.apply(candidate, p.ctx)
        applied.append(step)
    if torch_steps or not p.converted:
        return candidate, applied
    candidate = p.baseline if not source_steps else convert_verified(candidate, p.cases)[0]
    for step in onnx_steps:
        say(f"applying {step.name}")
        step.check(candidate, p.ctx)
        candidate = step.apply(candidate, p.ctx)
        applied.append(step)
    return candidate, applied


def agreement(p: Prepared, candidate: Model) -> list[dict[str, Any]]:
    """How the candidate's outputs compare with the original's on every verification case."""
    return [
        {"case": name, **compare_outputs(ref, candidate(f)).to_dict()}
        for (name, f), ref in zip(p.cases, p.case_reference(), strict=True)
    ]


def quick_bench(
    source: Model, chosen: Model, feeds: Feeds, sizes: Sequence[int], budget: float
) -> dict[str, Any]:
    """Latency p50/p99 and throughput at each batch size, for the manifest."""
    from ..bench.timer import TimingConfig, time_calls

    if budget <= 0:
        return {}
    timing = TimingConfig(warmup_s=0.05, min_samples=200, time_budget_s=budget)
    out: dict[str, Any] = {}
    for bs in sizes:
        f = rows(feeds, bs)
        entry: dict[str, Any] = {}
        for role, model in (("original", source), ("package", chosen)):
            s = time_calls(functools.partial(model.run, f), timing)
            entry[role] = {
                "p50_ms": s.p50_ms,
                "p99_ms": s.p99_ms,
                "n": s.n,
                "unreliable": s.unreliable,
                "samples_per_second": bs * 1e3 / s.mean_ms,
            }
        entry["speedup_p50"] = entry["original"]["p50_ms"] / entry["package"]["p50_ms"]
        out[f"batch_{bs}"] = entry
    return out


def _row_count(data: Any) -> int | None:
    """Rows in user data of any accepted form (array, DataFrame, dict, list), None if unknown."""
    if isinstance(data, dict):
        data = next(iter(data.values()), None)
    elif isinstance(data, tuple) and data and not np.isscalar(data[0]):
        data = data[0]
    shape = getattr(data, "shape", None)
    if shape is not None:
        return int(shape[0]) if len(shape) else 1
    try:
        return len(data)
    except TypeError:
        return None


def slower_note(bench: dict[str, Any], steps: str, margin: float = 0.9) -> str | None:
    """A sentence when the package is slower than the original at every batch size timed
    (by more than ``1 / margin``), else None: a compressed model that costs time is worth
    saying so, not shipping quietly."""
    timed = {k: b for k, b in bench.items() if b.get("speedup_p50")}
    if not timed or any(b["speedup_p50"] >= margin for b in timed.values()):
        return None
    detail = ", ".join(
        f"{key.replace('_', ' ')}: {b['original']['p50_ms']:.3f} -> {b['package']['p50_ms']:.3f} ms"
        for key, b in timed.items()
    )
    return (
        f"the package ({steps}) is slower than the original on this machine ({detail}); "
        "this recipe does not pay off here: try another quantize=, or nimbleml.optimize to "
        "measure them all"
    )


def _describe_source(model: Any) -> str:
    if isinstance(model, str | Path):
        return str(model)
    return f"{type(model).__module__}.{type(model).__qualname__}"


def make_manifest(
    p: Prepared,
    applied: Sequence[Recipe],
    validation: dict[str, Any],
    fallback: dict[str, Any] | None,
    bench: dict[str, Any],
    **extra: Any,
) -> dict[str, Any]:
    source = p.source
    return {
        "schema": 1,
        "nimbleml_version": __version__,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": {**source.describe(), "object": _describe_source(p.model_obj)},
        "inputs": [s.to_dict() for s in source.inputs],
        "outputs": [s.to_dict() for s in source.outputs],
        "call": "kwargs" if getattr(source, "by_name", False) else "positional",
        "recipe": [s.describe() for s in applied],
        "conversion": p.conversion,
        "validation": validation,
        "fallback": fallback,
        "benchmark": bench,
        "machine": machine_info().to_dict(),
        **extra,
    }


def validate(
    p: Prepared,
    candidate: Model,
    metric: Metric | None,
    max_drop: float | None,
    default_budget: bool = False,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The metric before and after; a fallback record when the drop exceeds ``max_drop``."""
    if p.val_feeds is None or metric is None:
        return {"metric": None}, None
    base_value = p.metric_of(metric, p.source)
    value = p.metric_of(metric, candidate)
    drop = metric.drop(base_value, value)
    validation: dict[str, Any] = {
        "metric": metric.name,
        "higher_is_better": metric.higher_is_better,
        "baseline": base_value,
        "package": value,
        "drop": drop,
        "max_drop": max_drop,
        "rows": batch_size(p.val_feeds),
    }
    if max_drop is not None and drop > max_drop:
        reason = (
            f"{metric.name} dropped by {drop:.4g} (baseline {base_value:.4g}, compressed "
            f"{value:.4g}), more than max_drop={max_drop:g}"
            + (" (the default budget for this metric)" if default_budget else "")
            + "; the package runs the baseline"
        )
        warn(reason)
        validation["package"] = base_value
        return validation, {"reason": reason, "baseline": base_value, "compressed": value}
    return validation, None
