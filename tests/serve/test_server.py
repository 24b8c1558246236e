"""nimbleml serve over real sockets with a real HTTP client."""

import os
import threading

import httpx
import numpy as np
import pytest

import nimbleml
from nimbleml.monitor import ModelMonitor
from nimbleml.serve import ServeConfig, create_app
from tests._net import v2_body

from .conftest import ServerThread


@pytest.fixture(scope="module")
def server(digits_package):
    monitor = ModelMonitor(
        store="sqlite:///:memory:", resources_interval_s=None, flush_interval_s=0.1
    )
    app = create_app(
        {"digits": digits_package}, ServeConfig(max_batch_size=32, max_wait_ms=2), monitor
    )
    with ServerThread(app) as s:
        s.monitor = monitor
        yield s
    monitor.close()


def test_health_metadata_and_v2_infer(server, digits_package, digits):
    Xte = digits[1]
    with httpx.Client(base_url=server.url) as c:
        assert c.get("/v2/health/live").json() == {"live": True}
        assert c.get("/v2/health/ready").status_code == 200
        assert c.get("/v2/models/digits/ready").json()["ready"] is True
        meta = c.get("/v2/models/digits").json()
        assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
        r = c.post("/v2/models/digits/infer", json=v2_body(Xte[:3], id="req-1"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == "req-1" and r.headers["x-prediction-id"] == "req-1"
    out = body["outputs"][0]
    assert out["shape"] == [3, 10] and out["datatype"] == "FP32"
    expected = nimbleml.load(digits_package).predict(Xte[:3])
    assert np.allclose(np.asarray(out["data"]).reshape(3, 10), expected, atol=1e-5)


def test_v1_predict_and_feedback(server, digits):
    Xte, yte = digits[1], digits[3]
    with httpx.Client(base_url=server.url) as c:
        r = c.post("/v1/models/digits:predict", json={"instances": Xte[:2].tolist(), "id": "v1-a"})
        assert r.status_code == 200, r.text
        assert np.asarray(r.json()["predictions"]).shape == (2, 10)
        r1 = c.post("/v2/models/digits/infer", json=v2_body(Xte[5:6], id="fb-1"))
        assert r1.status_code == 200
        assert c.post(
            "/v2/models/digits/feedback", json={"id": "fb-1", "label": int(yte[5])}
        ).json() == {"accepted": True}
        bad = c.post("/v2/models/digits/feedback", json={"label": 1})
        assert bad.status_code == 400 and "'id'" in bad.json()["error"]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"inputs": []}, 400, "non-empty list"),
        (
            {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP99", "data": [0] * 64}]},
            400,
            "datatype",
        ),
        (
            {"inputs": [{"name": "input", "shape": [2, 64], "datatype": "FP32", "data": [0] * 64}]},
            400,
            "does not fit shape",
        ),
        (
            {
                "inputs": [
                    {
                        "name": "input",
                        "shape": [1, 2],
                        "datatype": "FP32",
                        "data": [float("nan"), 1],
                    }
                ]
            },
            400,
            "NaN",
        ),
        (
            {"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [0, 0, 0]}]},
            422,
            "dimension 1 must be 64",
        ),
        (
            {
                "inputs": [
                    {"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": [0] * 64}
                ]
            },
            422,
            "missing ['input']",
        ),
        (  # numpy's OverflowError was a 500
            {"inputs": [{"name": "input", "shape": [1], "datatype": "UINT8", "data": [300]}]},
            400,
            "out of bounds for uint8",
        ),
    ],
)
def test_bad_requests_name_the_field(server, body, status, message):
    import json

    raw = json.dumps(body).encode()  # allows the NaN literal that some clients send
    with httpx.Client(base_url=server.url) as c:
        r = c.post(
            "/v2/models/digits/infer", content=raw, headers={"content-type": "application/json"}
        )
    assert r.status_code == status, r.text
    assert message in r.json()["error"]


def test_absurdly_nested_json_is_a_400_not_a_500(server):
    raw = ('{"inputs": ' + "[" * 5000 + "]" * 5000 + "}").encode()  # RecursionError was a 500
    with httpx.Client(base_url=server.url) as c:
        r = c.post(
            "/v2/models/digits/infer", content=raw, headers={"content-type": "application/json"}
        )
    assert r.status_code == 400 and "too deeply" in r.json()["error"]


def test_unknown_model_bad_json_and_big_body(server):
    with httpx.Client(base_url=server.url) as c:
        r = c.post("/v2/models/nope/infer", json={"inputs": []})
        assert r.status_code == 404 and "digits" in r.json()["error"]
        r = c.post(
            "/v2/models/digits/infer",
            content=b"{not json",
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
        r = c.post(
            "/v2/models/digits/infer",
            content=b"x" * (17 * 2**20),
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 413


def test_concurrent_requests_are_batched_and_all_answered(server, digits_package, digits):
    Xte = digits[1]
    expected = nimbleml.load(digits_package).predict(Xte[:64])
    results: dict[int, np.ndarray] = {}
    ids: set[str] = set()
    errors = []

    def client(i: int) -> None:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            for k in range(i, 64, 16):
                r = c.post(
                    "/v2/models/digits/infer", json=v2_body(Xte[k : k + 1] + 1e-3 * k)
                )  # distinct: no cache hits
                if r.status_code != 200:
                    errors.append(r.text)
                    continue
                results[k] = np.asarray(r.json()["outputs"][0]["data"])
                ids.add(r.headers["x-prediction-id"])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 64
    assert len(ids) == 64  # every response its own prediction id
    for k, got in results.items():
        ref = nimbleml.load(digits_package).predict(Xte[k : k + 1] + 1e-3 * k)[0]
        assert np.allclose(got, ref, atol=1e-4)
    with httpx.Client(base_url=server.url) as c:
        text = c.get("/metrics").text
    assert 'nimbleml_predictions_total{model="digits"}' in text
    # Prometheus conventions: counters and a histogram, dimensions as labels
    assert "# TYPE nimbleml_batch_size histogram" in text
    assert 'nimbleml_batch_size_count{model="digits"}' in text
    inf = float(text.split('nimbleml_batch_size_bucket{le="+Inf",model="digits"} ')[1].split()[0])
    one = float(text.split('nimbleml_batch_size_bucket{le="1",model="digits"} ')[1].split()[0])
    assert inf >= 1 and one <= inf
    assert "# TYPE nimbleml_batches_total counter" in text and 'reason="idle"' in text
    assert "# TYPE nimbleml_http_responses_total counter" in text
    assert 'nimbleml_http_responses_total{code="200"}' in text
    assert 'key="' not in text  # no gauge per value any more
    assert "# TYPE nimbleml_queue_seconds_per_request gauge" in text
    per_request = float(text.split('nimbleml_queue_seconds_per_request{model="digits"} ')[1]
                        .split()[0])  # fmt: skip
    assert 0 < per_request < 1  # 64 requests just waited (16 at a time) for their batches
    del expected


def test_full_queue_answers_503_at_once_and_loses_nothing(digits_package, digits):
    Xte = digits[1]
    app = create_app(
        {"digits": digits_package}, ServeConfig(max_batch_size=1, max_queue=1, cache_mb=0)
    )
    statuses: list[int] = []
    retry = []
    with ServerThread(app) as s:

        def client(i: int) -> None:
            with httpx.Client(base_url=s.url, timeout=30) as c:
                for k in range(10):
                    r = c.post("/v2/models/digits/infer", json=v2_body(Xte[k : k + 1] * (i + 1)))
                    statuses.append(r.status_code)
                    if r.status_code == 503:
                        retry.append(r.headers.get("retry-after"))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(statuses) == 120  # every request got an answer
    assert set(statuses) <= {200, 503}
    assert statuses.count(503) > 0 and statuses.count(200) > 0
    assert set(retry) == {"1"}


def test_a_request_larger_than_the_queue_is_413_not_503(digits_package, digits):
    """A 503 with Retry-After invites a retry that can never fit (issue 11, item 5)."""
    Xte = digits[1]
    app = create_app({"digits": digits_package}, ServeConfig(max_queue=8, cache_mb=0))
    with ServerThread(app) as s, httpx.Client(base_url=s.url) as c:
        big = c.post("/v2/models/digits/infer", json=v2_body(Xte[:9]))
        assert big.status_code == 413 and "retry-after" not in big.headers
        assert "9 samples" in big.json()["error"] and "--max-queue" in big.json()["error"]
        assert c.post("/v2/models/digits/infer", json=v2_body(Xte[:8])).status_code == 200


def test_api_key(digits_package, digits):
    app = create_app({"digits": digits_package}, ServeConfig(api_key="s3cret"))
    with ServerThread(app) as s, httpx.Client(base_url=s.url) as c:
        body = v2_body(digits[1][:1])
        assert c.post("/v2/models/digits/infer", json=body).status_code == 401
        ok = c.post(
            "/v2/models/digits/infer", json=body, headers={"Authorization": "Bearer s3cret"}
        )
        assert ok.status_code == 200


def test_cli_serves_and_stops_on_sigterm(digits_package, digits, tmp_path):
    import os
    import signal

    from .conftest import ServeProcess

    args = [f"digits={digits_package}", "--max-wait-ms", "1"]
    with ServeProcess(args, tmp_path / "serve.log") as s:
        r = httpx.post(f"{s.url}/v2/models/digits/infer", json=v2_body(digits[1][:1]))
        assert r.status_code == 200
        os.kill(s.proc.pid, signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal: exit by SIGTERM, no traceback
        assert s.proc.wait(timeout=30) in (0, -signal.SIGTERM)
        assert "Traceback" not in s.log()


def test_bad_server_settings(digits_package):
    from nimbleml.errors import ConfigError

    with pytest.raises(ConfigError, match="max_batch_size"):
        ServeConfig(max_batch_size=0)
    with pytest.raises(ConfigError, match="threads must be a positive integer"):
        ServeConfig(threads=0)
    from typer.testing import CliRunner

    from nimbleml.cli import app

    res = CliRunner().invoke(app, ["serve", f"a={digits_package}", f"a={digits_package}"])
    assert res.exit_code == 2 and "two packages are named 'a'" in res.output


def test_hot_reload_under_load_fails_nothing(tmp_path, digits_package, digits):
    import shutil
    import time

    from nimbleml.demo import train_mlp

    Xtr, Xte, ytr, yte = digits
    new_pkg = nimbleml.compress(train_mlp(Xtr, ytr, hidden=32, epochs=3, seed=7), quantize=None,
                                val=(Xte, yte), benchmark_time_s=0.01).save(tmp_path / "v2.nimble")  # fmt: skip
    broken = shutil.copytree(new_pkg, tmp_path / "broken.nimble")
    with open(broken / "model.onnx", "ab") as fh:
        fh.write(b"tampered")
    old_ref = nimbleml.load(digits_package).predict(Xte[:1])
    new_ref = nimbleml.load(new_pkg).predict(Xte[:1])
    app = create_app({"digits": digits_package}, ServeConfig(cache_mb=0, repository=str(tmp_path)))
    statuses: list[int] = []
    stop = False
    with ServerThread(app) as s:

        def load_client() -> None:
            with httpx.Client(base_url=s.url, timeout=30) as c:
                while not stop:
                    statuses.append(
                        c.post("/v2/models/digits/infer", json=v2_body(Xte[:1])).status_code
                    )

        threads = [threading.Thread(target=load_client) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        with httpx.Client(base_url=s.url, timeout=60) as c:
            refused = c.post(
                "/v2/repository/models/digits/load", json={"parameters": {"path": str(broken)}}
            )
            assert refused.status_code == 409 and "keeps serving" in refused.json()["error"]
            before = np.asarray(
                c.post("/v2/models/digits/infer", json=v2_body(Xte[:1])).json()["outputs"][0][
                    "data"
                ]
            )
            ok = c.post(
                "/v2/repository/models/digits/load", json={"parameters": {"path": str(new_pkg)}}
            )
            assert ok.status_code == 200, ok.text
            time.sleep(0.3)
            after = np.asarray(
                c.post("/v2/models/digits/infer", json=v2_body(Xte[:1])).json()["outputs"][0][
                    "data"
                ]
            )
        stop = True
        for t in threads:
            t.join()
    assert np.allclose(before, old_ref[0], atol=1e-4)
    assert np.allclose(after, new_ref[0], atol=1e-4)
    assert len(statuses) > 20 and set(statuses) == {200}  # zero failed requests across the swap


def test_prediction_ids_unique_across_requests_and_processes():
    import subprocess
    import sys

    from nimbleml.serve.server import new_id

    ids = [new_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    prefix = ids[0].split("-")[0]
    other = subprocess.run(
        [sys.executable, "-c", "from nimbleml.serve.server import new_id; print(new_id())"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert other.split("-")[0] != prefix
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # a forked worker must not repeat the parent's ids
        os.write(write, new_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 100).decode().split("-")[0] != prefix


def test_served_models_leave_the_event_loop_a_core(digits_package):
    from nimbleml.serve.config import serving_threads
    from nimbleml.serve.server import Server

    cores = len(os.sched_getaffinity(0))
    assert serving_threads(3) == 3  # given: used as is
    assert serving_threads(None) == max(1, cores - 1)
    assert serving_threads(None, tuned=1) == 1  # never above what the package was tuned for
    assert serving_threads(None, workers=cores) == 1
    monitor = ModelMonitor(store="sqlite:///:memory:", resources_interval_s=None)
    entry = Server({"d": digits_package}, ServeConfig(threads=1), monitor).entries["d"]
    options = entry.model.session.get_session_options()
    assert options.intra_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    monitor.close()


def test_model_control_is_off_unless_asked_for_and_stays_in_the_repository(
    tmp_path, digits_package
):
    """The load route loaded any folder on the server's disk (issue 11, security): now it is
    403 unless --repository/--allow-reload, 403 outside the repository, 401 without the key."""
    import shutil

    repo = tmp_path / "repo"
    repo.mkdir()
    inside = shutil.copytree(digits_package, repo / "digits.nimble")
    outside = shutil.copytree(digits_package, tmp_path / "elsewhere.nimble")

    def load(url, path, key=None):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        with httpx.Client(base_url=url, timeout=60) as c:
            return c.post("/v2/repository/models/digits/load", headers=headers,
                          json={"parameters": {"path": str(path)}})  # fmt: skip

    with ServerThread(create_app({"digits": digits_package}, ServeConfig())) as off:
        r = load(off.url, inside)
        assert r.status_code == 403 and "--repository" in r.json()["error"]
    config = ServeConfig(repository=str(repo), api_key="k")
    with ServerThread(create_app({"digits": digits_package}, config)) as s:
        assert load(s.url, inside).status_code == 401
        far = load(s.url, outside, key="k")
        assert far.status_code == 403 and "outside the model repository" in far.json()["error"]
        sneaky = load(s.url, repo / ".." / "elsewhere.nimble", key="k")
        assert sneaky.status_code == 403
        assert load(s.url, inside, key="k").status_code == 200
    with pytest.raises(nimbleml.ConfigError, match="not a folder"):
        ServeConfig(repository=str(tmp_path / "nope"))


def test_the_recent_mean_forgets_what_is_older_than_its_window():
    from nimbleml.serve.batcher import RecentMean

    now = [1000.0]
    recent = RecentMean(window_s=30, clock=lambda: now[0])
    assert recent.mean() == 0.0
    recent.add(0.3, 3)  # three requests that waited 0.1 s each
    now[0] += 10
    recent.add(0.5, 1)
    assert recent.mean() == pytest.approx(0.8 / 4)
    now[0] += 25  # the first second is now 35 s old
    assert recent.mean() == pytest.approx(0.5)
    now[0] += 30
    assert recent.mean() == 0.0  # idle: nothing waited lately
