"""An estimator with no ONNX converter still gives a package: the original, saved with skops,
is the runnable model, the warning names the step, and the package loads again (in this
process and in a fresh one) because it records the custom types its author trusted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

import nimbleml
from nimbleml.errors import ConversionWarning, PackageError

ROOT = Path(__file__).resolve().parents[2]


class ClipTransformer(BaseEstimator, TransformerMixin):
    """Clips standardised features; skl2onnx has no converter for it. At module level, so a
    package holding it can import it again when loaded."""

    def __init__(self, low: float = -2.0, high: float = 2.0) -> None:
        self.low = low
        self.high = high

    def fit(self, X, y=None):
        self.n_features_in_ = np.asarray(X).shape[1]
        return self

    def transform(self, X):
        return np.clip(X, self.low, self.high)


@pytest.fixture(scope="module")
def data():
    X, y = load_breast_cancer(return_X_y=True)
    return ((X - X.mean(0)) / X.std(0)).astype(np.float32), y


@pytest.fixture(scope="module")
def clipped(data):
    X, y = data
    steps = [("clip", ClipTransformer()), ("lr", LogisticRegression(max_iter=500))]
    return Pipeline(steps).fit(X, y)


@pytest.fixture
def package(clipped, data):
    X, y = data
    with pytest.warns(ConversionWarning, match=r"step 'clip' \(ClipTransformer\) has no ONNX"):
        return nimbleml.compress(clipped, quantize=None, val=(X, y), benchmark_time_s=0)


QUALNAME = f"{__name__}.ClipTransformer"


def test_package_runs_the_original_and_names_the_step(package, clipped, data):
    X, _ = data
    manifest = package.manifest
    assert manifest["conversion"]["converter"] is None
    assert "step 'clip' (ClipTransformer)" in manifest["conversion"]["reason"]
    assert manifest["model"]["path"].endswith(".skops")
    assert manifest["model"]["trusted_types"] == [QUALNAME]
    expected = clipped.predict(X)
    np.testing.assert_array_equal(package.predict(X), expected)
    np.testing.assert_allclose(
        package.run(X)["probabilities"], clipped.predict_proba(X), rtol=0, atol=1e-6
    )
    predictor = nimbleml.OptimizedPredictor(package)
    np.testing.assert_array_equal(predictor.predict(X), expected)


def test_saved_package_loads_here_and_in_a_fresh_interpreter(package, clipped, data, tmp_path):
    X, _ = data
    saved = package.save(tmp_path / "clip.nimble")
    loaded = nimbleml.load(saved)
    np.testing.assert_array_equal(loaded.predict(X), clipped.predict(X))
    np.testing.assert_array_equal(nimbleml.OptimizedPredictor(saved).predict(X), clipped.predict(X))
    np.save(tmp_path / "X.npy", X)
    code = (
        "import sys, numpy as np, nimbleml\n"
        f"pkg = nimbleml.load({str(saved)!r})\n"
        f"print(sys.modules[{__name__!r}].__file__ is not None)\n"  # imported to unpack it
        f"print(pkg.predict(np.load({str(tmp_path / 'X.npy')!r})).tolist())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    imported, labels = out.stdout.strip().splitlines()
    assert imported == "True"
    assert json.loads(labels) == clipped.predict(X).tolist()


def test_only_types_the_package_records_are_trusted(package, tmp_path):
    saved = package.save(tmp_path / "clip.nimble")
    manifest_path = saved / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for role in ("model", "baseline"):
        manifest[role].pop("trusted_types")
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(PackageError, match=QUALNAME.replace(".", r"\.")):
        nimbleml.load(saved)


def test_served_and_monitored_like_any_package(package, clipped, data):
    """Over real sockets: v2 infer answers with the original's labels, and the monitor
    records the predictions."""
    import httpx

    from nimbleml.monitor import ModelMonitor
    from nimbleml.serve import ServeConfig, create_app
    from tests._net import v2_body
    from tests.serve.conftest import ServerThread

    X, _ = data
    monitor = ModelMonitor(store="sqlite:///:memory:", resources_interval_s=None)
    app = create_app({"clip": package}, ServeConfig(max_batch_size=8, max_wait_ms=1), monitor)
    with ServerThread(app) as server, httpx.Client(base_url=server.url) as c:
        body = v2_body(np.asarray(X[:5], dtype=np.float64))  # its input is FP64, as sklearn's
        body["inputs"][0]["name"] = "X"
        r = c.post("/v2/models/clip/infer", json=body)
        assert r.status_code == 200, r.text
        label = next(o for o in r.json()["outputs"] if o["name"] == "label")
        assert label["data"] == clipped.predict(X[:5]).tolist()
    assert monitor.counts("clip") == {"requests": 1, "errors": 0}
    monitor.close()
