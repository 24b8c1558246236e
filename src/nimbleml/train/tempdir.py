"""The launcher's temporary folder, ``$TMPDIR/nimbleml-train-XXXX`` (each rank's stderr and
exit code, torchrun's record of a failure and its log folder), and the ones killed runs left.

A ``nimbleml train --nproc N`` killed with SIGKILL (``kill -9`` of its process group, the
OOM killer) cannot remove its folder. So the folder records its owner in ``owner.json``:
the pid, the process's start time in clock ticks since boot (``/proc/<pid>/stat``, field
22: exact, unlike a start time in seconds derived from the boot time, which can shift by a
second), the pid namespace, the boot id and the host name. The next ``--nproc`` start
removes every such folder whose owner is dead: the same host, boot and pid namespace as
this process, and no process with that pid and that start time (the pid gone, or taken by
another process since). Left alone: a folder whose owner runs (another run at the same
time), one without a readable owner file (being made this instant, or an older nimbleml's),
one of another user, and one from another host, boot or pid namespace (a TMPDIR shared
with a container or over the network), where a pid says nothing this process can check.
Judging needs Linux's ``/proc``; elsewhere nothing is removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PREFIX = "nimbleml-train-"
OWNER = "owner.json"


def start_ticks(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks since boot; None when there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after
    # its last ')'; starttime is field 22, the 20th after comm
    try:
        return int(stat[stat.rindex(")") + 2 :].split()[19])
    except (ValueError, IndexError):
        return None


def identity(pid: int) -> dict[str, Any] | None:
    """What names process ``pid`` on this machine for as long as it lives: None where it
    cannot be read (no /proc, no such process)."""
    ticks = start_ticks(pid)
    if ticks is None:
        return None
    try:
        pidns = os.readlink("/proc/self/ns/pid")
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    return {"pid": pid, "start": ticks, "pidns": pidns, "boot": boot, "host": socket.gethostname()}


def owner_dead(folder: Path, me: dict[str, Any] | None = None) -> bool:
    """True only when ``folder``'s owner is certainly dead (see the module's note)."""
    me = identity(os.getpid()) if me is None else me
    if me is None:
        return False
    try:
        owner = json.loads((folder / OWNER).read_text())
        pid, start = int(owner["pid"]), int(owner["start"])
    except (OSError, ValueError, KeyError, TypeError):
        return False  # no owner file: being made now, or not ours to judge
    if any(owner.get(key) != me[key] for key in ("pidns", "boot", "host")):
        return False  # another pid namespace, boot or host: its pid means nothing here
    return start_ticks(pid) != start


def remove_stale(parent: str | None = None) -> list[Path]:
    """Remove the folders killed runs left in ``parent`` (the temp folder); returns them."""
    me = identity(os.getpid())
    if me is None:
        return []
    gone = []
    for folder in Path(parent or tempfile.gettempdir()).glob(PREFIX + "*"):
        with contextlib.suppress(OSError):
            if folder.is_symlink() or not folder.is_dir() or folder.stat().st_uid != os.getuid():
                continue
            if owner_dead(folder, me):
                shutil.rmtree(folder, ignore_errors=True)
                gone.append(folder)
    return gone


@contextlib.contextmanager
def status_folder() -> Iterator[str]:
    """A new ``nimbleml-train-XXXX`` folder recording this process as its owner, removed at
    the end; the folders killed runs left are removed first."""
    remove_stale()
    folder = tempfile.mkdtemp(prefix=PREFIX)
    try:
        me = identity(os.getpid())
        if me is not None:
            tmp = Path(folder) / f".{OWNER}.tmp"
            tmp.write_text(json.dumps(me))
            os.replace(tmp, Path(folder) / OWNER)  # whole or absent, never half a file
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
