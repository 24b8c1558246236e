"""Starting servers: YAML settings, worker processes, a Redis tier shared between servers,
reloading when a package folder changes."""

import shutil
import subprocess
import sys
import time

import httpx
import numpy as np
import psutil
import pytest
from typer.testing import CliRunner

import nimbleml
from nimbleml.cli import app as cli
from nimbleml.errors import ConfigError
from nimbleml.serve import ServeConfig, create_app
from nimbleml.serve.config import serving_threads
from nimbleml.serve.launch import make_spec
from tests._net import v2_body
from tests.runtime.conftest import RedisServer

from .conftest import ServeProcess, ServerThread, free_port


def test_yaml_settings_with_flags_winning(tmp_path, digits_package):
    cfg = tmp_path / "serve.yaml"
    cfg.write_text(f"models: {{digits: {digits_package}}}\nmax-batch-size: 8\nport: 9001\n")
    spec = make_spec({"port": 9100, "max_batch_size": None}, cfg)
    assert spec["models"] == {"digits": str(digits_package)}
    assert spec["max_batch_size"] == 8 and spec["port"] == 9100 and spec["max_wait_ms"] == 2.0
    assert spec["threads"] is None  # one process: the server picks (the cores less one)
    shared = make_spec({"workers": 2}, cfg)  # workers share the cores: each gets its part
    assert shared["threads"] == serving_threads(None, workers=2)
    assert make_spec({"workers": 2, "threads": 3}, cfg)["threads"] == 3


@pytest.mark.parametrize(
    "text, message",
    [
        ("max-batch: 8\n", "unknown setting(s) max_batch"),
        ("port: [1\n", "not valid YAML"),
        ("- a\n- b\n", "must hold a mapping"),
        ("max-batch-size: 0\n", "max_batch_size and max_queue"),
        ("max-wait-ms: soon\n", "max_wait_ms must be a number, got 'soon'"),
        ("max-batch-size: lots\n", "max_batch_size must be an integer, got 'lots'"),
        ("port: '80x'\n", "port must be an integer, got '80x'"),
        ("watch: maybe\n", "watch must be true or false, got 'maybe'"),
        ("api-key: 12345\n", "api_key must be text, got 12345"),
        ("workers: 0\n", "workers must be a positive integer"),
        ("threads: 0\n", "threads must be a positive integer"),
        ("threads: two\n", "threads must be an integer, got 'two'"),
        ("reload-timeout-s: soon\n", "reload_timeout_s must be a number, got 'soon'"),
        ("reload-timeout-s: 0\n", "reload_timeout_s must be > 0"),
    ],
)
def test_bad_yaml_is_refused_naming_the_setting(tmp_path, digits_package, text, message):
    cfg = tmp_path / "serve.yaml"
    cfg.write_text(text)
    res = CliRunner().invoke(cli, ["serve", str(digits_package), "--config", str(cfg)])
    assert res.exit_code == 2 and message in res.output, res.output


def test_missing_packages_and_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="no packages to serve"):
        make_spec({})
    with pytest.raises(ConfigError, match="does not exist"):
        make_spec({}, tmp_path / "nope.yaml")
    res = CliRunner().invoke(cli, ["serve", str(tmp_path)])
    assert res.exit_code == 2 and "not a .nimble package" in res.output


def test_nothing_is_announced_before_everything_is_checked(tmp_path, digits_package):
    """Port range, package integrity and the bind itself are checked before "serving ..." is
    printed: one error line, exit 2 (issue 11, item 6)."""
    import json
    import socket

    def serve(*args):
        return CliRunner().invoke(cli, ["serve", *args])

    bad_port = serve(str(digits_package), "--port", "99999")
    assert bad_port.exit_code == 2 and "port must be an integer from 1 to 65535" in bad_port.output
    assert "serving" not in bad_port.output
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = serve(str(digits_package), "--port", str(port))
    assert busy.exit_code == 2 and f"cannot listen on 127.0.0.1:{port}" in busy.output
    assert "choose another --port" in busy.output and "serving" not in busy.output
    damaged = shutil.copytree(digits_package, tmp_path / "damaged.nimble")
    manifest = json.loads((damaged / "manifest.json").read_text())
    (damaged / manifest["model"]["path"]).write_bytes(b"not the model")
    broken = serve(str(damaged), "--port", str(free_port()))
    assert broken.exit_code == 2 and "was altered" in broken.output
    assert "serving" not in broken.output and broken.output.count("\n") == 1


def test_servers_share_the_redis_tier(tmp_path, digits_package, digits):
    redis = RedisServer(free_port())
    redis.start()
    x = digits[1][:1]
    try:
        args = [f"digits={digits_package}", "--redis", redis.url, "--max-wait-ms", "0"]
        with (
            ServeProcess(args, tmp_path / "a.log") as a,
            ServeProcess(args, tmp_path / "b.log") as b,
        ):
            first = httpx.post(f"{a.url}/v2/models/digits/infer", json=v2_body(x))
            assert first.status_code == 200
            assert "server" not in first.headers  # uvicorn's header is off: it costs every answer
            time.sleep(0.3)  # the write to Redis happens off the request path
            second = httpx.post(f"{b.url}/v2/models/digits/infer", json=v2_body(x))
            assert second.json()["outputs"] == first.json()["outputs"]
            metrics = httpx.get(f"{b.url}/metrics").text
            assert 'nimbleml_cache_hits_total{model="digits",tier="redis"} 1.0' in metrics
    finally:
        redis.stop()


def test_several_workers_share_the_port(tmp_path, digits_package, digits):
    args = [f"digits={digits_package}", "--workers", "2"]
    with ServeProcess(args, tmp_path / "w.log") as s:

        def workers() -> int:  # uvicorn spawns them (multiprocessing also runs a tracker)
            children = psutil.Process(s.proc.pid).children()
            return sum("spawn_main" in " ".join(p.cmdline()) for p in children)

        deadline = time.monotonic() + 30
        while workers() < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert workers() == 2
        for _ in range(10):  # each a new connection: either worker may answer
            r = httpx.post(f"{s.url}/v2/models/digits/infer", json=v2_body(digits[1][:1]))
            assert r.status_code == 200


def test_workers_die_with_their_parent(tmp_path, digits_package):
    """kill -9 of the supervisor left both workers serving (issue 11, item 7)."""
    args = [f"digits={digits_package}", "--workers", "2"]
    with ServeProcess(args, tmp_path / "w.log") as s:
        deadline = time.monotonic() + 30
        workers: list[psutil.Process] = []
        while len(workers) < 2 and time.monotonic() < deadline:
            workers = [p for p in psutil.Process(s.proc.pid).children()
                       if "spawn_main" in " ".join(p.cmdline())]  # fmt: skip
            time.sleep(0.1)
        assert len(workers) == 2
        s.proc.kill()  # SIGKILL: the supervisor cannot clean up
        s.proc.wait()
        _, alive = psutil.wait_procs(workers, timeout=15)

        def running(p: psutil.Process) -> bool:  # a zombie has exited: only nobody reaped it
            try:  # (a container's PID 1 may not reap orphans promptly)
                return p.status() != psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return False

        still = [p for p in alive if running(p)]
        for p in alive:  # do not leave them behind even when the test fails
            p.kill()
        assert not still, f"workers still running after their parent died: {still}"


def test_watching_a_package_folder_reloads_it(tmp_path, digits_package, digits):
    from nimbleml.demo import train_mlp

    Xtr, Xte, ytr, yte = digits
    served = shutil.copytree(digits_package, tmp_path / "served.nimble")
    new = nimbleml.compress(train_mlp(Xtr, ytr, hidden=32, epochs=3, seed=11), quantize=None,
                            val=(Xte, yte), benchmark_time_s=0.01).save(tmp_path / "new.nimble")  # fmt: skip
    new_ref = nimbleml.load(new).predict(Xte[:1])
    app = create_app({"digits": served}, ServeConfig(cache_mb=0), watch=True)
    with ServerThread(app) as s, httpx.Client(base_url=s.url) as c:
        before = c.post("/v2/models/digits/infer", json=v2_body(Xte[:1])).json()
        for f in new.iterdir():  # overwrite the served folder in place with the new version
            shutil.copy2(f, served / f.name)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            now = c.post("/v2/models/digits/infer", json=v2_body(Xte[:1])).json()
            if now["model_version"] != before["model_version"]:
                break
            time.sleep(0.2)
        got = np.asarray(now["outputs"][0]["data"])
    assert now["model_version"] != before["model_version"]
    assert np.allclose(got, new_ref[0], atol=1e-4)


def test_server_process_tunes_the_collector():
    code = (
        "import gc; from nimbleml.serve.launch import tune_gc; tune_gc(); "
        "print(gc.get_freeze_count(), gc.get_threshold()[0])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    frozen, gen0 = map(int, out.stdout.split())
    assert frozen > 1000 and gen0 == 5000  # startup objects out of sight; fewer collections
