"""Issue 22: an imputer -> scaler -> trees pipeline over a DataFrame with missing values is
packaged exactly (every validation row, rows on every split threshold, a missing value in
each column), and a package never ships when a verified row disagrees on its label."""

from __future__ import annotations

import numpy as np
import pytest

pd = pytest.importorskip("pandas")
from sklearn.compose import ColumnTransformer  # noqa: E402
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier  # noqa: E402
from sklearn.impute import SimpleImputer  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import OneHotEncoder, StandardScaler  # noqa: E402

import nimbleml  # noqa: E402
from nimbleml.errors import ConversionError  # noqa: E402
from nimbleml.models import load_model  # noqa: E402
from nimbleml.models.sklearn_boundary import boundary_cases  # noqa: E402
from nimbleml.verify import check  # noqa: E402

FAST = {"benchmark_batch_sizes": (1,), "benchmark_time_s": 0}


def table(numeric: list[str], seed: int, n: int = 400):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "age": rng.integers(18, 80, n).astype(float),
        "income": rng.integers(20, 200, n) * 1000.0,
        "score": rng.normal(0, 1, n),
        "city": rng.choice(["a", "b", "c", "d"], n),
    })[[*numeric, "city"]]  # fmt: skip
    df.loc[rng.random(n) < 0.1, "age"] = np.nan
    flip = rng.random(n) < 0.1
    y = ((df["age"].fillna(40) > 40) ^ (df["city"] == "b") ^ flip).astype(int).to_numpy()
    return df, y


def pipeline(numeric: list[str], final=None):
    return make_pipeline(
        ColumnTransformer([
            ("num", make_pipeline(SimpleImputer(), StandardScaler()), numeric),
            ("cat", OneHotEncoder(handle_unknown="ignore"), ["city"]),
        ]),
        final if final is not None else HistGradientBoostingClassifier(max_iter=30, random_state=0),
    )  # fmt: skip


def agrees_exactly(pkg, pipe, df) -> None:
    out = pkg.run(df)
    np.testing.assert_array_equal(out["label"], pipe.predict(df))
    np.testing.assert_allclose(out["probabilities"], pipe.predict_proba(df), rtol=0, atol=1e-6)


@pytest.mark.parametrize("numeric", [["age", "income"], ["age", "income", "score"]])
def test_imputer_scaler_trees_package_is_exact(numeric, tmp_path):
    df, y = table(numeric, seed=2)
    pipe = pipeline(numeric).fit(df, y)
    pkg = nimbleml.compress(pipe, quantize=None, val=(df, y), **FAST)
    cases = {c["case"]: c for c in pkg.manifest["conversion"]["cases"]}
    assert {"every validation row (400)", "tree thresholds", "missing value in each column",
            "missing numbers"} <= set(cases)  # fmt: skip
    assert all(c["label_agreement"] == 1.0 for c in cases.values())
    agrees_exactly(pkg, pipe, df)
    # the rows verification generated, and new data: exactly the original's answers too
    model = load_model(pipe, df.head(16))
    for _, feeds in boundary_cases(model, model.feeds(df)):
        rows = model._input(feeds)
        agrees_exactly(pkg, pipe, rows)
    fresh, _ = table(numeric, seed=7, n=2000)
    agrees_exactly(nimbleml.load(pkg.save(tmp_path / "p.nimble")), pipe, fresh)


def test_threshold_rows_catch_a_graph_in_the_wrong_precision():
    """The float graph casts the user's float64 values to float32 before the scaler: on the
    generated threshold rows it sends some down the other branch, which the 16 rows the
    verification used to run never showed."""
    numeric = ["age", "income", "score"]
    df, y = table(numeric, seed=2)
    pipe = pipeline(numeric).fit(df, y)
    model = load_model(pipe, df.head(16))
    feeds = model.feeds(df)
    cases = dict(boundary_cases(model, feeds))
    assert len(cases["tree thresholds"]["age"]) >= 5 * 20  # five rows per threshold
    float_graph = model.to_onnx(feeds, precision="float")
    with pytest.raises(ConversionError, match="tree thresholds"):
        check(model.run, float_graph.run, list(cases.items()), atol=1e-5, rtol=1e-5)


def test_no_package_when_a_verified_row_disagrees_on_its_label(monkeypatch):
    """Both conversions made inexact (float32 everywhere): compress refuses and names the
    rows, rather than shipping a package that answers differently from the original."""
    from nimbleml.models.sklearn_model import SklearnModel

    numeric = ["age", "income", "score"]
    df, y = table(numeric, seed=2)
    pipe = pipeline(numeric, RandomForestClassifier(n_estimators=20, random_state=0)).fit(df, y)
    real = SklearnModel.to_onnx
    monkeypatch.setattr(
        SklearnModel, "to_onnx", lambda self, ex, path=None, precision="float": real(self, ex, path)
    )
    with pytest.raises(ConversionError, match="could not be converted") as info:
        nimbleml.compress(pipe, quantize=None, val=(df, y), **FAST)
    assert "tree thresholds" in str(info.value) or "every validation row" in str(info.value)


def test_a_forest_fitted_on_nan_is_refused_not_hung_and_ships_refusing_nan():
    """A forest splitting on NaN alone (threshold inf) cannot be written exactly: with NaN in
    the validation rows compress says so (skl2onnx's double threshold search used to spin
    forever on the inf); without, it ships and refuses missing values, saying why."""
    from sklearn.datasets import load_breast_cancer

    from nimbleml.models.sklearn_boundary import missing_value_splits
    from nimbleml.verify import verified_on_missing

    X, y = load_breast_cancer(return_X_y=True)
    holes = X.copy()
    holes[np.random.default_rng(0).random(X.shape) < 0.02] = np.nan
    forest = RandomForestClassifier(n_estimators=10, random_state=0).fit(holes, y)
    assert missing_value_splits(forest)
    with pytest.raises(ConversionError, match="splits on missing values alone"):
        nimbleml.compress(forest, quantize=None, val=(holes, y), **FAST)
    pkg = nimbleml.compress(forest, quantize=None, val=(X, y), **FAST)
    assert not verified_on_missing(pkg.manifest)
    assert pkg.manifest["conversion"]["missing_values"].startswith("refused: ")
    np.testing.assert_array_equal(pkg.predict(X), forest.predict(X))


def test_xgboost_threshold_rows_come_from_its_own_trees():
    xgboost = pytest.importorskip("xgboost")
    from sklearn.datasets import load_breast_cancer

    from nimbleml.models.sklearn_boundary import tree_thresholds

    X, y = load_breast_cancer(return_X_y=True)
    pipe = make_pipeline(StandardScaler(), xgboost.XGBClassifier(n_estimators=15, max_depth=3))
    pipe.fit(X, y)
    assert sum(len(t) for t in tree_thresholds(pipe[-1]).values()) > 20
    pkg = nimbleml.compress(pipe, quantize=None, val=(X, y), **FAST)
    cases = {c["case"]: c for c in pkg.manifest["conversion"]["cases"]}
    assert cases["tree thresholds"]["label_agreement"] == 1.0
    np.testing.assert_array_equal(pkg.predict(X), pipe.predict(X))
