"""A scikit-learn package takes FP64 (the user's own values, issue 22); clients that send
FP32 get the same answers, widened exactly; a type that does not widen exactly stays a 400."""

from __future__ import annotations

import httpx
import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import HistGradientBoostingClassifier

import nimbleml
from nimbleml.serve import ServeConfig, create_app
from tests.serve.conftest import ServerThread


def test_fp32_into_an_fp64_input_is_widened_and_int64_is_refused():
    X, y = load_breast_cancer(return_X_y=True)
    model = HistGradientBoostingClassifier(max_iter=10, random_state=0).fit(X, y)
    pkg = nimbleml.compress(model, quantize=None, val=(X, y), benchmark_time_s=0)
    assert pkg.manifest["conversion"]["converter"] == "precision=double"  # exact on float64
    app = create_app({"iris": pkg}, ServeConfig(max_batch_size=8, max_wait_ms=1))
    rows = X[:6]

    def body(datatype, data):
        return {"inputs": [{"name": "X", "shape": [6, 30], "datatype": datatype, "data": data}]}

    with ServerThread(app) as server, httpx.Client(base_url=server.url) as c:
        meta = c.get("/v2/models/iris").json()
        assert meta["inputs"][0]["datatype"] == "FP64"
        wide = c.post("/v2/models/iris/infer", json=body("FP64", rows.ravel().tolist()))
        narrow = c.post("/v2/models/iris/infer",
                        json=body("FP32", rows.astype(np.float32).ravel().tolist()))  # fmt: skip
        assert wide.status_code == narrow.status_code == 200, narrow.text
        label = next(o for o in narrow.json()["outputs"] if o["name"] == "label")["data"]
        assert label == pkg.predict(rows.astype(np.float32)).tolist()
        ints = c.post("/v2/models/iris/infer", json=body("INT64", [1] * 180))
        assert ints.status_code == 400 and "send it as FP64" in ints.json()["error"]
