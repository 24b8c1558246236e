"""nimbleml.search_architecture (issue 13): candidates timed as packages before training, the
ones over a constraint never trained, the metric measured on the trained package, a Pareto
front of saved packages re-timed side by side, and its plot."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import nimbleml
from nimbleml.errors import ConfigError
from nimbleml.optimizer import Candidate


@pytest.fixture(scope="module")
def data():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = (X / 16).astype(np.float32)
    return (X[:900], y[:900]), (X[1400:], y[1400:])


def test_a_front_of_packages_with_constraints_checked_before_training(data, tmp_path):
    train, val = data
    trained = []

    def family(trial):
        width = trial.suggest_categorical("width", [8, 2048])  # 2048 is over the size limit
        trained.append(width)
        return torch.nn.Sequential(torch.nn.Linear(64, width), torch.nn.ReLU(),
                                   torch.nn.Linear(width, 10))  # fmt: skip

    front = nimbleml.search_architecture(
        train, val, family=family, n_trials=6, epochs=2, constraints={"size_mb": 0.05},
        out_dir=tmp_path / "front", baseline=torch.nn.Linear(64, 10), device="cpu",
        start=[{"width": 2048}],
    )  # fmt: skip
    assert front.trials == 6 and front.pareto
    assert trained[0] == 2048  # the architecture given to start with ran first
    big = sum(w == 2048 for w in trained)
    assert front.pruned.get("size over 0.05 MB", 0) == big  # never trained: pruned first
    for c in front.pareto:
        assert c.params["width"] == 8 and c.size_mb <= 0.05
        assert 0.05 < c.metric <= 1.0 and c.retimed_ms is not None and c.n >= 200
        assert (tmp_path / "front" / f"trial-{c.trial}.nimble" / "manifest.json").exists()
    assert not (tmp_path / "front" / ".candidates").exists()  # dominated ones removed
    saved = json.loads((tmp_path / "front" / "front.json").read_text())
    assert len(saved["pareto"]) == len(front.pareto)
    # one Candidate type with the optimizer; front.json keeps its row shape
    assert all(isinstance(c, Candidate) for c in front.pareto)
    assert list(saved["pareto"][0]) == ["trial", "params", "metric", "latency_ms", "retimed_ms",
                                        "p95_ms", "n", "size_mb", "path"]  # fmt: skip
    assert saved["pareto"][0]["size_mb"] == front.pareto[0].size_bytes / 2**20
    assert (tmp_path / "front" / "front.png").stat().st_size > 1000
    assert front.baseline is not None and "base" in front.table()
    pkg = front.best()
    assert pkg.predict(val[0][:3]).shape == (3, 10)
    with pytest.raises(ConfigError, match="no Pareto point runs within 1e-09 ms"):
        front.best(max_latency_ms=1e-9)


def test_bad_options_are_named(data):
    train, val = data
    with pytest.raises(ConfigError, match="family must be one of mlp, cnn"):
        nimbleml.search_architecture(train, val, family="rnn")
    with pytest.raises(ConfigError, match="unknown constraint"):
        nimbleml.search_architecture(train, val, constraints={"flops": 1})
    with pytest.raises(ConfigError, match="start must be a list of parameter dicts"):
        nimbleml.search_architecture(train, val, start={"layers": 1})
    with pytest.raises(ConfigError, match="family 'cnn' needs image inputs"):
        nimbleml.search_architecture(train, val, family="cnn")
    with pytest.raises(ConfigError, match=r"family 'encoder' needs sequences .*reshape"):
        nimbleml.search_architecture(train, val, family="encoder")


def test_the_encoder_family_searches_transformers_on_sequences(data):
    (X, y), (Xv, yv) = data
    as_rows = (X[:400].reshape(-1, 8, 8), y[:400]), (Xv.reshape(-1, 8, 8), yv)  # 8 tokens of 8
    front = nimbleml.search_architecture(*as_rows, family="encoder", n_trials=2, epochs=1,
                                         device="cpu")  # fmt: skip
    assert front.trials == 2 and front.pareto
    for c in front.pareto:
        assert set(c.params) == {"layers", "width", "heads", "ffn"}
        assert 0.0 < c.metric <= 1.0 and c.retimed_ms is not None


def test_the_encoder_family_is_in_the_layout_shrink_reads():
    from nimbleml.search.nas import build

    model = build("encoder", {"layers": 4, "width": 32, "heads": 2, "ffn": 4}, 64, 10, (8, 8))
    student = nimbleml.students.shrink(model, width=0.5, depth=0.5)
    assert len(student.encoder.layer) == 2
    assert student.encoder.layer[0].intermediate.dense.out_features == 64  # 32 * 4 / 2
    x = torch.rand(3, 8, 8)
    assert student(x).shape == model(x).shape == (3, 10)


def test_the_nas_command(tmp_path, monkeypatch, data):
    from typer.testing import CliRunner

    from nimbleml.cli import app

    (X, y), (Xv, yv) = data
    np.savez(tmp_path / "train.npz", X=X[:400], y=y[:400])
    np.savez(tmp_path / "val.npz", X=Xv, y=yv)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nas.yaml").write_text(
        "search: {n_trials: 3, epochs: 1, start: [{layers: 1, width: 8}]}\n"
        "data: {train: train.npz, val: val.npz}\n"
        "constraints: {max_size_mb: 0.03}\n"
        "output: {output: elsewhere}\n"
    )  # fmt: skip
    res = CliRunner().invoke(app, ["nas", "--config", "nas.yaml", "-o", "front"])  # flag wins
    assert res.exit_code == 0, res.output
    assert "Pareto front:" in res.output and (tmp_path / "front" / "front.json").exists()
    assert not (tmp_path / "elsewhere").exists()
    assert "trial 0 [1/3] (layers=1, width=8): accuracy" in res.stderr  # progress, the start first
    assert res.stderr.count("trial ") == 3


def test_a_candidate_behind_a_faster_one_stops_training(data):
    (X, y), (Xv, yv) = data
    nn = torch.nn
    epochs_run = []

    def family(trial):
        kind = trial.suggest_categorical("kind", ["good", "bad"])
        if kind == "good":  # small and fast
            return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        # slower (a wide layer) and worse (a one-unit bottleneck)
        return nn.Sequential(nn.Linear(64, 1024), nn.ReLU(), nn.Linear(1024, 1), nn.ReLU(),
                             nn.Linear(1, 10))  # fmt: skip

    def progress(info):
        epochs_run.append((info["params"]["kind"], info["state"], info["reason"]))

    front = nimbleml.search_architecture(
        (X[:400], y[:400]), (Xv, yv), family=family, n_trials=2, epochs=8, device="cpu",
        start=[{"kind": "good"}, {"kind": "bad"}], progress=progress,
    )  # fmt: skip
    assert front.pruned == {"dominated while training": 1}
    (good, bad) = epochs_run
    assert good[:2] == ("good", "complete")
    assert bad[:2] == ("bad", "pruned") and "dominated at epoch 2: trial 0" in bad[2]
    assert [c.params["kind"] for c in front.pareto] == ["good"]
