"""Stopping the processes nimbleml started: SIGTERM, a grace period, then SIGKILL."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any


def running(p: Any) -> bool:
    """A psutil.Process still running (a zombie waiting to be reaped is not)."""
    import psutil

    try:
        return bool(p.is_running() and p.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def stop(procs: Iterable[Any], grace_s: float = 10.0) -> None:
    """SIGTERM each running psutil.Process, then SIGKILL those still alive after ``grace_s``."""
    import psutil

    alive = [p for p in procs if running(p)]
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(alive, timeout=grace_s)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
