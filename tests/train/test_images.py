"""An image folder as training data (issue 12): `--data FOLDER` reads root/<class>/<image>
with torchvision's ImageFolder when it is installed, else with nimbleml's own (Pillow): the
same class order and tensors, resized by --image-size, and a CNN trains on it end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from nimbleml.cli import app
from nimbleml.errors import DataError
from nimbleml.train.images import ImageFolder

CNN = """
import torch

def build(num_classes=3):
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(4),
        torch.nn.Flatten(), torch.nn.Linear(8 * 16, num_classes))
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Digits 0, 1 and 2 as 8x8 PNGs (two grey, one RGB), and one class as JPEG."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    root = tmp_path_factory.mktemp("images")
    for label, name in enumerate(["zero", "one", "two"]):
        (root / "images" / name).mkdir(parents=True)
        for k, x in enumerate(X[y == label][:30]):
            img = Image.fromarray((x.reshape(8, 8) * 15).astype(np.uint8))
            img = img.convert("RGB") if k % 2 else img
            img.save(root / "images" / name / f"{k:03d}{'.jpg' if label == 2 else '.png'}")
    (root / "images" / "two" / "notes.txt").write_text("not an image")
    (root / "cnn_models.py").write_text(CNN)
    return root


def test_classes_order_and_tensors(folder):
    data = ImageFolder(folder / "images")
    assert data.classes == ["one", "two", "zero"]  # sorted, as torchvision sorts them
    assert len(data) == 90 and sorted(set(data.targets)) == [0, 1, 2]
    x, label = data[0]
    assert x.dtype == torch.float32 and x.shape == (3, 8, 8) and label == 0
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0 and float(x.max()) > 0.5
    with Image.open(data.samples[0][0]) as img:
        first = img.convert("RGB")
    assert torch.equal(x, torch.from_numpy(np.asarray(first, np.float32) / 255).permute(2, 0, 1))
    assert ImageFolder(folder / "images", image_size=16)[5][0].shape == (3, 16, 16)


def test_bad_folders_name_the_problem(folder, tmp_path):
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no images in class sub-folders"):
        ImageFolder(tmp_path / "empty")
    (tmp_path / "mixed" / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "mixed" / "a" / "small.png")
    Image.new("RGB", (9, 8)).save(tmp_path / "mixed" / "a" / "wide.png")
    (tmp_path / "mixed" / "a" / "zz.png").write_bytes(b"not a png")
    mixed = ImageFolder(tmp_path / "mixed")
    mixed[0]
    with pytest.raises(DataError, match="9x8, other images are 8x8: give --image-size N"):
        mixed[1]
    with pytest.raises(DataError, match="zz.png: not a readable image"):
        mixed[2]


def test_train_on_an_image_folder_from_the_command_line(folder, monkeypatch):
    monkeypatch.chdir(folder)
    (folder / "run.yaml").write_text("training:\n  dataloader: {}\n")  # no tuning: not timed
    res = CliRunner().invoke(app, ["train", "--config", "run.yaml", "--model", "cnn_models:build",
                                   "--data", "images", "--val", "images", "--image-size", "12",
                                   "--epochs", "4", "--batch-size", "16", "--lr", "0.01",
                                   "--device", "cpu", "-q", "--checkpoint-dir", "run"])  # fmt: skip
    assert res.exit_code == 0, res.output

    lines = (folder / "run" / "history.jsonl").read_text().splitlines()
    history = [json.loads(line) for line in lines]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_metric"] > 0.6  # three digits apart: well above 1/3 by chance
