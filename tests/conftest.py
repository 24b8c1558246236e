"""Shared fixtures: small models trained here on datasets scikit-learn ships."""

from __future__ import annotations

import os

# One OpenMP thread per process, set before torch or scikit-learn start their pools: the two
# pytest-xdist workers share 2 cores, and two OpenMP pools of 2 threads spin-wait on each
# other at every parallel region (measured while other jobs loaded the machine: the suite
# 2,057 s with the default threads, 890 s with one; tests/models/test_boosting.py 232 s and
# 34 s). Processes the tests start inherit it; `--nproc N` sets its ranks' threads itself.
# A value given from outside is kept.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest

from nimbleml.bench.machine import has_cuda

# the fault-injection tally ("faults injected: N, survived: M"): a plugin here, because under
# pytest-xdist only this conftest is loaded where the summary is printed
pytest_plugins = ("tests.faults.tally",)


@pytest.fixture(scope="session", autouse=True)
def no_process_left_behind():
    """Fail the run when a process this run started from its own environment (a server, a
    worker, multiprocessing's tracker, a load generator) outlives it: a fresh-clone `make
    test` once left three listening on 127.0.0.1 an hour later (issue 11, item 7)."""
    import os
    import sys
    import time

    import psutil

    started = time.time()
    me = os.getpid()
    venv = os.path.dirname(sys.executable)
    # children inherit this mark, orphans included; another test run on the same machine
    # has its own, so runs side by side never count (or kill) each other's processes
    mark = f"{me}-{started}"
    os.environ["NIMBLEML_TEST_RUN"] = mark

    def ours(proc: psutil.Process) -> bool:
        try:
            return (
                proc.pid != me
                and proc.create_time() >= started - 1
                and proc.status() != psutil.STATUS_ZOMBIE
                and any(part.startswith(venv) for part in proc.cmdline()[:2])
                and proc.environ().get("NIMBLEML_TEST_RUN") == mark
            )
        except psutil.Error:
            return False

    yield
    deadline = time.monotonic() + 10  # time for servers stopped by the last tests to exit
    while True:
        left = [proc for proc in psutil.process_iter() if ours(proc)]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    described = []
    for proc in left:
        try:
            described.append(f"{proc.pid}: {' '.join(proc.cmdline())[:120]}")
            proc.kill()
        except psutil.Error:
            pass
    assert not described, "processes outlived the test run:\n" + "\n".join(described)


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """nimbleml's cache (DataLoader decisions) in a folder of this run, not the user's."""
    import os

    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if before is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = before


SESSION = "NIMBLEML_TEST_SESSION"


def pytest_configure(config: pytest.Config) -> None:
    """The whole run's mark, set in the controller before pytest-xdist starts its workers, so
    every process any of them starts carries it (postgres and redis included)."""
    import os
    import time

    if not hasattr(config, "workerinput"):
        os.environ.setdefault(SESSION, f"{os.getpid()}-{time.time()}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A worker that crashed never ran its fixtures' teardown: the servers it started (a
    postgres, a redis-server) are stopped here, in the controller, once every worker ended."""
    import contextlib
    import os

    import psutil

    mark = os.environ.get(SESSION)
    # the run's own controller only: not a worker, and not a test's own pytest (OWN_PROCESS),
    # which shares the mark and would see the run's workers as orphans
    if hasattr(session.config, "workerinput") or not mark or os.environ.get(OWN_PROCESS):
        return
    if not mark.startswith(f"{os.getpid()}-"):
        return
    left = []
    for proc in psutil.process_iter():
        try:  # orphans only: the workers (still this process's children) end by themselves
            if proc.environ().get(SESSION) == mark and os.getpid() not in {
                p.pid for p in proc.parents()
            }:
                left.append(proc)
        except psutil.Error:
            continue
    for proc in left:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    if left:
        print(f"\nstopped {len(left)} process(es) a crashed worker left behind")


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object) -> None:
    """A pytest-xdist worker that went down: say how it ended (its exit status or signal) and
    what the kernel said (an OOM kill), since a worker killed by a signal leaves no traceback
    (seen in tests that fork DataLoader workers; cause not yet known)."""
    import contextlib
    import signal
    import subprocess
    import sys

    if error is None:
        return
    popen = getattr(getattr(getattr(node, "gateway", None), "_io", None), "popen", None)
    code = None
    if popen is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            code = popen.wait(timeout=5)
    how = "still running" if code is None else f"exit {code}"
    if code is not None and code < 0:
        how = f"killed by {signal.Signals(-code).name}"
    try:
        kernel = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=5).stdout
        said = [ln for ln in kernel.splitlines() if "oom" in ln.lower() or "killed" in ln.lower()]
    except (OSError, subprocess.SubprocessError):
        said = ["(dmesg could not be read)"]
    print(f"\nworker {getattr(getattr(node, 'gateway', None), 'id', '?')} went down: {how}; "
          f"kernel: {'; '.join(said[-3:]) or 'nothing about it'}", file=sys.stderr)  # fmt: skip


@pytest.fixture(autouse=True)
def no_sigchld_handler_carried_over():
    """Each test starts without an earlier test's DataLoader SIGCHLD handler. torch installs
    one in the process the first time a DataLoader forks workers; it raises "DataLoader worker
    exited unexpectedly" in whatever runs when any child ends while a registered worker has
    failed, and raised between tests it took a pytest-xdist worker down (a crash with no
    traceback, its servers left running). A test's own loaders are unaffected."""
    yield
    import signal
    import sys

    if "torch" not in sys.modules:
        return
    from torch.utils.data._utils import signal_handling

    if signal_handling._SIGCHLD_handler_set:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal_handling._SIGCHLD_handler_set = False


OWN_PROCESS = "NIMBLEML_TEST_OWN_PROCESS"


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """``@pytest.mark.own_process``: the test runs in a fresh interpreter (a pytest of its
    own). Forking DataLoader workers from a pytest worker that holds every earlier test's
    threads and state can crash that worker, which is not what such a test tests."""
    import os
    import subprocess
    import sys

    if pyfuncitem.get_closest_marker("own_process") is None or os.environ.get(OWN_PROCESS):
        return None
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0",
         pyfuncitem.nodeid],
        cwd=str(pyfuncitem.config.rootpath), env={**os.environ, OWN_PROCESS: "1"},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.fail(f"in its own process:\n{(done.stdout + done.stderr)[-6000:]}", False)
    return True


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if has_cuda():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU with onnxruntime-gpu / torch CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def digits():
    from nimbleml.demo import digits as split

    return split()


@pytest.fixture(scope="session")
def mlp(digits):
    """A 64→128→128→10 MLP trained for a few epochs (about 95% test accuracy)."""
    from nimbleml.demo import train_mlp

    Xtr, _, ytr, _ = digits
    return train_mlp(Xtr, ytr, hidden=128, epochs=8)


@pytest.fixture(scope="session")
def fp32_package(tmp_path_factory, mlp, digits):
    """The MLP as a saved fp32 package (dynamic int8 rounds each call by its own batch, so
    outputs would depend on how rows are batched)."""
    import nimbleml

    _, Xte, _, yte = digits
    path = tmp_path_factory.mktemp("pkg") / "m.nimble"
    nimbleml.compress(mlp, quantize=None, val=(Xte, yte), benchmark_time_s=0.01).save(path)
    return path


@pytest.fixture(scope="session")
def pipeline(digits):
    from nimbleml.demo import train_pipeline

    Xtr, _, ytr, _ = digits
    return train_pipeline(Xtr, ytr)


@pytest.fixture(scope="session")
def forest(digits):
    from sklearn.ensemble import RandomForestClassifier

    Xtr, _, ytr, _ = digits
    return RandomForestClassifier(n_estimators=20, max_depth=8, random_state=0).fit(Xtr, ytr)


def make_encoder(vocab: int = 50, dim: int = 32, layers: int = 2, classes: int = 3):
    """A Hugging Face-style encoder: forward(input_ids, attention_mask) with padding masks."""
    import torch

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(vocab, dim)
            layer = torch.nn.TransformerEncoderLayer(dim, 4, dim * 2, batch_first=True, dropout=0.0)
            self.enc = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
            self.head = torch.nn.Linear(dim, classes)

        def forward(self, input_ids, attention_mask):
            h = self.enc(self.emb(input_ids), src_key_padding_mask=attention_mask == 0)
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            return self.head((h * m).sum(1) / m.sum(1))

    torch.manual_seed(0)
    return Encoder().eval()


def token_batch(
    n: int = 32, length: int = 12, vocab: int = 50, seed: int = 0
) -> dict[str, np.ndarray]:
    """Padded token batches: random lengths, pad id 0 where the mask is 0."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab, size=(n, length)).astype(np.int64)
    mask = np.ones_like(ids)
    for i in range(n):
        mask[i, rng.integers(3, length + 1) :] = 0
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture(scope="session")
def encoder():
    return make_encoder()


@pytest.fixture(scope="session")
def tokens():
    return token_batch()
