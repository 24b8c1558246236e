"""Objectives importable by worker processes (spawned: they import them by name)."""

from __future__ import annotations

import os
import time
from pathlib import Path


def parabola(params):
    time.sleep(0.05)  # long enough that two workers overlap
    return (params["x"] - 2.0) ** 2


def slow_once(params):
    """The first call anywhere (per marker file) hangs until killed; later ones answer."""
    marker = Path(os.environ["NIMBLE_TUNE_MARKER"])
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        time.sleep(600)
    return params["x"]


def parabola_together(params):
    """parabola, but each process's first call waits (up to 60 s) until two processes have
    made one: both workers of a two-worker study then surely run trials."""
    folder = Path(os.environ["NIMBLE_TUNE_RENDEZVOUS"])
    mine = folder / f"{os.getpid()}.pid"
    if not mine.exists():
        mine.write_text("")
        deadline = time.monotonic() + 60
        while len(list(folder.glob("*.pid"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    return parabola(params)
