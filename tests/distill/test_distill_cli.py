"""`nimbleml distill` (issue 13): a trained teacher from module:function shrunk into a
student, distilled, reported beside the student alone, optimized into a package; bad input
is one error line with exit 2 and nothing written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from nimbleml.cli import app

MODELS = """
import torch

def build():
    return torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(),
                               torch.nn.Linear(128, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))

def trained():
    model = build()
    model.load_state_dict(torch.load("teacher_weights.pt"))
    return model

def small():
    return torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    from sklearn.datasets import load_digits

    import nimbleml

    X, y = load_digits(return_X_y=True)
    X = (X / 16).astype(np.float32)
    d = tmp_path_factory.mktemp("distill-cli")
    np.savez(d / "train.npz", X=X[:1000], y=y[:1000])
    np.savez(d / "val.npz", X=X[1400:], y=y[1400:])
    np.savez(d / "narrow.npz", X=X[:20, :32])  # rows without labels, of the wrong width
    (d / "kd_models.py").write_text(MODELS)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(),
                                torch.nn.Linear(128, 128), torch.nn.ReLU(),
                                torch.nn.Linear(128, 10))  # fmt: skip
    model = nimbleml.train(model, (X[:1000], y[:1000]), epochs=5, lr=3e-3, dataloader={}).model
    torch.save(model.state_dict(), d / "teacher_weights.pt")
    torch.jit.save(torch.jit.script(model), str(d / "teacher.ts"))
    return d


def invoke(*args: str):
    return CliRunner().invoke(app, ["distill", *args])


def test_distill_a_shrunk_student_into_a_package(folder, monkeypatch):
    monkeypatch.chdir(folder)
    res = invoke("--teacher", "kd_models:trained", "--width", "0.25", "--data", "train.npz",
                 "--val", "val.npz", "--epochs", "2", "--lr", "0.003", "--temperature", "4",
                 "--alpha", "0.5", "-o", "student.nimble", "--report", "kd", "--time-budget", "20")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert (folder / "student.nimble" / "manifest.json").exists()
    assert (folder / "kd" / "distill.json").exists()
    for words in ("teacher", "student (no teacher)", "student (distilled)", "distillation",
                  "T=4, alpha=0.5"):  # fmt: skip
        assert words in res.output, res.output
    # the package as the teacher of another student
    again = invoke("--teacher", "student.nimble", "--student", "kd_models:small", "--data",
                   "train.npz", "--val", "val.npz", "--epochs", "1", "--no-baseline",
                   "--temperature", "2", "--alpha", "1")  # fmt: skip
    assert again.exit_code == 0, again.output
    assert "student (no teacher)" not in again.output


@pytest.mark.parametrize("args, words", [
    (["--cache-teacher", "maybe"], "--cache-teacher must be auto, on or off"),
    (["--temperature", "0"], "temperature must be a number > 0"),
    (["--width", "1.5"], "width must be a share in (0, 1]"),
    (["--teacher", "missing.ts"], "missing.ts"),
    (["--teacher", "teacher.ts", "--student", "shrink"], "--student shrink needs the teacher"),
    (["--unlabeled", "narrow.npz"], "unlabeled: rows of shape (32,) (32 wide), but the training "
     "rows are (64,) (64 wide)"),
    (["--views", "cutmix"], "views must be one of auto, mixup"),
    (["--keep", "both"], "keep must be 'best' or 'distilled'"),
])  # fmt: skip
def test_bad_input_is_one_line_and_writes_nothing(folder, monkeypatch, args, words):
    monkeypatch.chdir(folder)
    before = sorted(p.name for p in folder.iterdir())
    base = {"--teacher": "kd_models:trained", "--data": "train.npz", "--val": "val.npz",
            "--epochs": "1", "-o": "never.nimble"}  # fmt: skip
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    res = invoke(*[x for pair in base.items() for x in pair])
    errors = [line for line in res.output.splitlines() if line.startswith("error: ")]
    assert res.exit_code == 2, res.output
    assert len(errors) == 1 and words in errors[0], res.output
    after = sorted(p.name for p in folder.iterdir() if p.name != "__pycache__")
    assert after == [n for n in before if n != "__pycache__"]


def test_a_yaml_config_with_flags_over_it(folder, monkeypatch):
    monkeypatch.chdir(folder)
    (folder / "kd.yaml").write_text(
        "models: {teacher: kd_models:trained, student: kd_models:small}\n"
        "data: {train: train.npz, val: val.npz}\n"
        "distill: {temperature: 3, alpha: 0.9, cache_teacher: off, baseline: false}\n"
        "training: {epochs: 5, lr: 0.003}\n"
    )
    res = invoke("--config", "kd.yaml", "--epochs", "1", "--alpha", "0.8")
    assert res.exit_code == 0, res.output
    assert "T=3, alpha=0.8, teacher online: cache_teacher=False" in res.output
    assert "student (no teacher)" not in res.output  # baseline: false from the file
    (folder / "bad.yaml").write_text("distill: {temprature: 3}\n")
    bad = invoke("--config", "bad.yaml")
    assert bad.exit_code == 2 and "unknown setting 'distill.temprature'" in bad.output, bad.output
    (folder / "bad.yaml").unlink()
    (folder / "kd.yaml").unlink()
