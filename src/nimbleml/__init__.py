"""nimbleml: make trained models small and fast for production, and prove it.

    import nimbleml
    pkg = nimbleml.compress(model, quantize="int8", val=(X, y), max_drop=0.01)
    pkg.save("model.nimble")
    report = nimbleml.benchmark([model, pkg], X, batch_sizes=(1, 32))

Heavy dependencies (torch, scikit-learn, matplotlib) load only when a feature needs them.
"""

__version__ = "0.1.0"

from .bench import BenchmarkReport, PerformanceMetrics, TimingConfig, benchmark  # noqa: E402
from .compress import ModelCompressor, Quantization, compress, get_recipe  # noqa: E402
from .errors import (  # noqa: E402
    AccuracyBudgetError,
    BenchmarkError,
    ConfigError,
    ConversionError,
    DataError,
    MissingDependencyError,
    ModelLoadError,
    NimbleError,
    PackageError,
    UnsupportedError,
    UntrustedPickleError,
)
from .models import Model, load_model  # noqa: E402
from .package import Package, load  # noqa: E402

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
    "Package",
    "PackageError",
    "PerformanceMetrics",
    "Quantization",
    "TimingConfig",
    "UnsupportedError",
    "UntrustedPickleError",
    "__version__",
    "benchmark",
    "compress",
    "get_recipe",
    "load",
    "load_model",
]
