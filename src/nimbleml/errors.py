"""One exception tree for nimbleml. Every message names the bad value, what is allowed, and the fix.

NimbleError
 ├── ConfigError (ValueError)          a bad argument, flag, or option value
 ├── DataError (ValueError)            input data of the wrong shape, dtype, or file format
 ├── MissingDependencyError (ImportError)   an optional extra is not installed
 ├── ModelLoadError                    a model file or object nimbleml cannot (or will not) load
 │    └── UntrustedPickleError         a pickle/joblib file without trust_pickle=True
 ├── ConversionError                   export to ONNX failed or disagrees with the original
 ├── UnsupportedError                  a recipe that does not apply to this model or machine
 ├── AccuracyBudgetError               a metric cannot be computed or a budget is malformed
 ├── PackageError                      a .nimble package is missing, altered, or malformed
 └── BenchmarkError                    a benchmark could not be run as asked
"""

from __future__ import annotations

__all__ = [
    "AccuracyBudgetError",
    "BenchmarkError",
    "ConfigError",
    "ConversionError",
    "DataError",
    "MissingDependencyError",
    "ModelLoadError",
    "NimbleError",
    "PackageError",
    "ServingError",
    "UnsupportedError",
    "UntrustedPickleError",
]


class NimbleError(Exception):
    """Base of every error nimbleml raises on purpose."""


class ConfigError(NimbleError, ValueError):
    """A bad argument, CLI flag, or configuration value."""


class DataError(NimbleError, ValueError):
    """Input data of the wrong shape, dtype, or file format."""


class MissingDependencyError(NimbleError, ImportError):
    """An optional dependency is needed for this feature and is not installed."""


class ModelLoadError(NimbleError):
    """A model that cannot, or will not, be loaded."""


class UntrustedPickleError(ModelLoadError):
    """A pickle or joblib file was given without saying it is trusted."""


class ConversionError(NimbleError):
    """Conversion to ONNX failed, or the converted model disagrees with the original."""


class UnsupportedError(NimbleError):
    """A recipe or runtime that does not apply to this model or this machine."""


class AccuracyBudgetError(NimbleError):
    """A metric that cannot be computed, or an accuracy budget that is malformed."""


class PackageError(NimbleError):
    """A .nimble package that is missing, altered, or malformed."""


class BenchmarkError(NimbleError):
    """A benchmark that cannot be run as asked."""


class ServingError(NimbleError):
    """The model server cannot take or answer a request (queue full, shutting down...)."""


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` pointing at the first frame outside nimbleml: the user's line that
    called us, never a line of our source (issue 11)."""
    import sys
    import warnings

    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith("nimbleml"):
        frame, level = frame.f_back, level + 1  # type: ignore[assignment]
    warnings.warn(message, category, stacklevel=level + 1)
