"""`nimbleml predict` killed with SIGKILL at a seeded random point, then the same command:
the output is byte for byte the uninterrupted run's, the finished parts kept, nothing left
beside it; a part file cut short (as a disk that lost a file's tail leaves it) is done
again, not joined into the output."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nimbleml.batch import _finished

from .conftest import Box, kill_when

pytest.importorskip("pyarrow")

CHUNK = 400


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, packages) -> tuple[Path, Path]:
    """A package, and 7,188 rows to predict (digits four times over, with an id column)."""
    from sklearn.datasets import load_digits

    X, _ = load_digits(return_X_y=True)
    X = (X / 16).astype(np.float32)
    folder = tmp_path_factory.mktemp("predict-inputs")
    rows = pd.DataFrame(np.concatenate([X] * 4), columns=[f"p{i}" for i in range(64)])
    rows.insert(0, "id", np.arange(len(rows)) * 3 + 1)
    rows.to_csv(folder / "in.csv", index=False)
    return packages[0], folder / "in.csv"


def args(inputs: tuple[Path, Path], out: str = "out.csv") -> list[str]:
    return ["predict", str(inputs[0]), "--data", str(inputs[1]), "--out", out, "--id-column",
            "id", "--chunk-rows", str(CHUNK), "--batch-size", "2", "-q"]  # fmt: skip


@pytest.fixture(scope="module")
def whole(inputs, tmp_path_factory) -> bytes:
    b = Box(tmp_path_factory.mktemp("predict-whole"))
    code, _, err = b.run(*args(inputs))
    assert code == 0, err
    b.no_process_left()
    return (b.work / "out.csv").read_bytes()


def parts(box: Box) -> list[Path]:
    return sorted((box.work / "out.csv.parts").glob("part-*.csv"))


@pytest.mark.parametrize("seed", [41, 42])
def test_sigkill_then_the_same_command_writes_the_same_bytes(box, faults, inputs, whole, seed):
    rng = random.Random(seed)
    box.snapshot()
    k = rng.randint(1, 6)
    proc = box.start(*args(inputs))
    kill_when(proc, lambda: len(parts(box)) >= k, rng, 0.1)
    faults.inject(f"SIGKILL predict after part {k} (seed {seed})")
    box.no_process_left()
    kept = len(_finished(box.work / "out.csv.parts"))  # a part the kill left unrecorded is redone
    assert kept >= k - 1 and not (box.work / "out.csv").exists()
    code, out, err = box.run(*args(inputs))
    assert code == 0, err
    assert f"{kept} chunk(s) kept from an earlier run" in out, out
    assert err == "", err
    assert (box.work / "out.csv").read_bytes() == whole
    box.nothing_left("out.csv")


@pytest.mark.parametrize("seed", [43])
def test_a_part_cut_short_is_done_again(box, faults, inputs, whole, seed):
    rng = random.Random(seed)
    box.snapshot()
    proc = box.start(*args(inputs))
    kill_when(proc, lambda: len(parts(box)) >= 4, rng, 0.0)
    faults.inject("SIGKILL predict after part 4")
    box.no_process_left()
    victim = rng.choice(parts(box))
    data = victim.read_bytes()
    victim.write_bytes(data[: rng.randint(1, len(data) - 1)])
    faults.inject(f"truncated part file {victim.name}")
    code, _, err = box.run(*args(inputs))
    assert code == 0 and err == "", err
    assert (box.work / "out.csv").read_bytes() == whole
    box.nothing_left("out.csv")
