"""nimbleml.tune (issue 13): the space checked with clear errors, a journal file by default
that a study resumes from by name, pruning of trials from their reported values, a training
config whose epochs feed the pruner, and a real PostgreSQL server shared by two processes, where
a worker killed mid-trial is marked failed by its heartbeat and its trial retried."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import optuna
import pytest
import torch
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

import nimbleml
from nimbleml.errors import ConfigError
from nimbleml.search.study import shown, tune
from tests.monitor.conftest import postgres_url  # noqa: F401 - the fixture
from tests.search import _objectives


@pytest.mark.parametrize("space, words", [
    ({"lr": ("logg", 1e-4, 1e-1)}, "kind one of log, float, int, int_log"),
    ({"lr": ("log", 1e-1, 1e-4)}, "the bounds are inverted (0.1 > 0.0001)"),
    ({"lr": ("log", 0, 1)}, "a log scale needs low > 0"),
    ({"n": ("int", 1.5, 4)}, "integer bounds needed"),
    ({"opt": []}, "an empty list of choices"),
    ({}, "space must be a non-empty dict"),
])  # fmt: skip
def test_bad_spaces_are_named(space, words, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
        tune(_objectives.parabola, space, n_trials=1)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_bad_options_are_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = {"x": ("float", 0, 4)}
    for options, words in [
        ({"sampler": "grid"}, "sampler 'grid' is not one of tpe, nsga2, random"),
        ({"pruner": "asha2"}, "pruner 'asha2' is not one of"),
        ({"n_trials": 0}, "n_trials must be an integer >= 1"),
        ({"directions": "maximize"}, "directions must be a list"),
        ({"storage": "sqlite:///s.db", "workers": 2}, "database is locked"),
        ({"workers": 2}, "a function defined at the top of an importable module"),
    ]:
        with pytest.raises(ConfigError, match=words):
            tune(lambda p: 0.0, space, **options)
    with pytest.raises(ConfigError, match=r"cannot open the study storage postgresql://u:\*\*\*@"):
        tune(_objectives.parabola, space, n_trials=1,
             storage="postgresql://u:secret@127.0.0.1:1/none")  # fmt: skip
    assert shown("postgresql://u:pw@h/db") == "postgresql://u:***@h/db"


def test_a_journal_file_by_default_and_resume_by_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = {"x": ("float", -4.0, 6.0), "kind": ["a", "b"]}
    study = tune(_objectives.parabola, space, n_trials=12, directions=("minimize",),
                 study_name="para")  # fmt: skip
    assert (tmp_path / "para.journal").exists()
    assert len(study.trials) == 12 and study.best_value < 1.0
    again = tune(_objectives.parabola, space, n_trials=15, directions=("minimize",),
                 study_name="para")  # fmt: skip
    assert len(again.trials) == 15  # resumed: 3 more, not 15


def test_trials_are_pruned_from_their_reported_values(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def climb(params, trial):
        for step in range(5):
            trial.report(params["x"] * (step + 1), step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return params["x"] * 5

    study = tune(climb, {"x": ("float", 0, 1)}, n_trials=16, sampler="random", pruner="median")
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert pruned and all(len(t.intermediate_values) < 5 for t in pruned)
    best = max(t.value for t in study.trials if t.state == TrialState.COMPLETE)
    assert all(t.params["x"] * 5 <= best for t in pruned)  # none better than the best kept


def test_a_training_config_reports_each_epoch(tmp_path, monkeypatch):
    from sklearn.datasets import load_digits

    monkeypatch.chdir(tmp_path)
    X, y = load_digits(return_X_y=True)
    X = (X / 16).astype(np.float32)

    def model(hidden):
        return torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(),
                                   torch.nn.Linear(hidden, 10))  # fmt: skip

    config = {"model": model, "train": (X[:800], y[:800]), "val": (X[1400:], y[1400:]),
              "epochs": 3, "dataloader": {}}  # fmt: skip
    space = {"lr": ("log", 1e-4, 3e-2), "hidden": ("int", 8, 64)}
    study = tune(config, space, n_trials=6, pruner="asha")
    assert len(study.trials) == 6
    for t in study.trials:
        assert t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        assert 1 <= len(t.intermediate_values) <= 3
        if t.state == TrialState.COMPLETE:
            assert t.value == t.intermediate_values[3]  # epoch 3 (of 1..3): the last one
    assert study.best_value > 0.5
    with pytest.raises(ConfigError, match="unknown training option"):
        tune({**config, "epochz": 3}, space, n_trials=1)


def test_two_processes_share_a_postgresql_study(postgres_url, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("NIMBLE_TUNE_RENDEZVOUS", str(tmp_path))
    study = tune(_objectives.parabola_together, {"x": ("float", -4.0, 6.0)}, n_trials=16,
                 directions=("minimize",), storage=postgres_url, study_name="shared",
                 workers=2)  # fmt: skip
    finished = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert 16 <= len(finished) <= 17  # a trial the other worker had started may finish too
    assert len({t.user_attrs["pid"] for t in finished}) == 2  # both processes ran trials


def test_a_killed_worker_is_failed_by_heartbeat_and_its_trial_retried(postgres_url, tmp_path):  # noqa: F811
    marker = tmp_path / "started"
    env = {**os.environ, "NIMBLE_TUNE_MARKER": str(marker)}
    code = ("from nimbleml.search.study import tune; from tests.search import _objectives; "
            f"tune(_objectives.slow_once, {{'x': ('float', 0, 1)}}, n_trials=1, "
            f"storage={postgres_url!r}, study_name='retry', heartbeat_s=1)")  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)  # mid-trial, no chance to say goodbye
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(3)  # past the grace period (2 heartbeats)
    os.environ["NIMBLE_TUNE_MARKER"] = str(marker)
    try:
        study = tune(_objectives.slow_once, {"x": ("float", 0, 1)}, n_trials=1,
                     storage=postgres_url, study_name="retry", heartbeat_s=1)  # fmt: skip
    finally:
        del os.environ["NIMBLE_TUNE_MARKER"]
    states = {t.number: t.state for t in study.trials}
    assert states[0] == TrialState.FAIL
    with warnings.catch_warnings():  # Optuna calls the lookup "experimental"
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        origin = RetryHeartbeatStaleTrialCallback.retried_trial_number
        retried = [t for t in study.trials if t.number and origin(t) == 0]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE
    assert retried[0].params == study.trials[0].params  # the same trial, run again
    assert nimbleml is not None


TORCHRUN_SCRIPT = """
import os, sys
import numpy as np, torch
from sklearn.datasets import load_digits
import nimbleml

X, y = load_digits(return_X_y=True)
X = (X / 16).astype(np.float32)

def build(hidden):
    with open(f"built-{os.environ['RANK']}.txt", "a") as f:
        f.write(f"{hidden}\\n")
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, 10))

config = {"model": build, "train": (X[:400], y[:400]), "val": (X[1400:], y[1400:]),
          "epochs": 2, "dataloader": {}, "device": "cpu"}
study = nimbleml.tune(config, {"hidden": ("int", 8, 32)}, n_trials=3,
                      storage="ddp.journal", study_name="ddp")
print(f"rank {os.environ['RANK']}: {None if study is None else len(study.trials)}")
"""


def test_under_torchrun_rank_0_alone_talks_to_the_storage(tmp_path):
    from nimbleml.train.launch import free_port

    (tmp_path / "tune_ddp.py").write_text(TORCHRUN_SCRIPT)
    res = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "tune_ddp.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert "rank 0: 3" in res.stdout and "rank 1: None" in res.stdout
    built = [(tmp_path / f"built-{r}.txt").read_text().split() for r in (0, 1)]
    assert len(built[0]) == 3 and built[0] == built[1]  # every trial trained in both ranks
    study = optuna.load_study(study_name="ddp", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "ddp.journal"))))  # fmt: skip
    assert [str(t.params["hidden"]) for t in study.trials] == built[0]
