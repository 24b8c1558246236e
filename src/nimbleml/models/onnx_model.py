"""ONNX models, run with ONNX Runtime."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelLoadError
from ..inputs import Feeds, TensorSpec
from .base import Model

_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(bfloat16)": "bfloat16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
    "tensor(string)": "object",
}


def session_options(threads: int | None = None, optimize: str = "all", spin: bool = True) -> Any:
    """ONNX Runtime options. ``spin=False`` keeps idle intra-op workers from busy-waiting:
    right for a server, whose event loop needs the core between batches."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 4  # failures surface as exceptions, not log spam
    levels = {
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    so.graph_optimization_level = levels[optimize]
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    if not spin or (threads or 0) > 1:
        # busy-waiting workers steal the core from the caller between small requests
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def default_providers() -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class OnnxModel(Model):
    """An ONNX model held as bytes (and, once saved, a file), run by ONNX Runtime."""

    framework = "onnx"

    def __init__(
        self,
        model: bytes | str | Path,
        *,
        providers: list[str] | None = None,
        threads: int | None = None,
        task: str | None = None,
        spin: bool = True,
    ) -> None:
        if isinstance(model, bytes):
            self.data, self.path = model, None
        else:
            path = Path(model)
            if not path.is_file():
                raise ModelLoadError(f"ONNX file not found: {path}")
            self.data, self.path = path.read_bytes(), path
        self.providers = providers
        self.threads = threads
        self.task = task
        self.spin = spin
        self._session: Any = None
        self._specs: tuple[list[TensorSpec], list[TensorSpec]] | None = None
        self._runner: Any = None
        self._lock = threading.Lock()

    # -- session ------------------------------------------------------------------
    @property
    def session(self) -> Any:
        if self._session is None:
            with self._lock:
                if self._session is None:
                    self._session = self._make_session()
        return self._session

    def _make_session(self) -> Any:
        import onnxruntime as ort

        try:
            return ort.InferenceSession(
                self.data,
                session_options(self.threads, spin=self.spin),
                providers=self.providers or default_providers(),
            )
        except Exception as exc:
            where = f" ({self.path})" if self.path else ""
            raise ModelLoadError(
                f"ONNX Runtime cannot load this model{where}: {str(exc).splitlines()[0][:400]}"
            ) from exc

    def with_threads(self, threads: int | None, spin: bool | None = None) -> OnnxModel:
        """A new session over the same bytes, with other threading options."""
        clone = OnnxModel(
            self.data, providers=self.providers, threads=threads, task=self.task,
            spin=self.spin if spin is None else spin,
        )  # fmt: skip
        clone.path = self.path
        return clone

    # -- Model interface --------------------------------------------------------------
    def _io(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        if self._specs is None:
            session = self.session
            self._specs = (
                [_spec(i) for i in session.get_inputs()],
                [_spec(o) for o in session.get_outputs()],
            )
        return self._specs

    @property
    def inputs(self) -> list[TensorSpec]:
        return self._io()[0]

    @property
    def outputs(self) -> list[TensorSpec]:
        return self._io()[1]

    def run(self, feeds: Feeds) -> list[np.ndarray]:
        runner = self._runner or self._make_runner()
        return runner(feeds)

    def _make_runner(self) -> Any:
        """The session's run bound to its output names. InferenceSession.run re-validates
        the feeds on every call (about 10 µs at batch 1); nimbleml checked them already in
        feeds(), so call the compiled session underneath when this build exposes it."""
        import onnxruntime as ort

        session = self.session
        names = [o.name for o in session.get_outputs()]
        core = getattr(session, "_sess", None)
        if core is not None and callable(getattr(core, "run", None)):
            options = ort.RunOptions()
            run = lambda feeds: core.run(names, feeds, options)  # noqa: E731
        else:  # pragma: no cover - other onnxruntime builds
            run = lambda feeds: session.run(names, feeds)  # noqa: E731
        floats = {
            s.name: np.dtype(s.dtype) for s in self.inputs if s.dtype in ("float32", "float64")
        }
        if not floats:
            self._runner = run
            return run

        def conform(feeds: Feeds) -> list[np.ndarray]:
            # float64 feeds for a float graph (a scikit-learn model's own precision) and the
            # reverse are cast here: 60 ns a tensor when they already match
            for name, want in floats.items():
                arr = feeds.get(name)
                if arr is not None and arr.dtype != want:
                    feeds = {**feeds, name: arr.astype(want)}
            return run(feeds)

        self._runner = conform
        return conform

    def to_onnx(self, example: Feeds, path: str | Path | None = None) -> OnnxModel:
        return self

    def proto(self) -> Any:
        import onnx

        return onnx.load_from_string(self.data)

    def size_bytes(self) -> int:
        return len(self.data)

    def num_parameters(self) -> int:
        proto = self.proto()
        total = sum(int(np.prod(t.dims)) for t in proto.graph.initializer)
        total += sum(int(np.prod(s.values.dims)) for s in proto.graph.sparse_initializer)
        for node in proto.graph.node:  # ai.onnx.ml operators keep their numbers in attributes
            if node.domain == "ai.onnx.ml":
                total += sum(len(a.floats) + len(a.ints) for a in node.attribute)
        return total

    def save(self, directory: Path, stem: str) -> str:
        name = f"{stem}.onnx"
        (directory / name).write_bytes(self.data)
        return name

    def op_types(self) -> list[str]:
        return [n.op_type for n in self.proto().graph.node]


def _spec(arg: Any) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) else (str(d) if d else None) for d in arg.shape)
    return TensorSpec(arg.name, _ORT_TYPES.get(arg.type, arg.type), shape)


def load_onnx(path: str | Path, **kwargs: Any) -> OnnxModel:
    if not os.path.isfile(path):
        raise ModelLoadError(f"ONNX file not found: {path}")
    return OnnxModel(path, **kwargs)
