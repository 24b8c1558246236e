"""Model adapters: one per framework, one interface (see base.Model)."""

from .base import Model
from .loader import load_model
from .onnx_model import OnnxModel

__all__ = ["Model", "OnnxModel", "load_model"]
