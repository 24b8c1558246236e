"""scikit-learn estimators and pipelines: in memory, skops files, trusted pickles."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .._deps import require
from ..errors import ConversionError, ModelLoadError, UntrustedPickleError
from ..inputs import Feeds, TensorSpec
from .base import Model
from .onnx_model import OnnxModel

PRECISIONS = ("float", "double")
# modules whose types a skops file written by nimbleml may contain
SAFE_PREFIXES = ("sklearn.", "numpy.", "scipy.", "builtins.", "collections.")


def is_sklearn(obj: Any) -> bool:
    return type(obj).__module__.startswith("sklearn.") or (
        hasattr(obj, "fit") and hasattr(obj, "predict") and hasattr(obj, "get_params")
    )


def final_estimator(est: Any) -> Any:
    return est.steps[-1][1] if hasattr(est, "steps") else est


class SklearnModel(Model):
    """A fitted estimator or pipeline taking one numeric matrix ``X``.

    Classifiers return [label, probabilities] (as skl2onnx names them), regressors [variable].
    """

    framework = "sklearn"

    def __init__(self, estimator: Any, n_features: int | None = None) -> None:
        sklearn = require("sklearn", "scikit-learn models")
        from sklearn.base import is_classifier

        self.estimator = estimator
        n = n_features or getattr(estimator, "n_features_in_", None)
        if n is None:
            raise ModelLoadError(
                f"{type(estimator).__name__} is not fitted (no n_features_in_); fit it first"
            )
        self.n_features = int(n)
        self.task = "classification" if is_classifier(estimator) else "regression"
        self.has_proba = self.task == "classification" and hasattr(estimator, "predict_proba")
        self._sklearn_version = sklearn.__version__
        final = final_estimator(estimator)
        self._classes = np.asarray(getattr(final, "classes_", []))
        # SVMs' Platt-scaled probabilities can disagree with their predict()
        self._labels_from_proba = self.has_proba and type(final).__name__ not in ("SVC", "NuSVC")

    @property
    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec("X", "float32", ("batch", self.n_features))]

    @property
    def outputs(self) -> list[TensorSpec]:
        if self.task == "classification":
            classes = getattr(final_estimator(self.estimator), "classes_", np.array([0]))
            specs = [TensorSpec("label", str(np.asarray(classes).dtype), ("batch",))]
            if self.has_proba:
                specs.append(TensorSpec("probabilities", "float32", ("batch", len(classes))))
            return specs
        return [TensorSpec("variable", "float32", ("batch", 1))]

    def run(self, feeds: Feeds) -> list[np.ndarray]:
        X = feeds["X"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "X does not have valid feature names"
            if self.task == "classification":
                if not self.has_proba:
                    return [np.asarray(self.estimator.predict(X))]
                proba = np.asarray(self.estimator.predict_proba(X), dtype=np.float32)
                if self._labels_from_proba:  # one model call, as predict does internally
                    labels = self._classes.take(np.argmax(proba, axis=1))
                else:
                    labels = np.asarray(self.estimator.predict(X))
                return [labels, proba]
            pred = np.asarray(self.estimator.predict(X), dtype=np.float32)
            return [pred.reshape(len(X), -1)]

    def to_onnx(
        self, example: Feeds, path: str | Path | None = None, precision: str = "float"
    ) -> OnnxModel:
        require("skl2onnx", "converting scikit-learn models to ONNX")
        from skl2onnx import to_onnx
        from skl2onnx.common.exceptions import MissingShapeCalculator

        dtype = np.float32 if precision == "float" else np.float64
        final = final_estimator(self.estimator)
        options = {id(final): {"zipmap": False}} if self.task == "classification" else None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                onx = to_onnx(self.estimator, example["X"][:1].astype(dtype), options=options)
        except (MissingShapeCalculator, RuntimeError) as exc:
            if "Unable to find a shape calculator" in str(exc) or isinstance(
                exc, MissingShapeCalculator
            ):
                raise NoConverterError(
                    f"skl2onnx has no converter for {type(final).__name__}; the original model "
                    "stays runnable (packaged as skops, not converted)"
                ) from exc
            raise ConversionError(f"skl2onnx failed: {str(exc).splitlines()[0][:400]}") from exc
        except Exception as exc:
            raise ConversionError(f"skl2onnx failed: {str(exc).splitlines()[0][:400]}") from exc
        data = onx.SerializeToString()
        if path is not None:
            Path(path).write_bytes(data)
        return OnnxModel(data, task=self.task)

    def size_bytes(self) -> int:
        skops_io = require("skops.io", "saving scikit-learn models")
        return len(skops_io.dumps(self.estimator))

    def num_parameters(self) -> int:
        return _count_numbers(self.estimator, depth=0)

    def save(self, directory: Path, stem: str) -> str:
        skops_io = require("skops.io", "saving scikit-learn models")
        name = f"{stem}.skops"
        skops_io.dump(self.estimator, directory / name)
        return name


class NoConverterError(ConversionError):
    """skl2onnx has no converter for this estimator; the original stays runnable."""


# fitted attributes that are bookkeeping, not numbers used to predict
_NOT_PARAMETERS = {
    "classes_",
    "n_iter_",
    "var_",
    "n_samples_seen_",
    "feature_names_in_",
    "loss_curve_",
}


def _count_numbers(obj: Any, depth: int) -> int:
    """Numbers a fitted estimator stores: arrays in fitted attributes, tree nodes, sub-models."""
    if depth > 6:
        return 0
    if hasattr(obj, "tree_"):
        tree = obj.tree_
        return int(tree.threshold.size + tree.feature.size + tree.value.size)
    if hasattr(obj, "steps"):
        return sum(_count_numbers(step, depth + 1) for _, step in obj.steps)
    total = 0
    for key, value in vars(obj).items():
        if not key.endswith("_") or key.startswith("_"):
            continue
        if key in _NOT_PARAMETERS:
            continue
        if isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.floating):
            total += int(value.size)
        elif isinstance(value, np.ndarray | list | tuple):
            total += sum(_count_numbers(v, depth + 1) for v in value if hasattr(v, "get_params"))
        elif hasattr(value, "get_params"):
            total += _count_numbers(value, depth + 1)
        elif hasattr(value, "nnz"):  # scipy.sparse
            total += int(value.nnz)
    return total


def load_skops(path: str | Path, trusted: list[str] | None = None) -> SklearnModel:
    """Load a skops file, trusting only scikit-learn/numpy/scipy types unless told more."""
    skops_io = require("skops.io", "loading skops files")
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"skops file not found: {path}")
    untrusted = skops_io.get_untrusted_types(file=path)
    allowed = set(trusted or [])
    unsafe = [t for t in untrusted if not t.startswith(SAFE_PREFIXES) and t not in allowed]
    if unsafe:
        raise ModelLoadError(
            f"{path} contains types nimbleml does not trust by default: {unsafe}. If you "
            "trust them, pass trusted_types=[...] (--trust-type) naming each"
        )
    try:
        return SklearnModel(skops_io.load(path, trusted=untrusted))
    except Exception as exc:
        raise ModelLoadError(f"cannot load {path} with skops: {exc}") from exc


def load_pickle(path: str | Path, trust_pickle: bool = False) -> SklearnModel:
    """Load a pickle/joblib file, only when the user said they trust it."""
    path = Path(path)
    if not trust_pickle:
        raise UntrustedPickleError(
            f"{path} is a pickle/joblib file; unpickling runs arbitrary code. Save the model "
            "with skops (skops.io.dump) or ONNX, or pass trust_pickle=True (--trust-pickle) "
            "if you trust where it came from"
        )
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}")
    try:
        import joblib

        obj = joblib.load(path)
    except ImportError:
        import pickle

        with open(path, "rb") as fh:
            obj = pickle.load(fh)
    except Exception as exc:
        raise ModelLoadError(f"cannot unpickle {path}: {exc}") from exc
    if not is_sklearn(obj):
        raise ModelLoadError(f"{path} holds a {type(obj).__name__}, not a scikit-learn model")
    return SklearnModel(obj)
