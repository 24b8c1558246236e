"""Checkpoints: model, optimizer, scaler, scheduler, epoch/step, history and every RNG
state (python, numpy, torch, CUDA), written atomically (a temporary file, then a rename);
the last ``keep_last`` and the best are kept. Resuming restores all of it, so a run killed
at any point and resumed ends where an uninterrupted one does.

What a kill can leave, and how the next start mends it: a temporary file of ours
(``.epoch-0003.pt.x1y2.tmp``, ``.best.pt.….tmp``) is deleted; ``history.jsonl`` is rewritten
whole from the checkpoint's own history (a kill between the checkpoint and the history line
lost that line before); ``best.pt`` is copied again from the checkpoint resumed from when
its epoch was the best (a kill during that copy left the older best). A latest checkpoint
that cannot be read (truncated by a full disk, a copy cut short) is skipped with a warning
naming it, for the one before it."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .._deps import require
from ..errors import ConfigError, TrainingWarning, is_storage_full, storage_error, warn

NAME = re.compile(r"^epoch-(\d+)\.pt$")
BEST = "best.pt"
HISTORY = "history.jsonl"
# the temporary files _atomic makes: ".<name>.<random>.tmp" for the names above
TEMP = re.compile(r"^\.(epoch-\d+\.pt|best\.pt|history\.jsonl)\.[A-Za-z0-9_]+\.tmp$")


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


# -- before training ---------------------------------------------------------------------
def check_writable(directory: Path) -> None:
    """A StorageError before any training when checkpoints cannot be written in
    ``directory`` (read-only, not permitted): not after the first epoch. Creates nothing."""
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"checkpoint_dir {directory} is a file: give a folder")
    folder = directory
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".nimbleml-check-"):
            pass
    except OSError as exc:
        raise storage_error(directory / "epoch-0001.pt", exc) from None


def clean_temp(directory: Path) -> list[str]:
    """Delete the temporary files of ours a killed run left (only names _atomic makes)."""
    if not directory.is_dir():
        return []
    gone = [p for p in directory.iterdir() if TEMP.match(p.name)]
    for p in gone:
        p.unlink(missing_ok=True)
    return [p.name for p in gone]


def epochs(directory: Path) -> list[Path]:
    """The epoch checkpoints in ``directory``, oldest first."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if NAME.match(p.name))


def start_over(directory: Path) -> None:
    """A run that does not resume, in a folder holding an earlier run's checkpoints: those go
    (with a warning), or keep_last would keep the earlier run's later epochs over this one's."""
    old = epochs(directory)
    if not old:
        return
    warn(
        f"checkpoint_dir {directory} held checkpoints of an earlier run (up to {old[-1].name}) "
        "and this run does not resume: they are replaced (resume=True continues them)"
    )
    for p in [*old, directory / BEST, directory / HISTORY]:
        p.unlink(missing_ok=True)


# -- writing -----------------------------------------------------------------------------
def save(state: dict[str, Any], directory: Path, epoch: int, keep_last: int, best: bool) -> Path:
    """Write epoch-N.pt atomically, then best.pt (a copy) when ``best``, then history.jsonl
    whole from ``state["history"]``; drop all but the last ``keep_last`` epoch files. A full
    or read-only disk is a StorageError naming the file. Returns the epoch file."""
    torch = require("torch", "nimbleml.train")
    path = directory / f"epoch-{epoch:04d}.pt"
    target = path
    try:
        directory.mkdir(parents=True, exist_ok=True)
        _atomic(lambda f: torch.save(state, f), path)
        if best:
            target = directory / BEST
            copy_best(path)
        target = directory / HISTORY
        write_history(directory, state["history"])
    except Exception as exc:
        if not (isinstance(exc, OSError) or is_storage_full(exc)):
            raise
        raise storage_error(target, exc) from exc
    for old in epochs(directory)[:-keep_last]:
        old.unlink(missing_ok=True)
    return path


def mend(directory: Path, path: Path, history: list[dict[str, Any]]) -> None:
    """After resuming from ``path``: history.jsonl from its history (a kill may have cut
    the last line), and best.pt from it again when its epoch was the best (a kill during
    that copy left the older one)."""
    target = directory / HISTORY
    try:
        write_history(directory, history)
        if history and history[-1].get("best"):
            target = directory / BEST
            copy_best(path)
    except Exception as exc:
        if not (isinstance(exc, OSError) or is_storage_full(exc)):
            raise
        raise storage_error(target, exc) from exc


def copy_best(path: Path) -> None:
    """best.pt as a copy of ``path`` (a file of its own: a link would share its fate)."""

    def copy(fh: Any) -> None:
        with open(path, "rb") as src:
            shutil.copyfileobj(src, fh, 1 << 20)

    _atomic(copy, path.parent / BEST)


def write_history(directory: Path, history: list[dict[str, Any]]) -> None:
    """history.jsonl, one line per epoch, rewritten whole (atomically) from the history
    the checkpoint carries: never a line short after a kill, never a line twice."""
    text = "".join(json.dumps(record) + "\n" for record in history)
    _atomic(lambda f: f.write(text.encode()), directory / HISTORY)


def _atomic(write: Any, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the run's files from the user's group
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- reading -----------------------------------------------------------------------------
def latest(directory: Path) -> Path | None:
    found = epochs(directory)
    return found[-1] if found else None


def load(path: Path) -> dict[str, Any]:
    torch = require("torch", "nimbleml.train")
    try:  # our own file: RNG states are numpy/python objects, not only tensors
        return dict(torch.load(path, map_location="cpu", weights_only=False))
    except Exception as exc:
        raise ConfigError(f"checkpoint {path} cannot be read ({_why(exc, path)})") from None


def load_latest(directory: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest epoch checkpoint that reads whole, with its contents; each newer one that
    does not is named in a warning. None when there is none; a ConfigError when there are
    checkpoints and none of them reads."""
    torch = require("torch", "nimbleml.train")
    bad: list[tuple[Path, str]] = []
    for path in reversed(epochs(directory)):
        try:
            saved = dict(torch.load(path, map_location="cpu", weights_only=False))
            if not {"model", "epoch", "history"} <= set(saved):
                raise ValueError("not a nimbleml training checkpoint")
        except Exception as exc:
            bad.append((path, _why(exc, path)))
            continue
        for skipped, why in bad:
            warn(
                f"checkpoint {skipped} cannot be read ({why}), so training resumes from "
                f"{path.name} (epoch {saved['epoch']}) and trains the epochs after it again",
                TrainingWarning,
            )
        return path, saved
    if bad:
        listed = "; ".join(f"{p.name} ({why})" for p, why in bad)
        raise ConfigError(
            f"no readable checkpoint in {directory} to resume from: {listed}; delete those "
            "files to start over, or give another checkpoint_dir"
        )
    return None


ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format is a zip file: its index is at the end
CUT_SHORT = "probably from a process killed while writing it, or a disk that filled up"


def _why(exc: BaseException, path: Path | None = None) -> str:
    """The reason a file did not load, in words: a checkpoint cut short makes torch say
    '[Errno 22] Invalid argument' or 'failed finding central directory', which names
    neither the file's state nor the cause, so the file itself is looked at first."""
    if path is not None:
        said = _cut_short(path)
        if said:
            return said
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0].strip()
    return re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", text) or type(exc).__name__


def _cut_short(path: Path) -> str | None:
    """'the file is cut short ...' when ``path`` begins as torch.save's zip does and its end
    (the zip's index) is missing, or is empty; None otherwise (or when it cannot be read)."""
    import zipfile

    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(len(ZIP_MAGIC))
        whole = zipfile.is_zipfile(path)
    except OSError:
        return None
    if size == 0:
        return f"the file is empty: not a complete checkpoint, {CUT_SHORT}"
    if ZIP_MAGIC.startswith(head) and not whole:
        return (f"the file is cut short at {size:,} bytes, its end missing: not a complete "
                f"checkpoint, {CUT_SHORT}")  # fmt: skip
    return None


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
