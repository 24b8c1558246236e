"""nimbleml nas, robustness (issue 22): missing values refused with their row and column
before any candidate is built; an output folder that is not empty refused (an earlier
search's packages would mix with this one's), --force clearing only a search's own folder;
one trial numbering in the progress lines, the package names and the table."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from typer.testing import CliRunner

import nimbleml
from nimbleml.cli import app
from nimbleml.errors import ConfigError, DataError


@pytest.fixture
def here(tmp_path, monkeypatch):
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = (X / 16).astype(np.float32)
    np.savez(tmp_path / "train.npz", X=X[:300], y=y[:300])
    np.savez(tmp_path / "val.npz", X=X[1500:], y=y[1500:])
    holes = X[:300].copy()
    holes[17, 9] = np.nan
    np.savez(tmp_path / "holes.npz", X=holes, y=y[:300])
    monkeypatch.chdir(tmp_path)
    return tmp_path


def nas(*args: str):
    return CliRunner().invoke(app, ["nas", "--n-trials", "2", "--epochs", "1", *args])


def errors(res) -> list[str]:
    return [line for line in res.output.splitlines() if line.startswith("error: ")]


def test_missing_values_are_refused_before_any_candidate(here):
    res = nas("--data", "holes.npz", "--val", "val.npz", "-o", "front")
    assert res.exit_code == 2, res.output
    assert len(errors(res)) == 1 and errors(res)[0].startswith(
        "error: --data holes.npz: row 17, column 9 holds a missing value (NaN); fill or drop"
    ), res.output
    assert not (here / "front").exists()
    with np.load(here / "holes.npz") as data, np.load(here / "val.npz") as val:  # closed
        X, y, Xv, yv = data["X"], data["y"], val["X"], val["y"]
    with pytest.raises(DataError, match=r"^train_data: row 17, column 9 holds a missing value"):
        nimbleml.search_architecture((X, y), (Xv, yv), n_trials=1)
    labels = yv.astype(np.float32)
    labels[4] = np.nan
    with pytest.raises(DataError, match=r"^val_data labels: row 4, column 0"):
        nimbleml.search_architecture((Xv, yv), (Xv, labels), n_trials=1)


def test_a_used_output_folder_is_refused_and_force_clears_only_a_searchs_own(here):
    stale = here / "front"
    (stale / "trial-99.nimble").mkdir(parents=True)
    (stale / "trial-99.nimble" / "manifest.json").write_text("{}")
    (stale / "front.json").write_text("{}")
    res = nas("--data", "train.npz", "--val", "val.npz", "-o", "front")
    assert res.exit_code == 2, res.output
    assert (
        len(errors(res)) == 1
        and "-o front is not empty (front.json, trial-99.nimble)" in res.output
    )
    assert "or --force to clear it first" in res.output
    assert (stale / "trial-99.nimble").exists()  # nothing touched
    for foreign in ("notes.md", ".git"):
        other = here / f"mine-{foreign}"
        other.mkdir()
        (other / "front.json").write_text("{}")
        (other / foreign).mkdir() if foreign == ".git" else (other / foreign).write_text("x")
        res = nas("--data", "train.npz", "--val", "val.npz", "-o", other.name, "--force")
        assert (
            res.exit_code == 2 and f"holds files a search did not write ({foreign})" in res.output
        )
        assert (other / foreign).exists() and (other / "front.json").exists()
    with pytest.raises(ConfigError, match="pass force=True|or force=True to clear it"):
        nimbleml.search_architecture(((0, 1), (0, 1)), ((0, 1), (0, 1)), out_dir=stale)

    res = nas("--data", "train.npz", "--val", "val.npz", "-o", "front", "--force")
    assert res.exit_code == 0, res.output
    assert not (stale / "trial-99.nimble").exists()  # the earlier search's package is gone
    progress = re.findall(r"^trial (\d+) \[(\d)/2\]", res.stderr, re.M)
    assert [c for _, c in progress] == ["1", "2"]
    numbers = {int(n) for n, _ in progress}
    kept = {int(p.name[6:-7]) for p in stale.glob("trial-*.nimble")}
    front = json.loads((stale / "front.json").read_text())
    assert kept and kept <= numbers  # one numbering: progress, files and front.json
    assert {c["trial"] for c in front["pareto"]} == kept
