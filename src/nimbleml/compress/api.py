"""nimbleml.compress and ModelCompressor: adapt, verify, compress, check the budget, package."""

from __future__ import annotations

import datetime as _dt
import functools
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np

from .. import __version__
from ..bench.core import run_chunked
from ..bench.machine import cpu_caps, machine_info
from ..errors import ConfigError, ConversionError, UnsupportedError
from ..inputs import Feeds, batch_size, rows
from ..metrics import Metric, evaluate, infer_task, resolve
from ..models.base import Model
from ..models.loader import load_model
from ..models.onnx_model import OnnxModel
from ..package import Package, write_package
from ..verify import check, compare_outputs, variants
from .base import Context, Recipe, get_recipe


class _Choice(str, Enum):
    @classmethod
    def _missing_(cls, value: object) -> Any:
        raise ConfigError(
            f"{value!r} is not a valid {cls.__name__.lower()}; choose one of: "
            + ", ".join(m.value for m in cls)
        )


class Quantization(_Choice):
    INT8 = "int8"
    INT8_STATIC = "int8-static"
    FP16 = "fp16"
    BF16 = "bf16"
    TORCH_INT8 = "torch-int8"
    INT16 = "int16"


class PruneMethod(_Choice):
    STRUCTURED = "structured"
    MAGNITUDE = "magnitude"


class ConversionWarning(UserWarning):
    """The model could not be converted to ONNX; its original form is packaged instead."""


@dataclass
class CompressConfig:
    """What to do; validated on construction (bad values raise ConfigError)."""

    quantize: Quantization | None = Quantization.INT8
    prune: float | None = None
    prune_method: PruneMethod = PruneMethod.STRUCTURED
    max_drop: float | None = None
    calibration: str = "minmax"
    per_channel: bool | None = None
    graph_optimize: bool = True

    def __post_init__(self) -> None:
        if self.quantize is not None and not isinstance(self.quantize, Quantization):
            q = str(self.quantize).lower()
            self.quantize = None if q in ("none", "") else Quantization(q)
        self.prune_method = PruneMethod(self.prune_method)
        if self.prune is not None:
            from .base import fraction

            self.prune = fraction(self.prune, "prune")
        if self.max_drop is not None:
            try:
                self.max_drop = float(self.max_drop)
            except (TypeError, ValueError):
                raise ConfigError(f"max_drop must be a number, got {self.max_drop!r}") from None
            if not self.max_drop >= 0:
                raise ConfigError(f"max_drop must be >= 0, got {self.max_drop}")


def plan(model: Model, cfg: CompressConfig) -> tuple[list[Recipe], list[Recipe], list[Recipe]]:
    """The recipes to run, by stage: (source, torch, onnx)."""
    from ..models.sklearn_model import SklearnModel, final_estimator

    source: list[Recipe] = []
    torch_stage: list[Recipe] = []
    onnx_stage: list[Recipe] = []
    linear = isinstance(model, SklearnModel) and hasattr(final_estimator(model.estimator), "coef_")
    if cfg.prune is not None:
        if model.framework == "torch":
            source.append(get_recipe(f"prune-{cfg.prune_method.value}", amount=cfg.prune))
        elif linear:
            source.append(get_recipe("coef-prune", amount=cfg.prune))
        else:
            raise UnsupportedError(
                f"pruning needs a PyTorch model or a scikit-learn linear model; this is a "
                f"{model.framework} {type(getattr(model, 'estimator', model)).__name__}. Drop prune="
            )
    q = cfg.quantize
    if q in (Quantization.INT8, Quantization.INT16) and linear:
        source.append(get_recipe(f"coef-{q.value}"))
    elif q is Quantization.INT16:
        raise UnsupportedError(
            "int16 is the coefficient quantisation of scikit-learn linear models"
        )
    elif q in (Quantization.TORCH_INT8, Quantization.BF16):
        if model.framework != "torch":
            raise UnsupportedError(
                f"quantize='{q.value}' keeps a PyTorch model in PyTorch; pass an nn.Module"
            )
        torch_stage.append(get_recipe(q.value))
    elif q is Quantization.INT8:
        onnx_stage.append(get_recipe("int8", per_channel=bool(cfg.per_channel)))
    elif q is Quantization.INT8_STATIC:
        per_channel = True if cfg.per_channel is None else cfg.per_channel
        onnx_stage.append(
            get_recipe("int8-static", calibration=cfg.calibration, per_channel=per_channel)
        )
    elif q is Quantization.FP16:
        onnx_stage.append(get_recipe("fp16"))
    if not torch_stage and cfg.graph_optimize:
        onnx_stage.append(get_recipe("graph-opt"))
    if cfg.prune is not None and cfg.prune_method is PruneMethod.MAGNITUDE and not torch_stage:
        onnx_stage.append(get_recipe("sparse-store"))
    return source, torch_stage, onnx_stage


def _onnx_runner(model: OnnxModel) -> Callable[[Feeds], list[np.ndarray]]:
    from ..inputs import cast_to_specs

    specs = model.inputs
    return lambda feeds: model.run(cast_to_specs(feeds, specs))


def convert_verified(
    model: Model, cases: Sequence[tuple[str, Feeds]]
) -> tuple[OnnxModel, dict[str, Any]]:
    """Convert to ONNX and compare with the original on every case; try the next exporter
    (torch: legacy, then dynamo; scikit-learn: float, then double) when one disagrees."""
    from ..models.sklearn_model import NoConverterError

    if isinstance(model, OnnxModel):
        return model, {"converter": "none (already ONNX)", "cases": []}
    attempts = {"torch": [("exporter", "legacy"), ("exporter", "dynamo")],
                "sklearn": [("precision", "float"), ("precision", "double")]}.get(model.framework)  # fmt: skip
    if attempts is None:
        raise ConversionError(f"no ONNX conversion for {model.framework} models")
    example = cases[0][1]
    failures = []
    for key, value in attempts:
        try:
            onnx_model = model.to_onnx(example, **{key: value})
            report = check(model.run, _onnx_runner(onnx_model), cases, what=f"ONNX ({key}={value})")
        except NoConverterError:
            raise
        except ConversionError as exc:
            failures.append(str(exc))
            continue
        onnx_model.task = model.task
        return onnx_model, {"converter": f"{key}={value}", "cases": report}
    raise ConversionError(
        "the model could not be converted to ONNX with outputs that match the original:\n"
        + "\n".join(failures)
    )


def _val_parts(val: Any) -> tuple[Any, Any]:
    if val is None:
        return None, None
    if not isinstance(val, tuple | list) or len(val) != 2:
        raise ConfigError(
            "val must be a pair (X, y); use (X, None) with metric='cosine' or 'agreement'"
        )
    return val[0], val[1]


class ModelCompressor:
    """Class form of :func:`compress`: the constructor holds the configuration."""

    def __init__(
        self,
        quantization: str | None = "int8",
        prune: float | None = None,
        prune_method: str = "structured",
        max_drop: float | None = None,
        calibration: str = "minmax",
        per_channel: bool | None = None,
        graph_optimize: bool = True,
        metric: str | Callable[..., float] | None = None,
        benchmark_batch_sizes: Sequence[int] = (1, 32),
        benchmark_time_s: float = 0.5,
    ) -> None:
        self.quantization = quantization
        self.prune = prune
        self.prune_method = prune_method
        self.max_drop = max_drop
        self.calibration = calibration
        self.per_channel = per_channel
        self.graph_optimize = graph_optimize
        self.metric = metric
        self.benchmark_batch_sizes = tuple(benchmark_batch_sizes)
        self.benchmark_time_s = benchmark_time_s
        self._config = CompressConfig(
            quantize=quantization,  # type: ignore[arg-type]
            prune=prune,
            prune_method=prune_method,  # type: ignore[arg-type]
            max_drop=max_drop,
            calibration=calibration,
            per_channel=per_channel,
            graph_optimize=graph_optimize,
        )

    def compress(
        self,
        model: Any,
        example_inputs: Any = None,
        calib: Any = None,
        val: Any = None,
        *,
        trust_pickle: bool = False,
        progress: Callable[[str], None] | None = None,
    ) -> Package:
        say = progress or (lambda _msg: None)
        cfg = self._config
        val_x, val_y = _val_parts(val)
        if cfg.max_drop is not None and val_x is None:
            raise ConfigError("max_drop needs validation data: pass val=(X, y)")
        example_raw = (
            example_inputs
            if example_inputs is not None
            else (calib if calib is not None else val_x)
        )
        say("adapting the model")
        source = load_model(model, _head(example_raw), trust_pickle=trust_pickle)
        source.task = infer_task(source.task, val_y)
        if example_raw is None and not source.inputs:
            raise ConfigError("pass example_inputs=, calib= or val= so nimbleml can run the model")
        val_feeds = source.feeds(val_x) if val_x is not None else None
        calib_feeds = source.feeds(calib) if calib is not None else None
        base_feeds = val_feeds if val_feeds is not None else calib_feeds
        if base_feeds is None:
            if example_raw is None:
                raise ConfigError(
                    "pass example_inputs=, calib= or val= so nimbleml can run the model"
                )
            base_feeds = source.feeds(example_raw)
        cases = variants(base_feeds)
        ctx = Context(
            example=rows(base_feeds, min(16, batch_size(base_feeds))),
            calib=calib_feeds,
            caps=cpu_caps(),
        )
        source_steps, torch_steps, onnx_steps = plan(source, cfg)
        for step in source_steps + torch_steps + onnx_steps:
            if step.stage != "onnx":
                step.check(source, ctx)

        say("converting to ONNX and verifying")
        conversion: dict[str, Any]
        try:
            baseline, conversion = convert_verified(source, cases)
        except ConversionError as exc:
            from ..models.sklearn_model import NoConverterError

            if not isinstance(exc, NoConverterError):
                raise
            warnings.warn(str(exc), ConversionWarning, stacklevel=2)
            baseline, conversion = source, {"converter": None, "reason": str(exc), "cases": []}  # type: ignore[assignment]
            onnx_steps = []

        candidate: Model = source
        applied: list[Recipe] = []
        for step in source_steps:
            say(f"applying {step.name}")
            candidate = step.apply(candidate, ctx)
            applied.append(step)
        for step in torch_steps:
            say(f"applying {step.name}")
            candidate = step.apply(candidate, ctx)
            applied.append(step)
        if not torch_steps and isinstance(baseline, OnnxModel):
            candidate = baseline if not source_steps else convert_verified(candidate, cases)[0]
            for step in onnx_steps:
                say(f"applying {step.name}")
                step.check(candidate, ctx)
                candidate = step.apply(candidate, ctx)
                applied.append(step)

        say("checking the result against the original")
        agreement = [
            {"case": name, **compare_outputs(source.run(f), candidate(f)).to_dict()}
            for name, f in cases
        ]
        validation, fallback = self._validate(source, candidate, val_feeds, val_y, cfg)
        chosen = baseline if fallback else candidate
        say("timing")
        bench = _quick_bench(
            source, chosen, base_feeds, self.benchmark_batch_sizes, self.benchmark_time_s
        )
        manifest = {
            "schema": 1,
            "nimbleml_version": __version__,
            "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "source": {**source.describe(), "object": _describe_source(model)},
            "inputs": [s.to_dict() for s in source.inputs],
            "outputs": [s.to_dict() for s in source.outputs],
            "call": "kwargs" if getattr(source, "by_name", False) else "positional",
            "recipe": [s.describe() for s in applied],
            "conversion": conversion,
            "validation": {**validation, "agreement": agreement},
            "fallback": fallback,
            "benchmark": bench,
            "machine": machine_info().to_dict(),
        }
        return write_package(manifest, chosen, baseline, same=chosen is baseline)

    def _validate(
        self,
        source: Model,
        candidate: Model,
        val_feeds: Feeds | None,
        val_y: Any,
        cfg: CompressConfig,
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        if val_feeds is None:
            return {"metric": None}, None
        metric: Metric = resolve(self.metric, source.task)
        ref = run_chunked(source, val_feeds)
        out = run_chunked(candidate, val_feeds)
        base_value = evaluate(metric, ref, val_y, ref, source.task)
        value = evaluate(metric, out, val_y, ref, source.task)
        drop = metric.drop(base_value, value)
        validation = {
            "metric": metric.name,
            "higher_is_better": metric.higher_is_better,
            "baseline": base_value,
            "package": value,
            "drop": drop,
            "max_drop": cfg.max_drop,
            "rows": batch_size(val_feeds),
        }
        if cfg.max_drop is not None and drop > cfg.max_drop:
            reason = (
                f"{metric.name} dropped by {drop:.4g} (baseline {base_value:.4g}, compressed "
                f"{value:.4g}), more than max_drop={cfg.max_drop:g}; the package runs the baseline"
            )
            warnings.warn(reason, UserWarning, stacklevel=3)
            validation["package"] = base_value
            return validation, {"reason": reason, "baseline": base_value, "compressed": value}
        return validation, None


def _head(x: Any, n: int = 16) -> Any:
    """The first ``n`` rows of an array, tensor, tuple or dict (for example inputs)."""
    if x is None:
        return None
    if isinstance(x, dict):
        return {k: v[:n] for k, v in x.items()}
    if isinstance(x, tuple | list) and x and hasattr(x[0], "shape"):
        return type(x)(v[:n] for v in x)
    return x[:n] if hasattr(x, "shape") else x


def _describe_source(model: Any) -> str:
    from pathlib import Path

    if isinstance(model, str | Path):
        return str(model)
    return f"{type(model).__module__}.{type(model).__qualname__}"


def _quick_bench(
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


def compress(
    model: Any,
    quantize: str | None = "int8",
    prune: float | None = None,
    example_inputs: Any = None,
    calib: Any = None,
    val: Any = None,
    metric: str | Callable[..., float] | None = None,
    max_drop: float | None = None,
    *,
    prune_method: str = "structured",
    calibration: str = "minmax",
    per_channel: bool | None = None,
    trust_pickle: bool = False,
    benchmark_batch_sizes: Sequence[int] = (1, 32),
    benchmark_time_s: float = 0.5,
    progress: Callable[[str], None] | None = None,
) -> Package:
    """Compress ``model`` and return a verified, timed Package with a fallback.

    ``quantize``: int8, int8-static, fp16, bf16, torch-int8, int16 (scikit-learn linear
    coefficients) or None (convert + graph-optimise). ``prune``: share of weights/units to
    remove. ``val``: (X, y) to check ``metric``; with ``max_drop`` the package falls back to
    the baseline when the metric drops more than that (absolute).
    """
    compressor = ModelCompressor(
        quantization=quantize,
        prune=prune,
        prune_method=prune_method,
        max_drop=max_drop,
        calibration=calibration,
        per_channel=per_channel,
        metric=metric,
        benchmark_batch_sizes=benchmark_batch_sizes,
        benchmark_time_s=benchmark_time_s,
    )
    return compressor.compress(
        model, example_inputs, calib, val, trust_pickle=trust_pickle, progress=progress
    )
