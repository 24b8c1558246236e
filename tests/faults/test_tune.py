"""`nimbleml tune` killed with SIGKILL at a seeded random point, then the same command: the
study ends with the trials asked for complete and none left RUNNING; a journal cut short
(as a kill or a full disk during its write leaves it) is recovered from or refused in one
line, never a traceback."""

from __future__ import annotations

import random
import signal
import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState

from .conftest import Box, kill_when, one_error, stop

OBJECTIVE = '''
import os, time
from pathlib import Path

def slow(params):
    """Each call leaves a file (the point a test kills at); the call FAULT_SLOW_CALL takes 1 s
    (a kill lands inside it), the others 50 ms."""
    calls = Path(os.environ["FAULT_CALLS"])
    calls.mkdir(exist_ok=True)
    n = len(list(calls.iterdir()))
    (calls / f"call-{n}").write_text("")
    time.sleep(1.0 if n == int(os.environ.get("FAULT_SLOW_CALL", -1)) else 0.05)
    return (params["x"] - 0.3) ** 2
'''
N = 6
YAML = f"""study: {{name: s, n_trials: {N}, directions: [minimize], pruner: none}}
space: {{x: {{float: [0, 1]}}}}
objective: fault_obj:slow
"""


def setup(box: Box) -> None:
    (box.work / "fault_obj.py").write_text(OBJECTIVE)
    (box.work / "tune.yaml").write_text(YAML)
    box.env["FAULT_CALLS"] = str(box.root / "calls")  # outside the working folder


def study(box: Box) -> optuna.Study:
    backend = optuna.storages.journal.JournalFileBackend(str(box.work / "s.journal"))
    return optuna.load_study(study_name="s", storage=optuna.storages.JournalStorage(backend))


def states(box: Box) -> list[TrialState]:
    return [t.state for t in study(box).trials]


@pytest.mark.parametrize("seed", [31, 32])
def test_sigkill_mid_trial_then_the_same_command_completes_the_study(box, faults, seed):
    """Killed at a random moment (seeded) of a random trial's objective: the next run fails
    that trial as died, runs its parameters again and ends with every trial asked complete.
    (A kill between trials, or in a write, is made certain by the tests below.)"""
    rng = random.Random(seed)
    setup(box)
    box.snapshot()
    k = rng.randint(1, N - 2)
    proc = box.start("tune", "--config", "tune.yaml", env={"FAULT_SLOW_CALL": str(k)})
    kill_when(proc, lambda: (box.root / "calls" / f"call-{k}").exists(), rng, 0.6)
    faults.inject(f"SIGKILL tune during trial {k} (seed {seed})")
    box.no_process_left()
    code, out, err = box.run("tune", "--config", "tune.yaml")
    assert code == 0, err
    assert err == "", err
    found = states(box)
    assert TrialState.RUNNING not in found, found
    assert found.count(TrialState.COMPLETE) == N, found
    assert "1 died" in out, out
    box.nothing_left("s.journal")


KILLED = """
import os, signal, sys
import optuna
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
path, what = sys.argv[1], sys.argv[2]
storage = optuna.storages.JournalStorage(JournalFileBackend(path))
study = optuna.create_study(study_name="s", storage=storage, direction="minimize")
for x in (0.1, 0.9):
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    study.tell(trial, (x - 0.3) ** 2)
if what == "asked":  # killed right after the storage made a trial, before anything else
    study.ask()
elif what == "locked":  # killed while holding the journal's lock
    JournalFileOpenLock(path).acquire()
os.kill(os.getpid(), signal.SIGKILL)
"""


def killed_holding(box: Box, what: str) -> None:
    """A process killed with SIGKILL, after 2 trials, at a point a random kill of `tune` can
    hit but rarely does (between two statements): the moment made certain."""
    (box.root / "killed.py").write_text(KILLED)
    done = subprocess.run([sys.executable, str(box.root / "killed.py"), "s.journal", what],
                          cwd=box.work, env=box.env, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == -signal.SIGKILL, done.stderr


def test_a_kill_right_after_a_trial_was_created_leaves_no_trial_running(box, faults):
    setup(box)
    killed_holding(box, "asked")
    faults.inject("SIGKILL between a trial's creation and its owner record")
    code, _, err = box.run("tune", "--config", "tune.yaml")
    assert code == 0, err
    found = states(box)
    assert found.count(TrialState.COMPLETE) == N
    assert TrialState.RUNNING not in found, found


def test_a_lock_left_by_a_killed_process_is_not_waited_for(box, faults):
    setup(box)
    killed_holding(box, "locked")
    assert (box.work / "s.journal.lock").exists()
    faults.inject("SIGKILL while holding the journal lock")
    proc = box.start("tune", "--config", "tune.yaml")
    try:
        proc.wait(timeout=8)  # the run takes 2-3 s here; Optuna's lock grace is 30 s
    except subprocess.TimeoutExpired:
        pass
    finally:
        stop(proc)
    _, err = box.output()
    assert proc.returncode == 0 and err == "", err
    assert states(box).count(TrialState.COMPLETE) == N


@pytest.mark.parametrize("seed", [33])
def test_a_journal_cut_short_is_recovered_or_named_in_one_line(box, faults, seed):
    setup(box)
    killed_holding(box, "told")
    journal = box.work / "s.journal"
    data = journal.read_bytes()
    last = data.rstrip(b"\n").rfind(b"\n") + 1  # where the last line starts
    cut = random.Random(seed).randint(last + 1, len(data) - 2)
    journal.write_bytes(data[:cut])
    faults.inject(f"journal cut at byte {cut} of {len(data)} (seed {seed})")
    code, _, err = box.run("tune", "--config", "tune.yaml")
    if code != 0:
        assert code == 2 and "s.journal" in one_error(err), err
    else:
        found = states(box)
        assert found.count(TrialState.COMPLETE) == N and TrialState.RUNNING not in found
