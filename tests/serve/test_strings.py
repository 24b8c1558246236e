"""Text and table models served: strings as v2 BYTES (JSON and binary, through tritonclient),
one named input per column, and the cache keyed by the strings' content."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

import nimbleml
from nimbleml.monitor import ModelMonitor
from nimbleml.serve import ServeConfig, create_app

from .conftest import ServerThread

TEXTS = [
    "refund my invoice please", "the app crashes on start", "where is my parcel",
    "reset my password", "charged twice on my card", "screen freezes after update",
    "courier lost the package", "account locked after login",
]  # fmt: skip
LABELS = ["billing", "tech", "shipping", "account"] * 2
FAST = {"quantize": None, "benchmark_time_s": 0.01, "benchmark_batch_sizes": (1,)}


def frame(n: int = 40) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(0)
    df = pd.DataFrame({
        "age": rng.normal(40, 10, n), "city": rng.choice(["paris", "oslo", "lima"], n),
    })  # fmt: skip
    return df, (df["city"] == "lima").to_numpy().astype(np.int64)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    text_model = make_pipeline(TfidfVectorizer(), LogisticRegression()).fit(TEXTS * 3, LABELS * 3)
    df, y = frame()
    prep = ColumnTransformer([
        ("num", make_pipeline(SimpleImputer(), StandardScaler()), ["age"]),
        ("cat", OneHotEncoder(handle_unknown="ignore"), ["city"]),
    ])  # fmt: skip
    table_model = make_pipeline(prep, LogisticRegression()).fit(df, y)
    where = tmp_path_factory.mktemp("strings")
    text_pkg = nimbleml.compress(text_model, val=(np.array(TEXTS, dtype=object), None), **FAST)
    table_pkg = nimbleml.compress(table_model, val=(df, y), **FAST)
    packages = {
        "intent": text_pkg.save(where / "intent.nimble"),
        "churn": table_pkg.save(where / "churn.nimble"),
    }
    monitor = ModelMonitor(store="sqlite:///:memory:", resources_interval_s=None)
    app = create_app(packages, ServeConfig(max_batch_size=16, max_wait_ms=1), monitor)
    with ServerThread(app) as server:
        server.text_model, server.table_model, server.df = text_model, table_model, df
        yield server
    monitor.close()


def test_texts_as_json_bytes_and_v1_instances(served):
    texts = ["my card was charged twice", "", "café naïve 東京 !!!"]
    expected = served.text_model.predict(texts).tolist()
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [3], "data": texts}]}
    with httpx.Client(base_url=served.url) as c:
        meta = c.get("/v2/models/intent").json()
        assert meta["inputs"][0]["datatype"] == "BYTES"
        r = c.post("/v2/models/intent/infer", json=body)
        assert r.status_code == 200, r.text
        label = next(o for o in r.json()["outputs"] if o["name"] == "label")
        assert label["datatype"] == "BYTES" and label["data"] == expected
        again = c.post("/v2/models/intent/infer", json=body)  # the same strings: a cache hit
        assert next(o for o in again.json()["outputs"] if o["name"] == "label")["data"] == expected
        v1 = c.post("/v1/models/intent:predict", json={"instances": texts})
        assert v1.status_code == 200, v1.text
        assert v1.json()["predictions"] == expected
        other = c.post("/v1/models/intent:predict", json={"instances": ["where is my parcel"]})
        assert (
            other.json()["predictions"]
            == served.text_model.predict(["where is my parcel"]).tolist()
        )
        metrics = c.get("/metrics").text
    hits = [
        line
        for line in metrics.splitlines()
        if line.startswith('nimbleml_cache_hits_total{model="intent",tier="memory"}')
    ]
    assert hits and float(hits[0].split()[-1]) >= 1


def test_texts_as_binary_bytes_through_tritonclient(served):
    from tritonclient.http import InferenceServerClient, InferInput

    texts = np.array(["reset my password", "parcel late again"], dtype=object)
    client = InferenceServerClient(served.url.removeprefix("http://"))
    item = InferInput("text", [2], "BYTES")
    item.set_data_from_numpy(texts, binary_data=True)
    result = client.infer("intent", [item])
    labels = [v.decode() for v in result.as_numpy("label").reshape(-1)]
    assert labels == served.text_model.predict(list(texts)).tolist()
    client.close()


def test_one_named_input_per_column(served):
    df = served.df.iloc[:4]
    expected = served.table_model.predict_proba(df)
    body = {"inputs": [
        {"name": "age", "datatype": "FP32", "shape": [4, 1], "data": df["age"].tolist()},
        {"name": "city", "datatype": "BYTES", "shape": [4, 1], "data": df["city"].tolist()},
    ]}  # fmt: skip
    with httpx.Client(base_url=served.url) as c:
        names = [i["name"] for i in c.get("/v2/models/churn").json()["inputs"]]
        assert names == ["age", "city"]
        r = c.post("/v2/models/churn/infer", json=body)
        assert r.status_code == 200, r.text
        proba = next(o for o in r.json()["outputs"] if o["name"] == "probabilities")
        got = np.asarray(proba["data"]).reshape(proba["shape"])
        np.testing.assert_allclose(got, expected, atol=1e-5)
        v1 = c.post("/v1/models/churn:predict", json={"instances": df.to_dict("records")})
        assert v1.status_code == 200, v1.text
        assert v1.json()["predictions"] == served.table_model.predict(df).tolist()
        missing = c.post("/v2/models/churn/infer", json={"inputs": body["inputs"][:1]})
    assert missing.status_code == 422 and "city" in missing.json()["error"]


def test_missing_numbers_are_accepted_where_the_model_was_verified_on_them(served):
    """The table model imputes a missing age, and its package was verified on missing numbers:
    a JSON null (v2 and v1) or a NaN stands for a missing value, as in scikit-learn. The text
    model and the others still refuse NaN, and infinities are refused everywhere."""
    df = served.df.iloc[:2].copy()
    df.loc[df.index[0], "age"] = np.nan
    expected = served.table_model.predict_proba(df)
    ages = [None, float(df["age"].iloc[1])]
    body = {"inputs": [
        {"name": "age", "datatype": "FP32", "shape": [2, 1], "data": ages},
        {"name": "city", "datatype": "BYTES", "shape": [2, 1], "data": df["city"].tolist()},
    ]}  # fmt: skip
    with httpx.Client(base_url=served.url) as c:
        r = c.post("/v2/models/churn/infer", json=body)
        assert r.status_code == 200, r.text
        proba = next(o for o in r.json()["outputs"] if o["name"] == "probabilities")
        got = np.asarray(proba["data"]).reshape(proba["shape"])
        np.testing.assert_allclose(got, expected, atol=1e-5)
        records = [{"age": a, "city": city} for a, city in zip(ages, df["city"], strict=True)]
        v1 = c.post("/v1/models/churn:predict", json={"instances": records})
        assert v1.status_code == 200, v1.text
        assert v1.json()["predictions"] == served.table_model.predict(df).tolist()
        body["inputs"][0]["data"] = [1e400, 30.0]  # JSON Infinity through Python's parser
        raw = json.dumps(body).replace("1e400", "Infinity")
        inf = c.post("/v2/models/churn/infer", content=raw,
                     headers={"content-type": "application/json"})  # fmt: skip
        assert inf.status_code == 400 and "infinite" in inf.json()["error"]


def test_the_predictor_caches_texts_by_content(served, tmp_path):
    pkg = nimbleml.compress(served.text_model, val=(np.array(TEXTS, dtype=object), None), **FAST)
    predictor = nimbleml.OptimizedPredictor(model=pkg, cache_size_mb=8)
    first = predictor.predict(["refund my invoice please", "where is my parcel"])
    again = predictor.predict(
        np.array(["refund my invoice please", "where is my parcel"], dtype=object)
    )
    other = predictor.predict(["where is my parcel", "refund my invoice please"])
    assert first.tolist() == again.tolist() == other.tolist()[::-1]
    assert (
        first.tolist()
        == served.text_model.predict(["refund my invoice please", "where is my parcel"]).tolist()
    )
    memory = predictor.stats()["cache"]["tiers"]["memory"]
    assert memory["hits"] == 1 and memory["misses"] == 2
