"""One exception and warning tree for nimbleml: every class nimbleml raises or warns with is
here. Every message names the bad value, what is allowed, and the fix.

NimbleError
 ├── ConfigError (ValueError)          a bad argument, flag, or option value
 ├── DataError (ValueError)            input data of the wrong shape, dtype, or file format
 │    └── ProtocolError                an HTTP request that breaks the inference protocol (400)
 ├── MissingDependencyError (ImportError)   an optional extra is not installed
 ├── ModelLoadError                    a model file or object nimbleml cannot (or will not) load
 │    └── UntrustedPickleError         a pickle/joblib file without trust_pickle=True
 ├── ConversionError                   export to ONNX failed or disagrees with the original
 │    └── NoConverterError             skl2onnx has no converter for this estimator
 ├── UnsupportedError                  a recipe that does not apply to this model or machine
 ├── AccuracyBudgetError               a metric cannot be computed or a budget is malformed
 ├── PackageError                      a .nimble package is missing, altered, or malformed
 ├── BenchmarkError                    a benchmark could not be run as asked
 ├── ServingError                      the server cannot take or answer a request
 │    └── QueueFull                    no room in the batching queue (503 + Retry-After)
 ├── TrainingError                     training cannot go on (losses that stay non-finite)
 │    └── PeerLostError                another process of the torchrun group is gone
 ├── UserCodeError                     the user's model, data, function or file raised while run
 └── StorageError                      a write failed: disk full, read-only or not permitted

NimblemlWarning (UserWarning)          base of every warning nimbleml gives
 ├── FallbackWarning (RuntimeWarning)  the optimized model cannot run here; the baseline does
 ├── ConversionWarning                 no ONNX conversion: the original form is packaged
 ├── SyntheticInputsWarning            checked on made-up inputs: accuracy not measured
 ├── PerformanceWarning (RuntimeWarning)   slower than asked: emulated precision, unfused
 │    └── SlowerPackageWarning         the package is slower than the original here
 └── TrainingWarning (RuntimeWarning)  skipped non-finite steps, an unreadable checkpoint
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = [
    "AccuracyBudgetError",
    "BenchmarkError",
    "ConfigError",
    "ConversionError",
    "ConversionWarning",
    "DataError",
    "FallbackWarning",
    "MissingDependencyError",
    "ModelLoadError",
    "NimbleError",
    "NimblemlWarning",
    "NoConverterError",
    "PackageError",
    "PeerLostError",
    "PerformanceWarning",
    "ProtocolError",
    "QueueFull",
    "ServingError",
    "SlowerPackageWarning",
    "StorageError",
    "SyntheticInputsWarning",
    "TrainingError",
    "TrainingWarning",
    "UnsupportedError",
    "UntrustedPickleError",
    "UserCodeError",
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


class ProtocolError(DataError):
    """A request that does not follow the protocol: answered 400 with this message."""


class NoConverterError(ConversionError):
    """skl2onnx has no converter for this estimator; the original stays runnable."""


class QueueFull(ServingError):
    """The queue has no room for this request: answer 503 with Retry-After."""


class TrainingError(NimbleError):
    """Training cannot go on (losses that stay non-finite)."""


class PeerLostError(TrainingError):
    """Another process of the torchrun group is gone (the launcher names which and how)."""


class NimblemlWarning(UserWarning):
    """Base of every warning nimbleml gives: ``warnings.simplefilter("error",
    NimblemlWarning)`` makes all of them errors, and only them."""


class FallbackWarning(NimblemlWarning, RuntimeWarning):
    """The package's optimised model cannot run here; the baseline runs instead."""


class ConversionWarning(NimblemlWarning):
    """The model could not be converted to ONNX; its original form is packaged instead."""


class SyntheticInputsWarning(NimblemlWarning):
    """The model was checked on inputs nimbleml made up: the conversion is proven, the
    accuracy is not measured."""


class PerformanceWarning(NimblemlWarning, RuntimeWarning):
    """Something runs slower than asked for (an emulated precision, an ensemble unfused)."""


class TrainingWarning(NimblemlWarning, RuntimeWarning):
    """Training went on past a problem: non-finite steps skipped, a checkpoint unreadable."""


class SlowerPackageWarning(PerformanceWarning):
    """The package runs slower than the original on this machine at every batch size timed."""


class UserCodeError(NimbleError):
    """An exception raised while running the user's model, data, function or files: the user's
    error (exit 2), named with the stage and what to check, never "a bug in nimbleml"."""


class StorageError(NimbleError):
    """A write that failed for the disk's sake (full, read-only, not permitted), naming where."""


def _first_line(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [""])[0].strip()
    return (text[:240] + "...") if len(text) > 240 else text


@contextmanager
def running_user_code(stage: str, check: str) -> Iterator[None]:
    """Run the user's model/function/data under a name: anything it raises (other than our own
    errors, interrupts and exits) becomes a UserCodeError saying which stage and what to check.

    >>> with running_user_code("the model's forward pass on a training batch",
    ...                        "that the data's columns match the model's inputs"): ...
    """
    try:
        yield
    except (NimbleError, KeyboardInterrupt, SystemExit, MemoryError):
        raise
    except OSError as exc:
        if is_storage_full(exc):
            raise storage_error(getattr(exc, "filename", None) or "", exc) from exc
        raise UserCodeError(
            f"{stage} raised {type(exc).__name__}: {_first_line(exc)}; check {check}"
        ) from exc
    except Exception as exc:
        raise UserCodeError(
            f"{stage} raised {type(exc).__name__}: {_first_line(exc)}; check {check}"
        ) from exc


_FULL_WORDS = ("no space left", "unexpected pos", "file too large", "disk quota")


def is_storage_full(exc: BaseException) -> bool:
    """ENOSPC/EDQUOT/EFBIG, or the words torch's zip writer uses when a write came up short."""
    import errno

    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return True
    return any(word in str(exc).lower() for word in _FULL_WORDS)


def storage_error(path: object, exc: BaseException) -> StorageError:
    """The one message for a failed write: disk full (with what is free), read-only, or not
    permitted, naming the path. Use as ``raise storage_error(path, exc) from exc``."""
    import errno
    import os
    import shutil

    where = os.fspath(path) if path else "the output"  # type: ignore[call-overload]
    folder = os.path.dirname(os.path.abspath(where)) if path else os.getcwd()
    while folder and not os.path.exists(folder) and folder != os.path.dirname(folder):
        folder = os.path.dirname(folder)
    try:
        free = shutil.disk_usage(folder).free
    except OSError:  # pragma: no cover - the folder vanished
        free = -1
    code = getattr(exc, "errno", None)
    # read-only / not permitted first: a read-only mount (squashfs, a small tmpfs) shows
    # little or nothing free, and is not full
    if code == errno.EROFS and not is_storage_full(exc):
        return StorageError(f"cannot write {where}: {folder} is on a read-only file system")
    if code in (errno.EACCES, errno.EPERM) and not is_storage_full(exc):
        return StorageError(f"cannot write {where}: permission denied in {folder}")
    if is_storage_full(exc) or 0 <= free < 1 << 20:
        left = f"{free / 2**20:.1f} MiB free" if free >= 0 else "no space"
        return StorageError(
            f"the disk is full: writing {where} failed ({left} in {folder}); free space there "
            "or point the output at another disk, then run the same command to resume"
        )
    return StorageError(f"writing {where} failed: {type(exc).__name__}: {_first_line(exc)}")


def warn(message: str, category: type[Warning] = NimblemlWarning) -> None:
    """``warnings.warn`` pointing at the first frame outside nimbleml: the user's line that
    called us, never a line of our source (issue 11)."""
    import sys
    import warnings

    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith("nimbleml"):
        frame, level = frame.f_back, level + 1  # type: ignore[assignment]
    warnings.warn(message, category, stacklevel=level + 1)
