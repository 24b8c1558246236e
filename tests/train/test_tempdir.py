"""The launcher's temp folder names its owner; the next start removes the ones whose owner a
SIGKILL ended, and nothing it cannot judge (tests/faults/test_train.py kills a real
`nimbleml train --nproc 2` through its process group and runs it again)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from nimbleml.train import tempdir

pytestmark = pytest.mark.skipif(
    tempdir.identity(os.getpid()) is None, reason="judging an owner needs Linux's /proc"
)


def folder(parent: Path, name: str, owner: dict | str | None) -> Path:
    d = parent / f"{tempdir.PREFIX}{name}"
    d.mkdir()
    (d / "rank-0.log").write_text("epoch 1/5 ...\n")
    if owner is not None:
        (d / tempdir.OWNER).write_text(owner if isinstance(owner, str) else json.dumps(owner))
    return d


def test_a_dead_owners_folder_goes_and_nothing_it_cannot_judge(tmp_path):
    me = tempdir.identity(os.getpid())
    assert me is not None and me["start"] == tempdir.start_ticks(os.getpid())
    proc = subprocess.Popen(["sleep", "60"])  # a real owner, then killed as SIGKILL would
    try:
        killed = tempdir.identity(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    assert killed is not None and tempdir.start_ticks(proc.pid) is None
    dead = folder(tmp_path, "dead", killed)
    reused = folder(tmp_path, "reused", {**me, "start": me["start"] - 1})  # its pid, now ours
    kept = [
        folder(tmp_path, "live", me),  # a run going on beside this one
        folder(tmp_path, "ns", {**killed, "pidns": "pid:[1]"}),  # another pid namespace
        folder(tmp_path, "host", {**killed, "host": "elsewhere"}),  # a shared TMPDIR
        folder(tmp_path, "boot", {**killed, "boot": "another-boot"}),
        folder(tmp_path, "new", None),  # being made this instant, or an older nimbleml's
        folder(tmp_path, "half", '{"pid": 12'),
    ]
    other = tmp_path / "not-ours-train-x"
    other.mkdir()
    assert sorted(tempdir.remove_stale(str(tmp_path))) == sorted([dead, reused])
    assert not dead.exists() and not reused.exists()
    assert all(d.exists() for d in [*kept, other])


def test_the_status_folder_names_its_owner_and_removes_the_stale(tmp_path, monkeypatch):
    monkeypatch.setattr(tempdir.tempfile, "tempdir", str(tmp_path))  # what TMPDIR sets
    proc = subprocess.Popen(["sleep", "60"])
    try:
        stale = folder(tmp_path, "stale", tempdir.identity(proc.pid))
    finally:
        proc.kill()
        proc.wait()
    with tempdir.status_folder() as status:
        assert not stale.exists()
        owner = json.loads((Path(status) / tempdir.OWNER).read_text())
        assert owner == tempdir.identity(os.getpid())
        assert Path(status).parent == tmp_path
        assert [p.name for p in Path(status).iterdir()] == [tempdir.OWNER]
    assert not list(tmp_path.iterdir())
