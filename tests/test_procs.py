"""nimbleml._procs.stop on real processes: one that exits on SIGTERM, one that ignores it."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil

from nimbleml._procs import running, stop

from ._signals import die_with_parent

OBEYS = "import time; print('up', flush=True); time.sleep(60)"
IGNORES = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('up', flush=True); time.sleep(60)"
)


def _start(code: str) -> tuple[subprocess.Popen[str], psutil.Process]:
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            preexec_fn=die_with_parent)  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
    proc.stdout.close()
    return proc, psutil.Process(proc.pid)


def test_stop_terminates_then_kills_what_ignores_sigterm():
    (a, pa), (b, pb) = _start(OBEYS), _start(IGNORES)
    t0 = time.monotonic()
    stop([pa, pb], grace_s=1.0)
    took = time.monotonic() - t0
    psutil.wait_procs([pa, pb], timeout=5)  # reaps them (Popen.wait could not say how)
    assert pa.returncode == -15  # SIGTERM was enough
    assert pb.returncode == -9  # SIGKILL, after the grace period
    assert took >= 1.0
    assert not running(pa) and not running(pb)
    a.wait(), b.wait()  # Popen's own bookkeeping (the exit status went to psutil)


def test_stop_skips_processes_already_gone():
    a, pa = _start(OBEYS)
    a.kill()
    a.wait()
    assert not running(pa)
    t0 = time.monotonic()
    stop([pa], grace_s=5.0)
    assert time.monotonic() - t0 < 2.0  # nothing to wait for
