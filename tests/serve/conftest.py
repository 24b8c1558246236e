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
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()

    def __exit__(self, *exc: object) -> None:
        self.stop()
