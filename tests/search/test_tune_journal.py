"""A study's journal against the writers that die (issue 22, search/journal.py), with real
processes and SIGKILL: a trial carries its owner from the write that creates it (so a live
process's new trial is never taken for a dead one's); the journal's lock is taken over at
once from a holder that was killed, never from one that runs; a record cut short or broken
is dropped with a warning when it is the last, one line naming the journal and the line
when it is not."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from nimbleml.errors import DataError
from nimbleml.search.journal import OwnedLock, open_journal
from nimbleml.search.study import tune

SPACE = {"x": ("float", 0.0, 1.0)}
X = optuna.distributions.FloatDistribution(0, 1)
HOLDER = """
import sys, time
import optuna
from nimbleml.search.journal import OwnedLock, open_journal
path, what = sys.argv[1], sys.argv[2]
if what == "lock":  # holds the journal's lock, then waits to be killed
    OwnedLock(path).acquire()
else:  # "asked", "queued": a running trial, then waits to be killed
    study = optuna.create_study(study_name="s", storage=open_journal(optuna, path),
                                load_if_exists=True)
    if what == "queued":
        study.enqueue_trial({"x": 0.5})
    study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
print("ready", flush=True)
time.sleep(600)
"""


def score(params):
    return (params["x"] - 0.3) ** 2


def holder(tmp_path: Path, what: str) -> subprocess.Popen[str]:
    """A process of its own that holds the journal's lock or a running trial, until killed."""
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "s.journal"), what],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def killed(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.stdout is not None
    proc.stdout.close()


def study_at(path: Path) -> optuna.Study:
    return optuna.load_study(study_name="s", storage=open_journal(optuna, str(path)))


def run(path: Path, n: int = 3) -> optuna.Study:
    return tune(score, SPACE, n_trials=n, directions=("minimize",), pruner=None,
                study_name="s", storage=str(path))  # fmt: skip


@pytest.mark.parametrize("what", ["asked", "queued"])
def test_a_running_trial_names_its_owner_from_its_first_write(tmp_path, what):
    """Created by ask() or taken from the queue: the owner is in the same append as the
    state, so another run's recovery sees a live owner (not an owner-less trial it would
    fail), and the owner's death once it is killed."""
    proc = holder(tmp_path, what)
    try:
        (running,) = study_at(tmp_path / "s.journal").get_trials(states=(TrialState.RUNNING,))
        assert running.user_attrs["owner"]["pid"] == proc.pid
        study = run(tmp_path / "s.journal")  # meanwhile: the live process's trial is kept
        assert study.trials[running.number].state == TrialState.RUNNING
    finally:
        killed(proc)
    study = run(tmp_path / "s.journal", n=4)
    died = study.trials[running.number]
    assert died.state == TrialState.FAIL and f"process {proc.pid}" in died.user_attrs["died"]


def test_a_lock_whose_holder_was_killed_is_taken_at_once(tmp_path):
    """Named by its holder, a dead holder's lock is not given the unnamed lock's grace."""
    proc = holder(tmp_path, "lock")
    killed(proc)
    lock = OwnedLock(str(tmp_path / "s.journal"))
    started = time.monotonic()
    lock.acquire()
    assert time.monotonic() - started < 0.5
    lock.release()
    assert not (tmp_path / "s.journal.lock").exists()


def test_a_lock_whose_holder_runs_is_waited_for(tmp_path):
    proc = holder(tmp_path, "lock")
    got = threading.Event()
    lock = OwnedLock(str(tmp_path / "s.journal"))
    waiter = threading.Thread(target=lambda: (lock.acquire(), got.set()), daemon=True)
    try:
        waiter.start()
        assert not got.wait(3.0)  # past the 2 s an unnamed lock is given
    finally:
        killed(proc)
    assert got.wait(5.0)
    lock.release()


def told(tmp_path: Path, n: int = 2) -> Path:
    """A journal holding a study with ``n`` finished trials, as plain Optuna writes it."""
    path = tmp_path / "s.journal"
    backend = optuna.storages.journal.JournalFileBackend(str(path))
    study = optuna.create_study(study_name="s", storage=optuna.storages.JournalStorage(backend))
    for i in range(n):
        study.tell(study.ask({"x": X}), float(i))
    return path


def test_a_last_record_broken_with_its_newline_is_dropped_with_a_warning(tmp_path):
    path = told(tmp_path)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-1]) + lines[-1][:20] + b"\n")  # cut, then a newline
    with pytest.warns(UserWarning, match=re.escape(f"journal {path} ended in a record cut")):
        study = run(path, n=4)
    assert [t.state for t in study.trials].count(TrialState.COMPLETE) == 4
    assert all(json.loads(line) for line in path.read_bytes().splitlines())


def test_a_broken_record_inside_the_journal_is_one_line_naming_it(tmp_path):
    path = told(tmp_path)
    lines = path.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2][:15] + b"\n"
    path.write_bytes(b"".join(lines))
    before = path.read_bytes()
    line = f"the study journal {path} cannot be read: line 3 is not a record Optuna wrote"
    with pytest.raises(DataError, match=re.escape(line)):
        run(path)
    assert path.read_bytes() == before  # nothing appended to it, nothing dropped


def test_an_intact_journal_is_read_without_a_warning(tmp_path):
    path = told(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run(path, n=3)
