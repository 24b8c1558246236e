"""nimbleml tune, robustness (issue 22), with real processes and signals: a space the model
function does not take is one line before any storage exists; the user's objective raising is
the user's error (exit 2, one line, no Optuna traceback) and a storage the run made is not
left behind; Ctrl-C is one line, exit 130, the trial stored as interrupted and run again on
resume; a process killed with SIGKILL mid-trial leaves a trial that the next run fails and
retries; a resumed or grown study samples new points, the same on the same storage."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from nimbleml.cli.tune import read_config
from nimbleml.errors import ConfigError, UserCodeError
from nimbleml.search.study import tune

OBJECTIVES = '''
import os, time
from pathlib import Path

def build(hidden):
    import torch
    return torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, 10))

def broken(params):
    return 1 / 0

def hangs_third(params):
    """Each call leaves a file; the third one anywhere waits (until a signal) unless
    NIMBLE_NO_HANG is set."""
    folder = Path(os.environ["NIMBLE_CALLS"])
    n = len(list(folder.iterdir()))
    (folder / f"call-{n}").write_text(str(os.getpid()))
    if n == 2 and not os.environ.get("NIMBLE_NO_HANG"):
        time.sleep(600)
    return (params["x"] - 0.3) ** 2

def fails_third(params):
    folder = Path(os.environ["NIMBLE_CALLS"])
    n = len(list(folder.iterdir()))
    (folder / f"call-{n}").write_text("")
    if n == 2:
        raise RuntimeError("the third call fails")
    return params["x"]
'''
STUDY = "study: {{name: {name}, n_trials: {n}, directions: [minimize], pruner: none}}\n"


@pytest.fixture
def here(tmp_path, monkeypatch) -> Path:
    import numpy as np
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = (X / 16).astype(np.float32)
    np.savez(tmp_path / "train.npz", X=X[:200], y=y[:200])
    np.savez(tmp_path / "val.npz", X=X[1500:], y=y[1500:])
    (tmp_path / "robust_obj.py").write_text(OBJECTIVES)
    (tmp_path / "calls").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("NIMBLE_CALLS", str(tmp_path / "calls"))
    return tmp_path


def yaml(here: Path, name: str, objective: str, n: int = 4, space: str = "x: {float: [0, 1]}",
         file: str = "t.yaml") -> str:  # fmt: skip
    (here / file).write_text(STUDY.format(name=name, n=n) + f"space: {{{space}}}\n" + objective)
    return file


def cli(here: Path, *args: str, **popen: object) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here), *sys.path])}
    return subprocess.Popen(
        [sys.executable, "-m", "nimbleml.cli", "tune", *args], cwd=here, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # a test run in the background inherits SIGINT ignored: the child gets it back
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **popen,  # type: ignore[arg-type]
    )  # fmt: skip


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=240)
    return proc.returncode, out, err


def load(here: Path, name: str, file: str | None = None) -> optuna.Study:
    backend = optuna.storages.journal.JournalFileBackend(str(here / (file or f"{name}.journal")))
    return optuna.load_study(study_name=name, storage=optuna.storages.JournalStorage(backend))


def wait_for(path: Path, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 120
    while not path.exists():
        assert proc.poll() is None, finish(proc)
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.3)  # inside the objective's sleep


def test_a_space_the_model_function_does_not_take_is_one_line_before_any_storage(here):
    training = "training: {model: robust_obj:build, data: train.npz, val: val.npz, epochs: 1}\n"
    file = yaml(here, "b3", training, space="hidden: {int: [8, 32]}, dropout: {float: [0, 0.5]}")
    code, out, err = finish(cli(here, "--config", file))
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: space: 'dropout' is not an argument"), (
        err
    )
    assert "robust_obj:build(hidden)" in err and "Traceback" not in err + out
    assert not (here / "b3.journal").exists()
    needs = yaml(here, "b4", training, space="lr: {log: [0.001, 0.1]}")
    spec = read_config(Path(needs))
    with pytest.raises(ConfigError, match=r"robust_obj:build\(hidden\) needs 'hidden'"):
        tune(spec["objective"], spec["space"], study_name="b4", n_trials=1)
    assert not (here / "b4.journal").exists()


def test_the_users_objective_raising_is_one_line_and_leaves_no_storage(here):
    code, _, err = finish(
        cli(here, "--config", yaml(here, "bad", "objective: robust_obj:broken\n"))
    )
    assert code == 2, err
    assert err.count("\n") == 1, err  # no Optuna log line, no traceback
    assert err.startswith("error: the objective robust_obj:broken on trial 0's parameters")
    assert "raised ZeroDivisionError: division by zero; check robust_obj:broken" in err
    assert not (here / "bad.journal").exists()  # made by this run, no trial finished
    # trials that finished are kept: the storage stays
    code, _, err = finish(
        cli(here, "--config", yaml(here, "late", "objective: robust_obj:fails_third\n"))
    )
    assert code == 2 and "raised RuntimeError: the third call fails" in err, err
    assert err.count("\n") == 1, err
    study = load(here, "late")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2 + [TrialState.FAIL]
    with pytest.raises(UserCodeError, match="the objective .* raised RuntimeError"):
        tune(lambda p: (_ for _ in ()).throw(RuntimeError("no")), {"x": ("float", 0, 1)},
             n_trials=2, study_name="api")  # fmt: skip
    assert not (here / "api.journal").exists()


def test_ctrl_c_is_one_line_exit_130_and_the_trial_runs_again_on_resume(here):
    file = yaml(here, "intr", "objective: robust_obj:hangs_third\n")
    proc = cli(here, "--config", file)
    wait_for(here / "calls" / "call-2", proc)
    proc.send_signal(signal.SIGINT)
    code, out, err = finish(proc)
    assert code == 130, err
    assert err == "interrupted; run the same command to resume\n"  # nothing else, no traceback
    study = load(here, "intr")
    stopped = study.trials[2]
    assert stopped.state == TrialState.FAIL and stopped.user_attrs["interrupted"] is True
    os.environ["NIMBLE_NO_HANG"] = "1"
    try:
        code, out, err = finish(cli(here, "--config", file))
    finally:
        del os.environ["NIMBLE_NO_HANG"]
    assert code == 0, err
    assert "study intr: 5 trials (4 complete, 1 interrupted)" in out
    study = load(here, "intr")
    again = study.trials[3]
    assert again.user_attrs["retry_of"] == 2 and again.params == stopped.params
    assert again.state == TrialState.COMPLETE


def test_a_process_killed_mid_trial_is_failed_and_retried_and_resume_samples_new_points(here):
    file = yaml(here, "kill", "objective: robust_obj:hangs_third\n", n=5)
    proc = cli(here, "--config", file)
    wait_for(here / "calls" / "call-2", proc)
    proc.send_signal(signal.SIGKILL)  # no goodbye: the trial stays RUNNING in the journal
    finish(proc)
    left = load(here, "kill")
    assert [t.state for t in left.trials] == [TrialState.COMPLETE] * 2 + [TrialState.RUNNING]
    shutil.copy(here / "kill.journal", here / "copy.journal")
    space = {"x": ("float", 0.0, 1.0)}
    os.environ["NIMBLE_NO_HANG"] = "1"
    try:
        import robust_obj  # type: ignore[import-not-found]

        runs = [tune(robust_obj.hangs_third, space, n_trials=5, directions=("minimize",),
                     pruner=None, study_name="kill", storage=str(here / name))
                for name in ("kill.journal", "copy.journal")]  # fmt: skip
    finally:
        del os.environ["NIMBLE_NO_HANG"]
    for study in runs:
        died = study.trials[2]
        assert died.state == TrialState.FAIL and "ended mid-trial" in died.user_attrs["died"]
        retry = study.trials[3]
        assert retry.user_attrs["retry_of"] == 2 and retry.params == died.params
        assert retry.state == TrialState.COMPLETE
        first = {t.params["x"] for t in study.trials[:3]}
        assert study.trials[4].params["x"] not in first  # a new point, not the first run's again
    # the same command on the same storage state: the same parameters
    assert [t.params for t in runs[0].trials] == [t.params for t in runs[1].trials]


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_a_grown_study_samples_new_points_reproducibly(here, sampler):
    from tests.search import _objectives

    space = {"x": ("float", -4.0, 6.0)}

    def run(name: str, n: int) -> optuna.Study:
        return tune(_objectives.parabola, space, n_trials=n, directions=("minimize",),
                    sampler=sampler, study_name="grow", storage=str(here / name))  # fmt: skip

    run("grow.journal", 3)
    shutil.copy(here / "grow.journal", here / "twin.journal")
    grown, twin = run("grow.journal", 6), run("twin.journal", 6)
    xs = [t.params["x"] for t in grown.trials]
    assert len(xs) == 6 and not set(xs[3:]) & set(xs[:3])  # before: trials 3-5 repeated 0-2
    assert xs == [t.params["x"] for t in twin.trials]
