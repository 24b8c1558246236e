"""How the worker processes of one server (``nimbleml serve --workers N``, uvicorn's
supervisor and N processes sharing the port) agree on the package each model serves.

A reload through the repository route reaches the one worker that accepted the connection;
the others kept serving the old version for good, so answers alternated between versions.
Now the supervisor owns a run folder (a temp folder, removed when it stops):

    owner.json           the supervisor's pid and start time, and how many workers it runs
    state.json           the desired state: a generation number and, for each model loaded
                         since the start, the package path and its model file's sha256
                         (path null: the model is no longer served); replaced atomically,
                         under an flock on state.lock
    workers/<pid>.json   each worker's acknowledgement: the generation it applied, the
                         versions it serves, the models it refused and why

The worker that takes a load loads the package itself first (a broken one is refused before
any other worker sees it), then publishes the new state and waits until every live worker
acknowledges it. Every worker looks at state.json's inode and mtime every 100 ms (one stat()
on its event loop, nothing on the request path) and reloads what differs from what it
serves, checking the sha256: a package that changed on disk since it was loaded is refused.
A worker registers before it reads the state, so one that starts (or is restarted after a
crash) while a load spreads either is waited for or reads the new state before it serves.

A folder whose owner is gone (the supervisor was killed with -9) is never read again: each
start makes a new one and removes those whose owner process no longer runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PREFIX = "nimbleml-serve-"
STATE = "state.json"
POLL_S = 0.1  # how often a worker stats the state file
ACK_POLL_S = 0.02  # how often the loading worker reads the acknowledgements
UNOWNED_GRACE_S = 60.0  # a folder without owner.json this old is a start that died


def _write_json(path: Path, data: Any) -> None:
    """Written whole or not at all: readers see the old file or the new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def started_at(pid: int) -> float | None:
    """When process ``pid`` started, in clock ticks since boot (/proc/<pid>/stat), None when
    it is gone: with the pid it names one process, not whichever process reuses the pid
    later. Ticks, not wall-clock seconds: psutil's create_time adds the boot time, which
    moves when the clock is stepped (a VM resumed, NTP), and a live worker then looked dead."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return _started_psutil(pid)
    if fields[0] in ("Z", "X"):  # exited, not yet reaped
        return None
    return float(fields[19])


def _started_psutil(pid: int) -> float | None:  # pragma: no cover - systems without /proc
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return float(proc.create_time())
    except psutil.Error:
        return None


def alive(pid: int, started: float | None) -> bool:
    now = started_at(pid)
    return now is not None and started is not None and abs(now - started) < 0.5


def _pid_namespace() -> str | None:
    """Processes in another pid namespace (another container sharing /tmp) cannot be seen
    from here: their folders are not ours to judge."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def sweep_stale(root: Path | None = None) -> list[Path]:
    """Remove the run folders of servers that are gone (killed with -9: nothing removed
    them); what they hold is never read."""
    removed = []
    here = _pid_namespace()
    for folder in Path(root or tempfile.gettempdir()).glob(f"{PREFIX}*"):
        owner = _read_json(folder / "owner.json")
        if owner is not None and owner.get("pidns") != here:
            continue
        if owner is None:
            try:
                fresh = time.time() - folder.stat().st_mtime < UNOWNED_GRACE_S
            except OSError:
                continue
            if fresh:  # a server starting right now, between mkdtemp and owner.json
                continue
        elif alive(int(owner.get("pid", 0)), owner.get("started")):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def make_run_dir(workers: int) -> Path:
    """A new run folder owned by this process (the supervisor, running ``workers`` workers),
    after removing stale ones."""
    sweep_stale()
    folder = Path(tempfile.mkdtemp(prefix=PREFIX))
    (folder / "workers").mkdir()
    _write_json(folder / STATE, {"generation": 0, "models": {}})
    _write_json(folder / "owner.json", {"pid": os.getpid(), "started": started_at(os.getpid()),
                                        "pidns": _pid_namespace(), "workers": workers})  # fmt: skip
    return folder


class Member:
    """One worker's side of the run folder."""

    def __init__(self, run_dir: str | Path) -> None:
        self.dir = Path(run_dir)
        self.pid = os.getpid()
        self.started = started_at(self.pid)
        self.generation = -1  # the state this worker applied; -1: none yet
        self.lock = asyncio.Lock()  # one reload at a time in this worker (route or follower)
        owner = _read_json(self.dir / "owner.json")
        if owner is None:  # the folder was removed under us: the supervisor is the parent
            owner = {"pid": os.getppid(), "started": started_at(os.getppid())}
        self.owner = (int(owner.get("pid", 0)), owner.get("started"))
        self.workers = int(owner.get("workers") or 1)  # how many the supervisor keeps running

    # -- the desired state ------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        state = _read_json(self.dir / STATE)
        if not isinstance(state, dict) or not isinstance(state.get("models"), dict):
            return {"generation": 0, "models": {}}
        return state

    def stamp(self) -> tuple[int, int] | None:
        """What changes when the state file is replaced (inode, mtime): one stat()."""
        try:
            st = os.stat(self.dir / STATE)
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns

    def models(self, spec_models: dict[str, str]) -> dict[str, str]:
        """The packages a starting worker serves: the command line's, as later loads left
        them."""
        out = dict(spec_models)
        for name, want in self.state()["models"].items():
            if want.get("path") is None:
                out.pop(name, None)
            else:
                out[name] = want["path"]
        return out

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.dir / "state.lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)  # released by the kernel if this process dies
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def publish(self, name: str, path: str | None, digest: str | None) -> int:
        """Set what ``name`` serves everywhere; returns the new generation."""
        with self._locked():
            state = self.state()
            state["generation"] = int(state["generation"]) + 1
            state["models"][name] = {"path": path, "digest": digest}
            _write_json(self.dir / STATE, state)
        return int(state["generation"])

    # -- acknowledgements -------------------------------------------------------------------
    def ack(self, generation: int, serving: dict[str, str], refused: dict[str, str]) -> None:
        self.generation = max(self.generation, generation)
        (self.dir / "workers").mkdir(parents=True, exist_ok=True)
        _write_json(self.dir / "workers" / f"{self.pid}.json",
                    {"pid": self.pid, "started": self.started, "generation": generation,
                     "serving": serving, "refused": refused})  # fmt: skip

    def register(self) -> None:
        """Before reading the state: a load published from now on waits for this worker."""
        self.ack(-1, {}, {})

    def leave(self) -> None:
        with contextlib.suppress(OSError):
            (self.dir / "workers" / f"{self.pid}.json").unlink()

    def acks(self) -> list[dict[str, Any]]:
        """The live workers' acknowledgements; those of dead workers are removed."""
        out = []
        for path in sorted((self.dir / "workers").glob("*.json")):
            ack = _read_json(path)
            if not isinstance(ack, dict):
                continue
            if ack.get("pid") != self.pid and not alive(int(ack.get("pid", 0)), ack.get("started")):
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            out.append(ack)
        return out

    def supervisor_alive(self) -> bool:
        return alive(*self.owner)

    async def wait(self, generation: int, timeout_s: float) -> tuple[list[dict], list[int], int]:
        """(acknowledgements of ``generation`` or later, pids of live workers that did not
        acknowledge it within ``timeout_s``, how many workers were still starting then).

        Fewer live workers than the supervisor runs means one is being replaced (uvicorn
        restarts a worker that died or stopped answering its health check): its successor
        registers before it reads the state, so it is waited for too. Ends early when the
        supervisor is gone."""
        deadline = time.monotonic() + timeout_s
        while True:
            acks = self.acks()
            done = [a for a in acks if a.get("generation", -1) >= generation]
            late = [int(a["pid"]) for a in acks if a.get("generation", -1) < generation]
            starting = max(0, self.workers - len(acks))
            if (not late and not starting) or time.monotonic() > deadline:
                return done, late, starting
            if not self.supervisor_alive():
                return done, late, starting
            await asyncio.sleep(ACK_POLL_S)
