"""Everything that runs a package runs an OpenVINO one: package.predict, OptimizedPredictor,
serve with dynamic batching (real sockets), ensembles, predict_file and profile."""

from __future__ import annotations

import threading

import httpx
import numpy as np
import pytest

pytest.importorskip("openvino")

import nimbleml
from nimbleml.models.openvino_model import OpenVinoModel
from nimbleml.runtime import EnsemblePredictor, OptimizedPredictor
from tests._net import v2_body


@pytest.fixture(scope="module")
def int8(ov_packages):
    return ov_packages["int8"]


def test_package_predict_runs_the_ir(int8, digits):
    pkg = nimbleml.load(int8)
    assert isinstance(pkg.model, OpenVinoModel) and pkg.fallback_reason is None
    X, y = digits[1], digits[3]
    scores = pkg.predict(X)
    assert scores.shape == (len(X), 10) and (scores.argmax(1) == y).mean() > 0.9
    assert list(pkg.run(X[:2])) == ["output"]  # the ONNX output name


def test_optimized_predictor_caches_by_the_ir_content(int8, digits):
    X = digits[1]
    with_cache = OptimizedPredictor(int8, batch_size=16)
    first = with_cache.predict(X[:3])
    assert np.array_equal(with_cache.predict(X[:3]), first)
    cache = with_cache.stats()["cache"]
    assert cache["tiers"]["memory"]["hits"] == 1 and cache["model_calls"] == 1
    manifest = nimbleml.load(int8).manifest
    xml = next(f["sha256"] for f in manifest["files"] if f["path"] == "model.xml")
    assert with_cache.model_hash == xml
    loose = OptimizedPredictor(nimbleml.load(int8).model)  # a bare model: hashed from its files
    assert loose.model_hash != xml and len(loose.model_hash) == 64
    assert np.allclose(with_cache.predict_batch(X[:40]), nimbleml.load(int8).predict(X[:40]))


def test_serve_batches_requests_for_an_openvino_package(int8, digits):
    from nimbleml.monitor import ModelMonitor
    from nimbleml.serve import ServeConfig, create_app
    from tests.serve.conftest import ServerThread

    X = digits[1]
    monitor = ModelMonitor(store="sqlite:///:memory:", resources_interval_s=None)
    app = create_app({"ov": int8}, ServeConfig(max_batch_size=16, max_wait_ms=5, threads=1),
                     monitor)  # fmt: skip
    expected = nimbleml.load(int8).predict(X[:32])
    results: dict[int, np.ndarray] = {}
    errors: list[str] = []

    def client(first: int) -> None:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            for k in range(first, 32, 8):
                r = c.post("/v2/models/ov/infer", json=v2_body(X[k : k + 1]))
                if r.status_code != 200:
                    errors.append(r.text)
                else:
                    results[k] = np.asarray(r.json()["outputs"][0]["data"])

    with ServerThread(app) as server:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with httpx.Client(base_url=server.url) as c:
            meta = c.get("/v2/models/ov").json()
            metrics = c.get("/metrics").text
    monitor.close()
    assert not errors and len(results) == 32
    for k, got in results.items():  # int8 rounds per row: a row's answer is its own
        assert np.allclose(got, expected[k], atol=1e-4)
    assert meta["outputs"][0]["name"] == "output"
    assert 'nimbleml_batch_size_count{model="ov"}' in metrics


def test_the_server_gives_openvino_its_thread_setting(int8):
    from nimbleml.monitor import ModelMonitor
    from nimbleml.serve import ServeConfig
    from nimbleml.serve.server import Server

    monitor = ModelMonitor(store="sqlite:///:memory:", resources_interval_s=None)
    entry = Server({"ov": int8}, ServeConfig(threads=1), monitor).entries["ov"]
    monitor.close()
    assert isinstance(entry.model, OpenVinoModel)
    assert entry.model.config()["INFERENCE_NUM_THREADS"] == 1
    assert entry.model.config()["ENABLE_CPU_PINNING"] is False  # the event loop keeps its core


def test_an_ensemble_mixes_openvino_and_onnx_members(ov_packages, digits):
    X = digits[1][:20]
    members = [ov_packages["int8"], ov_packages["fp32"]]
    with EnsemblePredictor(members, fusion="mean", mode="sequential") as ens:
        out = ens.predict(X)
        assert all(isinstance(m, OpenVinoModel) and m.threads for m in ens._sequential)
    each = np.stack([nimbleml.load(p).predict(X) for p in members])
    assert np.allclose(out.scores, each.mean(axis=0), atol=1e-4)


def test_predict_file_runs_an_openvino_package(int8, digits, tmp_path):
    import pandas as pd

    X = digits[1][:300]
    np.save(tmp_path / "X.npy", X)
    res = nimbleml.predict_file(int8, tmp_path / "X.npy", tmp_path / "o.csv", chunk_rows=128)
    assert res.rows == 300
    got = pd.read_csv(tmp_path / "o.csv").drop(columns=["row"]).to_numpy()
    np.testing.assert_allclose(got, nimbleml.load(int8).predict(X), rtol=1e-5, atol=1e-5)


def test_profile_reads_openvino_per_layer_counters(int8, digits, tmp_path):
    report = nimbleml.profile(int8, digits[1], batch_sizes=(1, 16), runs=20,
                              output=tmp_path / "prof")  # fmt: skip
    assert report.kind == "openvino" and report.runtime["engine"].startswith("openvino ")
    assert report.quantized  # the layers ran on int8 kernels
    b = report.batch(16)
    assert b.ops and b.ops[0].op.startswith("FullyConnected") and "I8" in b.ops[0].provider
    assert abs(sum(o.share for o in b.ops) - 1) < 1e-6
    assert b.flops and b.flops > 2 * 16 * 64 * 128  # at least the first layer
    assert any(n.inputs and n.outputs for n in b.nodes)
    text = report.table()
    assert "(OpenVINO, int8)" in text and "OpenVINO between layers" in text
    assert (tmp_path / "prof" / "trace-openvino-b16.json").is_file()
