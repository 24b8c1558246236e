"""Turn whatever the user hands over (object or file) into a Model adapter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._deps import loaded
from ..errors import ModelLoadError
from .base import Model
from .onnx_model import OnnxModel

TORCH_SUFFIXES = (".pt", ".pth", ".ts", ".pt2", ".ep")
PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib")


def load_model(
    model: Any,
    example_inputs: Any = None,
    *,
    trust_pickle: bool = False,
    trusted_types: list[str] | None = None,
) -> Model:
    """A Model adapter for an nn.Module, a scikit-learn estimator, an ONNX ModelProto, or a
    file (.onnx, .skops, TorchScript/.pt2, and .pkl/.joblib only with trust_pickle=True)."""
    if isinstance(model, Model):
        return model
    if isinstance(model, str | Path):
        return _load_file(Path(model), example_inputs, trust_pickle, trusted_types)
    torch = loaded("torch")
    if torch is not None and isinstance(model, torch.nn.Module):
        from .torch_model import TorchModel

        return TorchModel(model, example_inputs)
    onnx = loaded("onnx")
    if onnx is not None and isinstance(model, onnx.ModelProto):
        return OnnxModel(model.SerializeToString())
    from .sklearn_model import SklearnModel, is_sklearn

    if is_sklearn(model):
        return SklearnModel(model)
    raise ModelLoadError(
        f"nimbleml cannot adapt a {type(model).__module__}.{type(model).__name__}: pass a "
        "torch.nn.Module, a fitted scikit-learn estimator or pipeline, an onnx.ModelProto, or "
        "a path to a .onnx, .skops, TorchScript or .pt2 file"
    )


def _load_file(
    path: Path, example_inputs: Any, trust_pickle: bool, trusted_types: list[str] | None
) -> Model:
    if path.is_dir():
        raise ModelLoadError(f"{path} is a folder; to open a .nimble package use nimbleml.load()")
    if not path.exists():
        raise ModelLoadError(f"model file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return OnnxModel(path)
    if suffix == ".xml":  # an OpenVINO IR, its .bin beside it (the 'openvino' extra)
        from .openvino_model import OpenVinoModel

        return OpenVinoModel(path)
    if suffix == ".skops":
        from .sklearn_model import load_skops

        return load_skops(path, trusted_types)
    if suffix in TORCH_SUFFIXES:
        from .torch_model import load_torch_file

        return load_torch_file(path, example_inputs, trust_pickle)
    if suffix in PICKLE_SUFFIXES:
        from .sklearn_model import load_pickle

        return load_pickle(path, trust_pickle)
    raise ModelLoadError(
        f"unknown model file type '{suffix}' ({path}); nimbleml reads .onnx, OpenVINO .xml, "
        f".skops, {', '.join(TORCH_SUFFIXES)} and (with --trust-pickle) "
        f"{', '.join(PICKLE_SUFFIXES)}"
    )
