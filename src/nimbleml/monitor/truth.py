"""Ground truth: labels that arrive after the prediction, joined with it by id in the store.

Accuracy (classification) or mean absolute error (regression) over the labeled predictions,
per window for the report, and how well labels cover the predictions (coverage, orphans,
delay). The task is the monitor's ``task``, or inferred from the first output it sees
(``task_of``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .store import Store

JOIN = "FROM predictions p JOIN labels l ON p.prediction_id = l.prediction_id"


def plain(value: Any) -> Any:
    """A value SQLite can hold: numbers and strings as they are, arrays as their class."""
    if value is None or isinstance(value, int | float | str):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.reshape(-1)[0].item() if value.size == 1 else int(np.argmax(value))
    return str(value)


def same_label(a: Any, b: Any) -> bool:
    """Labels compare as numbers when both are numbers (1 == 1.0 == '1'), else as text."""
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)


def task_of(output: Any) -> str:
    """'regression' for an output that is a non-integer float, else 'classification'."""
    value = plain(output)
    return (
        "regression"
        if isinstance(value, float) and not float(value).is_integer()
        else "classification"
    )


def accuracy(store: Store, model: str, task: str | None, since: float | None) -> dict[str, Any]:
    """Accuracy (or MAE for regression) of ``model``'s labeled predictions since ``since``."""
    rows = store.query(
        f"SELECT p.output, l.label {JOIN} WHERE p.model = ? AND p.ts >= ?",
        (model, since or 0.0),
    )
    out: dict[str, Any] = {"labeled": len(rows)}
    if not rows:
        return out
    if task == "regression":
        out["mae"] = float(np.mean([abs(float(a) - float(b)) for a, b in rows]))
    else:
        out["accuracy"] = float(np.mean([same_label(a, b) for a, b in rows]))
    return out


def accuracy_by_window(
    store: Store, model: str, task: str | None, window_s: float
) -> list[dict[str, Any]]:
    """Accuracy (or MAE) per window of ``window_s`` seconds, by the prediction's time."""
    rows = store.query(
        f"SELECT {store.window_start('p.ts')}, p.output, l.label {JOIN} "
        "WHERE p.model = ? ORDER BY p.ts",
        (window_s, window_s, model),
    )
    out: dict[float, list[bool | float]] = {}
    for start, a, b in rows:
        value = abs(float(a) - float(b)) if task == "regression" else same_label(a, b)
        out.setdefault(float(start), []).append(value)
    key = "mae" if task == "regression" else "accuracy"
    return [{"start": s, key: float(np.mean(v)), "labeled": len(v)} for s, v in sorted(out.items())]


def labels_report(store: Store, model: str, unsampled: int) -> dict[str, Any]:
    """Coverage (labeled / predictions with an id), orphan labels, label delay percentiles;
    ``unsampled``: labels dropped because their prediction was not sampled."""
    with_id = store.query(
        "SELECT COUNT(*) FROM predictions WHERE model = ? AND prediction_id IS NOT NULL",
        (model,),
    )[0][0]
    delays = [
        r[0]
        for r in store.query(
            "SELECT l.ts - p.ts FROM labels l JOIN predictions p ON p.prediction_id = l.prediction_id "
            "WHERE p.model = ?",
            (model,),
        )
    ]
    orphans = store.query(
        "SELECT COUNT(*) FROM labels WHERE prediction_id NOT IN "
        "(SELECT prediction_id FROM predictions WHERE prediction_id IS NOT NULL)"
    )[0][0]
    d = np.asarray(delays, dtype=np.float64)
    return {
        "predictions_with_id": int(with_id),
        "labeled": int(d.size),
        "coverage": d.size / with_id if with_id else None,
        "orphan_labels": int(orphans),
        "unsampled_labels": unsampled,
        "delay_s": {f"p{q}": float(np.percentile(d, q)) for q in (50, 95, 99)} if d.size else None,
    }
