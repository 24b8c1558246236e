"""`nimbleml train` killed with SIGKILL at a seeded random point (one process, and --nproc 2
killed through the parent's process group), then the same command: it resumes and ends
with the weights of an uninterrupted run, bit for bit on this CPU, and the same history
apart from timings; no process, temp or torchelastic folder is left (the temp folder a
SIGKILL left is removed by the next start). A truncated latest checkpoint is skipped with a
warning saying it is cut short, for the one before it; the resume is said under -q too."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from .conftest import Box, kill_when, stop

MODELS = """
import time
import torch


class Slow(torch.nn.Module):
    # 10 ms a batch: an epoch lasts long enough to be killed in the middle of
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(),
                                       torch.nn.Linear(16, 10))

    def forward(self, x):
        time.sleep(0.01)
        return self.net(x)


def slow():
    return Slow()
"""
EPOCHS = 5
TIMING = ("samples_per_s", "seconds")


def args(nproc: int) -> list[str]:
    return ["train", "--model", "fault_models:slow", "--data", "train.npz", "--val", "val.npz",
            "--epochs", str(EPOCHS), "--batch-size", "32", "--lr", "0.01", "--precision", "fp32",
            "--device", "cpu", "--seed", "3", "--checkpoint-dir", "run", "--nproc", str(nproc),
            "-q"]  # fmt: skip


def inputs(folder: Path) -> None:
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = (X / 16).astype(np.float32)
    np.savez(folder / "train.npz", X=X[:480], y=y[:480])
    np.savez(folder / "val.npz", X=X[1500:1600], y=y[1500:1600])
    (folder / "fault_models.py").write_text(MODELS)


def result(run: Path) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """The last checkpoint's weights and the history without its timings."""
    last = torch.load(run / f"epoch-{EPOCHS:04d}.pt", map_location="cpu", weights_only=False)
    history = [{k: v for k, v in json.loads(line).items() if k not in TIMING}
               for line in (run / "history.jsonl").read_text().splitlines()]  # fmt: skip
    return last["model"], history


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class Whole:
    """The run the killed one must end as: the same command, never interrupted, started at
    once and run beside the killed one: a run waits on imports and torchrun's rendezvous
    more than it computes (the --nproc 2 test took 21 s so on this 2-core machine, 25 s
    with the runs one after the other)."""

    def __init__(self, root: Path, nproc: int) -> None:
        self.box = Box(root)
        inputs(self.box.work)
        self.proc = self.box.start(*args(nproc))

    def result(self) -> tuple[dict[str, torch.Tensor], list[dict]]:
        try:
            self.proc.wait(timeout=240)
        finally:
            stop(self.proc)
        assert self.proc.returncode == 0, self.box.output(self.proc)
        self.box.no_process_left()
        return result(self.box.work / "run")


def torchelastic(tmp: Path) -> list[Path]:
    """torchrun's own temp folders under the box's TMPDIR (where the command under test and
    everything it starts make theirs): /tmp itself holds those of every other run on the
    machine, tests on the other pytest worker included, started and ended at any time."""
    return list(tmp.rglob("torchelastic_*"))


def test_one_process_killed_then_a_truncated_checkpoint(box, faults, tmp_path_factory):
    """SIGKILL after a random checkpoint (seed 11, at least the second) plus a random moment,
    the latest checkpoint then cut in half (as a disk that lost a file's tail leaves it),
    the same command again: it warns, naming that checkpoint, resumes from the one before,
    and ends as the uninterrupted run, bit for bit."""
    expected = Whole(tmp_path_factory.mktemp("whole1"), 1)
    inputs(box.work)
    box.snapshot()
    run = box.work / "run"
    rng = random.Random(11)
    k = rng.randint(2, EPOCHS - 2)
    proc = box.start(*args(1))
    kill_when(proc, lambda: (run / f"epoch-{k:04d}.pt").exists(), rng, 0.1)
    faults.inject(f"SIGKILL train after checkpoint {k} (seed 11)")
    box.no_process_left()
    assert int(sorted(run.glob("epoch-*.pt"))[-1].stem[6:]) < EPOCHS
    *_, previous, latest = sorted(run.glob("epoch-*.pt"))
    data = latest.read_bytes()
    latest.write_bytes(data[: len(data) // 2])
    faults.inject(f"truncated checkpoint {latest.name}")
    code, _, err = box.run(*args(1))
    assert code == 0, err
    said = [line for line in err.splitlines() if not line.startswith("warning: ")]
    assert said == [f"resuming from run/{previous.name} (epoch {int(previous.stem[6:])} of "
                    f"{EPOCHS} done)"], err  # said under -q too  # fmt: skip
    warned = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert any(f"checkpoint run/{latest.name} cannot be read (the file is cut short at "
               f"{len(data) // 2:,} bytes, its end missing: not a complete checkpoint, probably "
               "from a process killed while writing it" in line and previous.name in line
               for line in warned), err  # fmt: skip
    assert "Errno" not in err
    weights, history = result(run)
    whole_weights, whole_history = expected.result()
    assert history == whole_history
    assert same_weights(weights, whole_weights)
    box.nothing_left("run")


def test_nproc_2_killed_through_the_parents_process_group(box, faults, tmp_path_factory):
    """SIGKILL of `nimbleml train --nproc 2`'s process group (the parent: torchrun and the
    ranks have sessions of their own) after a random checkpoint (seed 21): torchrun and both
    ranks stop, no temp or torchelastic folder is left, and the same command ends as the
    uninterrupted run, bit for bit."""
    expected = Whole(tmp_path_factory.mktemp("whole2"), 2)
    inputs(box.work)
    box.snapshot()
    rng = random.Random(21)
    k = rng.randint(1, EPOCHS - 2)
    proc = box.start(*args(2))
    kill_when(proc, lambda: (box.work / "run" / f"epoch-{k:04d}.pt").exists(), rng, 0.1)
    faults.inject(f"SIGKILL train --nproc 2 after checkpoint {k} (seed 21)")
    box.no_process_left()  # torchrun and its ranks stop when the parent dies
    left = list(box.tmp.glob("nimbleml-train-*"))  # what a SIGKILL cannot clean up ...
    assert len(left) == 1 and (left[0] / "owner.json").exists(), left
    code, _, err = box.run(*args(2))  # ... the next start removes: its owner is dead
    assert code == 0, err
    said = [line for line in err.splitlines() if not line.startswith("warning: ")]
    assert len(said) == 1 and said[0].startswith("resuming from run/epoch-"), err
    weights, history = result(box.work / "run")
    whole_weights, whole_history = expected.result()
    assert history == whole_history
    assert same_weights(weights, whole_weights)
    assert not torchelastic(box.tmp)
    box.nothing_left("run")
