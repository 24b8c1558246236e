"""Precision recipes on the ONNX graph: ONNX Runtime int8 (dynamic, static QDQ), fp16, graph
optimisation, sparse storage. The PyTorch-native ones (torch-int8, bf16) are in
torch_native.py."""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import tempfile
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from .._deps import require
from ..bench.machine import CpuCaps, has_cuda
from ..errors import ConfigError, UnsupportedError
from ..inputs import Feeds, batch_size, take
from ..models.base import Model
from ..models.onnx_model import OnnxModel, session_options
from .base import Context, Recipe, register

# ops ONNX Runtime's dynamic quantizer turns into integer kernels that pay on CPU
DYNAMIC_OPS = ("MatMul", "Gemm", "Attention", "LSTM", "GRU", "EmbedLayerNormalization")
STATIC_OPS = ("MatMul", "Gemm", "Conv", "Attention", "Gather", "ConvTranspose")
CALIBRATION = ("minmax", "entropy", "percentile")


_CWD_LOCK = threading.RLock()


@contextmanager
def _workdir() -> Iterator[Path]:
    """A temporary folder, removed afterwards, that is also the working directory meanwhile:
    ONNX Runtime's quantisation tools write to relative paths (when symbolic shape inference
    is incomplete, ``sym_shape_infer_temp.onnx`` plus a 90 MB ``<uuid>.data`` of weights for
    a 22M-parameter encoder), and nothing nimbleml runs may leave files in the user's folder.
    The change of directory is process-wide, so one quantisation holds it at a time."""
    with _CWD_LOCK, tempfile.TemporaryDirectory(prefix="nimbleml-") as tmp:
        here = os.getcwd()
        os.chdir(tmp)
        try:
            yield Path(tmp)
        finally:
            os.chdir(here)


@contextmanager
def _quiet_ort() -> Iterator[None]:
    """Mute the quantiser's log hints and the calibrators' progress prints."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(previous)


def int8_layout(caps: CpuCaps) -> dict[str, Any]:
    """Activation/weight types safe on this CPU. Without VNNI, the u8s8 kernels
    (VPMADDUBSW) can saturate: keep weights to 7 bits (reduce_range)."""
    if caps.vnni:
        return {"activation": "int8", "weight": "int8", "reduce_range": False, "why": "VNNI"}
    return {
        "activation": "uint8",
        "weight": "int8",
        "reduce_range": True,
        "why": "no VNNI: 7-bit weights avoid u8s8 saturation",
    }


def _quant_type(name: str) -> Any:
    from onnxruntime.quantization import QuantType

    return QuantType.QInt8 if name == "int8" else QuantType.QUInt8


# pre-processed graphs by the sha256 of the graph they came from: every int8 candidate of a
# search starts from the same verified ONNX graph, and its symbolic shape inference cost 1.4 s
# of the 3.9 s an int8 candidate of a 22M-parameter encoder took to build (measured)
_PREPROCESSED: dict[str, bytes | None] = {}
_PREPROCESSED_MAX = 2


def _preprocess(src: Path, dst: Path) -> Path:
    """Shape inference + cleanup the quantizer wants; keep the original if it fails."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    key = hashlib.sha256(src.read_bytes()).hexdigest()
    if key in _PREPROCESSED:
        done = _PREPROCESSED[key]
        if done is None:
            return src
        dst.write_bytes(done)
        return dst
    try:
        with _quiet_ort():
            quant_pre_process(str(src), str(dst), skip_symbolic_shape=False)
        result: Path = dst
    except Exception:
        result = src
    while len(_PREPROCESSED) >= _PREPROCESSED_MAX:
        _PREPROCESSED.pop(next(iter(_PREPROCESSED)))
    _PREPROCESSED[key] = dst.read_bytes() if result is dst else None
    return result


def transformer_parts(model: OnnxModel) -> list[str]:
    """The attention and normalisation ops that make ``model`` a transformer (empty when it
    is not one): a Softmax beside MatMuls and a LayerNormalization, or the ReduceMean/Pow/Sqrt
    pattern exporters decompose it into. A transformer's int8 defaults differ: per-channel
    weights (a per-tensor int8 BERT-layout encoder kept cosine 0.95 where per-channel kept
    0.997, benchmarks/_models.py), embeddings (Gather) and the attention-score MatMuls (two
    activations) kept in float."""
    ops = set(model.op_types())
    if "Softmax" not in ops or "MatMul" not in ops:
        return []
    norm = "LayerNormalization" if "LayerNormalization" in ops else None
    if norm is None and {"ReduceMean", "Sqrt"} <= ops:
        norm = "ReduceMean/Sqrt (decomposed LayerNorm)"
    return ["Softmax", "MatMul", norm] if norm else []


def quantizable_nodes(model: OnnxModel, ops: Sequence[str] = DYNAMIC_OPS) -> list[str]:
    """Names of the nodes an int8 recipe would quantise, as the quantiser sees them (after
    the same pre-processing), in graph order: what mixed precision can keep in float."""
    import onnx

    with _workdir() as tmp:
        (tmp / "in.onnx").write_bytes(model.data)
        src = _preprocess(tmp / "in.onnx", tmp / "pre.onnx")
        graph = onnx.load(str(src)).graph
    return [n.name for n in graph.node if n.op_type in ops and n.name]


def _require_ops(model: OnnxModel, ops: tuple[str, ...], recipe: str) -> list[str]:
    present = model.op_types()
    found = sorted({op for op in present if op in ops})
    if not found:
        raise UnsupportedError(
            f"recipe '{recipe}' has nothing to quantize: the model's ONNX graph has no "
            f"{'/'.join(ops)} (it has {', '.join(sorted(set(present))[:8])}); use "
            "quantize=None to convert and graph-optimise only"
        )
    return found


@register
class DynamicInt8(Recipe):
    """int8 weights, activations quantised on the fly (ONNX Runtime dynamic quantisation).

    ``per_channel=None`` (auto): per-channel weights for a transformer (see
    ``transformer_parts``), per-tensor otherwise; the choice and why go into the manifest.
    Only MatMuls with a constant weight are quantised (ONNX Runtime's dynamic default), so
    attention-score MatMuls, embeddings, LayerNorm and Softmax stay in float."""

    name = "int8"
    stage = "onnx"
    frameworks = ("onnx",)

    def __init__(
        self,
        per_channel: bool | None = False,
        exclude_nodes: Sequence[str] = (),
        include_nodes: Sequence[str] | None = None,
    ) -> None:
        super().__init__(
            per_channel=None if per_channel is None else bool(per_channel),
            exclude_nodes=list(exclude_nodes),
            include_nodes=None if include_nodes is None else list(include_nodes),
        )

    def check(self, model: Model, ctx: Context) -> None:
        super().check(model, ctx)
        assert isinstance(model, OnnxModel)
        _require_ops(model, DYNAMIC_OPS, self.name)

    def apply(self, model: Model, ctx: Context) -> Model:
        from onnxruntime.quantization import quantize_dynamic

        assert isinstance(model, OnnxModel)
        layout = int8_layout(ctx.caps)
        self._params["layout"] = layout
        if self._params["per_channel"] is None:
            parts = transformer_parts(model)
            self._params["per_channel"] = bool(parts)
            self._params["per_channel_why"] = (
                f"auto: a transformer ({', '.join(parts)}): per-channel weights"
                if parts else "auto: not a transformer: per-tensor weights"
            )  # fmt: skip
        with _workdir() as tmp, _quiet_ort():
            (tmp / "in.onnx").write_bytes(model.data)
            src = _preprocess(tmp / "in.onnx", tmp / "pre.onnx")
            quantize_dynamic(
                str(src),
                str(tmp / "q.onnx"),
                weight_type=_quant_type(layout["weight"]),
                per_channel=self._params["per_channel"],
                reduce_range=layout["reduce_range"],
                op_types_to_quantize=list(DYNAMIC_OPS),
                nodes_to_exclude=_with_gemm_names(self._params["exclude_nodes"]),
                nodes_to_quantize=_with_gemm_names(self._params["include_nodes"]),
            )
            return OnnxModel((tmp / "q.onnx").read_bytes(), task=model.task)


def _with_gemm_names(names: list[str] | None) -> list[str] | None:
    """Dynamic quantisation rewrites Gemm node N as MatMul 'N_MatMul': name both."""
    if names is None:
        return None
    return [alias for n in names for alias in (n, f"{n}_MatMul")]


class _Calibration:
    """Feeds calibration batches to ONNX Runtime's static quantizer, all of one size: the
    entropy and percentile calibrators stack every batch's activations into one array, and a
    shorter last batch made that fail ('inhomogeneous shape') for 300 rows (288 worked). The
    rows past the last whole batch (at most batch - 1) are left out; ``rows`` says how many
    were used."""

    def __init__(self, feeds: Feeds, batch: int = 32, limit: int = 512) -> None:
        n = min(batch_size(feeds), limit)
        batch = max(1, min(batch, n))
        self.rows = n - n % batch
        self._batches = [take(feeds, slice(i, i + batch)) for i in range(0, self.rows, batch)]
        self._it = iter(self._batches)

    def get_next(self) -> Feeds | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._batches)


@register
class StaticInt8(Recipe):
    """int8 weights and activations (QDQ), scales calibrated on real inputs; per-channel
    weights; the layout chosen from the CPU's capabilities."""

    name = "int8-static"
    stage = "onnx"
    frameworks = ("onnx",)

    def __init__(
        self,
        calibration: str = "minmax",
        per_channel: bool = True,
        exclude_nodes: Sequence[str] = (),
        include_nodes: Sequence[str] | None = None,
    ) -> None:
        if calibration not in CALIBRATION:
            raise ConfigError(
                f"unknown calibration method '{calibration}'; choose one of: {', '.join(CALIBRATION)}"
            )
        super().__init__(
            calibration=calibration,
            per_channel=bool(per_channel),
            exclude_nodes=list(exclude_nodes),
            include_nodes=None if include_nodes is None else list(include_nodes),
        )

    def check(self, model: Model, ctx: Context) -> None:
        super().check(model, ctx)
        if ctx.calib is None:
            raise ConfigError(
                "int8-static needs calibration data: pass calib= (or --calib DATA), a few "
                "hundred real inputs"
            )
        assert isinstance(model, OnnxModel)
        _require_ops(model, STATIC_OPS, self.name)

    def apply(self, model: Model, ctx: Context) -> Model:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

        assert isinstance(model, OnnxModel) and ctx.calib is not None
        layout = int8_layout(ctx.caps)
        self._params["layout"] = layout
        parts = transformer_parts(model)
        # a transformer keeps its embeddings (Gather) and attention-score MatMuls (two
        # activations, no weight) in float: what breaks int8 there, for little time
        ops = [op for op in STATIC_OPS if not (parts and op == "Gather")]
        if parts:
            self._params["transformer"] = "embeddings and attention-score MatMuls kept in float"
        calibration = _Calibration(ctx.calib)
        self._params["calibration_rows"] = calibration.rows
        method = {
            "minmax": CalibrationMethod.MinMax,
            "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile,
        }[self._params["calibration"]]
        with _workdir() as tmp, _quiet_ort():
            (tmp / "in.onnx").write_bytes(model.data)
            src = _preprocess(tmp / "in.onnx", tmp / "pre.onnx")
            quantize_static(
                str(src),
                str(tmp / "q.onnx"),
                calibration,
                quant_format=QuantFormat.QDQ,
                per_channel=self._params["per_channel"],
                reduce_range=layout["reduce_range"],
                activation_type=_quant_type(layout["activation"]),
                weight_type=_quant_type(layout["weight"]),
                calibrate_method=method,
                op_types_to_quantize=ops,
                nodes_to_exclude=self._params["exclude_nodes"],
                nodes_to_quantize=self._params["include_nodes"],
                extra_options={"MatMulConstBOnly": bool(parts)},
            )
            return OnnxModel((tmp / "q.onnx").read_bytes(), task=model.task)


@register
class Float16(Recipe):
    """fp16 weights and compute, float32 inputs and outputs kept (pays on GPUs; on CPUs
    without fp16 arithmetic it halves the size and the benchmark shows the speed)."""

    name = "fp16"
    stage = "onnx"
    frameworks = ("onnx",)

    def __init__(self) -> None:
        super().__init__()

    def apply(self, model: Model, ctx: Context) -> Model:
        require("onnxconverter_common", "the fp16 recipe")
        from onnxconverter_common import float16

        assert isinstance(model, OnnxModel)
        self._params["device"] = "cuda" if has_cuda() else "cpu"
        with _quiet_ort(), warnings.catch_warnings():
            # masks hold -inf, which fp16 keeps as -1e4: the same effect after softmax
            warnings.filterwarnings("ignore", message="the float32 number", category=UserWarning)
            proto = float16.convert_float_to_float16(
                model.proto(),
                keep_io_types=True,
                op_block_list=[*float16.DEFAULT_OP_BLOCK_LIST, *FP16_KEEP_FP32],
            )
        self._params["casts_fixed"] = _fp16_casts(proto)
        return OnnxModel(proto.SerializeToString(), task=model.task)


def _fp16_casts(proto: Any) -> int:
    """Casts to float32 whose output the converter typed float16 (the dynamo exporter's
    ``_to_copy`` of an attention mask) cast to float16, as their output now is; left alone
    ONNX Runtime refuses the graph. The number fixed."""
    from onnx import TensorProto

    graph = proto.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.output]}
    fixed = 0
    for node in graph.node:
        if node.op_type != "Cast":
            continue
        to = next(a for a in node.attribute if a.name == "to")
        if to.i == TensorProto.FLOAT and types.get(node.output[0]) == TensorProto.FLOAT16:
            to.i = TensorProto.FLOAT16
            fixed += 1
    return fixed


# text operators of scikit-learn pipelines: their float outputs are float32 by schema, so
# they stay in float32 beside onnxconverter-common's own list (ai.onnx.ml operators, ...)
FP16_KEEP_FP32 = ("TfIdfVectorizer", "Tokenizer", "StringNormalizer")


@register
class GraphOptimize(Recipe):
    """ONNX Runtime's graph optimisations (fusions, constant folding) saved offline, at the
    'extended' level so the file stays portable across CPUs."""

    name = "graph-opt"
    stage = "onnx"
    frameworks = ("onnx",)
    lossy = False

    def __init__(self, level: str = "extended") -> None:
        if level not in ("basic", "extended"):
            raise ConfigError(f"graph-opt level must be 'basic' or 'extended', got {level!r}")
        super().__init__(level=level)

    def apply(self, model: Model, ctx: Context) -> Model:
        assert isinstance(model, OnnxModel)
        data = self._optimize(model.data, [])
        if len(data) > 1.05 * len(model.data):
            # constant folding undid a compression that happens at load (int8 coefficients
            # of a text model: Cast + Mul folded into float32, 4x their bytes): optimise the
            # rest, and leave the folding to ONNX Runtime in memory when the package loads
            data = self._optimize(model.data, ["ConstantFolding"])
            self._params["constant_folding"] = False
        return OnnxModel(data, task=model.task)

    def _optimize(self, data: bytes, disabled: list[str]) -> bytes:
        import onnxruntime as ort

        with _workdir() as tmp:
            so = session_options(optimize=self._params["level"])
            so.optimized_model_filepath = str(tmp / "opt.onnx")
            ort.InferenceSession(
                data, so, providers=["CPUExecutionProvider"], disabled_optimizers=disabled
            )
            return (tmp / "opt.onnx").read_bytes()


@register
class SparseStore(Recipe):
    """Store initializers that are mostly zeros as ONNX sparse tensors (COO), where that
    takes fewer bytes; ONNX Runtime densifies them at load, so outputs are unchanged."""

    name = "sparse-store"
    stage = "onnx"
    frameworks = ("onnx",)
    lossy = False

    def __init__(self, min_elements: int = 1024) -> None:
        super().__init__(min_elements=int(min_elements))

    def apply(self, model: Model, ctx: Context) -> Model:
        from onnx import helper, numpy_helper

        assert isinstance(model, OnnxModel)
        proto = model.proto()
        graph = proto.graph
        kept, converted = [], 0
        for init in graph.initializer:
            arr = numpy_helper.to_array(init)
            flat = arr.ravel()
            nnz = np.flatnonzero(flat)
            index_type = np.int16 if flat.size < 2**15 else np.int32
            sparse_bytes = nnz.size * (arr.itemsize + np.dtype(index_type).itemsize)
            if flat.size < self._params["min_elements"] or sparse_bytes >= arr.nbytes:
                kept.append(init)
                continue
            values = numpy_helper.from_array(flat[nnz], init.name)
            indices = numpy_helper.from_array(nnz.astype(index_type), f"{init.name}_indices")
            graph.sparse_initializer.append(
                helper.make_sparse_tensor(values, indices, list(arr.shape))
            )
            converted += 1
        del graph.initializer[:]
        graph.initializer.extend(kept)
        self._params["sparse_tensors"] = converted
        return OnnxModel(proto.SerializeToString(), task=model.task)
