"""Pipelines fitted on DataFrames (ColumnTransformer over numbers and strings) become packages
with one named input per column; they take a DataFrame or a dict of columns."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer, make_column_selector
from sklearn.ensemble import RandomForestClassifier
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

import nimbleml
from nimbleml.errors import DataError
from nimbleml.inputs import load_data
from nimbleml.models import load_model

FAST = {"benchmark_time_s": 0.02, "benchmark_batch_sizes": (1,)}
CITIES = ["paris", "tokyo", "lima", "oslo"]


def customers(n: int, seed: int, unseen: bool = False) -> tuple[pd.DataFrame, np.ndarray]:
    """Churn-like rows: numbers with NaN, string categories with None, an id column the
    model never reads. ``unseen`` puts cities and plans the model was not fitted on in."""
    rng = np.random.default_rng(seed)
    cities = [*CITIES, "berlin"] if unseen else CITIES
    df = pd.DataFrame({
        "age": rng.normal(40, 12, n).round(),
        "monthly fee": rng.gamma(3, 10, n),
        "city": rng.choice(cities, n),
        "plan": rng.choice(["basic", "pro", "team", None] + (["legacy"] if unseen else []), n),
        "customer_id": [f"c{seed}-{i}" for i in range(n)],
    })  # fmt: skip
    df.loc[df.index % 9 == 0, "age"] = np.nan
    risk = (df["monthly fee"] > 30).astype(int) + df["city"].isin(["lima", "berlin"]).astype(int)
    y = (risk + rng.random(n) > 1.2).astype(np.int64)
    return df, y.to_numpy()


@pytest.fixture(scope="module")
def data():
    train, ytr = customers(300, seed=0)
    val, yva = customers(80, seed=1, unseen=True)
    return train, ytr, val, yva


def scaled_onehot():
    return make_pipeline(
        ColumnTransformer([
            ("num", make_pipeline(SimpleImputer(), StandardScaler()), ["age", "monthly fee"]),
            ("cat", OneHotEncoder(handle_unknown="ignore"), ["city"]),
            ("plan", make_pipeline(SimpleImputer(strategy="most_frequent"),
                                   OneHotEncoder(handle_unknown="ignore")), ["plan"]),
        ]),
        LogisticRegression(),
    )  # fmt: skip


def ordinal_forest():
    return make_pipeline(
        ColumnTransformer([
            ("num", SimpleImputer(strategy="median"), ["age", "monthly fee"]),
            ("cat", make_pipeline(
                SimpleImputer(strategy="constant", fill_value="none"),
                OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1),
            ), ["city", "plan"]),
        ]),
        RandomForestClassifier(n_estimators=15, max_depth=6, random_state=0),
    )  # fmt: skip


def test_frame_pipeline_package_takes_dataframes_and_dicts(data, tmp_path):
    train, ytr, val, yva = data
    pipe = scaled_onehot().fit(train, ytr)
    pkg = nimbleml.compress(pipe, quantize=None, val=(val, yva), **FAST)
    m = pkg.manifest
    number = "float64"  # the user's own values; a float graph casts them itself
    assert m["inputs"] == [
        {"name": "age", "dtype": number, "shape": ["batch", 1]},
        {"name": "monthly fee", "dtype": number, "shape": ["batch", 1]},
        {"name": "city", "dtype": "object", "shape": ["batch", 1]},
        {"name": "plan", "dtype": "object", "shape": ["batch", 1]},
    ]  # the id column is not read, so it is not an input
    cases = [c["case"] for c in m["conversion"]["cases"]]
    assert cases == ["batch=1", "batch=16", "unseen categories", "missing strings",
                     "every validation row (80)", "missing numbers",
                     "missing value in each column"]  # fmt: skip
    assert np.array_equal(pkg.predict(val), pipe.predict(val))
    assert np.abs(pkg.run(val)["probabilities"] - pipe.predict_proba(val)).max() < 1e-5
    as_dict = {k: val[k].tolist() for k in ("age", "monthly fee", "city", "plan")}
    assert np.array_equal(pkg.predict(as_dict), pipe.predict(val))
    loaded = nimbleml.load(pkg.save(tmp_path / "churn.nimble"))
    assert np.array_equal(loaded.predict(val.iloc[:7]), pipe.predict(val.iloc[:7]))


def test_missing_values_behave_as_in_scikit_learn(data):
    train, ytr, _, _ = data
    pipe = scaled_onehot().fit(train, ytr)
    rows = pd.DataFrame({
        "age": [np.nan, 30.0, np.nan, 55.0],
        "monthly fee": [12.0, np.nan, 40.0, 25.0],
        "city": ["paris", None, "atlantis", np.nan],
        "plan": [None, np.nan, "pro", "gold"],
    })  # fmt: skip
    pkg = nimbleml.compress(pipe, quantize=None, val=(rows, None), metric="agreement", **FAST)
    assert np.abs(pkg.run(rows)["probabilities"] - pipe.predict_proba(rows)).max() < 1e-5
    as_dict = {"age": [None, 30, None, 55], "monthly fee": [12, None, 40, 25],
               "city": ["paris", None, "atlantis", None], "plan": [None, None, "pro", "gold"]}  # fmt: skip
    assert np.array_equal(pkg.predict(as_dict), pipe.predict(rows))


def test_ordinal_encoder_and_imputer_with_a_forest(data):
    train, ytr, val, yva = data
    pipe = ordinal_forest().fit(train, ytr)
    model = load_model(pipe)
    assert [(s.name, s.dtype) for s in model.inputs] == [
        ("age", "float64"),  # the original takes the user's values as they are
        ("monthly fee", "float64"),
        ("city", "object"),
        ("plan", "object"),
    ]
    label, _proba = model(val)  # SklearnModel.run rebuilds a DataFrame from the feeds
    assert np.array_equal(label, pipe.predict(val))
    pkg = nimbleml.compress(pipe, quantize=None, val=(val, yva), **FAST)
    assert np.array_equal(pkg.predict(val), pipe.predict(val))
    assert np.abs(pkg.run(val)["probabilities"] - pipe.predict_proba(val)).max() < 1e-5


def test_frame_regression(data):
    train, _, val, _ = data
    pipe = make_pipeline(
        ColumnTransformer([
            ("num", make_pipeline(SimpleImputer(), StandardScaler()), ["age"]),
            ("cat", OneHotEncoder(handle_unknown="ignore"), ["city"]),
        ]),
        Ridge(),
    ).fit(train, train["monthly fee"])  # fmt: skip
    pkg = nimbleml.compress(pipe, quantize=None, val=(val, val["monthly fee"].to_numpy()), **FAST)
    assert [i["name"] for i in pkg.manifest["inputs"]] == ["age", "city"]
    assert np.allclose(pkg.predict(val).reshape(-1), pipe.predict(val), rtol=1e-5)


def test_bad_columns_are_named(data):
    train, ytr, val, _ = data
    pipe = scaled_onehot().fit(train, ytr)
    model = load_model(pipe)
    with pytest.raises(DataError, match="no column 'city'; the model takes columns"):
        model(val.drop(columns=["city"]))
    with pytest.raises(DataError, match="input 'monthly fee' has dtype <U"):
        model({"age": [30.0], "monthly fee": ["cheap"], "city": ["oslo"], "plan": ["pro"]})
    with pytest.raises(DataError, match="input 'city' holds int64 values; the model takes strings"):
        model({"age": [30.0], "monthly fee": [9.0], "city": [3], "plan": ["pro"]})
    with pytest.raises(DataError, match=r"unexpected \['customer_id'\]"):
        model({**{k: val[k] for k in ("age", "monthly fee", "city", "plan")},
               "customer_id": val["customer_id"]})  # fmt: skip
    extra = val.assign(notes="ignored")  # a DataFrame's extra columns are ignored
    assert np.array_equal(model(extra)[0], pipe.predict(val))


def test_column_kinds_are_read_per_column():
    """One encoder over zip codes (numbers) and plan names (strings), columns picked by
    dtype, a passed-through bool, and a free-text column read by a TfidfVectorizer."""
    rng = np.random.default_rng(3)
    n = 240
    df = pd.DataFrame({
        "fee": rng.gamma(3, 10, n),
        "zip": rng.choice([75001, 10115, 1000], n),
        "plan": rng.choice(["basic", "pro", None], n),
        "autopay": rng.choice([True, False], n),
        "note": rng.choice(["call me back", "", "late parcel again", "café closed"], n),
    })  # fmt: skip
    y = (df["fee"] > 30).to_numpy().astype(int)
    pipe = make_pipeline(
        ColumnTransformer(
            [
                ("num", StandardScaler(), make_column_selector(dtype_include="float")),
                ("cat", OneHotEncoder(handle_unknown="ignore"), ["zip", "plan"]),
                ("note", TfidfVectorizer(), "note"),
            ],
            remainder="passthrough",
        ),
        LogisticRegression(),
    ).fit(df[:200], y[:200])
    model = load_model(pipe)
    assert [(s.name, s.dtype) for s in model.inputs] == [
        ("fee", "float64"), ("zip", "float64"), ("plan", "object"), ("autopay", "float64"),
        ("note", "object"),
    ]  # fmt: skip
    val = df[200:]
    pkg = nimbleml.compress(pipe, quantize=None, val=(val, y[200:]), **FAST)
    assert np.abs(pkg.run(val)["probabilities"] - pipe.predict_proba(val)).max() < 1e-5
    assert np.array_equal(pkg.predict(val), pipe.predict(val))  # "" notes stay text


def test_npz_with_one_array_per_column(data, tmp_path):
    """The CLI's data files: an .npz of columns (strings as unicode arrays) plus y."""
    train, ytr, val, yva = data
    pipe = ordinal_forest().fit(train, ytr)
    columns = {k: val[k].to_numpy() for k in ("age", "monthly fee")}
    columns.update({k: val[k].fillna("").to_numpy(dtype=str) for k in ("city", "plan")})
    np.savez(tmp_path / "val.npz", y=yva, **columns)
    X, y = load_data(str(tmp_path / "val.npz"))
    pkg = nimbleml.compress(pipe, quantize=None, val=(X, y), **FAST)
    assert np.array_equal(pkg.predict(X), pipe.predict(val))
