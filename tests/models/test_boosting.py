"""Gradient boosting models (scikit-learn HistGradientBoosting, LightGBM, XGBoost) convert to
ONNX and agree with the original: labels exactly (but for ties), probabilities within 1e-5,
regression values within 1e-5 relative, also on NaN, unseen categories and inputs sitting
exactly at split thresholds, and after a save and reload."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits, load_wine
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import nimbleml
from nimbleml.errors import MissingDependencyError
from nimbleml.models import sklearn_gbm
from nimbleml.models.sklearn_model import SklearnModel

ROOT = Path(__file__).resolve().parents[2]


def with_nan(X: np.ndarray, cols=(0, 3, 5), share: float = 0.1, seed: int = 0) -> np.ndarray:
    X = np.array(X, dtype=np.float64)
    rng = np.random.default_rng(seed)
    for c in cols:
        X[rng.random(len(X)) < share, c] = np.nan
    return X


def at_thresholds(X: np.ndarray, splits, seed: int = 0) -> np.ndarray:
    """Rows whose split feature is the float32 just below, at, and just above each threshold:
    where a float32 threshold rounded the wrong way sends an input down the other branch."""
    rng = np.random.default_rng(seed)
    rows = []
    for feature, threshold in splits:
        t = np.float32(min(max(threshold, -3e38), 3e38))
        for v in (np.nextafter(t, np.float32(-np.inf)), t, np.nextafter(t, np.float32(np.inf))):
            row = X[rng.integers(len(X))].copy()
            row[feature] = v
            rows.append(row)
    return np.asarray(rows, dtype=np.float32)


def hgb_splits(model) -> list[tuple[int, float]]:
    nodes = np.concatenate([p.nodes for it in model._predictors for p in it])
    numeric = nodes[(nodes["is_leaf"] == 0) & (nodes["is_categorical"] == 0)]
    numeric = numeric[np.isfinite(numeric["num_threshold"])]
    return sorted({(int(n["feature_idx"]), float(n["num_threshold"])) for n in numeric})


def assert_agrees(model, X: np.ndarray, outputs: dict[str, np.ndarray]) -> None:
    """Against the original on the very values the user has (float64 or float32 as given)."""
    if "probabilities" in outputs:
        proba = model.predict_proba(X)
        np.testing.assert_allclose(outputs["probabilities"], proba, rtol=0, atol=1e-5)
        top = np.sort(proba, axis=1)
        tie = top[:, -1] - top[:, -2] <= 1e-6  # exact ties may break either way
        differ = outputs["label"] != model.predict(X)
        assert not np.any(differ & ~tie), f"{differ.sum()} labels differ"
    else:
        ref = model.predict(X)
        got = outputs["variable"].ravel()
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def compress_and_check(model, X, y, tmp_path, *more: np.ndarray):
    """compress(), then compare on X and on ``more`` inputs, before and after save/load: on
    the user's own values (float64 data stays float64; the float graph is kept only where it
    agrees on them, else the double graph is chosen)."""
    pkg = nimbleml.compress(model, quantize=None, val=(X, y), benchmark_time_s=0)
    assert pkg.manifest["conversion"]["converter"] in ("precision=float", "precision=double")
    assert pkg.model.framework == "onnx" and not pkg.using_baseline
    for data in (X, *more):
        assert_agrees(model, data, pkg.run(data))
    loaded = nimbleml.load(pkg.save(tmp_path / "model.nimble"))
    for name, value in pkg.run(X).items():
        np.testing.assert_array_equal(loaded.run(X)[name], value)
    return pkg


def converted(model, X: np.ndarray, precision: str = "float"):
    """The adapter's own conversion (no verification), to probe inputs compress never sees."""
    dtype = np.float32 if precision == "float" else np.float64
    onnx_model = SklearnModel(model).to_onnx({"X": X[:1].astype(dtype)}, precision=precision)
    names = onnx_model.output_names
    return lambda data: dict(zip(names, onnx_model.run({"X": data.astype(dtype)}), strict=True))


# -- HistGradientBoosting -----------------------------------------------------------------


def test_hgb_binary_with_nan_and_inputs_at_thresholds(tmp_path):
    X, y = load_breast_cancer(return_X_y=True)
    X = with_nan(X)
    model = HistGradientBoostingClassifier(max_iter=30, random_state=0).fit(X, y)
    new_nan = with_nan(X, cols=(1, 2, 10, 20), share=0.3, seed=1)  # no NaN there in training
    edges = at_thresholds(X, hgb_splits(model))
    compress_and_check(model, X, y, tmp_path, new_nan, edges)
    run = converted(model, X, "double")  # the fallback precision works as well
    assert_agrees(model, edges, run(edges))


def test_hgb_multiclass_with_nan(tmp_path):
    X, y = load_wine(return_X_y=True)
    X = with_nan(X, cols=(0, 6, 9))
    model = HistGradientBoostingClassifier(max_iter=20, random_state=0).fit(X, y)
    compress_and_check(model, X, y, tmp_path, at_thresholds(X, hgb_splits(model)))


@pytest.mark.parametrize("as_indices", [False, True])
def test_hgb_categorical_features(tmp_path, as_indices):
    X, y = load_digits(return_X_y=True)  # pixel intensities 0..16 as categories
    cat = [20, 21, 28, 36, 43]
    X = with_nan(X, cols=(28,))
    if as_indices:  # binary, categories given as column indices
        y = (y > 4).astype(int)
        spec: object = cat
    else:  # 10 classes, categories given as a boolean mask
        spec = np.isin(np.arange(X.shape[1]), cat)
    model = HistGradientBoostingClassifier(max_iter=15, categorical_features=spec, random_state=0)
    model.fit(X, y)
    nodes = np.concatenate([p.nodes for it in model._predictors for p in it])
    assert nodes["is_categorical"].sum() > 10  # the trees really split on categories
    odd = X[:300].copy()
    odd[:100, 20] = 99  # unseen category -> the missing-value side
    odd[100:200, 21] = -1  # negative
    odd[200:, 36] = 2.5  # not a category at all
    odd[::7, 43] = np.nan
    compress_and_check(model, X, y, tmp_path, odd)


def test_hgb_categorical_from_dtype_dataframe(tmp_path):
    pd = pytest.importorskip("pandas")
    X, y = load_digits(return_X_y=True)
    df = pd.DataFrame(X[:, 16:40], columns=[f"p{i}" for i in range(24)])
    for column in ("p4", "p5", "p12"):  # numeric categories, as pandas "category" columns
        df[column] = df[column].astype("category")
    model = HistGradientBoostingClassifier(max_iter=10, categorical_features="from_dtype")
    model.fit(df, y)
    assert model.is_categorical_.sum() == 3
    pkg = nimbleml.compress(model, quantize=None, val=(df, y), benchmark_time_s=0)
    out = nimbleml.load(pkg.save(tmp_path / "frame.nimble")).run(df)
    np.testing.assert_allclose(out["probabilities"], model.predict_proba(df), rtol=0, atol=1e-5)
    np.testing.assert_array_equal(out["label"], model.predict(df))


@pytest.mark.parametrize("loss", ["squared_error", "poisson"])
def test_hgb_regressor_with_nan(tmp_path, loss):
    X, y = load_diabetes(return_X_y=True)
    X = with_nan(X, cols=(0, 2, 8))
    model = HistGradientBoostingRegressor(max_iter=30, loss=loss, random_state=0).fit(X, y)
    compress_and_check(model, X, y, tmp_path, at_thresholds(X, hgb_splits(model)))


def test_hgb_single_leaf_trees_and_string_labels():
    X, y = load_breast_cancer(return_X_y=True)
    X = X.astype(np.float32)  # the float graph, judged on float32 data
    stump = HistGradientBoostingClassifier(max_iter=3, min_samples_leaf=400).fit(X, y)
    assert {p.get_n_leaf_nodes() for it in stump._predictors for p in it} == {1}
    assert_agrees(stump, X, converted(stump, X)(X))
    named = HistGradientBoostingClassifier(max_iter=10).fit(X, np.where(y == 1, "benign", "bad"))
    out = converted(named, X)(X)
    assert out["label"].dtype == object
    assert_agrees(named, X, out)


def test_hgb_inside_a_pipeline(tmp_path):
    X, y = load_wine(return_X_y=True)
    pipe = make_pipeline(StandardScaler(), HistGradientBoostingClassifier(max_iter=20)).fit(X, y)
    compress_and_check(pipe, X, y, tmp_path)


# -- LightGBM and XGBoost (the optional gbm extra) ----------------------------------------


def lightgbm_splits(model) -> list[tuple[int, float]]:
    df = model.booster_.trees_to_dataframe()
    df = df[df.split_feature.notna() & (df.decision_type == "<=")]
    return [
        (int(f.split("_")[-1]), float(t))
        for f, t in zip(df.split_feature, df.threshold, strict=True)
    ]


def xgboost_splits(model) -> list[tuple[int, float]]:
    df = model.get_booster().trees_to_dataframe()
    df = df[df.Feature != "Leaf"]
    return [(int(f[1:]), float(t)) for f, t in zip(df.Feature, df.Split, strict=True)]


def test_lightgbm_classifiers_and_regressor(tmp_path):
    lightgbm = pytest.importorskip("lightgbm")
    pytest.importorskip("onnxmltools")
    X, y = load_breast_cancer(return_X_y=True)
    X = with_nan(X)
    clf = lightgbm.LGBMClassifier(n_estimators=30, verbose=-1, random_state=0).fit(X, y)
    # LightGBM's float64 thresholds: a float32 input equal to a threshold rounded up
    # moved probabilities by 0.14 before the thresholds were rounded down
    edges = at_thresholds(X, lightgbm_splits(clf))
    compress_and_check(clf, X, y, tmp_path / "binary", edges, with_nan(X, cols=(1, 2), seed=1))
    # a double graph runs it too, its input cast to float32 before the trees
    run = converted(clf, X, "double")
    assert_agrees(clf, X.astype(np.float32), run(X.astype(np.float32)))
    Xw, yw = load_wine(return_X_y=True)
    multi = lightgbm.LGBMClassifier(n_estimators=20, min_child_samples=5, verbose=-1).fit(Xw, yw)
    compress_and_check(multi, Xw, yw, tmp_path / "multi", at_thresholds(Xw, lightgbm_splits(multi)))
    Xd, yd = load_diabetes(return_X_y=True)
    Xd = with_nan(Xd, cols=(0, 2))
    reg = lightgbm.LGBMRegressor(n_estimators=30, verbose=-1, random_state=0).fit(Xd, yd)
    compress_and_check(reg, Xd, yd, tmp_path / "reg", at_thresholds(Xd, lightgbm_splits(reg)))


def test_xgboost_classifiers_and_regressor(tmp_path):
    xgboost = pytest.importorskip("xgboost")
    pytest.importorskip("onnxmltools")
    X, y = load_breast_cancer(return_X_y=True)
    X = with_nan(X)
    clf = xgboost.XGBClassifier(n_estimators=30, max_depth=4, random_state=0).fit(X, y)
    edges = at_thresholds(X, xgboost_splits(clf))
    compress_and_check(clf, X, y, tmp_path / "binary", edges, with_nan(X, cols=(1, 2), seed=1))
    Xw, yw = load_wine(return_X_y=True)
    multi = xgboost.XGBClassifier(n_estimators=20, max_depth=3).fit(Xw, yw)
    compress_and_check(multi, Xw, yw, tmp_path / "multi")
    Xd, yd = load_diabetes(return_X_y=True)
    reg = xgboost.XGBRegressor(n_estimators=30, max_depth=4).fit(with_nan(Xd, cols=(0, 2)), yd)
    compress_and_check(reg, with_nan(Xd, cols=(0, 2)), yd, tmp_path / "reg")


def test_lightgbm_inside_a_pipeline(tmp_path):
    lightgbm = pytest.importorskip("lightgbm")
    pytest.importorskip("onnxmltools")
    X, y = load_breast_cancer(return_X_y=True)
    pipe = make_pipeline(StandardScaler(), lightgbm.LGBMClassifier(n_estimators=30, verbose=-1))
    pipe.fit(X, y)
    compress_and_check(pipe, X, y, tmp_path)


def test_xgboost_behind_a_standard_scaler_splits_as_scikit_learn(tmp_path):
    """XGBoost splits exactly on data values: a scaler one float32 step off (skl2onnx's
    multiply by 1/scale) sent rows down the other branch; nimbleml's scaler does not."""
    xgboost = pytest.importorskip("xgboost")
    pytest.importorskip("onnxmltools")
    X, y = load_breast_cancer(return_X_y=True)
    pipe = make_pipeline(StandardScaler(), xgboost.XGBClassifier(n_estimators=50, max_depth=4))
    pipe.fit(X, y)
    scaled = converted(make_pipeline(StandardScaler().fit(X)).fit(X), X)  # the scaler alone
    X32 = X.astype(np.float32)
    np.testing.assert_array_equal(
        next(iter(scaled(X32).values())), pipe[0].transform(X32)
    )  # bit for bit
    compress_and_check(pipe, X, y, tmp_path)  # every row, not just the verification batches


def test_missing_gbm_extra_says_how_to_install(monkeypatch):
    lightgbm = pytest.importorskip("lightgbm")
    X, y = load_breast_cancer(return_X_y=True)
    model = lightgbm.LGBMClassifier(n_estimators=5, verbose=-1).fit(X, y)
    monkeypatch.setattr(sklearn_gbm, "REGISTERED", set())
    monkeypatch.setitem(sys.modules, "onnxmltools", None)  # import onnxmltools now fails
    with pytest.raises(MissingDependencyError, match=r"pip install 'nimbleml\[gbm\]'"):
        nimbleml.compress(model, quantize=None, val=(X, y), benchmark_time_s=0)


def test_plain_sklearn_conversion_imports_no_gbm_library():
    code = (
        "import sys, numpy as np\n"
        "from sklearn.ensemble import HistGradientBoostingClassifier as H\n"
        "from nimbleml.models.sklearn_model import SklearnModel\n"
        "X = np.random.default_rng(0).random((60, 4)); y = (X[:, 0] > 0.5).astype(int)\n"
        "SklearnModel(H(max_iter=3).fit(X, y)).to_onnx({'X': X[:1].astype(np.float32)})\n"
        "print(sorted(m for m in ('lightgbm', 'xgboost', 'onnxmltools') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
