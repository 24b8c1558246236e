"""`nimbleml train` as a real process when things go wrong (issue 22): the user's error is
one line with exit 2; a full disk is named; Ctrl-C is one line, exit 130, stops every
process and the same command resumes; a rank killed by a signal is named, no process or
/tmp/torchelastic_* folder is left (a kill during the best.pt copy: tests/train/test_loop.py)."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from typer.testing import CliRunner

from nimbleml.cli import app
from tests._disk import tmpfs
from tests._signals import default_sigint

MODELS = """
import os
import time
import torch

def build(hidden=32):
    return torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, 10))

def bad(hidden=32):
    raise RuntimeError("no weights file here")


class Slow(torch.nn.Module):
    # 5 ms a batch (SLOW_BATCH_S): epochs long enough to stop a run in the middle of
    def __init__(self):
        super().__init__()
        self.net = build()

    def forward(self, x):
        time.sleep(float(os.environ.get("SLOW_BATCH_S", "0.005")))
        return self.net(x)


def slow():
    return Slow()
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = (X / 16).astype(np.float32)
    d = tmp_path_factory.mktemp("robust-cli")
    np.savez(d / "train.npz", X=X[:600], y=y[:600])
    np.savez(d / "val.npz", X=X[1400:], y=y[1400:])
    np.savez(d / "f30.npz", X=X[:600, :30], y=y[:600])
    (d / "robust_models.py").write_text(MODELS)
    return d


def one_error(output: str) -> str:
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in output, output
    return errors[0]


@pytest.mark.parametrize("model, data, words", [
    ("robust_models:build", "f30.npz", "error: the model's forward pass on the first training "
     "batch raised RuntimeError: mat1 and mat2 shapes cannot be multiplied (8x30 and 64x32); "
     "check that the data's feature count matches the model's input: the data has 30 features "
     "per row, the model's first layer (0: Linear) takes 64"),
    ("robust_models:bad", "train.npz", "error: the --model function 'robust_models:bad' raised "
     "RuntimeError: no weights file here; check that it builds the model"),
])  # fmt: skip
def test_the_users_error_is_one_line_exit_2_not_a_bug(folder, monkeypatch, model, data, words):
    monkeypatch.chdir(folder)
    res = CliRunner().invoke(app, ["train", "--model", model, "--data", data, "--epochs", "1"])
    assert res.exit_code == 2, res.output
    assert one_error(res.output).startswith(words) and "a bug in nimbleml" not in res.output


def test_a_full_disk_is_one_line_naming_it(folder, monkeypatch, tmp_path):
    monkeypatch.chdir(folder)
    with tmpfs(tmp_path / "small", "size=300k") as small:
        res = CliRunner().invoke(app, ["train", "--config", str(_big(tmp_path)),
                                       "--checkpoint-dir", str(small / "run")])  # fmt: skip
        assert res.exit_code == 2, res.output
        line = one_error(res.output)
        assert line.startswith(
            f"error: the disk is full: writing {small / 'run' / 'epoch-0001.pt'}"
        )


def test_a_read_only_checkpoint_folder_is_one_line_before_training(folder, monkeypatch, tmp_path):
    monkeypatch.chdir(folder)
    ro = tmp_path / "ro"
    with tmpfs(ro, "ro,size=4m"):
        res = CliRunner().invoke(app, ["train", "--model", "robust_models:build", "--data",
                                       "train.npz", "--checkpoint-dir", str(ro / "run")])  # fmt: skip
    assert res.exit_code == 2, res.output
    assert one_error(res.output) == (
        f"error: cannot write {ro / 'run'}: {ro} is not writable (Read-only file system)"
    )
    assert "epoch 1/" not in res.output  # said before any training


def _big(tmp_path: Path) -> Path:
    """A YAML for a model whose first checkpoint (about 300 KB of weights) fills 300 KB."""
    path = tmp_path / "big.yaml"
    path.write_text("model:\n  factory: robust_models:build\n  kwargs: {hidden: 1024}\n"
                    "data:\n  train: train.npz\ntraining:\n  epochs: 1\n")  # fmt: skip
    return path


# ------------------------------------------------------------------- real processes, signals


def start(folder: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "nimbleml.cli", "train", *args], cwd=folder,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **env}, preexec_fn=default_sigint)  # fmt: skip


def wait_for(path: Path, proc: subprocess.Popen[str], seen: dict[int, psutil.Process]) -> None:
    """Until ``path`` exists, noting every process of the run's tree as it goes."""
    deadline = time.monotonic() + 180
    while not path.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        _note(proc.pid, seen)
        time.sleep(0.05)
    _note(proc.pid, seen)


def _note(pid: int, seen: dict[int, psutil.Process]) -> None:
    try:
        for child in psutil.Process(pid).children(recursive=True):
            seen.setdefault(child.pid, child)
    except psutil.Error:
        pass


def torchelastic() -> set[str]:
    return set(glob.glob(os.path.join("/tmp", "torchelastic_*")))


def history(out: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (out / "history.jsonl").read_text().splitlines()]


def checkpointed(out: Path) -> int:
    """The last epoch with a checkpoint: a signal sent as epoch-N.pt appears may land before
    history.jsonl gains line N (written after it; the next start rewrites it from N)."""
    return max(int(p.stem.split("-")[1]) for p in out.glob("epoch-*.pt"))


def test_ctrl_c_is_one_line_exit_130_and_the_same_command_resumes(folder, tmp_path):
    out = tmp_path / "run"
    args = ["--model", "robust_models:slow", "--data", "train.npz", "--epochs", "6",
            "--batch-size", "16", "--checkpoint-dir", str(out), "--device", "cpu"]  # fmt: skip
    seen: dict[int, psutil.Process] = {}
    # 15 ms a batch (0.6 s an epoch): the signal lands mid-run even on a loaded machine
    proc = start(folder, *args, SLOW_BATCH_S="0.015")
    err, _ = stop_after(out / "epoch-0001.pt", proc, seen, signal.SIGINT)  # as Ctrl-C would
    assert proc.returncode == 130, err
    lines = [line for line in err.splitlines() if not line.startswith("epoch ")]
    assert lines == ["interrupted; run the same command to resume"], err
    _, alive = psutil.wait_procs(list(seen.values()), timeout=15)
    assert not alive, [p.cmdline() for p in alive]
    done = checkpointed(out)
    assert 1 <= done < 6
    again = start(folder, *args)
    _, err = again.communicate(timeout=240)
    assert again.returncode == 0, err
    assert f"resuming from {out}/epoch-{done:04d}.pt (epoch {done} of 6 done)" in err
    assert history(out) == [1, 2, 3, 4, 5, 6]


def test_two_processes_a_rank_killed_then_ctrl_c_then_the_same_command_finishes(folder, tmp_path):
    """`--nproc 2`, the same command three times: rank 1 killed by SIGKILL after the first
    checkpoint (named with its signal, exit 137), then Ctrl-C after the next one (one line,
    exit 130), then it resumes and finishes; each time every process stopped and no
    /tmp/torchelastic_* folder was left (torchrun's log folder is inside ours)."""
    out = tmp_path / "run"
    args = ["--model", "robust_models:slow", "--data", "train.npz", "--epochs", "6",
            "--batch-size", "16", "--checkpoint-dir", str(out), "--device", "cpu",
            "--nproc", "2"]  # fmt: skip
    before, seen = torchelastic(), {}
    proc = start(folder, *args)
    err, rank1 = stop_after(out / "epoch-0001.pt", proc, seen, signal.SIGKILL, rank="1")
    assert proc.returncode == 128 + signal.SIGKILL, err
    assert one_error(err) == (
        f"error: rank 1 was killed by SIGKILL (pid {rank1.pid}); the other processes were "
        f"stopped; running the same command resumes from the last checkpoint in {out}"
    )
    assert "Connection" not in err and "a bug in nimbleml" not in err
    _, alive = psutil.wait_procs(list(seen.values()), timeout=15)
    assert not alive, [p.cmdline() for p in alive]
    assert torchelastic() <= before
    done = checkpointed(out)
    assert 1 <= done < 5
    seen = {}
    proc = start(folder, *args)
    err, _ = stop_after(out / f"epoch-{done + 1:04d}.pt", proc, seen, signal.SIGINT)
    assert proc.returncode == 130, err
    lines = [line for line in err.splitlines() if not line.startswith("epoch ")]
    assert lines == [f"resuming from {out}/epoch-{done:04d}.pt (epoch {done} of 6 done)",
                     "interrupted; run the same command to resume"], err  # fmt: skip
    _, alive = psutil.wait_procs(list(seen.values()), timeout=15)
    assert not alive, [p.cmdline() for p in alive]
    again = checkpointed(out)
    assert done < again < 6
    last = start(folder, *args, "-q")
    _, err = last.communicate(timeout=240)
    assert last.returncode == 0, err
    assert err.splitlines() == [  # said under -q too
        f"resuming from {out}/epoch-{again:04d}.pt (epoch {again} of 6 done)"
    ], err
    assert history(out) == [1, 2, 3, 4, 5, 6]
    assert torchelastic() <= before


def stop_after(path: Path, proc: subprocess.Popen[str], seen: dict[int, psutil.Process],
               signum: int, rank: str | None = None) -> tuple[str, Any]:  # fmt: skip
    """Once ``path`` exists, ``signum`` to the command (or to its process of ``rank``);
    its stderr once it ended, and the process signalled."""
    try:
        wait_for(path, proc, seen)
        target = proc if rank is None else next(p for p in seen.values() if _rank(p) == rank)
        target.send_signal(signum)
        return proc.communicate(timeout=120)[1], target
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _rank(p: psutil.Process) -> str | None:
    try:
        if "nimbleml.cli.rank" not in " ".join(p.cmdline()):
            return None
        return p.environ().get("RANK")
    except psutil.Error:
        return None
