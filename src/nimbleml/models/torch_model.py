"""PyTorch models: nn.Module in memory, TorchScript files, torch.export (.pt2) files."""

from __future__ import annotations

import contextlib
import inspect
import io
import itertools
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .._deps import require
from ..errors import (
    ConfigError,
    ConversionError,
    DataError,
    ModelLoadError,
    UntrustedPickleError,
)
from ..inputs import Feeds, TensorSpec, as_feeds, to_numpy
from .base import Model
from .onnx_model import OnnxModel

EXPORTERS = ("legacy", "dynamo")


def _torch() -> Any:
    return require("torch", "this PyTorch feature")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence torch's deprecation chatter and exporter progress prints during export."""
    import logging

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(previous)


def _like_weights(feeds: Feeds, module: Any) -> Feeds:
    """float64 examples (numpy's default) for a model with float32 weights become float32:
    the model's input is float32, and torch would refuse a double tensor."""
    torch = _torch()
    dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), None)
    if dtype is None or dtype == torch.float64:
        return feeds
    target = np.float32 if dtype != torch.float16 else np.float16
    out = dict(feeds)
    for name, arr in feeds.items():
        if arr.dtype == np.float64:
            with np.errstate(over="raise"):
                try:
                    out[name] = arr.astype(target)
                except FloatingPointError:
                    raise DataError(
                        f"input '{name}' holds values beyond the range of {np.dtype(target)}, "
                        f"the model's weights' type (largest {np.nanmax(np.abs(arr)):g}); "
                        "rescale or clip the data"
                    ) from None
    return out


def _flatten(out: Any) -> tuple[list[str], list[Any]]:
    """Output names and tensors from a tensor, a tuple/list, or a dict / ModelOutput."""
    if isinstance(out, Mapping) or hasattr(out, "to_tuple"):
        items = [(str(k), v) for k, v in dict(out).items() if v is not None]
        return [k for k, _ in items], [v for _, v in items]
    if isinstance(out, tuple | list):
        return [f"output_{i}" for i in range(len(out))], list(out)
    return ["output"], [out]


class TorchModel(Model):
    """An nn.Module (or TorchScript module) with example inputs that fix its input names."""

    framework = "torch"

    def __init__(
        self,
        module: Any,
        example_inputs: Any,
        device: str = "cpu",
        input_names: list[str] | None = None,
    ) -> None:
        torch = _torch()
        if not isinstance(module, torch.nn.Module):
            raise ModelLoadError(f"expected a torch.nn.Module, got {type(module).__name__}")
        if example_inputs is None:
            raise ConfigError(
                "a PyTorch model needs example inputs to fix its input names and shapes: "
                "pass example_inputs=, calib= or val="
            )
        with contextlib.suppress(NotImplementedError):  # torch.export modules have no eval()
            module = module.eval()
        target = torch.device(device)
        tensors = itertools.chain(module.parameters(), module.buffers())
        if any(t.device.type != target.type for t in tensors):  # .to() on a model already
            module = module.to(device)  # there warns about .grad of TorchScript weights
        self.module = module
        self.device = device
        self.by_name = isinstance(example_inputs, Mapping)
        names = input_names or self._input_names(example_inputs)
        self.example: Feeds = _like_weights(as_feeds(example_inputs, names), module)
        self._inputs = [self._spec(n, a) for n, a in self.example.items()]
        try:
            first_outputs = self._call(self.example)
        except Exception as exc:  # wrong data for this model: say so in one line
            raise DataError(self._mismatch(exc)) from None
        out_names, outs = _flatten(first_outputs)
        self._outputs = [
            TensorSpec(n, str(to_numpy(o).dtype), ("batch", *o.shape[1:]))
            for n, o in zip(out_names, outs, strict=True)
        ]

    def _mismatch(self, exc: Exception) -> str:
        """What the data is, what the model's first layer takes, and torch's own words."""
        given = ", ".join(
            f"'{n}' has shape {tuple(a.shape)} ({a.dtype})" for n, a in self.example.items()
        )
        wants = ""
        from .torch_inputs import first_layer, layer_kind

        found = first_layer(self.module)
        if found is not None and layer_kind(found[1]) == "Linear":
            name, layer = found
            width = int(layer.weight.shape[1])
            wants = f"; its first layer {name} (Linear) takes {width} features on the last axis"
        detail = str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else type(exc).__name__
        return f"the model cannot run on these inputs: {given}{wants} ({detail})"

    def _input_names(self, example: Any) -> list[str]:
        if isinstance(example, Mapping):
            return [str(k) for k in example]
        count = len(example) if isinstance(example, tuple | list) else 1
        try:
            params = [
                p.name
                for p in inspect.signature(self.module.forward).parameters.values()
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
            ]
        except (TypeError, ValueError):
            params = []
        if len(params) >= count:
            return params[:count]
        return ["input"] if count == 1 else [f"input_{i}" for i in range(count)]

    def with_module(self, module: Any) -> TorchModel:
        """The same inputs and example, another module (a compressed copy of this one)."""
        example = dict(self.example) if self.by_name else tuple(self.example.values())
        clone = TorchModel(module, example, self.device, input_names=self.input_names)
        clone.task = self.task
        return clone

    @staticmethod
    def _spec(name: str, arr: np.ndarray) -> TensorSpec:
        shape: list[int | str | None] = ["batch", *arr.shape[1:]]
        if arr.ndim >= 2 and np.issubdtype(arr.dtype, np.integer):
            shape[1] = "seq"
        return TensorSpec(name, str(arr.dtype), tuple(shape))

    def _tensors(self, feeds: Feeds) -> dict[str, Any]:
        torch = _torch()
        return {
            k: torch.from_numpy(np.ascontiguousarray(v)).to(self.device) for k, v in feeds.items()
        }

    def _call(self, feeds: Feeds) -> Any:
        torch = _torch()
        tensors = self._tensors(feeds)
        with torch.inference_mode():
            if self.by_name:
                return self.module(**tensors)
            return self.module(*tensors.values())

    @property
    def inputs(self) -> list[TensorSpec]:
        return list(self._inputs)

    @property
    def outputs(self) -> list[TensorSpec]:
        return list(self._outputs)

    def run(self, feeds: Feeds) -> list[np.ndarray]:
        _, outs = _flatten(self._call(feeds))
        return [to_numpy(o.float() if o.dtype.is_floating_point else o) for o in outs]

    def to_onnx(
        self, example: Feeds, path: str | Path | None = None, exporter: str = "legacy"
    ) -> OnnxModel:
        torch = _torch()
        if exporter not in EXPORTERS:
            raise ConfigError(
                f"unknown exporter '{exporter}'; choose one of: {', '.join(EXPORTERS)}"
            )
        args = tuple(self._tensors(example).values())
        dynamic_axes = {
            s.name: {i: d for i, d in enumerate(s.shape) if isinstance(d, str)}
            for s in self._inputs
        }
        dynamic_axes.update({s.name: {0: "batch"} for s in self._outputs})
        buffer = io.BytesIO()
        kwargs: dict[str, Any] = {
            "input_names": self.input_names,
            "output_names": self.output_names,
            "dynamic_axes": dynamic_axes,
            "dynamo": exporter == "dynamo",
        }
        if exporter == "legacy":
            kwargs["opset_version"] = 17
        try:
            with quiet():
                if self.by_name:
                    torch.onnx.export(
                        self.module,
                        (),
                        buffer,
                        kwargs=dict(zip(self.input_names, args, strict=True)),
                        **kwargs,
                    )
                else:
                    torch.onnx.export(self.module, args, buffer, **kwargs)
        except Exception as exc:
            raise ConversionError(
                f"torch.onnx.export ({exporter}) failed: {str(exc).splitlines()[0][:400]}"
            ) from exc
        data = buffer.getvalue()
        if path is not None:
            Path(path).write_bytes(data)
        return OnnxModel(data, task=self.task)

    def size_bytes(self) -> int:
        buffer = io.BytesIO()
        _torch().save(self.module.state_dict(), buffer)
        return buffer.tell()

    def num_parameters(self) -> int:
        return sum(_count(v) for v in self.module.state_dict().values())

    def save(self, directory: Path, stem: str) -> str:
        """Save as TorchScript, traced on the example inputs, then checked by comparing its
        outputs with the module's. torch's own trace check is off: it compares the two graphs'
        text and fails on a TransformerEncoder whose only difference is a mangled class name
        (``___torch_mangle_120``), which made optimize crash when the original won."""
        torch = _torch()
        name = f"{stem}.ts"
        tensors = tuple(self._tensors(self.example).values())
        with quiet():
            if isinstance(self.module, torch.jit.ScriptModule):
                scripted = self.module
            else:
                scripted = torch.jit.trace(self.module, tensors, strict=False, check_trace=False)
                with torch.inference_mode():
                    want = _flatten(self.module(*tensors))[1]
                    got = _flatten(scripted(*tensors))[1]
                if len(want) != len(got) or not all(
                    torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-5)
                    for a, b in zip(want, got, strict=True)
                ):
                    raise ConversionError(
                        "the TorchScript trace of this module computes other outputs than the "
                        "module on its example inputs; it cannot be saved as TorchScript"
                    )
            torch.jit.save(scripted, str(directory / name))
        return name


def _count(value: Any) -> int:
    if hasattr(value, "numel"):
        return int(value.numel())
    if isinstance(value, tuple | list):
        return sum(_count(v) for v in value)
    return 0


def load_torch_file(
    path: str | Path, example_inputs: Any, trust_pickle: bool = False
) -> TorchModel:
    """Load a TorchScript file, a torch.export .pt2 file, or (trusted only) a pickled module."""
    torch = _torch()
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}")
    kind = torch_file_kind(path)
    try:
        with quiet():
            if kind == "torchscript":
                module = torch.jit.load(str(path), map_location="cpu")
            elif kind == "export":
                module = torch.export.load(str(path)).module()
            elif trust_pickle:
                module = torch.load(str(path), map_location="cpu", weights_only=False)
            else:
                raise UntrustedPickleError(
                    f"{path} is a pickled PyTorch object; unpickling runs arbitrary code. Save "
                    "it with torch.jit.save or torch.export.save, or pass trust_pickle=True "
                    "(--trust-pickle) if you trust where it came from"
                )
    except UntrustedPickleError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"cannot load {path} as a {kind} model: {exc}") from exc
    if not isinstance(module, torch.nn.Module):
        raise ModelLoadError(f"{path} holds a {type(module).__name__}, not a torch.nn.Module")
    return TorchModel(module, example_inputs)


def torch_file_kind(path: Path) -> str:
    """'torchscript', 'export' or 'pickle', from the archive's layout (no unpickling)."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except zipfile.BadZipFile:
        return "pickle"
    if any("/code/" in n or n.endswith("constants.pkl") for n in names):
        return "torchscript"
    if any(n.endswith("models/model.json") or "serialized_exported_program" in n for n in names):
        return "export"
    return "pickle"
