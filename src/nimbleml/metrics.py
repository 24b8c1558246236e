"""Metrics by name (or any callable) and how a model's outputs become predictions."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import AccuracyBudgetError
from .verify import cosine_rows, labels_of

MetricFn = Callable[[np.ndarray, np.ndarray], float]


def _accuracy(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean(y == p))


def _f1(y: np.ndarray, p: np.ndarray) -> float:
    """Macro-averaged F1 over the classes present in y or p."""
    scores = []
    for c in np.union1d(np.unique(y), np.unique(p)):
        tp = np.sum((p == c) & (y == c))
        fp = np.sum((p == c) & (y != c))
        fn = np.sum((p != c) & (y == c))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else 0.0


def _mse(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean((y.astype(np.float64) - p) ** 2))


def _mae(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean(np.abs(y.astype(np.float64) - p)))


def _r2(y: np.ndarray, p: np.ndarray) -> float:
    y = y.astype(np.float64)
    total = np.sum((y - y.mean()) ** 2)
    return float(1 - np.sum((y - p) ** 2) / total) if total > 0 else 0.0


@dataclass(frozen=True)
class Metric:
    """A named metric. ``kind``: 'labels' or 'values' compare predictions with y;
    'reference' compares with the original model's outputs (no labels needed)."""

    name: str
    fn: MetricFn | None
    higher_is_better: bool
    kind: str

    def drop(self, baseline: float, candidate: float) -> float:
        """How much worse the candidate is (positive = worse), in the metric's units."""
        return baseline - candidate if self.higher_is_better else candidate - baseline


_BUILTIN = {
    "accuracy": Metric("accuracy", _accuracy, True, "labels"),
    "f1": Metric("f1", _f1, True, "labels"),
    "mse": Metric("mse", _mse, False, "values"),
    "mae": Metric("mae", _mae, False, "values"),
    "r2": Metric("r2", _r2, True, "values"),
    "cosine": Metric("cosine", None, True, "reference"),
    "agreement": Metric("agreement", None, True, "reference"),
}
METRIC_NAMES = tuple(_BUILTIN)


def infer_task(task: str | None, y: object) -> str | None:
    """The model's task, or one read from the labels: integer y -> classification."""
    if task is not None or y is None:
        return task
    kind = np.asarray(y).dtype
    return "classification" if np.issubdtype(kind, np.integer) else "regression"


def resolve(metric: str | MetricFn | Metric | None, task: str | None) -> Metric:
    """A Metric from a name, a callable, or None (accuracy / r2 / cosine by task)."""
    if isinstance(metric, Metric):
        return metric
    if metric is None:
        metric = {"classification": "accuracy", "regression": "r2"}.get(task or "", "cosine")
    if callable(metric):
        return Metric(getattr(metric, "__name__", "custom"), metric, True, "auto")
    if metric not in _BUILTIN:
        raise AccuracyBudgetError(
            f"unknown metric '{metric}'; choose one of: {', '.join(METRIC_NAMES)}, "
            "or pass a callable (y_true, y_pred) -> float"
        )
    return _BUILTIN[metric]


def prediction(outputs: Sequence[np.ndarray], task: str | None, as_labels: bool) -> np.ndarray:
    """The primary prediction: labels (first output, argmax for scores) or values."""
    first = np.asarray(outputs[0])
    if as_labels:
        return labels_of(first)
    return (
        first.reshape(first.shape[0], -1)[:, 0] if first.ndim > 1 and first.shape[1] == 1 else first
    )


def _first_float(outputs: Sequence[np.ndarray]) -> np.ndarray:
    for out in outputs:
        if np.issubdtype(np.asarray(out).dtype, np.floating):
            return np.asarray(out)
    return np.asarray(outputs[0])


def evaluate(
    metric: Metric,
    outputs: Sequence[np.ndarray],
    y: np.ndarray | None,
    reference: Sequence[np.ndarray] | None,
    task: str | None,
) -> float:
    """The metric's value for ``outputs`` (reference = the original model's outputs)."""
    if metric.kind == "reference":
        if reference is None:
            raise AccuracyBudgetError(f"metric '{metric.name}' needs the original's outputs")
        if metric.name == "cosine":
            return cosine_rows(_first_float(reference), _first_float(outputs))
        return float(
            np.mean(labels_of(np.asarray(outputs[0])) == labels_of(np.asarray(reference[0])))
        )
    if y is None:
        raise AccuracyBudgetError(
            f"metric '{metric.name}' needs labels: pass val=(X, y) with y, or use a label-free "
            "metric ('cosine' or 'agreement')"
        )
    y = np.asarray(y)
    if metric.kind == "labels":
        as_labels = True
    elif metric.kind == "values":
        as_labels = False
    else:  # a callable: labels for classifiers and integer targets with score outputs
        first = np.asarray(outputs[0])
        as_labels = task == "classification" or (
            task is None
            and np.issubdtype(y.dtype, np.integer)
            and first.ndim == 2
            and first.shape[1] > 1
        )
    pred = prediction(outputs, task, as_labels)
    if len(pred) != len(y):
        raise AccuracyBudgetError(f"y has {len(y)} rows but the model made {len(pred)} predictions")
    if not as_labels and pred.size != y.size:
        raise AccuracyBudgetError(
            f"metric '{metric.name}' compares values, but the model gives {pred.size // len(pred)} "
            f"scores per row for {y.size // len(y)} target(s) (a classifier?); use accuracy or "
            "f1, or a metric of your own"
        )
    if as_labels:
        y, pred = _comparable_labels(y.reshape(-1), pred)
    assert metric.fn is not None
    return float(metric.fn(y if as_labels else y.reshape(pred.shape), pred))


def _comparable_labels(y: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels of one kind on both sides: string labels (as .npz files store them) against a
    model's class indices are read as numbers when they all are ("3"), otherwise refused; a
    silent accuracy of 0.0 helps nobody."""
    text_y, text_pred = y.dtype.kind in "OUS", pred.dtype.kind in "OUS"
    if text_y == text_pred:
        return y, pred
    if text_y:
        try:
            return y.astype(np.float64).astype(pred.dtype), pred
        except (TypeError, ValueError):
            raise AccuracyBudgetError(
                f"the labels are strings (e.g. {str(y[0])!r}) but the model gives class indices "
                "(0, 1, ...): pass y as those indices, in the order the model was trained on"
            ) from None
    return y.astype(str), pred.astype(str)
