"""nimbleml: make trained models small and fast for production, and prove it.

    import nimbleml
    pkg = nimbleml.compress(model, quantize="int8", val=(X, y), max_drop=0.01)
    pkg.save("model.nimble")
    best = nimbleml.optimize(model, val=(X, y), max_drop=0.01).best   # searched, verified, timed
    report = nimbleml.benchmark([model, pkg], X, batch_sizes=(1, 32))

Heavy dependencies (torch, scikit-learn, matplotlib) load only when a feature needs them.
"""

__version__ = "0.1.0"

from .bench import BenchmarkReport, PerformanceMetrics, TimingConfig, benchmark
from .compress import ModelCompressor, Quantization, compress, get_recipe
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
    UnsupportedError,
    UntrustedPickleError,
)
from .models import Model, load_model
from .optimizer import OptimizationResult, optimize
from .package import Package, load

__all__ = [
    "AccuracyBudgetError",
    "BenchmarkError",
    "BenchmarkReport",
    "ConfigError",
    "ConversionError",
    "DataError",
    "MissingDependencyError",
    "Model",
    "ModelCompressor",
    "ModelLoadError",
    "NimbleError",
    "OptimizationResult",
    "Package",
    "PackageError",
    "PerformanceMetrics",
    "Quantization",
    "ServingError",
    "TimingConfig",
    "UnsupportedError",
    "UntrustedPickleError",
    "__version__",
    "benchmark",
    "compress",
    "get_recipe",
    "load",
    "load_model",
    "optimize",
]
