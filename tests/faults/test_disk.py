"""Every writer on a full disk and in a read-only folder (a small tmpfs, filled to the last
byte, or one mounted read-only: root passes permission bits, so chmod 0o555 would test
nothing here; skipped with the reason when not root): exit 2, one ``error:`` line saying
the disk is full or read-only and where, no traceback, and nothing half-written left on
that disk for a rerun to trust, nor temporary files beside it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from .conftest import fill, one_error, tmpfs, tree

MODELS = """
import torch

def build():
    return torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))

def score(params):
    return (params["x"] - 0.3) ** 2
"""
TUNE = """study: {name: s, n_trials: 2, directions: [minimize], pruner: none}
space: {x: {float: [0, 1]}}
objective: fault_disk:score
"""


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, packages) -> Path:
    """What every writer reads: data, a model file, a package, a monitor store, a study."""
    from sklearn.datasets import load_digits

    from nimbleml.monitor import ModelMonitor

    X, y = load_digits(return_X_y=True)
    X = (X / 16).astype(np.float32)
    folder = tmp_path_factory.mktemp("disk-inputs")
    np.savez(folder / "train.npz", X=X[:300], y=y[:300])
    np.savez(folder / "val.npz", X=X[1500:1600], y=y[1500:1600])
    header = ",".join(f"p{i}" for i in range(64))
    rows = "\n".join(",".join(f"{v:g}" for v in row) for row in X[:200])
    (folder / "rows.csv").write_text(header + "\n" + rows + "\n")
    (folder / "fault_disk.py").write_text(MODELS)
    (folder / "tune.yaml").write_text(TUNE)
    m = ModelMonitor(store=f"sqlite:///{folder / 'm.db'}", background=False,
                     resources_interval_s=None)  # fmt: skip
    for i in range(100):
        m.record(float(1 + i % 5), prediction_id=i)
    m.flush()
    m.close()
    (folder / "m.nimble").symlink_to(packages[0])
    return folder


# the writer, its arguments with OUT for the path it writes (on the small disk), and what
# it writes there (the name its error line is expected to hold)
WRITERS = {
    "compress": ["compress", "IN/m.nimble/model.onnx", "--quantize", "none",
                 "--val", "IN/val.npz", "-o", "OUT/c.nimble", "-q"],
    "predict": ["predict", "IN/m.nimble", "--data", "IN/rows.csv", "--out", "OUT/p.csv", "-q"],
    "train": ["train", "--model", "fault_disk:build", "--data", "IN/train.npz", "--epochs", "1",
              "--precision", "fp32", "--device", "cpu", "--checkpoint-dir", "OUT/run", "-q"],
    "tune": ["tune", "--config", "IN/tune.yaml", "--storage", "OUT/s.journal"],
    "bench": ["bench", "IN/m.nimble", "--data", "IN/val.npz", "--batch-size", "1",
              "--time-budget", "0.05", "--json", "OUT/b.json", "-q"],
    "report": ["report", "--monitor", "IN/m.db", "-o", "OUT/report"],
    "deploy": ["deploy", "IN/m.nimble", "--target", "docker", "-o", "OUT/deploy"],
    "nas": ["nas", "--data", "IN/train.npz", "--val", "IN/val.npz", "--n-trials", "1",
            "--epochs", "1", "-o", "OUT/front"],
}  # fmt: skip


def command(writer: str, inputs: Path, out: Path) -> list[str]:
    return [a.replace("IN/", f"{inputs}/").replace("OUT/", f"{out}/") for a in WRITERS[writer]]


def written(writer: str, out: Path) -> Path:
    return out / next(a for a in WRITERS[writer] if a.startswith("OUT/"))[4:]


def bug(reason: str) -> pytest.MarkDecorator:
    return pytest.mark.xfail(strict=True, reason=reason)


# the writers a bug still stops (none now: tune and nas were fixed, issue 22 §7)
FULL_BUGS: dict[str, pytest.MarkDecorator] = {}
RO_BUGS: dict[str, pytest.MarkDecorator] = {}


def each(bugs: dict[str, pytest.MarkDecorator]) -> list:
    return [pytest.param(w, marks=bugs[w]) if w in bugs else w for w in WRITERS]


def files(folder: Path) -> set[str]:
    return {p for p in tree(folder) if (folder / p).is_file()}


@pytest.mark.parametrize("writer", each(FULL_BUGS))
def test_a_full_disk_is_one_line_and_leaves_nothing(box, faults, inputs, writer):
    box.env["PYTHONPATH"] = f"{inputs}:{box.env['PYTHONPATH']}"
    with tmpfs(box.root / "small", "size=256k") as small:
        fill(small)
        box.snapshot()
        faults.inject(f"full disk under {writer}")
        code, out, err = box.run(*command(writer, inputs, small))
        assert code == 2, (out, err)
        line = one_error(err)
        assert line.startswith(f"error: the disk is full: writing {small}/"), line
        assert f"free in {small}" in line, line
        assert files(small) == {".filler"}  # nothing half-written, no temp file
    box.nothing_left()


@pytest.mark.parametrize("writer", each(RO_BUGS))
def test_a_read_only_folder_is_one_line_naming_it(box, faults, inputs, writer):
    box.env["PYTHONPATH"] = f"{inputs}:{box.env['PYTHONPATH']}"
    with tmpfs(box.root / "ro", "ro,size=64k") as ro:
        box.snapshot()
        faults.inject(f"read-only folder under {writer}")
        code, out, err = box.run(*command(writer, inputs, ro))
        assert code == 2, (out, err)
        line = one_error(err)
        assert "read-only" in line.lower() and str(ro) in line, line
    box.nothing_left()
