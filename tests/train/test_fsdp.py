"""`nimbleml train --nproc 2 --strategy fsdp` (FSDP2 on gloo, real torchrun processes): the
accuracy DDP reaches, a checkpoint that loads into a plain model and predicts what the run's
final model predicts; `--max-restarts 1` with rank 1 killed by SIGKILL after its second
epoch: torchrun restarts the group, which resumes from the FSDP checkpoint and ends with the
weights of an uninterrupted run, bit for bit, counting one restart (issue 24). Bad input is
one error naming the value and the fix, before anything is written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from typer.testing import CliRunner

import nimbleml
from nimbleml.cli import app
from nimbleml.errors import ConfigError

MODELS = """
import os
import signal
import time
from pathlib import Path

import torch


class Net(torch.nn.Sequential):
    def forward(self, x):
        # the test's hook: rank 1 of the first attempt kills itself (a real SIGKILL of the
        # real process) in its first training step after epoch 2's checkpoint was written
        after = os.environ.get("KILL_AFTER")
        if (after and self.training and os.environ.get("RANK") == "1"
                and os.environ.get("TORCHELASTIC_RESTART_COUNT") == "0" and Path(after).exists()):
            Path(os.environ["KILLED"]).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return super().forward(x)


def build():
    # after a restart rank 0 joins late: the restarted processes must not read the addresses
    # the killed attempt left in torchrun's store (gloo: 'connectFullMesh failed')
    if os.environ.get("RANK") == "0" and os.environ.get("TORCHELASTIC_RESTART_COUNT") == "1":
        time.sleep(float(os.environ.get("SLOW_RESTART", "0")))
    return Net(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))


def flat():
    return torch.nn.Linear(64, 10)
"""
# 640 rows, batch 32 (16 a process), 2 micro-batches a step (10 steps an epoch): each first
# micro-step skips the reduce-scatter (set_requires_gradient_sync(False))
ARGS = ["--model", "fsdp_models:build", "--data", "train.npz", "--val", "val.npz",
        "--epochs", "3", "--batch-size", "32", "--grad-accum", "2", "--lr", "0.01",
        "--seed", "3", "--device", "cpu", "--nproc", "2", "-q"]  # fmt: skip


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = (X / 16).astype(np.float32)
    d = tmp_path_factory.mktemp("fsdp")
    np.savez(d / "train.npz", X=X[:640], y=y[:640])
    np.savez(d / "val.npz", X=X[1200:], y=y[1200:])
    (d / "fsdp_models.py").write_text(MODELS)
    return d


def nimbleml_train(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
    return subprocess.run([sys.executable, "-m", "nimbleml.cli", "train", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})  # fmt: skip


def final_accuracy(run: Path) -> float:
    return float(json.loads((run / "report.json").read_text())["history"][-1]["val_metric"])


def plain(weights: dict[str, torch.Tensor]) -> torch.nn.Module:
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    model.load_state_dict(weights)
    return model.eval()


def test_fsdp_reaches_ddp_and_an_elastic_restart_ends_bit_identical(folder):
    ddp = nimbleml_train(*ARGS, "--checkpoint-dir", "ddp", cwd=folder)
    assert ddp.returncode == 0, ddp.stderr
    fsdp = nimbleml_train(*ARGS, "--strategy", "fsdp", "--checkpoint-dir", "fsdp",
                          "--save-model", "fsdp.pt", cwd=folder)  # fmt: skip
    assert fsdp.returncode == 0, fsdp.stderr
    # the same accuracy as DDP (within 0.5 point), in fp32 on the CPU, said in the report
    assert abs(final_accuracy(folder / "fsdp") - final_accuracy(folder / "ddp")) <= 0.005
    assert final_accuracy(folder / "fsdp") > 0.8  # 0.87 here
    report = json.loads((folder / "fsdp" / "report.json").read_text())
    assert report["config"]["strategy"] == "fsdp" and report["restarts"] == 0
    assert report["precision"]["chosen"] == "fp32"
    assert "FSDP on a CPU trains in fp32" in report["precision"]["reason"]
    # the checkpoint holds full, unsharded states: a plain model loads it in one process and
    # predicts what the run's final model (--save-model) predicts
    saved = torch.load(folder / "fsdp" / "epoch-0003.pt", weights_only=False)
    final = torch.load(folder / "fsdp.pt")
    X = torch.tensor(np.load(folder / "val.npz")["X"])
    with torch.no_grad():
        assert torch.equal(plain(saved["model"])(X), plain(final)(X))
    moments = saved["optimizer"]["state"]["0.weight"]["exp_avg"]
    assert moments.shape == (64, 64)  # the whole parameter's, not a shard

    # rank 1 killed by SIGKILL after its second epoch: one restart, resumed from epoch 2
    killed = folder / "killed-pid"
    elastic = nimbleml_train(*ARGS, "--strategy", "fsdp", "--checkpoint-dir", "elastic",
                             "--save-model", "elastic.pt", "--max-restarts", "1", cwd=folder,
                             env={"KILL_AFTER": str(folder / "elastic" / "epoch-0002.pt"),
                                  "KILLED": str(killed), "SLOW_RESTART": "3"})  # fmt: skip
    assert elastic.returncode == 0, elastic.stderr
    assert not psutil.pid_exists(int(killed.read_text()))  # it died; it was rank 1
    assert elastic.stderr.splitlines() == [
        "restart 1 of at most 1: a process failed, so torchrun restarted every process; going "
        "on from the last checkpoint",
        f"resuming from elastic{os.sep}epoch-0002.pt (epoch 2 of 3 done)",
    ], elastic.stderr
    assert "restarts: 1 (a process failed" in elastic.stdout
    assert json.loads((folder / "elastic" / "report.json").read_text())["restarts"] == 1
    # the weights of the uninterrupted run, bit for bit, and its history
    a, b = torch.load(folder / "fsdp.pt"), torch.load(folder / "elastic.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    history, reference = (
        [json.loads(line) for line in (folder / run / "history.jsonl").read_text().splitlines()]
        for run in ("elastic", "fsdp")
    )
    assert [(r["epoch"], r["train_loss"], r["val_metric"]) for r in history] == [
        (r["epoch"], r["train_loss"], r["val_metric"]) for r in reference
    ]


# -- bad input: one error naming the value and the fix, nothing written ---------------------
def test_fsdp_on_a_model_without_blocks_or_with_a_block_that_does_not_exist(tmp_path):
    X, y = np.random.rand(64, 64).astype(np.float32), np.arange(64) % 10
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"strategy='fsdp' shards each block .* Linear has "
                       r"none holding parameters: name the submodules to shard with "
                       r"fsdp_blocks=\[\.\.\.\] \(--fsdp-blocks a,b\), or train it with "
                       r"strategy='ddp'"):  # fmt: skip
        nimbleml.train(torch.nn.Linear(64, 10), (X, y), strategy="fsdp",
                       checkpoint_dir=str(out), epochs=1)  # fmt: skip
    model = torch.nn.Sequential(torch.nn.Linear(64, 8), torch.nn.ReLU(), torch.nn.Linear(8, 10))
    with pytest.raises(ConfigError, match=r"fsdp_blocks: Sequential has no submodule 'enc.3'; "
                       r"name submodules that exist \(some: 0, 1, 2\)"):  # fmt: skip
        nimbleml.train(model, (X, y), strategy="fsdp", fsdp_blocks=["0", "enc.3"],
                       checkpoint_dir=str(out), epochs=1)  # fmt: skip
    assert not out.exists()


def test_fsdp_options_that_do_not_go_together():
    with pytest.raises(ConfigError, match=r"strategy 'zero3' is not one of ddp, fsdp"):
        nimbleml.Trainer(strategy="zero3")
    with pytest.raises(ConfigError, match=r"fsdp_blocks names the blocks FSDP shards, and "
                       r"strategy is 'ddp': add strategy='fsdp'"):  # fmt: skip
        nimbleml.Trainer(fsdp_blocks=["0"])
    sgd = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(ConfigError, match=r"strategy='fsdp' builds the optimizer itself.*"
                       r"name it \(adamw, adam, sgd\)"):  # fmt: skip
        nimbleml.Trainer(strategy="fsdp", optimizer=sgd)


@pytest.mark.parametrize(("args", "said"), [
    (["--model", "fsdp_models:flat", "--strategy", "fsdp"],
     "error: strategy='fsdp' shards each block of the model's largest Sequential or ModuleList, "
     "and Linear has none holding parameters"),
    (["--model", "fsdp_models:build", "--strategy", "fsdp", "--fsdp-blocks", "0,body.1"],
     "error: fsdp_blocks: Net has no submodule 'body.1'; name submodules that exist (some: 0, "
     "1, 2)"),
])  # fmt: skip
def test_in_a_training_process_a_model_fsdp_cannot_shard_is_one_line(folder, monkeypatch,
                                                                   args, said):  # fmt: skip
    """What each process torchrun starts runs (the environment says it is rank 0 of 2): the
    model is checked before a process group, a tracker or a checkpoint exists."""
    monkeypatch.chdir(folder)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    res = CliRunner().invoke(app, ["train", *args, "--data", "train.npz", "--device", "cpu",
                                   "--checkpoint-dir", "bad", "--log", "tensorboard:bad-tb"])  # fmt: skip
    assert res.exit_code == 2, res.output
    assert [line for line in res.output.splitlines() if line.strip()] == [
        line for line in res.output.splitlines() if line.startswith("error: ")
    ]
    assert res.output.startswith(said), res.output
    assert not (folder / "bad").exists() and not (folder / "bad-tb").exists()


def test_one_process_resumes_from_a_checkpoint_in_fsdps_form(tmp_path):
    """An FSDP checkpoint's optimizer state is keyed by parameter names
    (get_optimizer_state_dict): a one-process (or DDP) run resumes from it and ends where an
    uninterrupted run does, bit for bit."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    X = np.random.default_rng(0).random((96, 64), dtype=np.float32)
    y = np.arange(96) % 10
    options = {"epochs": 2, "batch_size": 32, "lr": 0.01, "precision": "fp32", "seed": 5}

    def model() -> torch.nn.Module:
        torch.manual_seed(1)
        return torch.nn.Sequential(
            torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10)
        )

    whole = nimbleml.train(model(), (X, y), **options).model.state_dict()
    out = tmp_path / "run"
    nimbleml.train(model(), (X, y), **{**options, "epochs": 1}, checkpoint_dir=str(out))
    path = out / "epoch-0001.pt"
    saved = torch.load(path, weights_only=False)
    net = model()
    net.load_state_dict(saved["model"])
    optimizer = torch.optim.AdamW(net.parameters(), lr=0.01)
    optimizer.load_state_dict(saved["optimizer"])
    saved["optimizer"] = get_optimizer_state_dict(
        net, optimizer, options=StateDictOptions(full_state_dict=True)
    )
    assert "0.weight" in saved["optimizer"]["state"]  # keyed by names, as FSDP saves it
    torch.save(saved, path)
    resumed = nimbleml.train(model(), (X, y), **options, checkpoint_dir=str(out), resume=True)
    assert all(torch.equal(v, resumed.model.state_dict()[k]) for k, v in whole.items())
