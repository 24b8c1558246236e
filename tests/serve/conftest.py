"""A real uvicorn server on 127.0.0.1 in a thread, and a real HTTP client."""

from __future__ import annotations

import threading
import time

import pytest

from tests._net import free_port


class ServerThread:
    def __init__(self, app) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(
                app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
            )
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def digits_package(tmp_path_factory, mlp, digits):
    import nimbleml

    _, Xte, _, yte = digits
    # fp32: dynamic int8 scales activations per batch, so batched rows would differ slightly
    pkg = nimbleml.compress(mlp, quantize=None, val=(Xte, yte), benchmark_time_s=0.01)
    return pkg.save(tmp_path_factory.mktemp("serve") / "digits.nimble")


class ServeProcess:
    """`nimbleml serve ARGS` in its own process, ready when /v2/health/ready answers 200;
    or ``command``, a whole command line already holding its ``port``."""

    def __init__(self, args: list[str], log_path, *, command: list[str] | None = None,
                 port: int | None = None) -> None:  # fmt: skip
        import subprocess
        import sys
        from pathlib import Path

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        exe = str(Path(sys.executable).with_name("nimbleml"))
        argv = command or [exe, "serve", *args, "--port", str(self.port)]
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT)

    def __enter__(self) -> ServeProcess:
        import httpx

        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"serve did not start:\n{self.log()}")
            time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> None:
        """SIGTERM, as a service manager stops it (the server removes what it made); kill -9
        if it has not stopped in 15 s."""
        import subprocess

        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture(scope="module")
def digits_package_v2(tmp_path_factory, digits, digits_package):
    """Another version of the digits model (other weights, same inputs and outputs), created
    in a later second than ``digits_package`` (a version is the package's created_at)."""
    import json

    import nimbleml
    from nimbleml.demo import train_mlp

    Xtr, Xte, ytr, yte = digits
    model = train_mlp(Xtr, ytr, hidden=32, epochs=3, seed=7)
    first = json.loads((digits_package / "manifest.json").read_text())["created_at"]
    while time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()) <= first:
        time.sleep(0.05)
    pkg = nimbleml.compress(model, quantize=None, val=(Xte, yte), benchmark_time_s=0.01)
    return pkg.save(tmp_path_factory.mktemp("serve-v2") / "digits-v2.nimble")


def serve_workers(server) -> list:
    """The worker processes of a `nimbleml serve --workers N` process (uvicorn spawns them;
    multiprocessing also runs a resource tracker, which is not one)."""
    import psutil

    def worker(p: psutil.Process) -> bool:
        try:
            return "spawn_main" in " ".join(p.cmdline())
        except psutil.Error:  # exited (a zombie until the supervisor reaps it)
            return False

    return [p for p in psutil.Process(server.proc.pid).children() if worker(p)]


def wait_for_workers(server, n: int, timeout: float = 30) -> list:
    deadline = time.monotonic() + timeout
    workers = serve_workers(server)
    while len(workers) < n and time.monotonic() < deadline:
        time.sleep(0.1)
        workers = serve_workers(server)
    assert len(workers) == n, f"{len(workers)} workers, not {n}:\n{server.log()}"
    return workers
