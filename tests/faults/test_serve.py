"""`nimbleml serve --workers 2` killed with SIGKILL at a seeded random moment of a reload
(the load route waiting for both workers): the whole process group, or the supervisor
alone (its workers then stop on their own). No process is left; the same command starts
again, removes the run folder the killed server could not, and every answer shows one
version; the load done again reaches both workers, every answer then the new version; when
it stops nothing is left in its temporary folder."""

from __future__ import annotations

import os
import random
import shutil
import signal
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest

from tests._net import free_port

from .conftest import Box


def version(package: Path) -> str:
    import json

    return json.loads((package / "manifest.json").read_text())["created_at"]


class Server:
    def __init__(self, box: Box, port: int) -> None:
        self.box, self.port = box, port
        self.url = f"http://127.0.0.1:{port}"
        self.proc = box.start("serve", "digits=repo/old.nimble", "--workers", "2",
                              "--repository", "repo", "--port", str(port))  # fmt: skip
        deadline = time.monotonic() + 90
        while not self.ready():
            assert self.proc.poll() is None, box.output(self.proc)
            assert time.monotonic() < deadline, "serve did not start"
            time.sleep(0.1)
        while len(self.workers()) < 2:  # both workers up: each answers on its own
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.1)

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/v2/health/ready", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def workers(self) -> list[psutil.Process]:
        try:
            children = psutil.Process(self.proc.pid).children()
        except psutil.Error:
            return []
        return [p for p in children if _spawned(p)]

    def load(self, package: str) -> httpx.Response:
        return httpx.post(f"{self.url}/v2/repository/models/digits/load",
                          json={"parameters": {"path": package}}, timeout=60)  # fmt: skip

    def versions(self, x: np.ndarray, n: int = 16) -> set[str]:
        """The versions ``n`` answers show, each on a new connection (either worker may
        take it): the model's metadata, and inference answers."""
        seen = set()
        for i in range(n):
            if i % 2:
                r = httpx.get(f"{self.url}/v2/models/digits", timeout=30)
                seen.update(r.json()["versions"])
            else:
                body = {"inputs": [{"name": "X", "shape": list(x.shape), "datatype": "FP32",
                                    "data": x.ravel().tolist()}]}  # fmt: skip
                r = httpx.post(f"{self.url}/v2/models/digits/infer", json=body, timeout=30)
                assert r.status_code == 200, r.text
                seen.add(r.json()["model_version"])
        return seen

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)


def _spawned(p: psutil.Process) -> bool:
    try:
        return "spawn_main" in " ".join(p.cmdline())
    except psutil.Error:
        return False


class Load(threading.Thread):
    def __init__(self, server: Server, package: str) -> None:
        super().__init__(daemon=True)
        self.server, self.package = server, package
        self.sent = threading.Event()
        self.response: httpx.Response | None = None
        self.error: Exception | None = None
        self.start()

    def run(self) -> None:
        self.sent.set()
        try:
            self.response = self.server.load(self.package)
        except httpx.TransportError as exc:
            self.error = exc


@pytest.mark.parametrize("seed, victim", [(51, "group"), (52, "supervisor")])
def test_sigkill_during_a_reload_then_the_same_command(box, faults, packages, seed, victim):
    rng = random.Random(seed)
    repo = box.work / "repo"
    repo.mkdir()
    old, new = (shutil.copytree(p, repo / p.name) for p in packages)
    box.snapshot()
    x = np.zeros((1, 64), dtype=np.float32)
    server = Server(box, free_port())
    try:
        assert server.versions(x, 4) == {version(old)}
        load = Load(server, "repo/new.nimble")
        load.sent.wait(10)
        delay = rng.uniform(0.0, 0.4)  # opening, checksumming, warming, swapping, waiting
        time.sleep(delay)
        if victim == "group":
            os.killpg(server.proc.pid, signal.SIGKILL)
        else:
            server.proc.kill()
        server.proc.wait(timeout=30)
        when = "after its answer" if load.response is not None else "before its answer"
        faults.inject(f"SIGKILL serve ({victim}) {delay * 1000:.0f} ms into a reload, {when} "
                      f"(seed {seed})")  # fmt: skip
    finally:
        if server.proc.poll() is None:
            os.killpg(server.proc.pid, signal.SIGKILL)
            server.proc.wait()
    load.join(60)
    box.no_process_left()  # the workers of a killed supervisor stop on their own
    port = free_port()
    again = Server(box, port)
    try:
        assert again.versions(x) == {version(old)}  # what the command says, and only that
        r = again.load("repo/new.nimble")
        assert r.status_code == 200 and r.json()["workers"] == 2, r.text
        assert again.versions(x) == {version(new)}
    finally:
        code = again.stop()
    assert code == 0, box.output(again.proc)
    box.nothing_left()  # the killed server's run folder too: the next start removed it
