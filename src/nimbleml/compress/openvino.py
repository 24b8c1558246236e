"""OpenVINO recipes: the verified ONNX model run by OpenVINO (``openvino``, fp32), and NNCF's
post-training int8 quantization of it (``openvino-int8``), with accuracy control on demand.

OpenVINO and NNCF are imported when a recipe is applied, never when this module is: the
module only registers the recipes (``get_recipe`` imports it for every name)."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, NimbleError, UnsupportedError
from ..inputs import Feeds, TensorSpec, batch_size, take
from ..models.base import Model
from ..models.onnx_model import OnnxModel
from ..models.openvino_model import OpenVinoModel, one_line, openvino_missing
from .base import Context, Recipe, register

MODEL_TYPES = ("auto", "transformer", "none")
PRESETS = ("performance", "mixed")
CALIB_BATCH = 32  # rows per calibration item (NNCF's Dataset holds batches)
# what a weight path goes through between its Constant and the MatMul that reads it
_WEIGHT_PATH = ("Convert", "Reshape", "Transpose", "Unsqueeze", "Squeeze", "FakeQuantize",
                "Multiply", "Subtract")  # fmt: skip


def _needs(recipe: str, nncf: bool) -> None:
    missing = openvino_missing(nncf=nncf)
    if missing:
        what = "OpenVINO and NNCF" if nncf else "OpenVINO"
        raise UnsupportedError(f"recipe '{recipe}' needs {what}, which is {missing}")


def _verified(model: OnnxModel, ctx: Context) -> OpenVinoModel:
    """The ONNX model read into OpenVINO and compared with it on batch 1, a larger batch and
    (token inputs) truncated and padded sequences; ConversionError when they disagree."""
    from ..verify import check, variants

    converted = OpenVinoModel.from_onnx(model)
    check(model.run, converted.run, variants(ctx.example), what="OpenVINO IR")
    return converted


def _versions(*names: str) -> dict[str, str]:
    """Installed versions, read from the package metadata (importing NNCF takes 2 s)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in names:
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    return out


@register
class OpenVinoFp32(Recipe):
    """The verified ONNX model as an OpenVINO model, computing in float32 (OpenVINO's own
    kernels and fusions; the outputs match the ONNX model's within verification tolerance).

    ``precision="bf16"``: its float layers computed in bfloat16 (the IR checked in float32
    first), only where the CPU runs bf16 natively (AVX512_BF16/AMX): on this project's EPYC
    the BERT-layout encoder ran 2.5x faster than in f32 at cosine 0.9999 (benchmarks/peers.py).
    Lossy: the accuracy budget judges it."""

    name = "openvino"
    stage = "onnx"
    frameworks = ("onnx",)
    lossy = False

    def __init__(self, precision: str = "f32") -> None:
        super().__init__(precision=_precision(precision))

    def check(self, model: Model, ctx: Context) -> None:
        super().check(model, ctx)
        _needs(self.name, nncf=False)
        _bf16_here(self._params["precision"])

    def apply(self, model: Model, ctx: Context) -> Model:
        assert isinstance(model, OnnxModel)
        converted = _with_precision(_verified(model, ctx), self._params["precision"])
        self._params.update(**_versions("openvino"))
        return converted


def _positive(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{what} must be an integer >= 1, got {value!r}")
    return value


def _precision(value: str) -> str:
    if value not in ("f32", "bf16"):
        raise ConfigError(f"OpenVINO precision must be 'f32' or 'bf16', got {value!r}")
    return value


def _bf16_here(precision: str) -> None:
    from .torch_native import bf16_support

    ok, found = bf16_support()
    if precision == "bf16" and not ok:
        raise UnsupportedError(
            f"OpenVINO bf16 needs a CPU that runs it (AVX512_BF16 or AMX); this machine has "
            f"{found}. Use precision='f32'"
        )


def _with_precision(model: OpenVinoModel, precision: str) -> OpenVinoModel:
    """The same OpenVINO model computing its float layers in ``precision``."""
    if model.precision == precision:
        return model
    return OpenVinoModel(model.ov_model, inputs=model.inputs, outputs=model.outputs,
                         task=model.task, threads=model.threads, precision=precision)  # fmt: skip


@register
class OpenVinoInt8(Recipe):
    """NNCF post-training int8 quantization of the OpenVINO model, calibrated on ``calib``.

    ``subset_size``: calibration rows (default 300; fewer when calib has fewer), fed as
    batches of CALIB_BATCH rows, the last one shorter (any row count works).
    ``model_type``: "auto" picks NNCF's TRANSFORMER scheme when the graph has Softmax,
    attention MatMuls (both operands computed) and a LayerNorm-like normalisation (on a tiny
    encoder it kept cosine 0.998 to the original where the default scheme fell to -0.58),
    else the default; "transformer" or "none" force it. ``preset``: "performance"
    (symmetric) or "mixed" (asymmetric activations); None lets NNCF choose.
    ``accuracy_control=True`` uses ``nncf.quantize_with_accuracy_control``: layers go back
    to float, worst first, until ``Context.score`` (higher is better) has dropped by at most
    ``max_drop`` from the float model's. NNCF compiles the candidates it scores with its own
    defaults (bf16 on CPUs with AVX512_BF16/AMX): the package's own check comes after.
    """

    name = "openvino-int8"
    stage = "onnx"
    frameworks = ("onnx",)

    def __init__(
        self,
        subset_size: int = 300,
        model_type: str | None = "auto",
        preset: str | None = None,
        accuracy_control: bool = False,
        max_drop: float = 0.01,
        fast_bias_correction: bool = True,
        precision: str = "f32",
        max_iterations: int = 8,
    ) -> None:
        if isinstance(subset_size, bool) or not isinstance(subset_size, int) or subset_size < 1:
            raise ConfigError(f"subset_size must be an integer >= 1 (rows), got {subset_size!r}")
        model_type = "none" if model_type is None else str(model_type).lower()
        if model_type not in MODEL_TYPES:
            raise ConfigError(
                f"unknown model_type {model_type!r}; choose one of: {', '.join(MODEL_TYPES)}"
            )
        if preset is not None and preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
        try:
            drop = float(max_drop)
        except (TypeError, ValueError):
            raise ConfigError(f"max_drop must be a number >= 0, got {max_drop!r}") from None
        if not drop >= 0:
            raise ConfigError(f"max_drop must be >= 0, got {max_drop!r}")
        super().__init__(
            subset_size=subset_size, model_type=model_type, preset=preset,
            accuracy_control=bool(accuracy_control), max_drop=drop,
            fast_bias_correction=bool(fast_bias_correction), precision=_precision(precision),
            max_iterations=_positive(max_iterations, "max_iterations"),
        )  # fmt: skip

    def check(self, model: Model, ctx: Context) -> None:
        super().check(model, ctx)
        if ctx.calib is None:
            raise ConfigError(
                "openvino-int8 needs calibration data: pass calib= (or --calib DATA), a few "
                "hundred real inputs"
            )
        if self._params["accuracy_control"] and ctx.score is None:
            raise ConfigError(
                "openvino-int8 with accuracy_control=True needs a score of the model on "
                "validation data (Context.score, set by nimbleml.optimize); without one use "
                "accuracy_control=False"
            )
        _needs(self.name, nncf=True)
        _bf16_here(self._params["precision"])

    def apply(self, model: Model, ctx: Context) -> Model:
        assert isinstance(model, OnnxModel) and ctx.calib is not None
        fp32 = _verified(model, ctx)
        items, batch = calibration_items(ctx.calib, self._params["subset_size"], fp32)
        kind, why = self._model_type(fp32.ov_model)
        self._params.update(
            rows=sum(batch_size(i) for i in items), batch=batch, items=len(items),
            model_type_used=kind, model_type_reason=why,
            **_versions("openvino", "nncf"),
        )  # fmt: skip
        try:
            quantized = self._quantize(fp32, items, kind, ctx)
        except NimbleError:
            raise
        except Exception as exc:
            raise UnsupportedError(f"NNCF could not quantize this model: {one_line(exc)}") from exc
        return OpenVinoModel(
            quantized, inputs=fp32.inputs, outputs=fp32.outputs, task=model.task,
            threads=model.threads, precision=self._params["precision"],
        )  # fmt: skip

    def _model_type(self, ov_model: Any) -> tuple[str, str]:
        wanted = self._params["model_type"]
        if wanted != "auto":
            return wanted, "given"
        found = transformer_parts(ov_model)
        if len(found) == 3:
            return "transformer", ", ".join(found)
        return "none", "no " + " / ".join(
            p for p in ("Softmax", "attention MatMul", "LayerNorm-like") if p not in found
        )

    def _quantize(self, fp32: OpenVinoModel, items: list[Feeds], kind: str, ctx: Context) -> Any:
        import nncf

        p = self._params
        options: dict[str, Any] = {
            "subset_size": len(items),  # NNCF counts items (our batches), not rows
            "model_type": nncf.ModelType.TRANSFORMER if kind == "transformer" else None,
            "preset": None if p["preset"] is None else nncf.QuantizationPreset(p["preset"]),
        }
        calib = nncf.Dataset(items)
        with _quiet_nncf():
            if not p["accuracy_control"]:
                return nncf.quantize(
                    fp32.ov_model, calib, fast_bias_correction=p["fast_bias_correction"],
                    **options,
                )  # fmt: skip
            score = ctx.score
            assert score is not None
            ins, outs = fp32.inputs, fp32.outputs

            def validate(compiled: Any, _data: Any) -> float:
                return float(score(_CompiledView(compiled, ins, outs, fp32.task)))

            # the calibration batches rank the layers (by how far their outputs move); at most
            # max_iterations layers go back to float: NNCF's default (no limit) took 321 s on
            # the BERT-layout encoder under a budget it could not meet, and an int8 model with
            # more float layers than that rarely beats the float one
            restorer = nncf.AdvancedAccuracyRestorerParameters(
                max_num_iterations=p["max_iterations"]
            )
            return nncf.quantize_with_accuracy_control(
                fp32.ov_model, calib, nncf.Dataset(items), validate, max_drop=p["max_drop"],
                drop_type=nncf.DropType.ABSOLUTE, fast_bias_correction=p["fast_bias_correction"],
                advanced_accuracy_restorer_parameters=restorer, **options,
            )  # fmt: skip


def calibration_items(calib: Feeds, subset_size: int, model: Model) -> tuple[list[Feeds], int]:
    """Calibration batches of CALIB_BATCH rows from the first ``subset_size`` rows, the
    last one shorter; where the graph fixes the batch dimension, every item has exactly
    that many rows (the last rows are dropped, or rows repeated when there are fewer)."""
    n = min(batch_size(calib), subset_size)
    fixed = {s.shape[0] for s in model.inputs if s.shape and isinstance(s.shape[0], int)}
    if len(fixed) == 1 and next(iter(fixed)) > 0:
        batch = next(iter(fixed))
        if n < batch:
            index = np.arange(batch) % n
            return [{k: np.ascontiguousarray(v[index]) for k, v in calib.items()}], batch
        n -= n % batch
    else:
        batch = min(CALIB_BATCH, n)
    return [take(calib, slice(i, min(i + batch, n))) for i in range(0, n, batch)], batch


def transformer_parts(ov_model: Any) -> list[str]:
    """Which of Softmax, attention MatMul (both operands computed, as Q.K^T and
    scores.V) and a LayerNorm-like normalisation (MVN, or ReduceMean with Sqrt/Power) the
    graph has."""
    ops = ov_model.get_ordered_ops()
    types = {op.get_type_name() for op in ops}
    found = []
    if "Softmax" in types:
        found.append("Softmax")
    if any(
        op.get_type_name() == "MatMul" and not any(_weight(op.input_value(i)) for i in (0, 1))
        for op in ops
    ):
        found.append("attention MatMul")
    if "MVN" in types or ("ReduceMean" in types and types & {"Sqrt", "Power"}):
        found.append("LayerNorm-like")
    return found


def _weight(value: Any) -> bool:
    """Whether a graph value is a constant (a weight), through converts, reshapes and
    (de)quantisation."""
    node = value.get_node()
    for _ in range(8):
        kind = node.get_type_name()
        if kind == "Constant":
            return True
        if kind not in _WEIGHT_PATH:
            return False
        node = node.input_value(0).get_node()
    return False


@contextlib.contextmanager
def _quiet_nncf() -> Iterator[None]:
    """NNCF's progress bars (rich, on stdout) and its INFO/WARNING log lines stay out of
    the user's terminal; failures still surface as exceptions."""
    logger = logging.getLogger("nncf")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


class _CompiledView(Model):
    """A compiled OpenVINO model NNCF hands to the validation function, as a Model that
    ``Context.score`` can run (a request per call: NNCF scores from one thread)."""

    framework = "openvino"

    def __init__(
        self, compiled: Any, ins: list[TensorSpec], outs: list[TensorSpec], task: str | None
    ) -> None:
        self.compiled, self._ins, self._outs, self.task = compiled, ins, outs, task

    @property
    def inputs(self) -> list[TensorSpec]:
        return self._ins

    @property
    def outputs(self) -> list[TensorSpec]:
        return self._outs

    def run(self, feeds: Feeds) -> list[np.ndarray]:
        request = self.compiled.create_infer_request()
        result = request.infer({i: feeds[s.name] for i, s in enumerate(self._ins)})
        return [np.array(result[o]) for o in self.compiled.outputs]

    def to_onnx(self, example: Feeds, path: str | Path | None = None) -> OnnxModel:
        raise UnsupportedError("a model being scored by NNCF can only be run")

    def save(self, directory: Path, stem: str) -> str:
        raise UnsupportedError("a model being scored by NNCF can only be run")

    def size_bytes(self) -> int:
        return 0

    def num_parameters(self) -> int:
        return 0


__all__ = ["OpenVinoFp32", "OpenVinoInt8", "calibration_items", "transformer_parts"]
