"""An image folder (one sub-folder per class) as a torch Dataset read with Pillow: what
torchvision's ``ImageFolder`` with ``Resize`` and ``ToTensor`` gives (classes in sorted order,
float32 CxHxW in [0, 1], RGB), for machines without torchvision."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .._deps import require
from ..errors import DataError

torch = require("torch", "nimbleml.train")
Dataset: Any = torch.utils.data.Dataset

EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class ImageFolder(Dataset):
    """``root/<class>/<image>``; ``image_size`` resizes every image to N x N (bilinear, as
    torchvision's Resize); without it every image must have the first one's size."""

    def __init__(self, root: str | Path, image_size: int | None = None) -> None:
        root = Path(root)
        self.classes = sorted(d.name for d in os.scandir(root) if d.is_dir())
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.samples = [
            (str(p), i)
            for c, i in self.class_to_idx.items()
            for p in sorted((root / c).rglob("*"))
            if p.suffix.lower() in EXTENSIONS and p.is_file()
        ]  # fmt: skip
        if not self.samples:
            raise DataError(
                f"{root}: no images in class sub-folders (an image folder is "
                f"root/<class>/<image>, with images ending in {', '.join(EXTENSIONS)})"
            )
        self.targets = [i for _, i in self.samples]
        self.image_size = image_size
        self._shape: tuple[int, ...] | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        require("PIL", "image folders")
        from PIL import Image, UnidentifiedImageError

        path, label = self.samples[index]
        try:
            with Image.open(path) as img:
                rgb = img.convert("RGB")
        except (OSError, UnidentifiedImageError) as exc:
            raise DataError(f"{path}: not a readable image ({exc})") from None
        if self.image_size:
            rgb = rgb.resize((self.image_size, self.image_size), Image.Resampling.BILINEAR)
        x = torch.from_numpy(np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1) / 255.0)
        if self._shape is None:
            self._shape = tuple(x.shape)
        elif tuple(x.shape) != self._shape and not self.image_size:
            raise DataError(
                f"{path} is {x.shape[2]}x{x.shape[1]}, other images are "
                f"{self._shape[2]}x{self._shape[1]}: give --image-size N to resize them all"
            )
        return x, label
