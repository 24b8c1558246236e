"""scikit-learn estimators and pipelines: in memory, skops files, trusted pickles."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .._deps import require
from ..errors import ConversionError, ModelLoadError, NoConverterError, UntrustedPickleError
from ..inputs import Feeds, TensorSpec, batch_size
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
    """A fitted estimator or pipeline, with the inputs its first step reads (see
    ``sklearn_inputs.Layout``): one numeric matrix ``X``; one string column ``text`` for a
    pipeline that starts with a CountVectorizer/TfidfVectorizer; or, for a pipeline fitted on
    a DataFrame through a ColumnTransformer, one ``("batch", 1)`` input per column it uses.

    Frames go in as a DataFrame or a dict of columns. A DataFrame's extra columns are
    ignored, as scikit-learn ignores them (a table often carries ids and the target); a
    dict's are named in the error, since a stray key is more often a typo. Classifiers
    return [label, probabilities] (as skl2onnx names them), regressors [variable].

    ``coef_bits`` (set by the coef-int8/int16 recipes) stores a text model's coefficients
    as 8/16-bit integers in the ONNX file, so the smaller grid also means a smaller file.
    """

    framework = "sklearn"

    def __init__(
        self, estimator: Any, n_features: int | None = None, coef_bits: int | None = None
    ) -> None:
        sklearn = require("sklearn", "scikit-learn models")
        from sklearn.base import is_classifier

        from .sklearn_inputs import Layout, frame_columns
        from .sklearn_text import text_vectorizers

        self.estimator = estimator
        self.coef_bits = coef_bits
        columns = frame_columns(estimator)
        vectorizers = text_vectorizers(estimator)
        if vectorizers is not None:
            _check_fitted(estimator, [v for v, _ in vectorizers])
            self.layout = Layout("text")
        elif columns is not None:
            self.layout = Layout("frame", columns=columns)
        else:
            n = n_features or getattr(estimator, "n_features_in_", None)
            if n is None:
                raise ModelLoadError(
                    f"{type(estimator).__name__} is not fitted (no n_features_in_); fit it first"
                )
            self.layout = Layout("matrix", n_features=int(n))
        self.n_features = self.layout.n_features or len(self.layout.columns)
        self.task = "classification" if is_classifier(estimator) else "regression"
        self.has_proba = self.task == "classification" and hasattr(estimator, "predict_proba")
        self._sklearn_version = sklearn.__version__
        final = final_estimator(estimator)
        self._classes = np.asarray(getattr(final, "classes_", []))
        # SVMs' Platt-scaled probabilities can disagree with their predict()
        self._labels_from_proba = self.has_proba and type(final).__name__ not in ("SVC", "NuSVC")

    @property
    def inputs(self) -> list[TensorSpec]:
        return self.layout.specs()

    @property
    def tolerance(self) -> dict[str, float]:
        """How close a conversion must come. Text and table pipelines are verified to 1e-5
        (measured: TF-IDF + LogisticRegression in float32 stays within 1e-7); a numeric
        matrix keeps the defaults that float32 trees and scalers need."""
        return {} if self.layout.kind == "matrix" else {"atol": 1e-5, "rtol": 1e-5}

    def verification_cases(self, feeds: Feeds, every: bool = False) -> list[tuple[str, Feeds]]:
        """Every validation row (a scikit-learn model runs them in milliseconds, and one row
        that disagrees on its label is a wrong prediction the user never sees), and for a
        tree model the rows on each split threshold and with a missing value in each column
        (sklearn_boundary)."""
        from .sklearn_boundary import boundary_cases

        n = batch_size(feeds)
        cases = [(f"every validation row ({n})", feeds)] if every and n > 16 else []
        if self.layout.kind != "text":
            cases += boundary_cases(self, feeds)
        return cases

    @property
    def conversion_hint(self) -> str:
        """What usually makes this model's ONNX graph disagree (shown with a ConversionError)."""
        if self.layout.kind != "text":
            return ""
        from .sklearn_text import mismatch_hint, text_vectorizers

        return mismatch_hint([v for v, _ in text_vectorizers(self.estimator) or []])

    @property
    def outputs(self) -> list[TensorSpec]:
        if self.task == "classification":
            classes = np.asarray(getattr(final_estimator(self.estimator), "classes_", [0]))
            kind = "object" if classes.dtype.kind in "OUS" else str(classes.dtype)
            specs = [TensorSpec("label", kind, ("batch",))]
            if self.has_proba:
                specs.append(TensorSpec("probabilities", "float32", ("batch", len(classes))))
            return specs
        return [TensorSpec("variable", "float32", ("batch", 1))]

    def _input(self, feeds: Feeds) -> Any:
        """What the estimator is called with: X, a list of texts, or a rebuilt DataFrame."""
        if self.layout.kind == "frame":
            from .sklearn_inputs import frame_from_feeds

            return frame_from_feeds(feeds, self.layout.columns)
        if self.layout.kind == "text":
            return np.asarray(feeds[self.input_names[0]]).reshape(-1)
        return feeds["X"]

    def run(self, feeds: Feeds) -> list[np.ndarray]:
        X = self._input(feeds)
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
        from skl2onnx.common.exceptions import MissingShapeCalculator

        from .sklearn_converters import missing_converter, register_converters

        register_converters(self.estimator)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                onx = self._convert(example, precision)
        except ConversionError:
            raise
        except (MissingShapeCalculator, RuntimeError) as exc:
            if "Unable to find a shape calculator" in str(exc) or isinstance(
                exc, MissingShapeCalculator
            ):
                raise NoConverterError(
                    f"{missing_converter(self.estimator, exc)}; the original model "
                    "stays runnable (packaged as skops, not converted)"
                ) from exc
            raise ConversionError(f"skl2onnx failed: {str(exc).splitlines()[0][:400]}") from exc
        except Exception as exc:
            raise ConversionError(f"skl2onnx failed: {str(exc).splitlines()[0][:400]}") from exc
        # a classifier without predict_proba (LinearSVC) also writes scores; keep what run() gives
        del onx.graph.output[len(self.outputs) :]
        data = onx.SerializeToString()
        converted = OnnxModel(data, task=self.task)
        try:
            converted.inputs  # noqa: B018  (opens the session: a graph ONNX Runtime refuses)
        except ModelLoadError as exc:
            raise ConversionError(f"the converted model does not load: {exc}") from exc
        if path is not None:
            Path(path).write_bytes(data)
        return converted

    def _convert(self, example: Feeds, precision: str) -> Any:
        from skl2onnx import to_onnx

        final = final_estimator(self.estimator)
        classifier = self.task == "classification"
        if self.layout.kind == "text":
            from .sklearn_text import text_to_onnx

            return text_to_onnx(self.estimator, precision, self.coef_bits, classifier)
        options = {id(final): {"zipmap": False}} if self.has_proba else None
        if self.layout.kind == "frame":
            from .sklearn_inputs import (
                conversion_copy,
                frame_initial_types,
                restore_input_names,
                text_column_options,
            )

            est = conversion_copy(self.estimator)
            options = {id(final_estimator(est)): {"zipmap": False}} if self.has_proba else {}
            options.update(text_column_options(est))
            onx = to_onnx(
                est,
                initial_types=frame_initial_types(self.layout.columns, precision),
                options=options,
            )
            restore_input_names(onx, [name for name, _ in self.layout.columns])
            return onx
        if precision == "double":
            from .sklearn_boundary import missing_value_splits

            if missing_value_splits(self.estimator):
                raise ConversionError(
                    "a tree splits on missing values alone (fitted on data with NaN), which "
                    "skl2onnx cannot write in double precision"
                )
        dtype = np.float32 if precision == "float" else np.float64
        return to_onnx(self.estimator, example["X"][:1].astype(dtype), options=options)

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


def _check_fitted(estimator: Any, parts: list[Any]) -> None:
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    try:
        for part in (estimator, *parts):
            check_is_fitted(part)
    except NotFittedError as exc:
        raise ModelLoadError(
            f"{type(estimator).__name__} is not fitted ({exc}); fit it first"
        ) from exc


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
