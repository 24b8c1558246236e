"""`nimbleml tune --config` (issue 13): a study from YAML with a function objective or a
training section, resumed by name, flags over the file; bad specs are one line, exit 2, with
a storage URL shown without its password."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from nimbleml.cli import app

OBJECTIVE = """
def score(params):
    return (params["x"] - 2) ** 2 + (0 if params["kind"] == "a" else 1)

def build(hidden):
    import torch
    return torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, 10))
"""
YAML = """
study: {name: para, n_trials: 6, directions: [minimize], pruner: none}
space:
  x: {float: [-4, 6]}
  kind: {choices: [a, b]}
objective: tune_obj:score
"""
TRAINING = """
study: {name: mlp, n_trials: 3}
space:
  lr: {log: [1.0e-3, 3.0e-2]}
  hidden: {int: [8, 32]}
training: {model: tune_obj:build, data: train.npz, val: val.npz, epochs: 2, dataloader: {}}
"""


@pytest.fixture
def here(tmp_path, monkeypatch) -> Path:
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = (X / 16).astype(np.float32)
    np.savez(tmp_path / "train.npz", X=X[:500], y=y[:500])
    np.savez(tmp_path / "val.npz", X=X[1400:], y=y[1400:])
    (tmp_path / "tune_obj.py").write_text(OBJECTIVE)
    (tmp_path / "tune.yaml").write_text(YAML)
    (tmp_path / "train.yaml").write_text(TRAINING)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def invoke(*args: str):
    return CliRunner().invoke(app, ["tune", *args])


def test_a_study_from_yaml_resumes_by_name(here):
    res = invoke("--config", "tune.yaml")
    assert res.exit_code == 0, res.output
    assert "study para: 6 trials (6 complete)" in res.output
    assert "live view: optuna-dashboard para.journal" in res.output
    again = invoke("--config", "tune.yaml", "--n-trials", "8")
    assert again.exit_code == 0 and "study para: 8 trials" in again.output, again.output
    trained = invoke("--config", "train.yaml")
    assert trained.exit_code == 0, trained.output
    assert "study mlp: 3 trials" in trained.output and "hidden=" in trained.output


@pytest.mark.parametrize("yaml, words", [
    ("space: {x: {normal: [0, 1]}}\nobjective: tune_obj:score", "space: x: give one of {log: ...}"),
    ("space: {x: {float: [6, -4]}}\nobjective: tune_obj:score", "the bounds are inverted (6 > -4)"),
    ("space: {x: {float: [0, 1]}}", "give objective: (module:function"),
    ("study: {trials: 3}\nspace: {x: {float: [0, 1]}}\nobjective: tune_obj:score",
     "study: unknown key(s) trials"),
    ("search: {}\n", "unknown section(s) search"),
    ("space: {x: {float: [0, 1]}}\nobjective: tune_obj:nothing", "nothing"),
    ("study: {storage: 'postgresql://me:hunter2@127.0.0.1:1/db'}\nspace: {x: {float: [0, 1]}}\n"
     "objective: tune_obj:score", "cannot open the study storage postgresql://me:***@127.0.0.1:1/db"),
])  # fmt: skip
def test_bad_specs_are_one_line(here, yaml, words):
    (here / "bad.yaml").write_text(yaml)
    before = sorted(p.name for p in here.iterdir())
    res = invoke("--config", "bad.yaml")
    errors = [line for line in res.output.splitlines() if line.startswith("error: ")]
    assert res.exit_code == 2, res.output
    assert len(errors) == 1 and words in errors[0], res.output
    assert "hunter2" not in res.output
    assert sorted(p.name for p in here.iterdir() if p.name != "__pycache__") == [
        n for n in before if n != "__pycache__"]  # fmt: skip
