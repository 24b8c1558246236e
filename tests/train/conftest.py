"""One OpenMP thread for every training process these tests start.

On this shared 2-core machine two OpenMP threads wait on each other at every parallel region:
three epochs of a 64-32-10 MLP on digits took 1.75 s in-process with two threads, 0.42 s
with one; a 5-epoch run of `nimbleml train` as a process took ~15 s without
OMP_NUM_THREADS=1, 0.1 s with it. `--nproc N` sets its processes' threads itself (cores // N).
The thread count is set back after each test: `nimbleml train --optimize` run in this process
(CliRunner) sets it to the machine's cores, as it should for timing the package.
"""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def one_omp_thread(monkeypatch):
    # the processes a test starts only: resizing this process's OpenMP pool back and forth
    # between tests (torch.set_num_threads) crashed xdist workers in the full suite
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
