"""Data-parallel training through PyTorch's own launcher.

``nimbleml train ... --nproc N`` runs :func:`relaunch` with the module each process runs (the
command line's ``nimbleml.cli.rank``: the caller names the entry, and nothing here depends on
the command line): ``python -m nimbleml.train.elastic --nproc_per_node N --master_addr
127.0.0.1 --master_port <free port> --log-dir <temp> -m <entry> <the same arguments>``
(``elastic`` is torchrun, ``torch.distributed.run``, with its record of a failed rank written
for the parent; its log folder is inside the parent's temporary folder, so no
``/tmp/torchelastic_*`` folder outlives a run; that folder names its owner, and the next start
removes it when a SIGKILL left it, see tempdir.py). Each process torchrun starts runs the
entry, which hands its work to :func:`run_rank`: the status files the parent reads, the
threads, the death of the process with torchrun; it trains with the process group torchrun
describes (gloo on CPU, nccl on GPU, see distributed.py).

Threads: each process gets cores // N (OMP_NUM_THREADS and torch.set_num_threads): N
processes with all the cores each would run N x cores OpenMP threads on cores CPUs, threads
that wait on each other at every parallel region (the same effect tests/test_docs.py's
fixture notes for two threads on this shared 2-core machine: 2-27 s for a 0.3 s training).

What the user sees: rank 0's output (its progress display on the terminal, its messages
relayed), one ``error: ...`` line when a process fails (the process's own line, not
torchrun's traceback of the failure), and the exit code of the failure (2 for a user error).
A process killed by a signal is named with it ("rank 1 was killed by SIGKILL", exit 128 +
the signal), not by the 'Connection reset by peer' the others then saw. The parent forwards
SIGINT / SIGTERM to torchrun, which stops its processes (Ctrl-C then ends as in one process:
one 'interrupted' line, exit 130); every process also gets SIGTERM when its parent dies
(Linux), and the parent ends any it saw that outlive torchrun, so no process is left behind.

A :class:`Group` adds what torchrun's elastic agent does with a failure (``--max-restarts
N``: the whole group started again, each process resuming from the last checkpoint; the
parent keeps relaying rank 0's output, whose log a restarted process sets aside and opens
anew) and the machines of a multi-node run (``--nnodes``, ``--node-rank``,
``--rdzv-endpoint``: torchrun's static rendezvous with fixed ranks, or c10d's without
``--node-rank``). Or run the entry under torchrun yourself on every node (docs/train.md,
"Distributed")::

    torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d \\
        --rdzv-endpoint HOST:29400 --rdzv-id run1 -m nimbleml.cli.rank --model ... --data ...

(``python -m nimbleml.train.launch``, the entry before, now says so and exits 2: running the
command line from here would import it into this layer.)
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from .._procs import stop
from .elastic import FAILURES, STATUS  # STATUS: folder for each process's stderr and exit code
from .tempdir import status_folder
from .usercode import PEER_LOST

WORKER = "NIMBLEML_TRAIN_WORKER"  # set in the processes torchrun starts: train here, no relaunch
THREADS = "NIMBLEML_TRAIN_THREADS"
PROGRESS = "NIMBLEML_TRAIN_PROGRESS"  # rich | lines | off, decided by the parent
DEBUG = "NIMBLEML_TRAIN_DEBUG"
RESTART_COUNT = "TORCHELASTIC_RESTART_COUNT"  # set by torchrun: the group's restarts so far
STOP_WAIT_S = 60.0  # how long torchrun has to stop its processes after a signal


def inside_torchrun() -> bool:
    """True in a process torchrun started (train here; never launch again)."""
    return os.environ.get(WORKER) == "1" or int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return os.cpu_count() or 1


def threads_per_process(nproc: int) -> int:
    return max(1, cores() // max(1, nproc))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Group:
    """Where the processes of a run are and what becomes of a failed one: ``nproc``
    processes on each of ``nnodes`` machines; ``max_restarts`` restarts of the whole group
    by torchrun's elastic agent (each resumes from the last checkpoint); several machines
    meet at ``rdzv_endpoint`` (HOST:PORT): with ``node_rank`` given on each, torchrun's
    static rendezvous (fixed ranks: rank 0 always on node 0), without it c10d's (ranks in
    the order the machines join)."""

    nproc: int
    max_restarts: int = 0
    nnodes: int = 1
    node_rank: int | None = None
    rdzv_endpoint: str | None = None

    def torchrun_args(self, port: int) -> list[str]:
        out = ["--nproc_per_node", str(self.nproc)]
        if self.max_restarts:
            out += ["--max_restarts", str(self.max_restarts)]
        if self.nnodes == 1:  # this machine alone: its own rendezvous on a free port
            return [*out, "--master_addr", "127.0.0.1", "--master_port", str(port)]
        out += ["--nnodes", str(self.nnodes), "--rdzv_endpoint", str(self.rdzv_endpoint),
                "--rdzv_id", RDZV_ID]  # fmt: skip
        if self.node_rank is None:
            return [*out, "--rdzv_backend", "c10d"]
        return [*out, "--rdzv_backend", "static", "--node_rank", str(self.node_rank)]


RDZV_ID = "nimbleml-train"  # the same on every node (c10d's run id, static's key prefix)


def command(entry: str, args: list[str], nproc: int | Group, port: int,
            log_dir: str) -> list[str]:  # fmt: skip
    """torchrun's command line: ``nproc`` processes on this machine (or a :class:`Group`'s),
    each ``python -m entry args``."""
    group = nproc if isinstance(nproc, Group) else Group(nproc)
    return [
        sys.executable, "-m", "nimbleml.train.elastic", *group.torchrun_args(port),
        "--log-dir", log_dir, "-m", entry, *args,
    ]  # fmt: skip


def _parent_death_signal() -> Any:
    """A function that makes the calling process get SIGTERM when its parent dies (Linux
    prctl PR_SET_PDEATHSIG), resolved here: it runs between fork and exec, where importing
    could deadlock on a lock another thread held at the fork. None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # pragma: no cover - a libc without prctl
        return None
    return lambda: prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _launcher_setup(die_with_parent: Any) -> Any:
    def setup() -> None:  # in torchrun's process, between fork and exec: no imports here
        os.setsid()  # its own session: the terminal's Ctrl-C reaches the parent only
        if die_with_parent is not None:
            die_with_parent()

    return setup


# -- the parent: nimbleml train --nproc N ---------------------------------------------------
def relaunch(entry: str, args: list[str], nproc: int | Group, *, debug: bool = False,
             progress: str = "lines", resume: str = "") -> int:  # fmt: skip
    """Run ``python -m entry args`` (the module calls :func:`run_rank`; ``args``: the train
    command's own) in ``nproc`` processes under torchrun (a :class:`Group`: on several
    machines, restarted after a failure); wait, relay rank 0's output, forward
    SIGINT/SIGTERM; return the exit code (KeyboardInterrupt after a SIGINT, once every
    process stopped). ``resume``: the sentence that says how to go on after a failure,
    added to its line."""
    group = nproc if isinstance(nproc, Group) else Group(nproc)
    threads = threads_per_process(group.nproc)
    with status_folder() as status:  # removes the folders killed runs left, too
        env = dict(os.environ)
        env.update({WORKER: "1", STATUS: status, THREADS: str(threads), PROGRESS: progress,
                    DEBUG: "1" if debug else "0", "OMP_NUM_THREADS": str(threads)})  # fmt: skip
        here = os.getcwd()  # the user's module:function models import from here, as in-process
        env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
        logs = os.path.join(status, "torchrun")  # not a /tmp/torchelastic_* of its own
        proc = subprocess.Popen(
            command(entry, args, group, free_port(), logs), env=env, stderr=subprocess.PIPE,
            preexec_fn=_launcher_setup(_parent_death_signal()),
        )  # fmt: skip
        return _Supervisor(proc, Path(status), debug, resume).wait()


class _Supervisor:
    def __init__(self, proc: subprocess.Popen[bytes], status: Path, debug: bool,
                 resume: str = "") -> None:  # fmt: skip
        self.proc, self.status, self.debug, self.resume = proc, status, debug, resume
        self.launcher_lines: collections.deque[str] = collections.deque(maxlen=40)
        self.shown: set[str] = set()
        self.signalled: int | None = None
        self.seen: dict[int, Any] = {}  # pid -> psutil.Process: torchrun's processes
        self.done = threading.Event()

    def wait(self) -> int:
        threads = [threading.Thread(target=self._read_launcher, daemon=True),
                   threading.Thread(target=self._relay_rank0, daemon=True)]  # fmt: skip
        for t in threads:
            t.start()
        previous = self._forward_signals()
        try:
            while self.proc.poll() is None:
                self._note_children()
                time.sleep(0.2)
        finally:
            self._restore(previous)
            self.done.set()
            for t in threads:
                t.join(timeout=5)
            self._end_leftovers()
        return self._outcome(self.proc.returncode)

    # -- signals and processes
    def _forward_signals(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def forward(signum: int, _frame: Any) -> None:
            if self.signalled is None:
                self.signalled = signum
                with contextlib.suppress(ProcessLookupError):
                    self.proc.send_signal(signum)  # torchrun stops its processes
                threading.Thread(target=self._kill_after, daemon=True).start()
            else:  # a second signal: stop now
                self._kill_all()

        return {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}

    @staticmethod
    def _restore(previous: dict[int, Any]) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    def _kill_after(self) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=STOP_WAIT_S)
            return
        self._kill_all()

    def _note_children(self) -> None:
        import psutil

        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                self.seen.setdefault(child.pid, child)

    def _kill_all(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        for child in self.seen.values():
            with contextlib.suppress(Exception):
                child.kill()

    def _end_leftovers(self) -> None:
        """Any process torchrun started that outlived it: SIGTERM, then SIGKILL after 10 s."""
        stop(self.seen.values(), grace_s=10)

    # -- output
    def _read_launcher(self) -> None:
        """torchrun's own stderr: kept for the error line, shown with --debug."""
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            if line.strip():
                self.launcher_lines.append(line)
                if self.debug:
                    print(line, file=sys.stderr, flush=True)

    def _relay_rank0(self) -> None:
        """Rank 0's stderr (its messages, epoch lines, errors) as it writes them."""
        path = self.status / "rank-0.log"
        handle = None
        pending = ""
        while True:
            finished = self.done.is_set()
            if handle is not None and _replaced(path, handle):  # a restart set it aside
                pending += handle.read()
                handle.close()
                handle = None
            if handle is None and path.exists():
                handle = open(path, errors="replace")  # noqa: SIM115 - read as it grows
            chunk = handle.read() if handle is not None else ""
            if chunk:
                pending += chunk
                *lines, pending = pending.split("\n")
                for line in lines:
                    self._relay(line)
            elif finished:
                if pending:
                    self._relay(pending)
                break
            else:
                time.sleep(0.1)
        if handle is not None:
            handle.close()

    def _relay(self, line: str) -> None:
        """A line of rank 0's, as it comes: its error line waits for the outcome (it may be
        what a process killed under it left it to say), its 'interrupted' line is the
        parent's to say."""
        if line.startswith("error: ") or line.lstrip().startswith("interrupted; "):
            return
        self._show(line)

    def _show(self, line: str) -> None:
        if line.startswith(("error: ", "warning: ")):
            if line in self.shown:
                return
            self.shown.add(line)
        print(line, file=sys.stderr, flush=True)

    def _outcome(self, returncode: int) -> int:
        errors: dict[int, list[str]] = {}  # rank -> its error lines
        for log in sorted(self.status.glob("rank-*.log"), key=_rank_of):
            rank = _rank_of(log)
            for line in log.read_text(errors="replace").splitlines():
                if line.startswith("error: "):
                    errors.setdefault(rank, []).append(line)
                elif self.debug and rank > 0:
                    self._show(f"[{log.stem}] {line}")
        if self.signalled == signal.SIGINT:
            raise KeyboardInterrupt  # every process stopped: the CLI's one 'interrupted' line
        if self.signalled is not None:
            name = signal.Signals(self.signalled).name
            self._show(f"error: training stopped by {name}: every process was stopped"
                       f"{'; ' + self.resume if self.resume else ''}")  # fmt: skip
            return 128 + self.signalled
        if returncode == 0:
            return 0
        codes = {}
        for path in self.status.glob("rank-*.exit"):
            with contextlib.suppress(ValueError):
                codes[_rank_of(path)] = int(path.read_text().strip() or 1)
        own = {r: [x for x in errors[r] if PEER_LOST not in x] for r in errors}
        own = {r: found for r, found in own.items() if found}
        if own:  # a process's own error (the others then lost it, or stopped by torchrun)
            for line in (line for rank in sorted(own) for line in own[rank]):
                self._show(line)
            failed = [codes.get(r, 1) for r in own]
            return 2 if 2 in failed else max([c for c in failed if c] or [1])
        # torchrun stops the others with SIGTERM: another signal is the first death
        killed = sorted((f for f in self._failures() if f.get("signal")),
                        key=lambda f: (f["signal"] == "SIGTERM", f["rank"]))  # fmt: skip
        if killed:  # what the others then raised (a lost connection) is its consequence
            first = killed[0]
            self._show(f"error: rank {first['rank']} was killed by {first['signal']} (pid "
                       f"{first['pid']}); the other processes were stopped"
                       f"{'; ' + self.resume if self.resume else ''}")  # fmt: skip
            return 128 + abs(int(first["exitcode"]))
        for line in (line for rank in sorted(errors) for line in errors[rank]):
            self._show(line)
        failed = [c for c in codes.values() if c != 0]
        if failed:
            if not errors:
                self._show("error: a training process failed without saying why; run "
                           "nimbleml --debug train ... for its output")  # fmt: skip
            return 2 if 2 in failed else max(failed)
        exited = [f for f in self._failures() if f.get("exitcode")]
        if exited:
            first = exited[0]
            self._show(f"error: rank {first['rank']} exited with code {first['exitcode']} "
                       "without an error message; run nimbleml --debug train ... for its output")  # fmt: skip
            return 1
        last = next((line for line in reversed(self.launcher_lines)
                     if "Error" in line or "error" in line), None)  # fmt: skip
        last = last or (self.launcher_lines[-1] if self.launcher_lines else "no output")
        self._show(f"error: the training processes failed (torchrun exited {returncode}): "
                   f"{last.strip()[:300]}; run nimbleml --debug train ... for the full output")  # fmt: skip
        return 1

    def _failures(self) -> list[dict[str, Any]]:
        """torchrun's record of the failed ranks (elastic.py), first failed first."""
        path = self.status / FAILURES
        if not path.exists():
            return []
        try:
            return list(json.loads(path.read_text()))
        except ValueError:  # pragma: no cover - written whole by elastic.main
            return []


def _replaced(path: Path, handle: Any) -> bool:
    """Whether ``path`` no longer names the file ``handle`` reads (renamed by a restart)."""
    try:
        return os.stat(path).st_ino != os.fstat(handle.fileno()).st_ino
    except FileNotFoundError:
        return True


def _rank_of(path: Path) -> int:
    return int(path.stem.split("-")[1])


# -- each process torchrun starts ------------------------------------------------------------
def run_rank(run: Callable[[bool], None]) -> NoReturn:
    """One of the processes torchrun started (rank RANK of WORLD_SIZE, MASTER_ADDR...):
    stderr to the parent's status folder (it relays rank 0's and reads the others' on a
    failure), SIGTERM when torchrun dies, the parent's thread count; then ``run(debug)``
    (``debug``: the parent was given --debug). Exits with its code (SystemExit's, 0 when
    it returns), written beside the log for the parent."""
    rank = os.environ.get("RANK", "0")
    status = os.environ.get(STATUS)
    restart = int(os.environ.get(RESTART_COUNT, "0") or 0)
    if status:  # the parent relays rank 0's stderr and reads the others' on failure
        if restart:  # the failed attempt's log and exit code: set aside, not this one's
            _set_aside(Path(status), rank, restart)
        log = open(Path(status) / f"rank-{rank}.log", "w", buffering=1)  # noqa: SIM115
        os.dup2(log.fileno(), 2)
    if restart and rank == "0":
        most = os.environ.get("TORCHELASTIC_MAX_RESTARTS", "?")
        print(f"restart {restart} of at most {most}: a process failed, so torchrun restarted "
              "every process; going on from the last checkpoint", file=sys.stderr, flush=True)  # fmt: skip
    die_with_parent = _parent_death_signal()
    if die_with_parent is not None:
        die_with_parent()  # torchrun gone, this process goes too
    os.environ[WORKER] = "1"
    threads = os.environ.get(THREADS)
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    code = 1
    try:
        run(os.environ.get(DEBUG) == "1")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        if status:
            (Path(status) / f"rank-{rank}.exit").write_text(str(code))
        sys.stderr.flush()
    sys.exit(code)


def _set_aside(status: Path, rank: str, restart: int) -> None:
    """rank-R.log of the attempt before as rank-R.log.<attempt> (the parent reads only the
    last attempt's errors), its rank-R.exit gone."""
    log = status / f"rank-{rank}.log"
    with contextlib.suppress(OSError):
        log.rename(status / f"{log.name}.{restart - 1}")
    (status / f"rank-{rank}.exit").unlink(missing_ok=True)


MOVED = (
    "error: python -m nimbleml.train.launch is no longer the entry of a training process: "
    "run python -m nimbleml.cli.rank (torchrun ... -m nimbleml.cli.rank ARGS) with the same "
    "arguments"
)


def main(argv: list[str] | None = None) -> NoReturn:
    """``python -m nimbleml.train.launch``, the entry before the command line's own
    (``nimbleml.cli.rank``): says where it went and exits 2. Training here would make the
    train layer depend on the command line above it; doing nothing would let every rank of
    an old ``torchrun ... -m nimbleml.train.launch`` command succeed without training."""
    print(MOVED, file=sys.stderr, flush=True)
    sys.exit(2)


if __name__ == "__main__":
    main()
