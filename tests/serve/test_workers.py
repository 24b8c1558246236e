"""Several worker processes on one port (`nimbleml serve --workers N`): a load through the
repository route reaches every worker, a worker that refuses it brings every worker back, a
worker that is late is named, and killing a worker or the server in the middle of a load
leaves nothing behind (issue 22, serving).

A worker stopped with SIGSTOP stands for one that is busy: it accepts no connection (so the
other worker answers the route) and applies no state until SIGCONT. uvicorn's supervisor
replaces a worker that does not answer its health check for 5 s, so each stop is short."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import threading
import time

import httpx
import numpy as np
import psutil
import pytest

import nimbleml
from tests._net import v2_body

from .conftest import ServeProcess, serve_workers, wait_for_workers


def version_of(package) -> str:
    return nimbleml.load(package).manifest["created_at"]


def versions_seen(url: str, x, packages, n: int = 40) -> set[str]:
    """The versions ``n`` requests see, each on a new connection (so either worker answers),
    from the metadata and from inference answers (their version, and their outputs: which
    package's predictions they are)."""
    outputs = {version_of(p): np.asarray(nimbleml.load(p).predict(x)[0]) for p in packages}
    seen = set()
    for i in range(n):
        if i % 2:
            seen.update(httpx.get(f"{url}/v2/models/digits", timeout=30).json()["versions"])
            continue
        r = httpx.post(f"{url}/v2/models/digits/infer", json=v2_body(x), timeout=30)
        assert r.status_code == 200, r.text
        version, got = r.json()["model_version"], r.json()["outputs"][0]["data"]
        assert np.allclose(got, outputs[version].ravel(), atol=1e-4), version
        seen.add(version)
    return seen


@contextlib.contextmanager
def stopped(proc: psutil.Process):
    proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGCONT)


class Load(threading.Thread):
    """A load request in the background: the route waits for every worker."""

    def __init__(self, url: str, path) -> None:
        super().__init__(daemon=True)
        self.url, self.path = url, path
        self.response: httpx.Response | None = None
        self.error: Exception | None = None
        self.start()

    def run(self) -> None:
        try:
            self.response = httpx.post(f"{self.url}/v2/repository/models/digits/load",
                                       json={"parameters": {"path": str(self.path)}},
                                       timeout=60)  # fmt: skip
        except httpx.TransportError as exc:
            self.error = exc


def wait_until(check, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def serves(url: str, version: str) -> bool:
    return httpx.get(f"{url}/v2/models/digits", timeout=30).json()["versions"] == [version]


def gone(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def repo(tmp_path, digits_package, digits_package_v2, monkeypatch):
    """old.nimble and new.nimble in a repository folder; the servers' temp folder (where the
    run folder goes) inside tmp_path."""
    folder = tmp_path / "repo"
    folder.mkdir()
    shutil.copytree(digits_package, folder / "old.nimble")
    shutil.copytree(digits_package_v2, folder / "new.nimble")
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    return folder


def start(repo, log, *extra: str) -> ServeProcess:
    args = [f"digits={repo / 'old.nimble'}", "--workers", "2", "--repository", str(repo)]
    return ServeProcess([*args, *extra], log)


def run_folders(tmp_path) -> list:
    return sorted((tmp_path / "tmp").glob("nimbleml-serve-*"))


def acks(run_dir) -> list[dict]:
    return [json.loads(p.read_text()) for p in (run_dir / "workers").glob("*.json")]


def test_a_load_reaches_every_worker(tmp_path, repo, digits):
    """The route reloaded the one worker that answered it; the other served the old version
    for good, and metadata alternated between the two."""
    old, new = repo / "old.nimble", repo / "new.nimble"
    x = digits[1][:1]
    with start(repo, tmp_path / "w.log") as s:
        wait_for_workers(s, 2)
        assert versions_seen(s.url, x, [old, new], 10) == {version_of(old)}
        r = httpx.post(f"{s.url}/v2/repository/models/digits/load",
                       json={"parameters": {"path": str(new)}}, timeout=60)  # fmt: skip
        assert r.status_code == 200, r.text
        assert r.json()["version"] == version_of(new)
        assert versions_seen(s.url, x, [old, new]) == {version_of(new)}, s.log()
        assert r.json()["workers"] == 2  # the answer says how many workers serve it
        (run_dir,) = run_folders(tmp_path)
    assert not run_dir.exists()  # the server removes its run folder when it stops


def test_a_worker_that_refuses_a_load_brings_every_worker_back(tmp_path, repo, digits):
    """The package changes on disk after the route's worker loaded it: the other worker's
    checksum refuses it, the answer names that worker, and both serve the old version."""
    old, new = repo / "old.nimble", repo / "new.nimble"
    model_file = new / nimbleml.load(new).manifest["model"]["path"]
    with start(repo, tmp_path / "w.log") as s:
        a, b = wait_for_workers(s, 2)
        began = time.monotonic()
        with stopped(b):
            load = Load(s.url, new)
            wait_until(lambda: serves(s.url, version_of(new)), "worker A to serve it")
            model_file.write_bytes(model_file.read_bytes() + b"changed")
        held = time.monotonic() - began  # over 5 s, uvicorn replaces the worker
        load.join(60)
        r = load.response
        assert r is not None and r.status_code == 409, (r and r.text, load.error, held, s.log())
        error = r.json()["error"]
        refuser = b.pid
        if gone(b):  # stopped over 5 s (a loaded machine): uvicorn replaced it, and the load
            # waited for its successor, which refuses the altered package the same way
            assert held > 5, (held, s.log())
            (refuser,) = [p.pid for p in serve_workers(s) if p.pid != a.pid]
        assert f"refused by worker(s) {refuser}" in error and "was altered" in error, error
        assert f"every worker serves version {version_of(old)} again" in error, error
        assert versions_seen(s.url, digits[1][:1], [old]) == {version_of(old)}


def test_a_worker_that_does_not_confirm_in_time_is_named(tmp_path, repo, digits):
    old, new = repo / "old.nimble", repo / "new.nimble"
    with start(repo, tmp_path / "w.log", "--reload-timeout-s", "1") as s:
        _, b = wait_for_workers(s, 2)
        with stopped(b):
            load = Load(s.url, new)
            load.join(4.5)  # under the 5 s after which uvicorn replaces a silent worker
        r = load.response
        assert r is not None and r.status_code == 504, (r and r.text, load.error)
        assert f"worker(s) {b.pid} did not confirm it within 1 s" in r.json()["error"]
        # it catches up as soon as it runs again
        (run_dir,) = run_folders(tmp_path)
        wait_until(lambda: all(k["generation"] >= 1 for k in acks(run_dir)), "B to catch up")
        assert versions_seen(s.url, digits[1][:1], [old, new]) == {version_of(new)}


@pytest.mark.parametrize("victim", ["answering", "behind"])
def test_a_worker_killed_during_a_load_leaves_nothing_behind(tmp_path, repo, digits, victim):
    """SIGKILL of the worker that answers the load (its client sees the connection drop), or
    of the one the load waits for: uvicorn starts a new worker, which serves what the run
    folder says; the killed one is gone."""
    old, new = repo / "old.nimble", repo / "new.nimble"
    with start(repo, tmp_path / "w.log") as s:
        a, b = wait_for_workers(s, 2)
        (run_dir,) = run_folders(tmp_path)
        began = time.monotonic()
        with stopped(b):
            load = Load(s.url, new)
            wait_until(lambda: serves(s.url, version_of(new)), "worker A to serve it")
            killed = a if victim == "answering" else b
            with contextlib.suppress(psutil.NoSuchProcess):  # B replaced already (below)
                killed.kill()
        held = time.monotonic() - began
        load.join(60)
        r = load.response
        if victim == "behind" or held > 5:  # the route forgets the dead worker and waits for
            # its successor (held over 5 s on a loaded machine, uvicorn replaced B itself, and
            # A may have answered before it was killed)
            assert victim == "answering" or (r is not None and r.status_code == 200), load.error
            assert r is None or r.json()["workers"] == 2, r.text
        else:
            assert load.error is not None, r and r.text  # the connection dropped with A
        wait_until(lambda: len(serve_workers(s)) == 2 and killed not in serve_workers(s),
                   "uvicorn to replace the killed worker")  # fmt: skip
        wait_until(lambda: len([k for k in acks(run_dir) if k["generation"] >= 1]) == 2,
                   "both workers to serve the load")  # fmt: skip
        time.sleep(0.5)  # the new worker accepts connections just after it acknowledged
        assert gone(killed)
        assert versions_seen(s.url, digits[1][:1], [old, new]) == {version_of(new)}, s.log()


def test_the_server_killed_during_a_load_leaves_nothing_behind(tmp_path, repo, digits):
    """SIGKILL of the supervisor while a load waits: both workers exit, and the run folder
    it could not remove is not trusted by the next start (which serves the packages it is
    given, and removes the stale folder)."""
    old, new = repo / "old.nimble", repo / "new.nimble"
    s = start(repo, tmp_path / "w.log").__enter__()
    try:
        _, b = wait_for_workers(s, 2)
        family = psutil.Process(s.proc.pid).children(recursive=True)
        (stale,) = run_folders(tmp_path)
        with stopped(b):
            load = Load(s.url, new)
            wait_until(lambda: serves(s.url, version_of(new)), "worker A to serve it")
            s.proc.kill()
            s.proc.wait()
        _, alive = psutil.wait_procs(family, timeout=20)
        left = [p for p in alive if not gone(p)]
        for p in left:  # never leave them behind, even when the test fails
            p.kill()
        assert not left, f"left running after the server was killed: {left}"
        load.join(30)
        assert load.error is not None or load.response.status_code == 503, load.response.text
    finally:
        s.stop()
    assert json.loads((stale / "state.json").read_text())["models"]["digits"]["path"] == str(new)
    with start(repo, tmp_path / "again.log") as again:
        wait_for_workers(again, 2)
        assert not stale.exists()
        assert len(run_folders(tmp_path)) == 1
        assert versions_seen(again.url, digits[1][:1], [old, new], 10) == {version_of(old)}
    assert run_folders(tmp_path) == []
