"""The fault-injection suite's tools (issue 22, §7): the real CLI as a process of its own
session, killed with SIGKILL at a seeded random point; a full or read-only disk (a tmpfs,
root only); and after every fault the same checks: no process of the test left, no file
left outside the output, the error one line.

Each test says which faults it injected (``faults.inject(...)``); a passed test survived
them. The tally is printed at the end of the run by tests/faults/tally.py."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

MARK = "NIMBLEML_FAULT_MARK"  # every process a test starts inherits it, orphans included
# what libraries make once in TMPDIR and share between runs by design, not what a run left:
# torch's per-user compile cache (made when torch._dynamo is imported) and onnxruntime's
# ".ses" (made when it is imported)
SHARED = ("torchinductor_", ".ses")


class LeftBehind(AssertionError):
    """Files a command left outside its output (xfail(raises=LeftBehind) names that bug
    alone: any other failed check still fails the test)."""


class Faults:
    """What a test injected, as ``user_properties`` of its report (xdist carries them to
    the process that prints the tally)."""

    def __init__(self, node: pytest.Item) -> None:
        self.node = node

    def inject(self, what: str) -> None:
        self.node.user_properties.append(("fault", what))


@pytest.fixture
def faults(request: pytest.FixtureRequest) -> Faults:
    return Faults(request.node)


class Box:
    """A test's world: ``work`` (the command's working folder, inputs written there before
    ``snapshot()``), ``tmp`` (the commands' TMPDIR, empty at the end), ``logs`` (their
    stdout/stderr), ``env`` (with the mark that finds every process they started)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.work, self.tmp, self.logs = root / "work", root / "tmp", root / "logs"
        for d in (self.work, self.tmp, self.logs):
            d.mkdir()
        self.mark = uuid.uuid4().hex
        self.env = {**os.environ, MARK: self.mark, "TMPDIR": str(self.tmp),
                    "PYTHONPATH": os.pathsep.join([str(self.work), *sys.path]),
                    "COLUMNS": "200",
                    # one thread: two OpenMP threads on a shared 2-core machine wait on each
                    # other at every step (an epoch of a tiny MLP took 2.7 s instead of 0.01)
                    "OMP_NUM_THREADS": "1"}  # fmt: skip
        self.env.pop("PYTEST_CURRENT_TEST", None)
        self.before: set[str] | None = None
        self.runs = 0

    # -- files
    def snapshot(self) -> None:
        """What the working folder holds now: afterwards, only outputs may be new."""
        self.before = tree(self.work)

    def left_outside(self, *outputs: str) -> list[str]:
        """New paths in the working folder that are not under ``outputs``, and anything in
        the commands' TMPDIR (the libraries' SHARED files aside), each named by its topmost
        new folder."""
        assert self.before is not None, "snapshot() first"
        new = tree(self.work) - self.before
        stray = {p for p in new if not any(p == o or p.startswith(o.rstrip("/") + "/")
                                           for o in outputs)}  # fmt: skip
        temp = {f"TMPDIR/{p}" for p in tree(self.tmp) if not p.startswith(SHARED)}
        left = stray | temp
        return sorted(p for p in left if str(Path(p).parent) not in left)

    def nothing_left(self, *outputs: str) -> None:
        left = self.left_outside(*outputs)
        if left:
            raise LeftBehind(f"left outside the output {', '.join(outputs)}: {left}")

    # -- processes
    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        """``python -m nimbleml.cli ARGS`` in the working folder, in a session of its own
        (so os.killpg reaches it and what it forked, not pytest)."""
        self.runs += 1
        out = open(self.logs / f"{self.runs}.out", "w")  # noqa: SIM115 - closed below
        err = open(self.logs / f"{self.runs}.err", "w")  # noqa: SIM115
        try:
            proc = subprocess.Popen([sys.executable, "-m", "nimbleml.cli", *args],
                                    cwd=self.work, env={**self.env, **(env or {})},
                                    stdout=out, stderr=err, text=True,
                                    start_new_session=True)  # fmt: skip
            proc._fault_run = self.runs  # type: ignore[attr-defined]
            return proc
        finally:
            out.close()
            err.close()

    def output(self, proc: subprocess.Popen[str] | None = None) -> tuple[str, str]:
        """(stdout, stderr) of the last command started (or of ``proc``'s run)."""
        n = self.runs if proc is None else getattr(proc, "_fault_run", self.runs)
        return ((self.logs / f"{n}.out").read_text(), (self.logs / f"{n}.err").read_text())

    def run(self, *args: str, timeout: float = 240, env: dict[str, str] | None = None
            ) -> tuple[int, str, str]:  # fmt: skip
        proc = self.start(*args, env=env)
        try:
            proc.wait(timeout=timeout)
        finally:
            stop(proc)
        return (proc.returncode, *self.output(proc))

    def ours(self) -> list[psutil.Process]:
        """Live processes started by this test (found by the mark in their environment)."""
        found = []
        for proc in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if proc.pid != os.getpid() and proc.status() != psutil.STATUS_ZOMBIE \
                        and proc.environ().get(MARK) == self.mark:  # fmt: skip
                    found.append(proc)
        return found

    def no_process_left(self, timeout: float = 20) -> None:
        """Every process the test started has exited within ``timeout`` s (the ones a kill
        orphaned get SIGTERM from their parent's death and stop on their own); any left is
        killed, and named in the failure."""
        deadline = time.monotonic() + timeout
        left = self.ours()
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = self.ours()
        named = []
        for proc in left:
            with contextlib.suppress(psutil.Error):
                named.append(f"{proc.pid}: {' '.join(proc.cmdline())[:160]}")
                proc.kill()
        assert not named, "processes left behind:\n" + "\n".join(named)


def tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")
            if "__pycache__" not in p.parts}  # fmt: skip


def stop(proc: subprocess.Popen[str]) -> None:
    """Never leave a command running when a test fails half-way."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Box]:
    b = Box(tmp_path)
    yield b
    b.no_process_left()


def kill_when(proc: subprocess.Popen[str], ready: Callable[[], bool], rng: random.Random,
              jitter_s: float, timeout: float = 180) -> float:  # fmt: skip
    """SIGKILL ``proc``'s process group once ``ready()`` holds, after a random 0-``jitter_s``
    seconds more; asserts it was still running (the fault landed). Returns the delay."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"the command ended (exit {proc.returncode}) before the fault"
        assert time.monotonic() < deadline, "the point to kill at never came"
        time.sleep(0.005)
    delay = rng.uniform(0, jitter_s)
    time.sleep(delay)
    assert proc.poll() is None, f"the command ended (exit {proc.returncode}) before the kill"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    return delay


def one_error(stderr: str) -> str:
    """The one ``error: ...`` line of a failed command, with no traceback and nothing that
    is not a warning or progress beside it."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    assert "Traceback" not in stderr and "a bug in nimbleml" not in stderr, stderr
    return errors[0]


@pytest.fixture(scope="session")
def packages(tmp_path_factory) -> tuple[Path, Path]:
    """Two versions of a logistic regression on digits as packages (other weights, the same
    inputs and outputs), created in different seconds (a version is the package's
    created_at); a few seconds to make, unlike a trained MLP."""
    import json
    import warnings

    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    import nimbleml

    X, y = load_digits(return_X_y=True)
    X = (X / 16).astype(np.float32)
    folder = tmp_path_factory.mktemp("packages")
    out: list[Path] = []
    for name, c in (("old", 1.0), ("new", 0.01)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = LogisticRegression(C=c, max_iter=100).fit(X, y)
        if out:  # a later second than the first
            first = json.loads((out[0] / "manifest.json").read_text())["created_at"]
            while time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()) <= first:
                time.sleep(0.05)
        pkg = nimbleml.compress(model, quantize=None, val=(X[:100], y[:100]),
                                benchmark_time_s=0.01)  # fmt: skip
        out.append(Path(pkg.save(folder / f"{name}.nimble")))
    return out[0], out[1]


# -- disks -----------------------------------------------------------------------------------
from tests._disk import tmpfs  # noqa: E402,F401  (re-exported for test_disk.py)


def fill(folder: Path) -> None:
    """Write until the disk at ``folder`` is full: not one byte more fits."""
    fd = os.open(folder / ".filler", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for size in (1 << 16, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
