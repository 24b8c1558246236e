"""`nimbleml train --nproc 2`: two gloo processes under a real torchrun on a free port reach
the weights one process reaches with the same global batch and seed; only rank 0 writes; a
failure in the processes is one error line with its exit code; SIGINT stops every process
(issue 12)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from typer.testing import CliRunner

from nimbleml.cli import app
from nimbleml.cli.rank import ENTRY
from nimbleml.train import launch

MODELS = """
import torch

def build():
    return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))

def five():
    return torch.nn.Linear(64, 5)


class Digits(torch.utils.data.Dataset):
    def __init__(self):
        from sklearn.datasets import load_digits

        X, y = load_digits(return_X_y=True)
        self.X, self.y = torch.tensor(X[:400] / 16, dtype=torch.float32), torch.tensor(y[:400])

    def __len__(self):
        return len(self.X)

    def __getitem__(self, i):
        return self.X[i], self.y[i]


def dataset():
    return Digits()
"""
# 641 rows: ten batches of 64, then one of a single sample, so that process 1's share of it
# is empty (it must still join the all-reduce); --grad-accum 2 makes the first micro-step of
# each pair skip the all-reduce (no_sync), and the last step is that one-sample batch alone
ARGS = ["--model", "ddp_models:build", "--data", "train.npz", "--val", "val.npz",
        "--epochs", "3", "--batch-size", "64", "--grad-accum", "2", "--lr", "0.01",
        "--scheduler", "cosine", "--seed", "7", "--device", "cpu", "-q"]  # fmt: skip


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = (X / 16).astype(np.float32)
    d = tmp_path_factory.mktemp("ddp")
    np.savez(d / "train.npz", X=X[:641], y=y[:641])
    np.savez(d / "val.npz", X=X[1400:], y=y[1400:])
    (d / "ddp_models.py").write_text(MODELS)
    return d


def nimbleml(*args: str, cwd: Path, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nimbleml.cli", "train", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=240, **kw)  # type: ignore[call-overload]  # fmt: skip


def test_two_gloo_processes_reach_the_weights_of_one(folder, monkeypatch):
    monkeypatch.chdir(folder)
    one = runner_invoke([*ARGS, "--save-model", "one.pt", "--checkpoint-dir", "one"])
    assert one.exit_code == 0, one.output
    two = nimbleml(*ARGS, "--nproc", "2", "--save-model", "two.pt", "--checkpoint-dir", "two",
                   cwd=folder)  # fmt: skip
    assert two.returncode == 0, two.stdout + two.stderr + _debug_run(folder)
    a, b = torch.load(folder / "one.pt"), torch.load(folder / "two.pt")
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert diff < 1e-5, diff
    assert max(float((a[k] - torch.load(folder / "one" / "best.pt", weights_only=False)["model"][k]).abs().max()) for k in a) < 1e-12  # fmt: skip
    # only rank 0 wrote: one history line per epoch, one report, no other files
    files = sorted(p.name for p in (folder / "two").iterdir())
    assert files == sorted(p.name for p in (folder / "one").iterdir())
    lines = (folder / "two" / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    # the history is the group's: the same figures as one process's (val by rank 0, shared)
    for x, y in zip(
        lines, (folder / "one" / "history.jsonl").read_text().splitlines(), strict=True
    ):
        rx, ry = json.loads(x), json.loads(y)
        assert abs(rx["train_loss"] - ry["train_loss"]) < 1e-5
        assert rx["val_metric"] == ry["val_metric"]
    assert two.stdout.count("precision: fp32") == 1  # only rank 0 printed the table


def _debug_run(folder: Path) -> str:
    """The same run again under --debug: every process's output, for a failure's message."""
    res = subprocess.run([sys.executable, "-m", "nimbleml.cli", "--debug", "train", *ARGS,
                          "--nproc", "2", "--checkpoint-dir", "two-debug"], cwd=folder,
                         capture_output=True, text=True, timeout=240)  # fmt: skip
    return f"\n--- again under --debug (exit {res.returncode}):\n{res.stdout}\n{res.stderr}"


def runner_invoke(args: list[str]) -> object:
    return CliRunner().invoke(app, ["train", *args])


def test_an_error_in_the_processes_is_one_line_with_exit_2(folder):
    res = nimbleml("--model", "ddp_models:five", "--data", "train.npz", "--nproc", "2",
                   "--device", "cpu", cwd=folder)  # fmt: skip
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert res.returncode == 2, res.stderr
    assert len(errors) == 1 and "the model gives 5 class scores" in errors[0], res.stderr
    assert "Traceback" not in res.stderr and "ChildFailedError" not in res.stderr


def test_sigint_stops_every_process(folder, tmp_path):
    """SIGINT while both processes are still starting (importing torch, before the process
    group forms): every process stops, one line, exit 130, and the status folder goes."""
    out, tmp = tmp_path / "run", tmp_path / "tmp"
    tmp.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "nimbleml.cli", "train", "--model", "ddp_models:build", "--data",
         "train.npz", "--epochs", "1000", "--nproc", "2", "--device", "cpu", "--checkpoint-dir",
         str(out), "-q"],
        cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TMPDIR": str(tmp)},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        # torchrun and its two processes, each of which opened its log (its first act)
        while len(tree := _tree(proc.pid)) < 3 or len(list(tmp.glob("*/rank-*.log"))) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGINT)  # as Ctrl-C would (the parent's process group)
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert err.splitlines().count("interrupted; run the same command to resume") == 1, err
    assert "error:" not in err, err
    _, alive = psutil.wait_procs(tree, timeout=10)
    assert not alive, [p.cmdline() for p in alive]
    assert not out.exists()  # stopped before the first epoch
    assert [p.name for p in tmp.iterdir() if not p.name.startswith("torchinductor_")] == []


def _tree(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def test_the_launch_command_and_threads():
    cmd = launch.command(ENTRY, ["--data", "x.npz"], 2, 29555, "/tmp/s/torchrun")
    assert cmd[1:] == ["-m", "nimbleml.train.elastic", "--nproc_per_node", "2", "--master_addr",
                       "127.0.0.1", "--master_port", "29555", "--log-dir", "/tmp/s/torchrun",
                       "-m", "nimbleml.cli.rank", "--data", "x.npz"]  # fmt: skip
    assert launch.threads_per_process(2) == max(1, launch.cores() // 2)
    assert launch.threads_per_process(64) == 1


def test_the_old_entry_names_the_new_one():
    """python -m nimbleml.train.launch (docs/train.md's torchrun command before the entry
    moved to the command line) exits 2 naming nimbleml.cli.rank: doing nothing would let
    every rank of an old multi-node command succeed without training."""
    res = subprocess.run([sys.executable, "-m", "nimbleml.train.launch", "--data", "x.npz"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith("error: ") and "-m nimbleml.cli.rank" in res.stderr


def test_more_processes_than_gpus_is_an_error():
    from types import SimpleNamespace

    from nimbleml.cli._train_run import _check_gpus
    from nimbleml.errors import ConfigError

    def fake(gpus: int) -> SimpleNamespace:
        cuda = SimpleNamespace(is_available=lambda: gpus > 0, device_count=lambda: gpus)
        return SimpleNamespace(cuda=cuda)

    with pytest.raises(ConfigError, match=r"--nproc 2 on 1 GPU\(s\).*--device cpu"):
        _check_gpus(fake(1), "auto", 2)
    _check_gpus(fake(1), "cpu", 2)  # gloo on the CPU
    _check_gpus(fake(2), "cuda", 2)
    _check_gpus(fake(0), "auto", 2)


def test_a_dataset_is_sharded_and_a_bare_dataloader_named():
    from torch.utils.data import DataLoader, TensorDataset

    from nimbleml.errors import ConfigError
    from nimbleml.train.data import batches

    data = TensorDataset(torch.arange(101.0)[:, None], torch.arange(101))
    seen = []
    for rank in (0, 1):
        shard = batches(data, 10, seed=3, rank=rank, world=2)
        sizes = [b.n for b in shard.epoch(1)]
        assert sizes[:-1] == [5] * 10 and len(shard) == 11  # 5 of every global batch of 10
        seen.append([int(t) for b in shard.epoch(1) for t in b.target])
    assert set(seen[0]) | set(seen[1]) == set(range(101))  # every sample, each process half
    assert len(set(seen[0]) & set(seen[1])) <= 1  # DistributedSampler pads 101 to 102
    again = [int(t) for b in batches(data, 10, seed=3, rank=0, world=2).epoch(1) for t in b.target]
    other = [int(t) for b in batches(data, 10, seed=3, rank=0, world=2).epoch(2) for t in b.target]
    assert again == seen[0] and other != seen[0]  # set_epoch: a new order each epoch
    with pytest.raises(ConfigError, match="batch_size 9 is the global batch of 2 processes"):
        batches(data, 9, rank=0, world=2)
    with pytest.warns(UserWarning, match="sampler=DistributedSampler"):
        batches(DataLoader(data, batch_size=8, shuffle=True), 8, rank=0, world=2)


def test_a_dataset_with_an_automatic_batch_under_two_processes(folder):
    """Rank 0 alone searches the batch size (one process's share of the host's memory) and
    every process trains on it: the global batch is the processes times the one found."""
    res = nimbleml("--model", "ddp_models:build", "--data", "ddp_models:dataset", "--epochs", "1",
                   "--batch-size", "auto", "--nproc", "2", "--device", "cpu",
                   "--checkpoint-dir", "auto", cwd=folder)  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    config = json.loads((folder / "auto" / "report.json").read_text())["config"]
    search = config["batch_size_search"]
    assert search["processes"] == 2
    assert config["batch_size"] == 2 * search["best"]
    assert res.stdout.count("batch size search") <= 1  # rank 0's table, printed once at most
