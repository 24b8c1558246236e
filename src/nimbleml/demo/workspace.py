"""The demo's folder: refused when an earlier run is there (unless ``--force``), and the only
place the run writes to. Temporary files, the DataLoader tuning cache, matplotlib's cache,
Chromium's profile and whatever a library writes under the home folder all go to
``DIR/tmp``, removed at the end."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import ConfigError, storage_error

# what marks a folder as a demo's own (only such a folder is replaced with --force)
MARKERS = ("demo.json", "index.html")
# the environment that decides where libraries and child processes write; HOME too: OpenVINO
# writes a telemetry id to ~/intel when optimize tries its candidates, Chromium ~/.pki
REDIRECTED = {"TMPDIR": "", "XDG_CACHE_HOME": "cache", "XDG_CONFIG_HOME": "config",
              "MPLCONFIGDIR": "matplotlib", "HOME": "home"}  # fmt: skip


def prepare(out: Path, force: bool) -> None:
    """Make ``out`` ready for a run: new or empty is taken; an earlier demo's folder needs
    ``force`` (then it is emptied), unless that run never finished (stopped by Ctrl-C or an
    error: the same command then starts over); anything else is refused."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder for the demo")
    if out.is_dir() and any(out.iterdir()):
        earlier = any((out / m).exists() for m in MARKERS)
        if not earlier:
            raise ConfigError(f"--out {out} holds other files; give a new or empty folder")
        if not force and _finished(out):
            raise ConfigError(f"{out} holds an earlier demo run; give --force to replace it")
        for child in out.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise storage_error(out, exc) from exc


def _finished(out: Path) -> bool:
    try:
        return bool(json.loads((out / "demo.json").read_text()).get("status") == "done")
    except (OSError, ValueError, AttributeError):
        return (out / "index.html").exists()


@contextmanager
def inside(out: Path) -> Iterator[Path]:
    """Run with every temporary and cache path under ``out/tmp`` (removed afterwards), for
    this process and the ones it starts; the environment and ``tempfile`` are put back."""
    tmp = out / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    saved_env = {name: os.environ.get(name) for name in REDIRECTED}
    saved_tempdir = tempfile.tempdir
    for name, sub in REDIRECTED.items():
        path = tmp / sub
        path.mkdir(parents=True, exist_ok=True)
        os.environ[name] = str(path.resolve())
    tempfile.tempdir = str(tmp.resolve())
    try:
        yield tmp
    finally:
        tempfile.tempdir = saved_tempdir
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(tmp, ignore_errors=True)
