"""nimbleml.compress and ModelCompressor: adapt, verify, compress, check the budget, package."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from ..errors import (
    ConfigError,
    SlowerPackageWarning,
    SyntheticInputsWarning,
    UnsupportedError,
    warn,
)
from ..metrics import resolve
from ..models.base import Model
from ..package import Package, write_package
from .base import Recipe, get_recipe
from .pipeline import (
    Prepared,
    agreement,
    build,
    make_manifest,
    prepare,
    quick_bench,
    slower_note,
    val_parts,
    validate,
)


class _Choice(str, Enum):
    @classmethod
    def _missing_(cls, value: object) -> Any:
        nothing = ", or None (no quantization)" if cls.__name__ == "Quantization" else ""
        raise ConfigError(
            f"{value!r} is not a valid {cls.__name__.lower()}; choose one of: "
            + ", ".join(m.value for m in cls)
            + nothing
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


class Runtime(_Choice):
    """What runs the compressed model: ONNX Runtime, or OpenVINO (the 'openvino' extra)."""

    ONNXRUNTIME = "onnxruntime"
    OPENVINO = "openvino"


# quantize= values each runtime takes besides None, and the recipe that does it under OpenVINO
OPENVINO_RECIPES = {None: "openvino", "int8": "openvino-int8", "int8-static": "openvino-int8"}


# the accuracy budget compress applies when none is given: an absolute drop of 0.01 on metrics
# bounded by 1 (accuracy, f1, agreement as shares of rows; cosine similarity to the original;
# r2). A per-tensor int8 encoder at cosine 0.871 shipped without a warning before cosine had
# one. Error metrics (mse, mae) have no natural scale, so they get no default budget (the
# drop is still measured and shown)
DEFAULT_MAX_DROP = 0.01
ACCURACY_LIKE = ("accuracy", "f1", "agreement", "cosine", "r2")


def budget_for(max_drop: float | str | None, metric_name: str | None) -> float | None:
    """The budget in force: a number given, DEFAULT_MAX_DROP for 'auto' on an accuracy-like
    metric, else None (no budget)."""
    if max_drop != "auto":
        return max_drop  # type: ignore[return-value]
    return DEFAULT_MAX_DROP if metric_name in ACCURACY_LIKE else None


@dataclass
class CompressConfig:
    """What to do; validated on construction (bad values raise ConfigError)."""

    quantize: Quantization | None = Quantization.INT8
    prune: float | None = None
    prune_method: PruneMethod = PruneMethod.STRUCTURED
    max_drop: float | str | None = "auto"
    calibration: str = "minmax"
    per_channel: bool | None = None
    graph_optimize: bool = True
    runtime: Runtime = Runtime.ONNXRUNTIME

    def __post_init__(self) -> None:
        if self.quantize is not None and not isinstance(self.quantize, Quantization):
            q = str(self.quantize).lower()
            self.quantize = None if q in ("none", "") else Quantization(q)
        self.prune_method = PruneMethod(self.prune_method)
        self.runtime = Runtime(str(getattr(self.runtime, "value", self.runtime)).lower())
        q_value = self.quantize.value if self.quantize is not None else None
        if self.runtime is Runtime.OPENVINO and q_value not in OPENVINO_RECIPES:
            raise ConfigError(
                f"runtime='openvino' takes quantize=None (float32) or 'int8' / 'int8-static' "
                f"(NNCF int8, calibrated), not quantize={q_value!r}; the other quantize= "
                "values run under runtime='onnxruntime'"
            )
        if self.prune is not None:
            from .base import fraction

            self.prune = fraction(self.prune, "prune")
        if isinstance(self.max_drop, str) and self.max_drop.strip().lower() in ("auto", "none"):
            self.max_drop = "auto" if self.max_drop.strip().lower() == "auto" else None
        elif self.max_drop is not None:
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
    if cfg.runtime is Runtime.OPENVINO:  # the verified ONNX model, then OpenVINO's recipe
        q_value = cfg.quantize.value if cfg.quantize is not None else None
        onnx_stage.append(get_recipe(OPENVINO_RECIPES[q_value]))
        if cfg.prune is not None:
            if model.framework != "torch":
                raise UnsupportedError(
                    "with runtime='openvino', prune= applies to PyTorch models; drop prune="
                )
            source.append(get_recipe(f"prune-{cfg.prune_method.value}", amount=cfg.prune))
        return source, torch_stage, onnx_stage
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
        onnx_stage.append(get_recipe("int8", per_channel=cfg.per_channel))
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


class ModelCompressor:
    """Class form of :func:`compress`: the constructor holds the configuration."""

    def __init__(
        self,
        quantization: str | None = "int8",
        prune: float | None = None,
        prune_method: str = "structured",
        max_drop: float | str | None = "auto",
        calibration: str = "minmax",
        per_channel: bool | None = None,
        graph_optimize: bool = True,
        metric: str | Callable[..., float] | None = None,
        benchmark_batch_sizes: Sequence[int] = (1, 32),
        benchmark_time_s: float = 0.5,
        runtime: str = "onnxruntime",
    ) -> None:
        self.quantization = quantization
        self.runtime = runtime
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
            runtime=runtime,  # type: ignore[arg-type]
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
        if cfg.max_drop not in (None, "auto") and val_parts(val)[0] is None:
            raise ConfigError("max_drop needs validation data: pass val=(X, y)")
        prepared = prepare(model, example_inputs, calib, val, trust_pickle=trust_pickle, say=say)
        if (
            cfg.runtime is Runtime.OPENVINO
            and prepared.ctx.calib is None
            and not prepared.synthetic
        ):
            # NNCF calibrates on the validation inputs, else the example inputs
            prepared.ctx.calib = prepared.base_feeds
        return finish(prepared, plan(prepared.source, cfg), metric=self.metric,
                      max_drop=cfg.max_drop, benchmark_batch_sizes=self.benchmark_batch_sizes,
                      benchmark_time_s=self.benchmark_time_s, say=say)  # fmt: skip


def finish(
    prepared: Prepared,
    steps: tuple[list[Recipe], list[Recipe], list[Recipe]],
    *,
    metric: str | Callable[..., float] | None = None,
    max_drop: float | str | None = "auto",
    benchmark_batch_sizes: Sequence[int] = (1, 32),
    benchmark_time_s: float = 0.5,
    say: Callable[[str], None] | None = None,
) -> Package:
    """Apply ``steps`` (source, torch, onnx) to a prepared model, check the result against the
    original within ``max_drop``, time both, and write the package (the original as fallback)."""
    say = say or (lambda _msg: None)
    candidate, applied = build(prepared, steps, say)
    say("checking the result against the original")
    chosen_metric = metric
    if chosen_metric is None and prepared.val_y is None:  # no labels: compare with the original
        chosen_metric = "agreement" if prepared.source.task == "classification" else "cosine"
    resolved = resolve(chosen_metric, prepared.source.task) if prepared.val_feeds else None
    budget = budget_for(max_drop, resolved.name if resolved else None)
    default_budget = max_drop == "auto" and budget is not None
    validation, fallback = validate(prepared, candidate, resolved, budget, default_budget)
    if validation.get("metric"):
        validation["max_drop_source"] = (
            "default" if default_budget else "none" if budget is None else "given"
        )
    validation["inputs"] = "validation" if prepared.val_feeds is not None else "example"
    if prepared.synthetic:
        note = (
            f"verified on synthetic inputs only ({prepared.synthetic}); no accuracy was "
            "measured: pass val=(X, y) to measure it"
        )
        validation.update(inputs="synthetic", note=note)
        warn(note, SyntheticInputsWarning)
    chosen = prepared.baseline if fallback else candidate
    say("timing")
    bench = quick_bench(
        prepared.source, chosen, prepared.base_feeds, benchmark_batch_sizes, benchmark_time_s
    )
    validation["agreement"] = agreement(prepared, candidate)
    names = " + ".join(r.name for r in applied) or "conversion only"
    slower = None if fallback else slower_note(bench, names)
    if slower:
        validation["speed_note"] = slower
        warn(slower, SlowerPackageWarning)
    manifest = make_manifest(prepared, applied, validation, fallback, bench)
    manifest.setdefault("runtime", {})["why"] = (
        "the compressed model was rejected (see fallback); its verified baseline runs"
        if fallback
        else "chosen by the caller"
    )
    return write_package(manifest, chosen, prepared.baseline, same=chosen is prepared.baseline)


def compress(
    model: Any,
    quantize: str | None = "int8",
    prune: float | None = None,
    example_inputs: Any = None,
    calib: Any = None,
    val: Any = None,
    metric: str | Callable[..., float] | None = None,
    max_drop: float | str | None = "auto",
    *,
    prune_method: str = "structured",
    calibration: str = "minmax",
    per_channel: bool | None = None,
    trust_pickle: bool = False,
    benchmark_batch_sizes: Sequence[int] = (1, 32),
    benchmark_time_s: float = 0.5,
    progress: Callable[[str], None] | None = None,
    runtime: str = "onnxruntime",
) -> Package:
    """Compress ``model`` and return a verified, timed Package with a fallback.

    ``quantize``: int8, int8-static, fp16, bf16, torch-int8, int16 (scikit-learn linear
    coefficients) or None (convert + graph-optimise). ``prune``: share of weights/units to
    remove. ``val``: (X, y) to check ``metric``; when the metric drops by more than
    ``max_drop`` (absolute) the package runs the baseline and a warning says so.
    ``max_drop="auto"`` (the default) is 0.01 for accuracy-like metrics (accuracy, f1,
    agreement, cosine, r2) and no budget for mse/mae; ``None`` turns the budget off.
    ``runtime``: "onnxruntime" (default) or "openvino" (the 'openvino' extra): the verified
    ONNX model then runs under OpenVINO, in float32 (quantize=None) or NNCF int8
    (quantize="int8" or "int8-static"; calibrated on ``calib``, else the validation
    inputs, else the example inputs); checked, timed and falling back as any package.
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
        runtime=runtime,
    )
    return compressor.compress(
        model, example_inputs, calib, val, trust_pickle=trust_pickle, progress=progress
    )
