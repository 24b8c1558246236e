"""The run folder several workers share (serve/fleet.py), with real processes and files."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

from nimbleml.serve import fleet


def test_a_stale_run_folder_is_removed_and_a_live_one_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(fleet.tempfile, "tempdir", str(tmp_path))
    mine = fleet.make_run_dir(1)  # owned by this process: live
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = tmp_path / f"{fleet.PREFIX}dead"
        (dead / "workers").mkdir(parents=True)
        owner = {"pid": child.pid, "started": fleet.started_at(child.pid),
                 "pidns": os.readlink("/proc/self/ns/pid")}  # fmt: skip
        (dead / "owner.json").write_text(json.dumps(owner))
        (dead / "state.json").write_text('{"generation": 3, "models": {"m": {"path": "x"}}}')
        elsewhere = tmp_path / f"{fleet.PREFIX}other-container"  # another pid namespace
        elsewhere.mkdir()
        (elsewhere / "owner.json").write_text(json.dumps({**owner, "pid": 1, "pidns": "pid:[1]"}))
        starting = tmp_path / f"{fleet.PREFIX}starting"  # between mkdtemp and owner.json
        starting.mkdir()
        abandoned = tmp_path / f"{fleet.PREFIX}abandoned"  # a start that died there
        abandoned.mkdir()
        old = time.time() - 2 * fleet.UNOWNED_GRACE_S
        os.utime(abandoned, (old, old))
        assert fleet.sweep_stale() == [abandoned]  # the dead folder's owner still runs
    finally:
        child.kill()
        child.wait()
    assert fleet.sweep_stale() == [dead]
    assert mine.exists() and elsewhere.exists() and starting.exists()


def test_a_reused_pid_is_not_the_owner(tmp_path):
    """A pid names a process only with its start time: after a reboot or a wrap-around the
    same number is another process."""
    assert fleet.alive(os.getpid(), fleet.started_at(os.getpid()))
    assert not fleet.alive(os.getpid(), fleet.started_at(os.getpid()) - 3600)
    assert not fleet.alive(os.getpid(), None)


def test_publish_and_acknowledge(tmp_path, monkeypatch):
    monkeypatch.setattr(fleet.tempfile, "tempdir", str(tmp_path))
    member = fleet.Member(fleet.make_run_dir(1))
    member.register()
    assert member.models({"a": "a.nimble", "b": "b.nimble"}) == {"a": "a.nimble", "b": "b.nimble"}
    stamp = member.stamp()
    assert member.publish("a", "a2.nimble", "d1") == 1
    assert member.stamp() != stamp
    assert member.publish("b", None, None) == 2  # b is no longer served
    assert member.models({"a": "a.nimble", "b": "b.nimble"}) == {"a": "a2.nimble"}
    (ack,) = member.acks()
    assert ack["pid"] == os.getpid() and ack["generation"] == -1
    member.ack(2, {"a": "v2"}, {})
    assert member.acks()[0]["generation"] == 2
    member.leave()
    assert member.acks() == []


def test_a_load_waits_for_a_worker_being_replaced(tmp_path, monkeypatch):
    """uvicorn replaces a worker that died or missed its health check: until the successor
    registers the folder holds fewer workers than the supervisor runs, and a load counting
    only the live ones answered "workers: 1" of 2. It waits for the successor now."""
    monkeypatch.setattr(fleet.tempfile, "tempdir", str(tmp_path))
    member = fleet.Member(fleet.make_run_dir(2))
    assert member.workers == 2
    member.register()
    generation = member.publish("a", "a2.nimble", "d1")
    member.ack(generation, {"a": "v2"}, {})
    done, late, starting = asyncio.run(member.wait(generation, 0.2))
    assert (len(done), late, starting) == (1, [], 1)  # timed out: one still starting
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:  # the successor registers, then acknowledges
        ack = {"pid": child.pid, "started": fleet.started_at(child.pid), "generation": -1,
               "serving": {}, "refused": {}}  # fmt: skip
        (member.dir / "workers" / f"{child.pid}.json").write_text(json.dumps(ack))

        async def successor_acks() -> None:
            await asyncio.sleep(0.3)
            path = member.dir / "workers" / f"{child.pid}.json"
            path.write_text(json.dumps({**ack, "generation": generation}))

        async def both() -> tuple:
            waited = asyncio.create_task(member.wait(generation, 30))
            await successor_acks()
            return await waited

        done, late, starting = asyncio.run(both())
        assert (len(done), late, starting) == (2, [], 0)
    finally:
        child.kill()
        child.wait()
