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
from .distill import DistillResult, QATResult, distill, qat, students
from .errors import (
    AccuracyBudgetError,
    BenchmarkError,
    ConfigError,
    ConversionError,
    DataError,
    MissingDependencyError,
    ModelLoadError,
    NimbleError,
    NimblemlWarning,
    PackageError,
    ServingError,
    StorageError,
    TrainingError,
    UnsupportedError,
    UntrustedPickleError,
    UserCodeError,
)
from .models import Model, load_model
from .optimizer import OptimizationResult, optimize
from .package import Package, load

# plain functions: the packages nimbleml.train and nimbleml.profile are imported here, once, so
# the names stay bound to the functions (none of these imports torch)
from .profile import ProfileReport, profile
from .search import search_architecture, tune
from .train import Trainer, TrainResult, find_batch_size, train

if _TYPE_CHECKING:  # type checkers see the real classes; at run time they load on first use
    from .batch import PredictResult, predict_file
    from .cost import CostEstimate, estimate_cost
    from .monitor import ModelMonitor
    from .runtime import EnsemblePredictor, OptimizedPredictor

# in-process inference and monitoring, imported on first use (``import nimbleml`` stays cheap)
_LAZY = {
    "OptimizedPredictor": "runtime",
    "EnsemblePredictor": "runtime",
    "ModelMonitor": "monitor",
    "predict_file": "batch",
    "PredictResult": "batch",
    "estimate_cost": "cost",
    "CostEstimate": "cost",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'nimbleml' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


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
    "NimblemlWarning",
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
    "TrainingError",
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
