"""OpenVINO IR models (``model.xml`` + ``model.bin``), run by OpenVINO's CPU plugin.

The call path, and why (measured on this project's 2-core AMD EPYC VM with AVX512, digits
MLP 64-128-128-10, medians of 15 interleaved rounds of 2,000 calls from Python):

- ``OpenVinoModel.run`` costs 13.4 µs a call at batch 1 with one thread, where
  ``OnnxModel.run`` costs 5.5 µs (batch 32: 31.4 vs 21.2 µs; with OpenVINO's default
  threads, 19.1 vs 5.6 µs at batch 1). So OpenVINO pays where its kernels win, not on the
  smallest models: the tests' tiny 2-layer encoder (dynamo export, one thread) runs in
  45 µs at batch 1 against ONNX Runtime's 76, and 567 against 834 µs at batch 32.
- The documented call, ``InferRequest.infer(dict, share_inputs=True)``, cost 24.8 µs: most
  of it is OpenVINO's Python data dispatcher. ``run`` instead writes the inputs into the
  request's own tensors (``np.copyto`` into views kept per request), calls the compiled
  request underneath the wrapper (the bare C++ ``infer`` alone is 10.4 µs), and copies the
  outputs out. Handing OpenVINO a shared ``ov.Tensor`` instead of copying cost more at this
  size (16.3 µs).
- A static-shape compilation beats the dynamic one at every size measured: MLP batch 1
  12.8 vs 18.8 µs, tiny encoder batch 1 46 vs 91 µs, batch 32 575 vs 731 µs. But a
  compilation takes 20 ms (MLP) to 90 ms (encoder), the price of ~3,000 calls: so every call
  runs first on one compilation of the model's own (dynamic) shapes, and a shape seen
  ``static_after`` times gets a static compilation of its own, kept in a bounded LRU
  (``max_shapes``). When the shapes vary so much that the LRU keeps evicting (more than
  4 x ``max_shapes`` evictions), new shapes stay on the dynamic compilation: recompiling on
  every few calls would cost more than it saves.
- One InferRequest per thread per compilation (``threading.local``): the server and the
  ensembles call ``run`` from several threads, and a request is not reentrant. Outputs are
  copied, never returned as views of OpenVINO's buffers (the next call overwrites them).
- ``INFERENCE_PRECISION_HINT=f32`` unless asked otherwise: on a CPU with AVX512_BF16 or AMX,
  OpenVINO computes float layers in bf16 by default (logits of the MLP then differ from the
  ONNX original by 2e-3; with f32 they are identical).

The ONNX model's input and output specs (names, dtypes, symbolic dims) are stored in the
IR's ``rt_info`` (``nimbleml/io``, JSON), which survives ``save_model``/``read_model`` and
NNCF: outputs keep the ONNX names even where OpenVINO renames tensors.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import importlib.util
import json
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConversionError, MissingDependencyError, ModelLoadError, UnsupportedError
from ..inputs import Feeds, TensorSpec
from .base import Model

INSTALL = "pip install 'nimbleml[openvino]'"
RT_KEY = ["nimbleml", "io"]
PRECISIONS = ("f32", "bf16", "f16")
_OV_TYPES = {
    "f32": "float32", "f64": "float64", "f16": "float16", "bf16": "bfloat16", "i64": "int64",
    "i32": "int32", "i8": "int8", "u8": "uint8", "boolean": "bool", "string": "object",
}  # fmt: skip
# element types counted as parameters: floating point weights and int8 (quantised) weights
_PARAM_TYPES = ("f32", "f16", "bf16", "f64", "i8", "u8", "i4", "u4")


def openvino_missing(nncf: bool = False) -> str | None:
    """None when OpenVINO (and, with ``nncf=True``, NNCF) can be imported, else why not.
    Cheap: it looks for the packages without importing them."""
    for name in ("openvino", "nncf") if nncf else ("openvino",):
        if name in sys.modules and sys.modules[name] is None:  # blocked on purpose
            return f"not installed: {INSTALL}"
        try:
            found = name in sys.modules or importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            return f"not installed: {INSTALL}"
    return None


def _ov() -> Any:
    try:
        import openvino
    except ImportError as exc:
        raise MissingDependencyError(
            f"OpenVINO is not installed ({INSTALL}): this OpenVINO model needs it ({exc})"
        ) from exc
    return openvino


@functools.cache
def core() -> Any:
    """One OpenVINO Core per process (thread-safe; it holds the loaded plugins)."""
    return _ov().Core()


def one_line(exc: BaseException) -> str:
    """An OpenVINO/NNCF error as one readable line: the 'Exception from src/...' and
    "Check '...' failed at src/..." location lines dropped."""
    lines = [line.strip() for line in str(exc).splitlines()]
    kept = [
        line
        for line in lines
        if line and not line.startswith("Exception from src/") and " failed at src/" not in line
    ]
    return ("; ".join(kept) or type(exc).__name__)[:400]


class _Compiled:
    """One compilation (static shapes, or the model's own) with one request per thread."""

    def __init__(self, compiled: Any, static: bool, dtypes: list[np.dtype[Any] | None]) -> None:
        self.compiled, self.static, self.dtypes = compiled, static, dtypes
        self._local = threading.local()

    def request(self) -> tuple[Any, list[np.ndarray], list[np.ndarray], list[Any]]:
        """This thread's request and, for static shapes, views of its input and output
        tensors (they stay in place from call to call) with each output's cast (None: the
        dtype already matches the spec)."""
        mine = getattr(self._local, "mine", None)
        if mine is None:
            req = self.compiled.create_infer_request()
            ins: list[np.ndarray] = []
            outs: list[np.ndarray] = []
            if self.static:
                ins = [req.get_input_tensor(i).data for i in range(len(self.compiled.inputs))]
                outs = [req.get_output_tensor(i).data for i in range(len(self.dtypes))]
            casts = [
                None if want is None or (outs and outs[i].dtype == want) else want
                for i, want in enumerate(self.dtypes)
            ]
            mine = self._local.mine = (req, ins, outs, casts)
        return mine


def low_level_infer() -> Any:
    """The compiled request's infer underneath the Python wrapper (its data dispatcher costs
    more than the MLP's arithmetic), or None where this OpenVINO build lacks it."""
    try:
        from openvino._pyopenvino import InferRequest

        return InferRequest.infer
    except (ImportError, AttributeError):  # pragma: no cover - other builds
        return None


class OpenVinoModel(Model):
    """An OpenVINO model: from an IR file, an ONNX model (``from_onnx``) or an ``ov.Model``
    in memory (what NNCF returns). See the module docstring for the call path."""

    framework = "openvino"

    def __init__(
        self,
        model: str | Path | Any,
        *,
        threads: int | None = None,
        task: str | None = None,
        spin: bool = True,
        precision: str | None = None,
        max_shapes: int = 8,
        static_after: int = 16,
        inputs: list[TensorSpec] | None = None,
        outputs: list[TensorSpec] | None = None,
    ) -> None:
        self.path: Path | None = None
        if isinstance(model, str | Path):
            self.path = Path(model)
            model = _read_ir(self.path)
        self._model = model
        self.threads, self.task, self.spin = threads, task, spin
        self.max_shapes, self.static_after = max(1, int(max_shapes)), max(1, int(static_after))
        stored = _stored_io(model)
        if inputs is not None and outputs is not None:
            stored = {**stored, "inputs": [s.to_dict() for s in inputs],
                      "outputs": [s.to_dict() for s in outputs]}  # fmt: skip
        if precision is not None:
            stored["precision"] = precision
        self.precision = str(stored.get("precision", "f32"))
        if self.precision not in PRECISIONS:
            raise ModelLoadError(
                f"OpenVINO precision {self.precision!r} is not one of: {', '.join(PRECISIONS)}"
            )
        self._specs = _specs(model, stored)
        stored.update(inputs=[s.to_dict() for s in self._specs[0]],
                      outputs=[s.to_dict() for s in self._specs[1]], precision=self.precision)  # fmt: skip
        if _stored_io(model) != stored:
            model.set_rt_info(json.dumps(stored), RT_KEY)
        self._in_names = [s.name for s in self._specs[0]]
        self._dtypes: list[np.dtype[Any] | None] = [
            None if s.dtype in ("object", "bfloat16") else np.dtype(s.dtype) for s in self._specs[1]
        ]
        self._lock = threading.Lock()
        self._static: collections.OrderedDict[tuple[Any, ...], _Compiled] = (
            collections.OrderedDict()
        )
        self._hits: dict[tuple[Any, ...], int] = {}
        self._dynamic: _Compiled | None = None
        self.evictions = 0
        self._infer = low_level_infer()
        self._files: tuple[str, int] | None = None  # (sha256, bytes) of xml + bin

    # -- construction ---------------------------------------------------------------
    @classmethod
    def from_onnx(cls, onnx_model: Any, **kwargs: Any) -> OpenVinoModel:
        """Read a verified ``OnnxModel`` into OpenVINO; inputs and outputs keep its names,
        dtypes and symbolic dims. ConversionError (one line) when OpenVINO cannot read it."""
        try:
            ov_model = core().read_model(onnx_model.data)
        except MissingDependencyError:
            raise
        except Exception as exc:
            raise ConversionError(f"OpenVINO cannot read this ONNX model: {one_line(exc)}") from exc
        if len(ov_model.outputs) != len(onnx_model.outputs):
            raise ConversionError(
                f"OpenVINO reads {len(ov_model.outputs)} outputs from an ONNX model that has "
                f"{len(onnx_model.outputs)}; it cannot run this model as it is"
            )
        kwargs.setdefault("task", onnx_model.task)
        kwargs.setdefault("threads", onnx_model.threads)
        return cls(ov_model, inputs=onnx_model.inputs, outputs=onnx_model.outputs, **kwargs)

    def with_threads(self, threads: int | None, spin: bool | None = None) -> OpenVinoModel:
        """The same model with other threading options (``OnnxModel.with_threads``'s
        signature). OpenVINO has no spin switch; ``spin=False`` turns off its pinning of
        inference threads to cores, which would claim the core a server's event loop needs."""
        clone = OpenVinoModel(
            self._model, threads=threads, task=self.task,
            spin=self.spin if spin is None else spin, precision=self.precision,
            max_shapes=self.max_shapes, static_after=self.static_after,
        )  # fmt: skip
        clone.path, clone._files = self.path, self._files
        return clone

    @property
    def ov_model(self) -> Any:
        """The ``ov.Model`` (never reshaped: compilations work on clones)."""
        return self._model

    def config(self, **extra: Any) -> dict[str, Any]:
        """The properties every compilation of this model gets."""
        cfg: dict[str, Any] = {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": self.precision,
        }
        if self.threads:
            cfg["INFERENCE_NUM_THREADS"] = int(self.threads)
        if not self.spin:
            cfg["ENABLE_CPU_PINNING"] = False
        cfg.update(extra)
        return cfg

    def compile(self, shapes: tuple[Any, ...] | None = None, **extra: Any) -> Any:
        """A compiled model for ``shapes`` (one per input; None: the model's own shapes)."""
        ov = _ov()
        clone = self._model.clone()
        if shapes is not None:
            clone.reshape({clone.inputs[i]: ov.PartialShape(list(s)) for i, s in enumerate(shapes)})
        return core().compile_model(clone, "CPU", self.config(**extra))

    # -- Model interface --------------------------------------------------------------
    @property
    def inputs(self) -> list[TensorSpec]:
        return self._specs[0]

    @property
    def outputs(self) -> list[TensorSpec]:
        return self._specs[1]

    def run(self, feeds: Feeds) -> list[np.ndarray]:
        arrays = [feeds[n] for n in self._in_names]
        key = tuple(a.shape for a in arrays)
        entry = self._static.get(key)
        if entry is None:
            entry = self._miss(key)
        else:
            try:  # noqa: SIM105 - contextlib.suppress costs more on this hot path
                self._static.move_to_end(key)
            except KeyError:  # evicted by another thread meanwhile: this call still runs on it
                pass
        req, ins, outs, casts = entry.request()
        if entry.static:
            for view, arr in zip(ins, arrays, strict=True):
                np.copyto(view, arr, casting="unsafe")
        else:
            for i, arr in enumerate(arrays):
                tensor = req.get_input_tensor(i)
                tensor.shape = arr.shape
                np.copyto(tensor.data, arr, casting="unsafe")
        if self._infer is not None:
            self._infer(req, {}, True, False)
        else:  # pragma: no cover - other builds
            req.infer()
        if not entry.static:
            outs = [req.get_output_tensor(i).data for i in range(len(casts))]
        return [o.copy() if c is None else o.astype(c) for o, c in zip(outs, casts, strict=True)]

    def _miss(self, key: tuple[Any, ...]) -> _Compiled:
        """The compilation for a shape not compiled statically (yet): the dynamic one, or
        a new static one once the shape is hot."""
        with self._lock:
            entry = self._static.get(key)
            if entry is not None:
                return entry
            if not self._model.is_dynamic():  # one compilation, for its one valid shape
                if self._dynamic is None:
                    self._dynamic = _Compiled(self._compile_or_raise(None), True, self._dtypes)
                own = tuple(tuple(p.get_shape()) for p in self._model.inputs)
                if key == own:
                    self._static[key] = self._dynamic
                return self._dynamic
            hits = self._hits.get(key, 0) + 1
            if len(self._hits) > 4096:
                self._hits.clear()
            self._hits[key] = hits
            thrashing = self.evictions > 4 * self.max_shapes
            if hits >= self.static_after and not thrashing:
                try:
                    entry = _Compiled(self.compile(key), True, self._dtypes)
                except Exception:  # a shape the graph cannot be fixed to: stay dynamic
                    self._hits[key] = -(1 << 30)
                else:
                    self._static[key] = entry
                    if len(self._static) > self.max_shapes:
                        evicted, _ = self._static.popitem(last=False)
                        self._hits.pop(evicted, None)
                        self.evictions += 1
                    return entry
            if self._dynamic is None:
                self._dynamic = _Compiled(self._compile_or_raise(None), False, self._dtypes)
            return self._dynamic

    def _compile_or_raise(self, shapes: tuple[Any, ...] | None) -> Any:
        try:
            return self.compile(shapes)
        except MissingDependencyError:
            raise
        except Exception as exc:
            where = f" ({self.path})" if self.path else ""
            raise ModelLoadError(
                f"OpenVINO cannot compile this model{where}: {one_line(exc)}"
            ) from exc

    def compiled_shapes(self) -> list[tuple[Any, ...]]:
        """The input shapes that have a static compilation now (least recently used first)."""
        return list(self._static)

    def to_onnx(self, example: Feeds, path: str | Path | None = None) -> Any:
        raise UnsupportedError(
            "an OpenVINO IR is not converted back to ONNX: use the ONNX model it came from "
            "(a package keeps it as its baseline)"
        )

    def size_bytes(self) -> int:
        """Bytes of the IR: model.xml + model.bin."""
        return self._digest()[1]

    def digest(self) -> str:
        """sha256 over model.xml then model.bin (the content, for cache keys)."""
        return self._digest()[0]

    def _digest(self) -> tuple[str, int]:
        if self._files is None:
            with tempfile.TemporaryDirectory(prefix="nimbleml-ov-") as tmp:
                if self.path is not None and self.path.with_suffix(".bin").is_file():
                    files = [self.path, self.path.with_suffix(".bin")]
                else:
                    xml = self.save(Path(tmp), "model")
                    files = [Path(tmp) / xml, Path(tmp) / "model.bin"]
                h = hashlib.sha256()
                for f in files:
                    h.update(f.read_bytes())
                self._files = (h.hexdigest(), sum(f.stat().st_size for f in files))
        return self._files

    def num_parameters(self) -> int:
        """Elements of every Constant of a floating point or (u)int8/4 element type: weights,
        biases, and in an int8 model the int8 weights plus their float scales and the
        FakeQuantize ranges. Integer shape and index constants (i32/i64) are not counted."""
        return sum(
            int(np.prod(op.get_output_shape(0)))
            for op in self._model.get_ordered_ops()
            if op.get_type_name() == "Constant"
            and op.get_output_element_type(0).get_type_name() in _PARAM_TYPES
        )

    def save(self, directory: Path, stem: str) -> str:
        """``stem.xml`` and ``stem.bin`` in ``directory`` (weights as they are: no fp16
        compression, which ``ov.save_model`` does by default)."""
        name = f"{stem}.xml"
        _ov().save_model(self._model, str(Path(directory) / name), compress_to_fp16=False)
        return name

    def op_types(self) -> list[str]:
        return [op.get_type_name() for op in self._model.get_ordered_ops()]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "precision": self.precision}


def _read_ir(path: Path) -> Any:
    """An ``ov.Model`` from ``model.xml`` (+ ``model.bin`` beside it), or ModelLoadError in
    one line. The weights path is given explicitly: OpenVINO then asks only its IR reader
    (a damaged .xml otherwise goes to every frontend, which log to stderr)."""
    if not path.is_file():
        raise ModelLoadError(f"OpenVINO IR file not found: {path}")
    weights = path.with_suffix(".bin")
    if not weights.is_file():
        raise ModelLoadError(f"{path.name}: its weights file {weights.name} is missing beside it")
    with open(path, "rb") as fh:
        head = fh.read(256).lstrip()
    if not (head.startswith(b"<?xml") or head.startswith(b"<net")):
        raise ModelLoadError(f"{path} is not an OpenVINO IR (.xml) file")
    try:
        return core().read_model(str(path), str(weights))
    except MissingDependencyError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"OpenVINO cannot read {path.name}: {one_line(exc)}") from exc


def _stored_io(model: Any) -> dict[str, Any]:
    if not model.has_rt_info(RT_KEY):
        return {}
    try:
        value = json.loads(model.get_rt_info(RT_KEY).astype(str))
    except (ValueError, RuntimeError):
        return {}
    return value if isinstance(value, dict) else {}


def _specs(model: Any, stored: dict[str, Any]) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The stored specs when they match the graph's arity, else specs read off the graph."""
    ins = [TensorSpec.from_dict(d) for d in stored.get("inputs", [])]
    outs = [TensorSpec.from_dict(d) for d in stored.get("outputs", [])]
    if len(ins) == len(model.inputs) and len(outs) == len(model.outputs):
        return ins, outs
    return [_spec(p, "input", i) for i, p in enumerate(model.inputs)], [
        _spec(r, "output", i) for i, r in enumerate(model.outputs)
    ]


def _spec(port: Any, role: str, index: int) -> TensorSpec:
    """A TensorSpec from a graph port: dynamic dims named batch (the first) or dimN."""
    names = sorted(port.get_names())
    shape = tuple(
        d.get_length() if d.is_static else ("batch" if i == 0 else f"dim{i}")
        for i, d in enumerate(port.get_partial_shape())
    )
    kind = port.get_element_type().get_type_name()
    return TensorSpec(names[0] if names else f"{role}_{index}", _OV_TYPES.get(kind, kind), shape)
