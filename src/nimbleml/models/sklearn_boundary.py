"""Rows a tree model's conversion gets wrong first: inputs that land on each split threshold
after the pipeline's preprocessing, and a missing value in each numeric column (issue 22).

A tree compares ``x <= t``. A converted graph that computes the preprocessing in another
precision, or rounds ``t``, sends a row sitting on (or one step beside) ``t`` down the other
branch, and nothing else shows it: validation rows rarely sit there. So for each numeric
input column that reaches a tree feature through a monotone one-to-one transform (an
imputer, a scaler, a passthrough), the input value whose transform is each threshold is
solved for on the transform itself (two probes: the transforms that matter are affine), and
the row is written with that value and its neighbours one and two steps either side.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..inputs import Feeds, batch_size, rows

MAX_ROWS = 4096  # boundary rows per model, spread evenly over the thresholds past that


def tree_thresholds(final: Any) -> dict[int, np.ndarray]:
    """feature index -> the sorted distinct finite thresholds of numeric splits, for
    scikit-learn trees, forests, gradient boosting and HistGradientBoosting; {} otherwise."""
    found: dict[int, set[float]] = {}

    def add(features: np.ndarray, values: np.ndarray) -> None:
        for f, t in zip(features.tolist(), values.tolist(), strict=True):
            if f >= 0 and np.isfinite(t):
                found.setdefault(int(f), set()).add(float(t))

    gbm = _gbm_splits(final)
    if gbm is not None:
        features, values = gbm
        add(features, values)
        return {f: np.array(sorted(ts)) for f, ts in found.items()}
    predictors = getattr(final, "_predictors", None)
    if predictors is not None:  # HistGradientBoosting (its own feature order: see _hgb_columns)
        if getattr(final, "_preprocessor", None) is not None:
            return {}  # categorical features reorder the columns; its converter maps them
        for nodes in (p.nodes for it in predictors for p in it):
            split = (nodes["is_leaf"] == 0) & (nodes["is_categorical"] == 0)
            add(nodes["feature_idx"][split], nodes["num_threshold"][split])
    else:
        trees = [final] if hasattr(final, "tree_") else list(
            np.ravel(getattr(final, "estimators_", []))
        )  # fmt: skip
        for tree in trees:
            inner = getattr(tree, "tree_", None)
            if inner is not None:
                split = inner.children_left >= 0
                add(inner.feature[split], inner.threshold[split])
    return {f: np.array(sorted(ts)) for f, ts in found.items()}


def _gbm_splits(final: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """(features, thresholds) of an XGBoost model's splits, from its own tree table; None for
    other models (or when the table cannot be read).

    LightGBM is left out on purpose: it compares float64 inputs with float64 thresholds,
    while onnxmltools' graph compares in float32, so a float64 value within float32 rounding
    of a threshold can take the other branch. Its rows would refuse every LightGBM model;
    until its trees are written in double (as HistGradientBoosting's are), that gap is
    documented in docs/sklearn.md rather than verified."""
    if not hasattr(final, "get_booster"):
        return None
    try:
        booster = final.get_booster()
        table = booster.trees_to_dataframe()
        table = table[table.Feature != "Leaf"]
        index = {n: i for i, n in enumerate(booster.feature_names or [])}
        features = np.array(
            [index.get(c, int(c[1:]) if c[1:].isdigit() else -1) for c in table.Feature]
        )
        return features, table.Split.to_numpy(dtype=np.float64)
    except Exception:  # an unusual booster: verified on the other rows only
        return None


def missing_value_splits(estimator: Any) -> bool:
    """Whether a scikit-learn tree in ``estimator`` splits on missing values alone (threshold
    inf: every number one way, NaN the other), which skl2onnx's tree converters do not write
    (and its double-precision threshold search never returns from)."""
    from .sklearn_converters import _estimators

    for part in _estimators(estimator):
        trees = (
            [part] if hasattr(part, "tree_") else list(np.ravel(getattr(part, "estimators_", [])))
        )
        for tree in trees:
            inner = getattr(tree, "tree_", None)
            if (
                inner is not None
                and not np.isfinite(inner.threshold[inner.children_left >= 0]).all()
            ):
                return True
    return False


def boundary_cases(model: Any, feeds: Feeds) -> list[tuple[str, Feeds]]:
    """("tree thresholds", rows), and the missing-value cases (a missing value in each
    numeric column the original accepts one in; all missing at once): [] for no tree model."""
    from .sklearn_model import final_estimator

    est = model.estimator
    final = final_estimator(est)
    thresholds = tree_thresholds(final)
    if batch_size(feeds) == 0:
        return []
    columns = _numeric_columns(model, feeds)
    missing = _missing_cases(model, rows(feeds, min(4, batch_size(feeds))), columns)
    if not thresholds:
        return missing
    prefix = est[:-1] if hasattr(est, "steps") and len(est.steps) > 1 else None
    base = rows(feeds, 1)
    found: list[Feeds] = []
    for key, col in columns:
        probe = _probe(model, prefix, base, key, col)
        if probe is None:
            continue
        feature, x0, slope, t0 = probe
        ts = thresholds.get(feature)
        if ts is None:
            continue
        dtype = np.asarray(feeds[key]).dtype
        xs = (x0 + (ts - t0) / slope).astype(dtype)
        values = np.concatenate([xs, *(_step(xs, k) for k in (-2, -1, 1, 2))])
        found.append(_with_values(base, key, col, values[np.isfinite(values)]))
    cases: list[tuple[str, Feeds]] = []
    if found:
        merged = {k: np.concatenate([f[k] for f in found]) for k in found[0]}
        n = batch_size(merged)
        if n > MAX_ROWS:
            keep = np.linspace(0, n - 1, MAX_ROWS).astype(int)
            merged = {k: v[keep] for k, v in merged.items()}
        cases.append(("tree thresholds", merged))
    return cases + missing


def _numeric_columns(model: Any, feeds: Feeds) -> list[tuple[str, int | None]]:
    """(feed name, column index or None) for every float input column."""
    if model.layout.kind == "frame":
        return [(k, None) for k, v in feeds.items() if np.issubdtype(v.dtype, np.floating)]
    if model.layout.kind == "matrix":
        return [("X", j) for j in range(np.asarray(feeds["X"]).shape[1])]
    return []


def _with_values(base: Feeds, key: str, col: int | None, values: np.ndarray) -> Feeds:
    n = len(values)
    out = {k: np.repeat(v, n, axis=0) for k, v in base.items()}
    target = out[key].astype(values.dtype, copy=True)
    if col is None:
        target.reshape(n, -1)[:, 0] = values
    else:
        target[:, col] = values
    out[key] = target
    return out


def _step(values: np.ndarray, k: int) -> np.ndarray:
    out = values.copy()
    toward = np.inf if k > 0 else -np.inf
    for _ in range(abs(k)):
        out = np.nextafter(out, np.asarray(toward, dtype=values.dtype))
    return out


def _probe(
    model: Any, prefix: Any, base: Feeds, key: str, col: int | None
) -> tuple[int, float, float, float] | None:
    """(tree feature, x0, slope, transform of x0) when the column reaches exactly one tree
    feature through an affine transform (checked at three points); else None."""
    current = np.asarray(base[key], dtype=np.float64).reshape(-1)
    x0 = float(current[0] if col is None else np.asarray(base[key])[0, col])
    if not np.isfinite(x0):
        x0 = 0.0
    step = max(1.0, abs(x0))
    xs = np.array([x0, x0 + step, x0 - 0.5 * step], dtype=np.asarray(base[key]).dtype)
    try:
        out = _transform(model, prefix, _with_values(base, key, col, xs))
    except Exception:  # the preprocessing refuses the probe values: no boundary rows here
        return None
    same = (out == out[0]) | (np.isnan(out) & np.isnan(out[0]))
    moved = np.flatnonzero(~same.all(axis=0))
    if len(moved) != 1:
        return None
    f = int(moved[0])
    t = out[:, f]
    slope = (t[1] - t[0]) / (float(xs[1]) - float(xs[0]))
    predicted = t[0] + slope * (float(xs[2]) - float(xs[0]))
    if slope == 0 or not np.isclose(predicted, t[2], rtol=1e-9, atol=1e-12):
        return None  # not affine (a quantile or power transform): thresholds not solved for
    return f, float(xs[0]), float(slope), float(t[0])


def _transform(model: Any, prefix: Any, feeds: Feeds) -> np.ndarray:
    X = model._input(feeds)
    if prefix is not None:
        X = prefix.transform(X)
    if hasattr(X, "toarray"):
        X = X.toarray()
    return np.asarray(X, dtype=np.float64)


def _missing_cases(
    model: Any, base: Feeds, columns: list[tuple[str, int | None]]
) -> list[tuple[str, Feeds]]:
    """One row per numeric column with a missing value there (the columns where the original
    accepts one), and every number missing at once when it accepts them all."""
    from ..verify import MISSING_NUMBERS

    one = rows(base, 1)
    each = [_with_values(one, key, col, np.array([np.nan])) for key, col in columns]
    if not each:
        return []
    merged = {k: np.concatenate([f[k] for f in each]) for k in each[0]}
    # one call when the original takes them all (the common case), else one per column
    accepted = each if _accepts(model, merged) else [f for f in each if _accepts(model, f)]
    if not accepted:
        return []
    cases = [("missing value in each column",
              {k: np.concatenate([f[k] for f in accepted]) for k in accepted[0]})]  # fmt: skip
    if len(accepted) == len(columns):
        every = {k: v.copy() for k, v in base.items()}
        for key, col in columns:
            every[key] = every[key].astype(np.float64)
            if col is None:
                every[key][:] = np.nan
            else:
                every[key][:, col] = np.nan
        cases.append((MISSING_NUMBERS, every))
    return cases


def _accepts(model: Any, feeds: Feeds) -> bool:
    try:
        model.run(feeds)
    except Exception:
        return False
    return True
