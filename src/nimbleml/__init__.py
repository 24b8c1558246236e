"""nimbleml: make trained models small and fast for production, and prove it.

    import nimbleml
    pkg = nimbleml.compress(model, quantize="int8", val=(X, y), max_drop=0.01)
    pkg.save("model.nimble")
    best = nimbleml.optimize(model, val=(X, y), max_drop=0.01).best   # searched, verified, timed
    report = nimbleml.benchmark([model, pkg], X, batch_sizes=(1, 32))
    predictor = nimbleml.OptimizedPredictor(model=pkg, batch_size=32, use_cache=True)

Heavy dependencies (torch, scikit-learn, matplotlib) load only when a feature needs them.
"""

from typing import TYPE_CHECKING as _TYPE_CHECKING

from ._version import __version__
from .bench import BenchmarkReport, PerformanceMetrics, TimingConfig, benchmark
from .compress import ModelCompressor, Quantization, compress, get_recipe
from .deploy import deploy
from .errors import (
    AccuracyBudgetError,
    BenchmarkError,
    ConfigError,
    ConversionError,
    DataError,
    MissingDependencyError,
    ModelLoadError,
    NimbleError,
    PackageError,
    ServingError,
    StorageError,
    UnsupportedError,
    UntrustedPickleError,
    UserCodeError,
)
from .models import Model, load_model
from .optimizer import OptimizationResult, optimize
from .package import Package, load

if _TYPE_CHECKING:  # type checkers see the real classes; at run time they load on first use
    from .batch import PredictResult, predict_file
    from .cost import CostEstimate, estimate_cost
    from .monitor import ModelMonitor
    from .profile import ProfileReport, profile
    from .runtime import EnsemblePredictor, OptimizedPredictor
    from .search import DistillResult, QATResult, distill, qat, search_architecture, students, tune
    from .train import Trainer, TrainResult, find_batch_size, train

# in-process inference and monitoring, imported on first use (``import nimbleml`` stays cheap)
_LAZY = {
    "OptimizedPredictor": "runtime",
    "EnsemblePredictor": "runtime",
    "ModelMonitor": "monitor",
    "Trainer": "train",
    "TrainResult": "train",
    "find_batch_size": "train",
    "distill": "search",
    "DistillResult": "search",
    "tune": "search",
    "search_architecture": "search",
    "qat": "search",
    "QATResult": "search",
    "predict_file": "batch",
    "PredictResult": "batch",
    "ProfileReport": "profile",
    "estimate_cost": "cost",
    "CostEstimate": "cost",
}


def __getattr__(name: str) -> object:
    if name == "train":  # the package, callable as the function (nimbleml.train(model, data))
        import importlib

        return importlib.import_module(".train", __name__)
    if name == "profile":  # the package, callable as the function (nimbleml.profile(model, X))
        import importlib

        return importlib.import_module(".profile", __name__)
    if name == "students":  # nimbleml.students.shrink(teacher, width=0.5, depth=0.5)
        import importlib

        return importlib.import_module(".search.students", __name__)
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'nimbleml' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | {"train", "students", "profile"})


__all__ = [
    "AccuracyBudgetError",
    "BenchmarkError",
    "BenchmarkReport",
    "ConfigError",
    "ConversionError",
    "CostEstimate",
    "DataError",
    "DistillResult",
    "EnsemblePredictor",
    "MissingDependencyError",
    "Model",
    "ModelCompressor",
    "ModelLoadError",
    "ModelMonitor",
    "NimbleError",
    "OptimizationResult",
    "OptimizedPredictor",
    "Package",
    "PackageError",
    "PerformanceMetrics",
    "PredictResult",
    "ProfileReport",
    "QATResult",
    "Quantization",
    "ServingError",
    "StorageError",
    "TimingConfig",
    "TrainResult",
    "Trainer",
    "UnsupportedError",
    "UntrustedPickleError",
    "UserCodeError",
    "__version__",
    "benchmark",
    "compress",
    "deploy",
    "distill",
    "estimate_cost",
    "find_batch_size",
    "get_recipe",
    "load",
    "load_model",
    "optimize",
    "predict_file",
    "profile",
    "qat",
    "search_architecture",
    "students",
    "train",
    "tune",
]
