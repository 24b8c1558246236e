"""Lazy imports of optional heavy dependencies, with an install hint when one is missing."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from .errors import MissingDependencyError

# module name -> (extra that provides it, pip name)
_EXTRAS = {
    "torch": ("torch", "torch==2.13.0"),
    "onnxscript": ("torch", "onnxscript"),
    "onnxconverter_common": ("torch", "onnxconverter-common"),
    "PIL": ("torch", "pillow"),  # image folders without torchvision
    "sklearn": ("sklearn", "scikit-learn"),
    "skl2onnx": ("sklearn", "skl2onnx"),
    "skops": ("sklearn", "skops"),
    "lightgbm": ("gbm", "lightgbm"),
    "xgboost": ("gbm", "xgboost-cpu"),
    "onnxmltools": ("gbm", "onnxmltools"),
    "matplotlib": ("report", "matplotlib"),
    "redis": ("cache", "redis"),
    "prometheus_client": ("monitor", "prometheus-client"),
    "psycopg": ("monitor", "psycopg[binary]"),
    "fastapi": ("serve", "fastapi"),
    "uvicorn": ("serve", "uvicorn"),
    "yaml": ("serve", "pyyaml"),
    "cryptography": ("sign", "cryptography"),
    "optuna": ("search", "optuna"),
    "openvino": ("openvino", "openvino"),
    "nncf": ("openvino", "nncf"),
    "tensorboard": ("train-logs", "tensorboard"),
    "mlflow": ("train-logs", "mlflow-skinny"),
}


def require(module: str, feature: str) -> ModuleType:
    """Import ``module`` or raise MissingDependencyError naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        extra, pip_name = _EXTRAS.get(top, (None, top))
        hint = f"pip install 'nimbleml[{extra}]'" if extra else f"pip install {pip_name}"
        if top == "torch":
            hint = "pip install torch==2.13.0 (then pip install 'nimbleml[torch]')"
        raise MissingDependencyError(
            f"{feature} needs the '{top}' package, which is not installed ({exc}). "
            f"Install it with: {hint}"
        ) from exc


def available(module: str) -> bool:
    """True when ``module`` can be imported (without importing it)."""
    return importlib.util.find_spec(module) is not None


def loaded(module: str) -> ModuleType | None:
    """The module if something already imported it, else None (never imports)."""
    import sys

    return sys.modules.get(module)
