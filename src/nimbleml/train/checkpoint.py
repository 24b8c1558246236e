"""Checkpoints: model, optimizer, scaler, scheduler, epoch/step, history and every RNG
state (python, numpy, torch, CUDA), written atomically (a temporary file, then a rename);
the last ``keep_last`` and the best are kept. Resuming restores all of it, so a run killed
at any point and resumed ends where an uninterrupted one does."""

from __future__ import annotations

import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .._deps import require
from ..errors import ConfigError

NAME = re.compile(r"^epoch-(\d+)\.pt$")
BEST = "best.pt"


def rng_state() -> dict[str, Any]:
    torch = require("torch", "nimbleml.train")
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch = require("torch", "nimbleml.train")
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(state: dict[str, Any], directory: Path, epoch: int, keep_last: int, best: bool) -> Path:
    """Write epoch-N.pt atomically (and best.pt when ``best``); drop all but the last
    ``keep_last`` epoch files. Returns the epoch file."""
    torch = require("torch", "nimbleml.train")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"epoch-{epoch:04d}.pt"
    _atomic(lambda f: torch.save(state, f), path)
    if best:
        _atomic(lambda f: torch.save(state, f), directory / BEST)
    epochs = sorted(p for p in directory.iterdir() if NAME.match(p.name))
    for old in epochs[:-keep_last]:
        old.unlink(missing_ok=True)
    return path


def _atomic(write: Any, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def latest(directory: Path) -> Path | None:
    if not directory.is_dir():
        return None
    epochs = sorted(p for p in directory.iterdir() if NAME.match(p.name))
    return epochs[-1] if epochs else None


def load(path: Path) -> dict[str, Any]:
    torch = require("torch", "nimbleml.train")
    try:  # our own file: RNG states are numpy/python objects, not only tensors
        return dict(torch.load(path, map_location="cpu", weights_only=False))
    except Exception as exc:
        raise ConfigError(f"checkpoint {path} cannot be read ({str(exc)[:200]})") from None


def check_compatible(model: Any, state: dict[str, Any], path: Path) -> None:
    """ConfigError naming the keys that differ when ``state`` was saved from another model."""
    mine = {k: tuple(v.shape) for k, v in model.state_dict().items() if hasattr(v, "shape")}
    theirs = {k: tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}
    missing = sorted(set(mine) - set(theirs))
    unexpected = sorted(set(theirs) - set(mine))
    shapes = sorted(k for k in set(mine) & set(theirs) if mine[k] != theirs[k])
    if not (missing or unexpected or shapes):
        return

    def few(keys: list[str]) -> str:
        return ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")

    parts = []
    if missing:
        parts.append(f"missing {few(missing)}")
    if unexpected:
        parts.append(f"unexpected {few(unexpected)}")
    if shapes:
        parts.append(
            "different shapes for " + few([f"{k} {theirs[k]} vs {mine[k]}" for k in shapes])
        )
    raise ConfigError(
        f"checkpoint {path} was saved from another model: {'; '.join(parts)}; resume with the "
        "model it was trained from, or start a new checkpoint_dir"
    )
