"""An epoch left early (the user's Dataset raising) ends its DataLoader's worker processes at
once. Left alive and registered, torch's SIGCHLD handler later raised "DataLoader worker
exited unexpectedly" into whatever this process ran next when any child process ended (it
crashed pytest workers in the full suite)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import nimbleml
from nimbleml.errors import UserCodeError


class Breaks(Dataset):
    def __len__(self) -> int:
        return 512

    def __getitem__(self, i: int):
        if i >= 200:
            raise ValueError(f"row {i} is broken")
        return torch.randn(8), torch.tensor(i % 2)


@pytest.mark.own_process  # forks DataLoader workers: a fresh interpreter (tests/conftest.py)
def test_an_epoch_left_early_ends_its_workers_and_later_children_are_harmless():
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    loader = DataLoader(Breaks(), batch_size=32, num_workers=2, persistent_workers=True)
    model = torch.nn.Sequential(torch.nn.Linear(8, 2))
    with pytest.raises(UserCodeError, match="training batch 7 of epoch 1"):
        nimbleml.train(model, loader, epochs=1, precision="fp32")
    deadline = time.monotonic() + 10
    while {p.pid for p in me.children(recursive=True)} - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not {p.pid for p in me.children(recursive=True)} - before  # the workers ended
    for _ in range(3):  # children of this process dying by a signal: nothing raised here
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        child.send_signal(signal.SIGKILL)
        child.wait()
        time.sleep(0.05)
