"""distill and qat, robustness (issue 22): missing values refused with their row and column,
named as the user gave the data (``--data FILE``, ``train_data``), before the teacher runs;
empty training data named as the training data, not as the calibration rows taken from it;
``distill --trust-pickle`` reaches the teacher's loader; --help shows one default."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import nimbleml
from nimbleml.cli import app
from nimbleml.errors import DataError


@pytest.fixture(scope="module")
def digits01():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return (X / 16).astype(np.float32), y


@pytest.fixture
def folder(tmp_path, monkeypatch, digits01) -> Path:
    X, y = digits01
    np.savez(tmp_path / "train.npz", X=X[:300], y=y[:300])
    np.savez(tmp_path / "val.npz", X=X[1500:], y=y[1500:])
    holes = X[:300].copy()
    holes[17, 9] = np.nan
    np.savez(tmp_path / "holes.npz", X=holes, y=y[:300])
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    torch.save(teacher, tmp_path / "teacher.pt")  # a whole module: a pickle
    (tmp_path / "kd_small.py").write_text(
        "import torch\n\ndef small():\n    return torch.nn.Sequential(torch.nn.Linear(64, 8), "
        "torch.nn.ReLU(), torch.nn.Linear(8, 10))\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def distill(*args: str):
    return CliRunner().invoke(app, ["distill", "--student", "kd_small:small", "--epochs", "1",
                                    "--no-baseline", *args])  # fmt: skip


def errors(res) -> list[str]:
    return [line for line in res.output.splitlines() if line.startswith("error: ")]


def test_distill_trust_pickle_reaches_the_teachers_loader(folder):
    res = distill("--teacher", "teacher.pt", "--data", "train.npz", "--val", "val.npz")
    assert res.exit_code == 2, res.output
    assert len(errors(res)) == 1 and "--trust-pickle" in errors(res)[0]
    trusted = distill("--teacher", "teacher.pt", "--data", "train.npz", "--val", "val.npz",
                      "--trust-pickle")  # fmt: skip
    assert trusted.exit_code == 0, trusted.output
    assert "student (distilled)" in trusted.output


def test_distill_help_shows_one_default():
    import re

    res = CliRunner().invoke(app, ["distill", "--help"], env={"COLUMNS": "300"})
    text = re.sub(r"[│\s]+", " ", res.output)
    assert "(nimbleml.students.shrink) [default: shrink]" in text
    assert "default: default" not in text


def test_distill_refuses_missing_values_before_the_teacher_runs(folder, digits01):
    res = distill("--teacher", "teacher.pt", "--trust-pickle", "--data", "holes.npz",
                  "--val", "val.npz")  # fmt: skip
    assert res.exit_code == 2, res.output
    assert errors(res)[0].startswith(
        "error: --data holes.npz: row 17, column 9 holds a missing value (NaN); fill or drop"
    ), res.output
    X, y = digits01
    holes = np.load(folder / "holes.npz")["X"]
    ran = []
    teacher = torch.load(folder / "teacher.pt", weights_only=False)
    teacher.register_forward_hook(lambda *_: ran.append(1))
    student = torch.nn.Sequential(torch.nn.Linear(64, 8), torch.nn.ReLU(), torch.nn.Linear(8, 10))
    with pytest.raises(DataError, match=r"^train_data: row 17, column 9 holds a missing value"):
        nimbleml.distill(teacher, student, (holes, y[:300]), (X[1500:], y[1500:]), epochs=1)
    labels = y[1500:].astype(np.float32)
    labels[2] = np.nan
    with pytest.raises(DataError, match=r"^val_data labels: row 2, column 0"):
        nimbleml.distill(teacher, student, (X[:300], y[:300]), (X[1500:], labels), epochs=1)
    assert not ran  # refused before the teacher saw any of it


def test_qat_names_the_training_data(digits01):
    X, y = digits01
    model = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(),
                                torch.nn.Linear(16, 10)).eval()  # fmt: skip
    val = (X[1500:], y[1500:])
    with pytest.raises(DataError, match=r"^train_data holds no rows: give at least one"):
        nimbleml.qat(model, (X[:0], y[:0]), val, epochs=1)
    holes = X[:300].copy()
    holes[40, 3] = np.nan
    with pytest.raises(DataError, match=r"^train_data: row 40, column 3 holds a missing value"):
        nimbleml.qat(model, (holes, y[:300]), val, epochs=1)
    bad_val = X[1500:].copy()
    bad_val[5, 0] = np.nan
    with pytest.raises(DataError, match=r"^val_data: row 5, column 0 holds a missing value"):
        nimbleml.qat(model, (X[:300], y[:300]), (bad_val, y[1500:]), epochs=1)
    with pytest.raises(DataError, match=r"^calib: row 1, column 0"):
        nimbleml.qat(model, (X[:300], y[:300]), val, calib=bad_val[4:], epochs=1)
