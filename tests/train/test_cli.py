"""`nimbleml train` end to end on digits: flags, YAML with flags over it, the data kinds, the
trackers read back, --optimize ending with a verified package, and every bad input one
`error:` line with exit code 2 (issue 12)."""

from __future__ import annotations

import io
import json
import re
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from nimbleml.cli import app

runner = CliRunner()

MODELS = """
import torch

def build(hidden=32, num_classes=10):
    return torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, num_classes))

def five():
    return torch.nn.Linear(64, 5)

def not_a_model():
    return [1, 2, 3]

def digits_dataset():
    import numpy as np
    d = np.load("train.npz")
    return torch.utils.data.TensorDataset(torch.from_numpy(d["X"]), torch.from_numpy(d["y"]))
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """train.npz / val.npz from sklearn's digits, the same as CSV, and a models file."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = (X / 16).astype(np.float32)
    d = tmp_path_factory.mktemp("train-cli")
    np.savez(d / "train.npz", X=X[:600], y=y[:600])
    np.savez(d / "val.npz", X=X[1400:], y=y[1400:])
    np.savez(d / "empty.npz", X=X[:0], y=y[:0])
    np.savez(d / "fractional.npz", X=X[:100], y=(y[:100] + 0.5).astype(np.float32))
    header = ",".join([*(f"p{i}" for i in range(64)), "label"])
    rows = [
        ",".join([*(f"{v:g}" for v in x), str(t)]) for x, t in zip(X[:300], y[:300], strict=True)
    ]
    (d / "train.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    (d / "digit_models.py").write_text(MODELS)
    return d


@pytest.fixture
def here(folder, monkeypatch) -> Path:
    monkeypatch.chdir(folder)
    return folder


def invoke(*args: str) -> object:
    return runner.invoke(app, ["train", *args])


BASE = ("--model", "digit_models:build", "--data", "train.npz", "--batch-size", "64")


def test_trains_end_to_end_with_history_report_curves_and_weights(here, tmp_path):
    out, weights = tmp_path / "run", tmp_path / "w.pt"
    res = invoke(*BASE, "--val", "val.npz", "--epochs", "3", "--lr", "0.01", "--scheduler", "cosine",
                 "--grad-accum", "2", "--checkpoint-dir", str(out), "--save-model", str(weights))  # fmt: skip
    assert res.exit_code == 0, res.output
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert history[-1]["val_metric"] > 0.5 and history[-1]["metric"] == "accuracy"
    report = json.loads((out / "report.json").read_text())
    assert report["precision"] == {  # nothing chosen: what decided it is said, not "chosen"
        "chosen": "fp32",
        "reason": "the command line's default; --amp trains in mixed precision where this "
        "hardware runs it natively",
    }
    assert report["config"]["grad_accum"] == 2 and report["config"]["scheduler"] == "cosine"
    assert (out / "curves.png").stat().st_size > 1000
    assert "epoch 3/3: train_loss" in res.output and "samples/s" in res.output  # no terminal
    assert "precision: fp32" in res.output and f"weights: {weights}" in res.output
    from digit_models import build

    model = build()
    model.load_state_dict(torch.load(weights))  # the trained weights, loadable as they are


def test_amp_is_precision_auto_with_its_reason(here, tmp_path):
    out = tmp_path / "run"
    res = invoke(*BASE, "--epochs", "1", "--amp", "--checkpoint-dir", str(out), "-q")
    assert res.exit_code == 0, res.output
    precision = json.loads((out / "report.json").read_text())["precision"]
    assert precision["reason"] != "chosen explicitly"  # decided by the hardware, and why
    assert "epoch 1/1" not in res.output  # --quiet


def test_yaml_settings_with_flags_over_them(here, tmp_path):
    out = tmp_path / "run"
    (tmp_path / "train.yaml").write_text(textwrap.dedent(f"""\
        model:
          factory: digit_models:build
          kwargs: {{hidden: 16}}
        data:
          train: train.npz
          val: val.npz
        training:
          epochs: 4
          batch-size: 32
          lr: 2e-3
          weight_decay: 1e-4
          optimizer: adam
          checkpoint_dir: {out}
          seed: 3
        """))  # fmt: skip
    res = invoke("--config", str(tmp_path / "train.yaml"), "--epochs", "2", "--lr", "0.01")
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    config = report["config"]
    assert len(report["history"]) == 2 and config["lr"] == 0.01  # the flags win
    assert (config["batch_size"], config["optimizer"], config["seed"]) == (32, "adam", 3)
    assert config["weight_decay"] == 1e-4  # PyYAML's string '1e-4', read as the number
    saved = torch.load(sorted(out.glob("epoch-*.pt"))[-1], weights_only=False)["model"]
    assert saved["0.weight"].shape == (16, 64)  # model.kwargs reached the function


def test_csv_with_target_and_a_dataset_from_module_function(here, tmp_path):
    res = invoke("--model", "digit_models:build", "--data", "train.csv", "--target", "label",
                 "--epochs", "1", "-q")  # fmt: skip
    assert res.exit_code == 0, res.output
    # as a process of its own, as a user runs it: the DataLoader tuning forks worker
    # processes, which a pytest worker holding the threads of every earlier test should not
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(here)}
    done = subprocess.run(
        [sys.executable, "-m", "nimbleml.cli", "train", "--model", "digit_models.py:build",
         "--data", "digit_models:digits_dataset", "--val", "val.npz", "--epochs", "1",
         "--checkpoint-dir", str(tmp_path / "r")],
        cwd=here, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "r" / "history.jsonl").read_text())["val_metric"] > 0


def test_optimize_ends_with_a_verified_package(here, tmp_path):
    import nimbleml

    pkg = tmp_path / "model.nimble"
    res = invoke(*BASE, "--val", "val.npz", "--epochs", "3", "--lr", "0.01", "--optimize",
                 "--max-drop", "0.05", "--time-budget", "6", "-o", str(pkg), "-q")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert f"package: {pkg}" in res.output
    manifest = json.loads((pkg / "manifest.json").read_text())
    assert manifest["validation"]["metric"] == "accuracy"
    assert manifest["validation"]["drop"] <= 0.05
    loaded = nimbleml.load(pkg)  # checksums checked on load
    X = np.load(here / "val.npz")["X"][:4]
    assert np.asarray(loaded.predict(X)).shape[0] == 4


def test_tensorboard_logs_read_back(here, tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard not installed (the train-logs extra)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logs = tmp_path / "tb"
    res = invoke(*BASE, "--val", "val.npz", "--epochs", "2", "--log", f"tensorboard:{logs}", "-q")
    assert res.exit_code == 0, res.output
    events = EventAccumulator(str(logs))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"epoch/train_loss", "epoch/val_loss", "epoch/val_metric", "step/train_loss"} <= set(
        tags
    )
    assert [e.step for e in events.Scalars("epoch/val_metric")] == [1, 2]
    steps = events.Scalars("step/train_loss")
    assert len(steps) == 2 * 10 and steps[-1].step == 20  # 600 samples / 64 = 10 steps an epoch


def test_mlflow_run_reads_back(here, tmp_path, monkeypatch):
    pytest.importorskip(
        "mlflow", reason="mlflow not installed (pip install 'nimbleml[train-logs]'; kept out of "
        "the dev extra for its size)"
    )  # fmt: skip
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # restored after the test
    store = tmp_path / "mlruns"
    res = invoke(*BASE, "--val", "val.npz", "--epochs", "2", "--log", f"mlflow:{store}",
                 "--checkpoint-dir", str(tmp_path / "run"), "-q")  # fmt: skip
    assert res.exit_code == 0, res.output
    client = MlflowClient(tracking_uri=store.as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("nimbleml").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["epochs"] == "2" and run.data.params["batch_size"] == "64"
    history = client.get_metric_history(run.info.run_id, "val_metric")
    assert [m.step for m in history] == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.json", "history.jsonl", "curves.png"} <= artifacts


def test_rich_progress_shows_epoch_step_loss_rate(monkeypatch):
    from nimbleml.cli._train_run import Display

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    monkeypatch.setattr("sys.stderr", screen)
    spec = {"epochs": 2, "grad_accum": 1}
    with Display("rich", spec, micro_batches=4, world=1) as display:
        assert display.mode == "rich" and display.steps_per_epoch == 4
        display.console.force_terminal = True
        display("step_end", {"epoch": 1, "step": 1, "loss": 2.5, "samples": 64})
        time.sleep(0.01)
        display("step_end", {"epoch": 1, "step": 2, "loss": 2.25, "samples": 128})
        display.bar.refresh()
        display("epoch_end", {"epoch": 1, "train_loss": 2.0, "samples_per_s": 900.0,
                              "seconds": 0.3, "best": True})  # fmt: skip
    text = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", screen.getvalue())  # colours and cursor
    assert "epoch 1/2" in text and "step 2/8" in text and "loss 2.2500" in text
    assert re.search(r"[\d,]+ samples/s", text)  # 64 samples over the second step
    assert "epoch 1/2: train_loss 2.0000" in text


# ------------------------------------------------------------------------------- bad input

YAMLS = {
    "unknown-key.yaml": "training:\n  epochz: 3\n",
    "unknown-section.yaml": "optimizer:\n  lr: 0.1\n",
    "bad-type.yaml": "training:\n  lr: fast\n",
    "bad-scheduler.yaml": "model:\n  factory: digit_models:build\ntraining:\n  scheduler: linear\n",
}
M = "--model digit_models:build --data train.npz"
BAD = [
    (f"{M} --loss cross_entropy --data fractional.npz", "fractional"),  # target dtype
    (f"{M} --loss mse", "element by element"),  # target shape for the loss
    ("--model digit_models:five --data train.npz", "5 class scores"),  # outputs vs loss
    ("--model digit_models:build --data empty.npz", "no rows"),
    (f"{M} --batch-size 0", "--batch-size must be an integer >= 1 or 'auto', got '0'"),
    (f"{M} --precision fp8", "--precision 'fp8' is not one of auto, fp32, fp16-mixed, bf16-mixed"),
    (f"{M} --scheduler linear", "--scheduler 'linear' is not one of cosine, plateau, onecycle"),
    (f"{M} --optimizer lion", "--optimizer 'lion' is not one of adamw, adam, sgd"),
    (f"{M} --amp --precision fp32", "--amp (precision auto) and --precision fp32 disagree"),
    (f"{M} --epochs 0", "--epochs must be >= 1, got 0"),
    (f"{M} --resume", "resume=True needs checkpoint_dir"),
    ("--config unknown-key.yaml", "unknown setting 'training.epochz'; known in 'training': loss"),
    ("--config unknown-section.yaml", "unknown section 'optimizer'; known: model, data, training"),
    ("--config bad-type.yaml", "training.lr must be a number > 0, got 'fast'"),
    ("--config bad-scheduler.yaml --data train.npz", "training.scheduler 'linear' is not one of"),
    ("--config missing.yaml", "does not exist"),
    ("--data train.npz", "no model: give --model module:function"),
    ("--model digit_models:build", "no training data"),
    ("--model no_such_module_xyz:build --data train.npz", "no module named 'no_such_module_xyz'"),
    ("--model digit_models:nope --data train.npz", "has no 'nope'; its functions: build"),
    ("--model digit_models --data train.npz", "give module:function"),
    ("--model digit_models:not_a_model --data train.npz", "returned a list, not a torch.nn.Module"),
    (f"{M} --num-classes 0", "--num-classes must be >= 1, got 0"),
    ("--model digit_models:build --data missing.npz", "data file not found: missing.npz"),
    ("--model digit_models:build --data train.csv", "holds no labels"),
    (f"{M} --log wandb", "--log 'wandb' is not one of tensorboard[:DIR], mlflow[:URI]"),
    (f"{M} --optimize", "--optimize needs -o"),
    (f"{M} --optimize -o out.nimble", "--optimize needs --val DATA"),
    (f"{M} -o out.nimble", "add --optimize"),
    (f"{M} --save-model /proc/w.pt", "cannot write"),
    (f"{M} --nproc 0", "--nproc must be >= 1, got 0"),
    (f"{M} --nproc 2 --data nothing_here.npz", "data file not found: nothing_here.npz"),
]


@pytest.mark.parametrize("key, value, words", [
    ("epochs", 0, "must be >= 1, got 0"),
    ("lr", "fast", "must be a number > 0, got 'fast'"),
    ("optimizer", "lion", "'lion' is not one of adamw, adam, sgd"),
    ("device", "xpu", "must be auto, cpu, mps, cuda or cuda:N, got 'xpu'"),
    ("checkpointing", "maybe", "must be true, false or a list of submodule names, got 'maybe'"),
])  # fmt: skip
def test_the_file_and_the_api_share_one_check(tmp_path, key, value, words):
    """One check per key (train/config.py): the YAML file and TrainConfig refuse a value in
    the same words, each naming where the value came from."""
    from nimbleml.errors import ConfigError
    from nimbleml.train.config import TrainConfig, read_config

    (tmp_path / "t.yaml").write_text(f"training:\n  {key}: {value}\n")
    with pytest.raises(ConfigError) as from_file:
        read_config(tmp_path / "t.yaml")
    assert str(from_file.value) == f"config file {tmp_path / 't.yaml'}: training.{key} {words}"
    with pytest.raises(ConfigError) as from_api:
        TrainConfig(**{key: value})
    assert str(from_api.value) == f"{key} {words}"


@pytest.mark.parametrize("args, words", BAD, ids=[w.split(":")[0][:40] for _, w in BAD])
def test_bad_input_is_one_error_line_exit_2(here, args, words):
    for name, text in YAMLS.items():
        (here / name).write_text(text)
    before = sorted(p.name for p in here.iterdir())
    res = invoke(*args.split())
    errors = [line for line in res.output.splitlines() if line.startswith("error: ")]
    assert res.exit_code == 2, res.output
    assert len(errors) == 1 and words in errors[0], res.output
    assert "Traceback" not in res.output
    after = sorted(p.name for p in here.iterdir() if p.name != "__pycache__")
    assert after == [n for n in before if n != "__pycache__"]  # nothing written


def test_arch_without_torchvision_says_to_install_it(here):
    try:
        import torchvision  # noqa: F401
    except ImportError:
        res = invoke("--arch", "resnet18", "--num-classes", "10", "--data", "train.npz")
        assert res.exit_code == 2 and "pip install torchvision" in res.output, res.output
    else:
        res = invoke("--arch", "resnet999", "--data", "train.npz")
        assert res.exit_code == 2 and "resnet18" in res.output, res.output
