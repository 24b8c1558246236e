"""A study's journal file (Optuna's JournalStorage on one host), safe against the writers
that die: every trial's owner written with it, a lock whose dead holder is not waited for, a
record cut short repaired, anything else one line naming the file.

- ``OwnedStorage``: a RUNNING trial is created (or taken from the queue) in the same write
  as its owner (host, pid, the process's start time), so a process killed right after
  ``study.ask()`` leaves a trial ``recover`` can settle (trials.py).
- ``OwnedLock``: Optuna's lock file ``<journal>.lock`` (made with O_EXCL, so Optuna's own
  locks on the same journal exclude it and it excludes them), holding its holder's owner.
  A lock whose holder is gone is removed at once, silently; a lock that names no holder
  (Optuna's own, or one whose holder died before naming itself) once it is older than
  ``UNNAMED_S``: a write holds it for milliseconds, where Optuna waits 30 s and warns.
- ``repair``: a journal whose last record was cut short (a writer killed in its write, a
  full disk) has that record dropped, with a warning naming the file, before anything is
  appended to it (appended, the line would join the next record and break every later
  read). A broken record elsewhere is a DataError naming the file and the line.
- ``open_journal``: all of it, with a failed write (full disk, read-only folder) a
  StorageError naming the journal and its disk.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Generator
from contextlib import suppress
from pathlib import Path
from typing import Any

from optuna.storages.journal import JournalFileBackend
from optuna.storages.journal._file import BaseJournalFileLock
from optuna.storages.journal._storage import JournalOperation, JournalStorage
from optuna.trial import TrialState

from ..errors import DataError, storage_error, warn
from .trials import alive, owner

UNNAMED_S = 2.0  # a lock naming no live holder, older than this, is stale
OTHER_HOST_S = 30.0  # a lock held from another host (a shared folder): Optuna's grace period
TELL_AFTER_S = 10.0  # a live holder that keeps the lock this long is named, once
_OWNER: dict[int, dict[str, Any]] = {}


def me() -> dict[str, Any]:
    """This process's owner record (computed once per process)."""
    pid = os.getpid()
    if pid not in _OWNER:
        _OWNER[pid] = owner()
    return _OWNER[pid]


def open_journal(optuna: Any, path: str) -> Any:
    """The study storage for a journal file: its folder made, its last record checked (and
    dropped when cut short), every write owned and every failed one naming the file."""
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        repair(Path(path))
        return OwnedStorage(_Backend(path, lock_obj=OwnedLock(path)))
    except OSError as exc:
        raise storage_error(path, exc) from exc


class OwnedStorage(JournalStorage):
    """Optuna's JournalStorage whose RUNNING trials carry their owner from their first write:
    created with it, or taken from the queue (an enqueued trial) in the same append."""

    def _write_log(self, op_code: int, extra_fields: dict[str, Any]) -> None:
        state = extra_fields.get("state", TrialState.RUNNING)
        if op_code == JournalOperation.CREATE_TRIAL and state == TrialState.RUNNING:
            attrs = {**(extra_fields.get("user_attrs") or {}), "owner": me()}
            extra_fields = {**extra_fields, "user_attrs": attrs}
        elif op_code == JournalOperation.SET_TRIAL_STATE_VALUES and state == TrialState.RUNNING:
            worker = self._replay_result.worker_id
            self._backend.append_logs([
                {"op_code": op_code, "worker_id": worker, **extra_fields},
                {"op_code": JournalOperation.SET_TRIAL_USER_ATTR, "worker_id": worker,
                 "trial_id": extra_fields["trial_id"], "user_attr": {"owner": me()}},
            ])  # fmt: skip
            return
        super()._write_log(op_code, extra_fields)


class _Backend(JournalFileBackend):
    """Optuna's file backend: a failed append is the disk's error naming the journal, a
    record that cannot be read is one line naming the journal and the line."""

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        try:
            super().append_logs(logs)
        except OSError as exc:
            raise storage_error(self._file_path, exc) from exc

    def read_logs(self, log_number_from: int) -> Generator[dict[str, Any], None, None]:
        try:
            yield from super().read_logs(log_number_from)
        except ValueError as exc:  # json.JSONDecodeError, "Invalid log format."
            raise corrupt(Path(self._file_path), exc) from None


def corrupt(path: Path, exc: BaseException) -> DataError:
    line = _first_bad_line(path)
    what = f"line {line} is not a record Optuna wrote" if line else f"{exc}"
    return DataError(
        f"the study journal {path} cannot be read: {what}; restore the file from a copy, "
        "delete that line (the records after it stay), or give another storage to start a "
        "new study"
    )


def _first_bad_line(path: Path) -> int | None:
    with suppress(OSError), open(path, "rb") as fh:
        for number, line in enumerate(fh, start=1):
            if not _whole(line):
                return number
    return None


def _whole(line: bytes) -> bool:
    """A complete journal record: a JSON object on one line ended by a newline."""
    if not line.endswith(b"\n"):
        return False
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


# -- a record cut short ----------------------------------------------------------------------
def _last_line(path: Path) -> tuple[int, bytes]:
    """(where the file's last line starts, that line)."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        end, block = size, b""
        while end > 0:
            start = max(0, end - (1 << 16))
            fh.seek(start)
            block = fh.read(end - start) + block
            cut = block.rfind(b"\n", 0, len(block) - 1)
            if cut >= 0:
                return size - len(block) + cut + 1, block[cut + 1 :]
            end = start
        return 0, block


def repair(path: Path) -> None:
    """Drop a last record cut short (no newline, or not JSON), under the journal's lock (a
    live writer finishes its record first), with a warning naming the file."""
    if not path.is_file() or path.stat().st_size == 0 or _whole(_last_line(path)[1]):
        return
    lock = OwnedLock(str(path))
    lock.acquire()
    try:
        start, line = _last_line(path)  # again, now that no one writes
        if _whole(line):
            return
        os.truncate(path, start)
    finally:
        lock.release()
    warn(
        f"the study journal {path} ended in a record cut short (a process killed while it "
        f"wrote, or a full disk): dropped it ({len(line)} bytes); the trial it belonged to "
        "is settled as the run resumes"
    )


# -- the lock ----------------------------------------------------------------------------------
class OwnedLock(BaseJournalFileLock):
    """``<journal>.lock``, created with O_EXCL and holding its holder's owner record (see the
    module's docstring for when a lock is stale)."""

    def __init__(self, journal: str) -> None:
        self._lock_file = journal + ".lock"
        self._held: tuple[int, int] | None = None  # (inode, mtime) of the lock this one made

    def acquire(self) -> bool:
        tag = json.dumps(me()).encode()
        pause, since, told = 0.001, time.monotonic(), False
        while True:
            try:
                fd = os.open(self._lock_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._broke_stale():
                    continue
                if not told and time.monotonic() - since > TELL_AFTER_S:
                    told = True
                    warn(f"waiting for the journal's lock {self._lock_file}, held by "
                         f"{_holder(self._lock_file) or 'a process that does not say'}")  # fmt: skip
                time.sleep(pause)
                pause = min(pause * 2, 0.05)
                continue
            try:
                os.write(fd, tag)
            except OSError:
                pass  # a full disk: the lock holds, naming no holder (judged by its age)
            finally:
                os.close(fd)
            st = os.lstat(self._lock_file)
            self._held = (st.st_ino, st.st_mtime_ns)
            return True

    def release(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            _remove(self._lock_file, held)

    def _broke_stale(self) -> bool:
        """Removes the lock when its holder is gone; True when it is gone (try again)."""
        try:
            st = os.lstat(self._lock_file)
        except FileNotFoundError:
            return True
        holder = _holder(self._lock_file)
        if holder is not None:
            state = alive(holder)
            if state is True:
                return False
            limit = 0.0 if state is False else OTHER_HOST_S
        else:
            limit = UNNAMED_S
        if time.time() - st.st_mtime <= limit:
            return False
        _remove(self._lock_file, (st.st_ino, st.st_mtime_ns))
        return True


def _holder(lock: str) -> dict[str, Any] | None:
    """The owner record a lock file holds; None for Optuna's own locks (an empty file, a
    symlink to the journal) and for one whose holder died before it wrote it."""
    with suppress(OSError, ValueError):
        if not os.path.islink(lock):
            with open(lock, "rb") as fh:
                found = json.loads(fh.read(4096) or b"null")
            return found if isinstance(found, dict) else None
    return None


def _remove(lock: str, seen: tuple[int, int]) -> None:
    """Remove the lock file ``seen`` (inode, mtime): moved aside first, and put back if it is
    another one (a process took the lock in between)."""
    aside = f"{lock}.{uuid.uuid4().hex}.stale"
    try:
        os.rename(lock, aside)
    except OSError:
        return
    try:
        st = os.lstat(aside)
        if (st.st_ino, st.st_mtime_ns) != seen:
            with suppress(OSError):
                os.link(aside, lock, follow_symlinks=False)
    finally:
        with suppress(OSError):
            os.unlink(aside)
