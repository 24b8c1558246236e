"""The bookkeeping around a tune study's trials (issue 22): what can be checked before any
storage is made, the user's code run under a name, and a study that resumes honestly.

- ``check_build``: a training config's ``build`` function is read (its signature) against the
  space before the storage exists: a parameter it does not take, or one it needs and the
  space does not give, is one line naming both.
- ``user_call``: the user's objective, ``build`` and training run; what they raise is the
  user's error (UserCodeError) naming the stage and what to check, except Optuna's
  TrialPruned, interrupts and nimbleml's own errors.
- ``started`` marks a trial with its owner (host, pid, the process's start time) and, on
  Ctrl-C, ``interrupted=True``: the trial is stored as failed by Optuna, reported as
  interrupted, and its parameters queued again on the next run (``recover``).
- ``recover``: at the start of a run on a journal file (one host), a trial still RUNNING whose
  owner process is gone (SIGKILL, a crash, a reboot) is marked failed (``died``) and its
  parameters queued again, up to ``MAX_RETRIES`` times. On a journal nimbleml writes a
  trial's owner in the same record that creates it (journal.py), so a RUNNING trial with no
  owner was made by a process killed before it could say more (or by another program that
  no longer runs): it is failed too. PostgreSQL/SQLite storages have Optuna's heartbeat for
  this (storage.py).
- ``seed_for``: the sampler's seed from (seed, trials already stored): a resumed or grown
  study samples new points rather than repeating the first run's, and the same command on
  the same storage still draws the same ones.
- ``quiet_failures``: Optuna logs a failed trial with its traceback (WARNING) before raising
  the error to its caller; nimbleml shows that error once, as one line, so the log record of
  a trial that raised is dropped.
- ``storage_file`` / ``drop_unused``: a journal or SQLite file this run created is removed
  when the run fails before any trial finished, so a mistake leaves nothing behind.
"""

from __future__ import annotations

import inspect
import logging
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from ..errors import ConfigError, running_user_code

MAX_RETRIES = 2  # a trial whose process died is run again at most this many times
FINISHED = ("COMPLETE", "PRUNED")


# -- before any storage -------------------------------------------------------------------
def check_build(objective: Any, space: Any) -> None:
    """A training config: every space parameter that is not a training option must be an
    argument of ``build``, and every argument ``build`` needs must come from the space (or
    have a default). A function objective must take (params) or (params, trial)."""
    if not isinstance(space, dict):
        return  # a function of the trial: its names are known only when it runs
    if not isinstance(objective, dict):
        if callable(objective):
            _check_objective(objective)
        return
    build = objective.get("model")
    if not callable(build):
        return  # _TrainObjective names what is missing
    from ..train.config import TrainConfig

    options = set(TrainConfig.names())
    wanted = [k for k in space if k not in options]
    try:
        signature = inspect.signature(build)
    except (TypeError, ValueError):
        return  # a builtin or C callable: nothing to read
    params = signature.parameters.values()
    named = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params)
    label = f"{name_of(build)}{signature}"
    unknown = [k for k in wanted if k not in named and not takes_any]
    if unknown:
        raise ConfigError(
            f"space: {', '.join(repr(k) for k in unknown)} is not an argument of the model "
            f"function {label}, and not a training option; add it to the function's "
            f"arguments or drop it from the space"
        )
    needed = [p.name for p in params if p.default is p.empty
              and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in wanted]  # fmt: skip
    if needed:
        raise ConfigError(
            f"the model function {label} needs {', '.join(repr(k) for k in needed)}, which the "
            "space does not give; add it to the space or give it a default"
        )


def _check_objective(objective: Any) -> None:
    try:
        params = list(inspect.signature(objective).parameters.values())
    except (TypeError, ValueError):
        return
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    if not positional or len(required) > 2:
        raise ConfigError(
            f"the objective {name_of(objective)}{inspect.signature(objective)} must take the "
            "parameters (objective(params)), or the parameters and the trial "
            "(objective(params, trial))"
        )


def name_of(fn: Any) -> str:
    module = getattr(fn, "__module__", None)
    name = getattr(fn, "__qualname__", None) or type(fn).__name__
    return f"{module}:{name}" if module and module != "__main__" else str(name)


# -- running the user's code ----------------------------------------------------------------
def user_call(stage: str, check: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``; what it raises becomes a UserCodeError naming ``stage`` and
    ``check``, except TrialPruned (a pruned trial is no error)."""
    import optuna

    pruned: BaseException | None = None
    with running_user_code(stage, check):
        try:
            return fn(*args, **kwargs)
        except optuna.TrialPruned as exc:
            pruned = exc
    raise pruned


def owner() -> dict[str, Any]:
    """This process, as it is told apart from a later one with the same pid."""
    import psutil

    return {"host": socket.gethostname(), "pid": os.getpid(),
            "started": round(psutil.Process().create_time(), 3)}  # fmt: skip


@contextmanager
def started(trial: Any) -> Iterator[None]:
    """A trial running in this process: its owner recorded first; on Ctrl-C it is marked
    interrupted (Optuna stores it as failed, then re-raises the interrupt)."""
    trial.set_user_attr("owner", owner())
    trial.set_user_attr("pid", os.getpid())
    try:
        yield
    except KeyboardInterrupt:
        with suppress(Exception):  # the storage may be what was interrupted
            trial.set_user_attr("interrupted", True)
        raise


def alive(who: Any) -> bool | None:
    """Whether a trial's owner process still runs: None when it cannot be told (another
    host, no owner recorded)."""
    import psutil

    if not isinstance(who, dict) or who.get("host") != socket.gethostname():
        return None
    try:
        proc = psutil.Process(int(who["pid"]))
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return abs(proc.create_time() - float(who["started"])) < 1.0  # else a reused pid
    except (psutil.NoSuchProcess, psutil.AccessDenied, KeyError, TypeError, ValueError):
        return False


def state(trial: Any) -> str:
    """A trial's state as reports show it: Optuna's, or "interrupted" for a failed trial that
    was stopped by Ctrl-C, "died" for one whose process ended mid-trial."""
    name = trial.state.name.lower()
    if name == "fail" and trial.user_attrs.get("interrupted"):
        return "interrupted"
    if name == "fail" and trial.user_attrs.get("died"):
        return "died"
    return "failed" if name == "fail" else name


def recover(study: Any, local: bool) -> None:
    """Before a run: trials whose process died (``local``: a journal file on this host) are
    failed; the parameters of the interrupted and the died ones are queued again."""
    from optuna.trial import TrialState

    if local:
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            who = t.user_attrs.get("owner")
            if who is None:  # nimbleml writes it with the trial (journal.py): its maker died
                why = "its process ended before it recorded its owner"
            elif alive(who) is False:
                why = f"process {who['pid']} ended mid-trial"
            else:
                continue
            study._storage.set_trial_user_attr(t._trial_id, "died", why)
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    for t in trials:
        if t.state != TrialState.FAIL or t.number in retried or not t.params:
            continue
        retries = int(t.user_attrs.get("retries", 0))
        if t.user_attrs.get("interrupted"):
            study.enqueue_trial(dict(t.params), user_attrs={"retry_of": t.number,
                                                            "retries": retries})  # fmt: skip
        elif t.user_attrs.get("died") and retries < MAX_RETRIES:
            study.enqueue_trial(dict(t.params), user_attrs={"retry_of": t.number,
                                                            "retries": retries + 1})  # fmt: skip


def seed_for(seed: int | None, stored: int) -> int | None:
    """The sampler's seed for a run that finds ``stored`` trials: ``seed`` for a new study
    (as before), another one, fixed by both, for a resumed or grown one."""
    if seed is None or stored == 0:
        return seed
    return (int(seed) * 1_000_003 + stored * 7_919) % (2**32 - 1)


class _DropRaised(logging.Filter):
    """Drops Optuna's two log records of a trial whose objective raised (the traceback, then
    "failed with value None"): the error reaches the caller, which shows it once."""

    def __init__(self) -> None:
        super().__init__()
        self.raised: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if record.exc_info and text.startswith("Trial "):
            self.raised.add(text.split()[1])
            return False
        if text.startswith("Trial ") and text.split()[1] in self.raised:
            return " failed with value " not in text
        return True


@contextmanager
def quiet_failures() -> Iterator[None]:
    log = logging.getLogger("optuna.study._optimize")
    drop = _DropRaised()
    log.addFilter(drop)
    try:
        yield
    finally:
        log.removeFilter(drop)


# -- a storage file this run made -----------------------------------------------------------
def storage_file(url: str) -> Path | None:
    """The file behind a journal path or a sqlite:/// URL (None for a server)."""
    if "://" not in url:
        return Path(url)
    if url.startswith("sqlite:///") and url[len("sqlite:///") :] not in ("", ":memory:"):
        return Path(url[len("sqlite:///") :])
    return None


def new_files(url: str) -> list[Path]:
    """The storage file and the folders above it that do not exist yet (this run makes them)."""
    path = storage_file(url)
    if path is None or path.exists():
        return []
    made = [path]
    folder = path.resolve().parent
    while not folder.exists() and folder != folder.parent:
        made.append(folder)
        folder = folder.parent
    return made


def drop_unused(made: list[Path], study: Any) -> None:
    """Remove what this run created when no trial finished (a run that failed at once)."""
    if not made:
        return
    if study is not None:
        with suppress(Exception):
            if any(t.state.name in FINISHED for t in study.get_trials(deepcopy=False)):
                return
    path, folders = made[0], made[1:]
    for extra in (path, path.with_name(path.name + ".lock")):
        with suppress(OSError):
            extra.unlink()
    for folder in folders:
        with suppress(OSError):
            folder.rmdir()  # only if empty
