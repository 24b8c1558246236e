"""Hyperparameter search with Optuna: ``nimbleml.tune(objective, space, ...)``.

``space`` is a dict, each value one of

    ("log", low, high)      a float on a log scale        ("float", low, high[, step])
    ("int", low, high)      an integer                    ("int_log", low, high)
    [a, b, c]               one of these choices

or a function of an Optuna trial returning the parameters. ``objective`` is a function of the
parameters (``objective(params)``, or ``objective(params, trial)`` to report intermediate
values) returning the value(s) to optimize, or a training config: a dict with ``model`` (a
function of the parameters returning a torch module), ``train`` and ``val`` data, and any
``nimbleml.train`` options; the parameters whose names are training options (lr, batch_size,
weight_decay, ...) override them, the validation metric of each epoch is reported to the
pruner, and a pruned trial stops training at once.

Storage (Optuna's; the rules learned the hard way): by default a JournalStorage file
(``<study_name>.journal`` in the working folder, or ``storage="file.journal"``), safe for
several processes on one host (SQLite is not: "database is locked"); ``postgresql://...`` for
many machines, with a heartbeat, so that the trial of a worker that died is marked failed and
retried (``heartbeat_s``; Optuna's RetryHeartbeatStaleTrialCallback). A study resumes by name.
Under torchrun (``--nproc_per_node N``) a training config's trials train data-parallel in
all N processes; only rank 0 talks to the storage and sends each trial's parameters to the
others, and its pruning decision stops every process's run at the same epoch (the Trainer
shares rank 0's "stop"). ``workers=N`` runs N processes on this host against the same storage (the objective must
then be importable: a module-level function); the study stops at ``n_trials`` finished
trials, give or take the trials other workers had started at that moment (up to N - 1
more). ``optuna-dashboard <storage>`` shows it live.
"""

from __future__ import annotations

import inspect
import os
import pickle
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .._deps import require
from ..errors import ConfigError, NimbleError, warn
from . import trials
from .storage import open_storage as _storage
from .storage import shown, storage_url  # noqa: F401 - shown: re-exported

SAMPLERS = ("tpe", "nsga2", "random")
PRUNERS = ("asha", "hyperband", "median", None)
KINDS = ("log", "float", "int", "int_log")
DEFAULT_STUDY = "nimbleml-study"


def tune(objective: Any, space: Any, *, n_trials: int = 50, timeout: float | None = None,
         directions: Sequence[str] = ("maximize",), sampler: str = "tpe",
         pruner: str | None = "asha", storage: str | None = None,
         study_name: str | None = None, workers: int = 1, seed: int | None = 0,
         heartbeat_s: float = 10.0) -> Any:  # fmt: skip
    """Run (or resume) a study; returns the optuna.Study. See the module's docstring."""
    optuna = require("optuna", "nimbleml.tune")
    _check(space, n_trials, timeout, directions, sampler, pruner, workers)
    trials.check_build(objective, space)  # before any storage exists
    name = study_name or DEFAULT_STUDY
    url = storage_url(storage, name, workers)
    fn = _objective(objective, space)
    group = _process_group(objective, workers)
    if group is not None:
        fn.group = group  # type: ignore[attr-defined]
    if group is not None and not group.main:
        fn.follow(group)  # type: ignore[attr-defined]  # rank > 0: trains what rank 0 asks
        return None
    if workers > 1:
        _check_importable(objective, space)
    first = _first_rung(objective)
    made, study = trials.new_files(url), None
    try:
        study = _study(optuna, url, name, directions, sampler, pruner, seed, heartbeat_s, first,
                       recover=True)  # fmt: skip
        if workers == 1:
            try:
                _optimize(study, fn, n_trials, timeout)
            finally:
                if group is not None:
                    group.share(None)  # the other ranks: no more trials
                    group.close()
            return study
        _run_workers(study, fn, (objective, space, url, name, tuple(directions), sampler, pruner,
                                 seed, heartbeat_s, n_trials, timeout, first), workers)  # fmt: skip
    except BaseException:
        trials.drop_unused(made, study)  # a run that failed at once leaves no storage behind
        raise
    return optuna.load_study(study_name=name, storage=_storage(optuna, url, heartbeat_s))


def _run_workers(study: Any, fn: Any, args: tuple[Any, ...], workers: int) -> None:
    """This process and ``workers - 1`` more on the same storage; each worker's seed is
    ``seed + i``."""
    seed = args[7]
    procs = [_spawn((*args[:7], None if seed is None else seed + i, *args[8:]))
             for i in range(1, workers)]  # fmt: skip
    try:
        _optimize(study, fn, args[9], args[10])
        for p in procs:
            p.wait()
    finally:
        for p in procs:  # interrupted: the workers stop with this process
            if p.poll() is None:
                p.terminate()
                p.wait(timeout=30)
    bad = [p.returncode for p in procs if p.returncode]
    if bad:
        raise ConfigError(
            f"{len(bad)} worker process(es) failed (exit {bad[0]}); their error is above"
        )


def _process_group(objective: Any, workers: int) -> Any:
    """Under torchrun, a training config's trials train data-parallel in every process;
    only rank 0 talks to the storage (the others wait for the parameters it sends)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    if not isinstance(objective, dict):
        raise ConfigError(
            "under torchrun, nimbleml.tune takes a training config (its trials train in every "
            "process); run a function objective in one process, or with workers=N"
        )
    if workers > 1:
        raise ConfigError("under torchrun the processes are the workers: drop workers=")
    from ..train.distributed import Distributed

    device = str(objective.get("device", "cpu"))
    return Distributed.from_env("cuda" if device.startswith("cuda") else "cpu")


def _study(optuna: Any, url: str, name: str, directions: Sequence[str], sampler: str,
           pruner: str | None, seed: int | None, heartbeat_s: float,
           first: int | None = None, recover: bool = False) -> Any:  # fmt: skip
    """Create or load the study. ``recover`` (the run's main process): trials left by a dead
    or interrupted process are settled and queued again first. The sampler is seeded from
    (seed, trials stored): a resumed or grown study draws new points (trials.py)."""
    samplers = {
        "tpe": lambda s: optuna.samplers.TPESampler(seed=s),
        "nsga2": lambda s: optuna.samplers.NSGAIISampler(seed=s),
        "random": lambda s: optuna.samplers.RandomSampler(seed=s),
    }
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created" lines
    if len(directions) > 1 and pruner is not None:
        pruner = None  # Optuna's pruners judge one value: multi-objective trials run fully
    # ``first``: the step before which no trial is judged (a training config's epochs / 6:
    # the first epoch's accuracy says little about the last); ASHA keeps a quarter per rung
    pruners = {
        "asha": lambda: optuna.pruners.SuccessiveHalvingPruner(
            min_resource=first or "auto", reduction_factor=4),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(
            min_resource=first or 1, reduction_factor=3),
        "median": lambda: optuna.pruners.MedianPruner(
            n_startup_trials=5, n_warmup_steps=(first or 1) - 1),
        None: lambda: optuna.pruners.NopPruner(),
    }  # fmt: skip
    study = optuna.create_study(
        storage=_storage(optuna, url, heartbeat_s), study_name=name, load_if_exists=True,
        directions=list(directions), sampler=optuna.samplers.RandomSampler(),
        pruner=pruners[pruner](),
    )  # fmt: skip
    if recover:
        trials.recover(study, local="://" not in url)
    stored = len(study.get_trials(deepcopy=False))
    study.sampler = samplers[sampler](trials.seed_for(seed, stored))
    return study


def _optimize(study: Any, fn: Callable[[Any], Any], n_trials: int, timeout: float | None) -> None:
    """Trials until the study holds ``n_trials`` finished ones (every worker together)."""
    optuna = require("optuna", "nimbleml.tune")
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    done = (TrialState.COMPLETE, TrialState.PRUNED)
    left = n_trials - sum(1 for t in study.get_trials(deepcopy=False) if t.state in done)
    if left <= 0:
        return
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with trials.quiet_failures():  # the error is raised to the caller, shown once there
        study.optimize(fn, n_trials=left, timeout=timeout,
                       callbacks=[MaxTrialsCallback(n_trials, states=done)])  # fmt: skip


def _spawn(args: tuple[Any, ...]) -> subprocess.Popen[bytes]:
    """A worker process: a fresh Python (no fork of this one's threads), the arguments pickled
    through its stdin (functions by reference: they must be importable), this sys.path."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    code = ("import pickle, sys; from nimbleml.search.study import _worker; "
            "_worker(*pickle.load(sys.stdin.buffer))")  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, env=env)
    assert proc.stdin is not None
    proc.stdin.write(pickle.dumps(args))
    proc.stdin.close()
    return proc


def _worker(objective: Any, space: Any, url: str, name: str, directions: tuple[str, ...],
            sampler: str, pruner: str | None, seed: int | None, heartbeat_s: float,
            n_trials: int, timeout: float | None, first: int | None) -> None:  # fmt: skip
    optuna = require("optuna", "nimbleml.tune")
    try:
        study = _study(optuna, url, name, directions, sampler, pruner, seed, heartbeat_s, first)
        _optimize(study, _objective(objective, space), n_trials, timeout)
    except KeyboardInterrupt:  # Ctrl-C reaches the whole group: the main process says it
        sys.exit(130)
    except NimbleError as exc:  # one line, as the main process prints its own
        first_line = " | ".join(p.strip() for p in str(exc).splitlines() if p.strip())
        print(f"error: worker {os.getpid()}: {first_line}", file=sys.stderr)
        sys.exit(2)


def _first_rung(objective: Any) -> int | None:
    """A training config: no trial is pruned before a sixth of its epochs. Judged at a
    quarter, ASHA took 0.59x the time of no pruning (median of 5 seeds, benchmarks/tune.py);
    at a sixth 0.46x, the best value the same in the median (at worst 1.1 points lower)."""
    if not isinstance(objective, dict):
        return None
    from ..train.config import TrainConfig

    epochs = int(objective.get("epochs", TrainConfig.epochs))
    return max(1, epochs // 6)


# -- the search space ------------------------------------------------------------------------
def suggest(trial: Any, space: Any) -> dict[str, Any]:
    """The parameters of one trial, drawn from ``space``."""
    if callable(space):
        params = space(trial)
        if not isinstance(params, dict):
            raise ConfigError(f"a space function must return a dict, got {type(params).__name__}")
        return params
    out: dict[str, Any] = {}
    for name, spec in space.items():
        if isinstance(spec, list):
            out[name] = trial.suggest_categorical(name, spec)
            continue
        kind, low, high, *rest = spec
        if kind == "log":
            out[name] = trial.suggest_float(name, low, high, log=True)
        elif kind == "float":
            out[name] = trial.suggest_float(name, low, high, step=rest[0] if rest else None)
        elif kind == "int":
            out[name] = trial.suggest_int(name, low, high, step=rest[0] if rest else 1)
        else:
            out[name] = trial.suggest_int(name, low, high, log=True)
    return out


def _check(space: Any, n_trials: Any, timeout: Any, directions: Sequence[str], sampler: str,
           pruner: Any, workers: Any) -> None:  # fmt: skip
    if not isinstance(n_trials, int) or isinstance(n_trials, bool) or n_trials < 1:
        raise ConfigError(f"n_trials must be an integer >= 1, got {n_trials!r}")
    if timeout is not None and not (isinstance(timeout, int | float) and timeout > 0):
        raise ConfigError(f"timeout must be a number of seconds > 0, got {timeout!r}")
    if (
        isinstance(directions, str)
        or not directions
        or any(d not in ("maximize", "minimize") for d in directions)
    ):
        raise ConfigError(
            f"directions must be a list of 'maximize' / 'minimize', got {directions!r}"
        )
    if sampler not in SAMPLERS:
        raise ConfigError(f"sampler {sampler!r} is not one of {', '.join(SAMPLERS)}")
    if pruner not in PRUNERS:
        raise ConfigError(f"pruner {pruner!r} is not one of asha, hyperband, median, None")
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ConfigError(f"workers must be an integer >= 1, got {workers!r}")
    if callable(space):
        return
    if not isinstance(space, dict) or not space:
        raise ConfigError("space must be a non-empty dict of name: spec, or a function(trial)")
    for name, spec in space.items():
        _check_spec(name, spec)


def _check_spec(name: str, spec: Any) -> None:
    if isinstance(spec, list):
        if not spec:
            raise ConfigError(f"space[{name!r}]: an empty list of choices")
        return
    if not isinstance(spec, tuple | list) or len(spec) not in (3, 4) or spec[0] not in KINDS:
        raise ConfigError(
            f"space[{name!r}] = {spec!r}: give (kind, low, high) with kind one of "
            f"{', '.join(KINDS)}, or a list of choices"
        )
    kind, low, high = spec[:3]
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high)):
        raise ConfigError(f"space[{name!r}]: bounds must be numbers, got {low!r} and {high!r}")
    if low > high:
        raise ConfigError(f"space[{name!r}]: the bounds are inverted ({low} > {high})")
    if kind in ("log", "int_log") and low <= 0:
        raise ConfigError(f"space[{name!r}]: a log scale needs low > 0, got {low}")
    if kind.startswith("int") and not (float(low).is_integer() and float(high).is_integer()):
        raise ConfigError(f"space[{name!r}]: integer bounds needed, got {low} and {high}")


def _check_importable(objective: Any, space: Any) -> None:
    for what, obj in (("objective", objective), ("space", space)):
        if callable(obj) and not isinstance(obj, dict) and (
            getattr(obj, "__qualname__", "").count("<") or obj.__module__ == "__main__"
        ):  # fmt: skip
            raise ConfigError(
                f"workers > 1 runs the {what} in other processes: make it a function defined "
                "at the top of an importable module (not a lambda, a nested function, or one "
                "in __main__)"
            )


# -- objectives --------------------------------------------------------------------------------
def _objective(objective: Any, space: Any) -> Callable[[Any], Any]:
    if isinstance(objective, dict):
        return _TrainObjective(objective, space)
    if not callable(objective):
        raise ConfigError(
            f"objective must be a function of the parameters or a training config dict, got "
            f"{type(objective).__name__}"
        )
    takes_trial = len(inspect.signature(objective).parameters) >= 2
    label = trials.name_of(objective)

    def run(trial: Any) -> Any:
        with trials.started(trial):
            params = _suggest(trial, space)
            args = (params, trial) if takes_trial else (params,)
            return trials.user_call(
                f"the objective {label} on trial {trial.number}'s parameters {params}",
                f"{label} with these parameters (call it alone to see the traceback)",
                objective, *args,
            )  # fmt: skip

    return run


def _suggest(trial: Any, space: Any) -> dict[str, Any]:
    if not callable(space):
        return suggest(trial, space)
    return trials.user_call(
        f"the space function {trials.name_of(space)} on trial {trial.number}",
        "that it suggests every parameter with trial.suggest_* and returns them as a dict",
        suggest, trial, space,
    )  # fmt: skip


class _TrainObjective:
    """Each trial one ``nimbleml.train`` run; the validation metric of each epoch goes to the
    pruner, which can stop the run at the end of any epoch."""

    def __init__(self, config: dict[str, Any], space: Any) -> None:
        from ..train.config import TrainConfig

        missing = [k for k in ("model", "train", "val") if k not in config]
        if missing:
            raise ConfigError(
                f"a training config needs {', '.join(missing)} (model: a function of the "
                "parameters returning a torch module; train and val: the data)"
            )
        self.config, self.space = dict(config), space
        self.train_names = set(TrainConfig.names())
        self.options = {k: v for k, v in config.items() if k not in ("model", "train", "val")}
        unknown = [k for k in self.options if k not in self.train_names]
        if unknown:
            raise ConfigError(f"unknown training option(s) in the config: {', '.join(unknown)}")

    group: Any = None  # the process group under torchrun (rank 0 sends each trial's params)

    def follow(self, group: Any) -> None:
        """Rank > 0 under torchrun: train each trial rank 0 sends, until it sends None. The
        pruner's "stop" reaches this rank through the Trainer (rank 0's say is shared)."""
        from ..train import train

        try:
            while (params := group.share(None)) is not None:
                options, model_args = self._split(params)
                train(self.config["model"](**model_args), self.config["train"],
                      self.config["val"], **options)  # fmt: skip
        finally:
            group.close()

    def _split(self, params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        options = {**self.options, **{k: v for k, v in params.items() if k in self.train_names}}
        options.setdefault("metric", "accuracy")
        return options, {k: v for k, v in params.items() if k not in self.train_names}

    def __call__(self, trial: Any) -> float:
        optuna = require("optuna", "nimbleml.tune")
        from ..train import train

        with trials.started(trial):
            return self._run(trial, optuna, train)

    def _run(self, trial: Any, optuna: Any, train: Any) -> float:
        params = _suggest(trial, self.space)
        if self.group is not None:
            self.group.share(params)  # every rank trains this trial
        options, model_args = self._split(params)
        build = self.config["model"]
        label = f"{trials.name_of(build)}({', '.join(f'{k}={v!r}' for k, v in model_args.items())})"
        pruned = []

        def report(event: str, info: dict[str, Any]) -> str | None:
            if event != "epoch_end" or "val_metric" not in info:
                return None
            value = float(info["val_metric"])
            trial.report(value, info["epoch"])
            if trial.should_prune():
                pruned.append(info["epoch"])
                return "stop"
            return None

        options["callbacks"] = [*options.get("callbacks", ()), report]
        model = trials.user_call(
            f"the training config's model function {label} (trial {trial.number})",
            "that it takes these parameters and returns a torch module", build, **model_args,
        )  # fmt: skip
        result = trials.user_call(
            f"training trial {trial.number}'s model {label}",
            "that the model takes the training data's inputs and its outputs fit the labels",
            train, model, self.config["train"], self.config["val"], **options,
        )  # fmt: skip
        if pruned:
            raise optuna.TrialPruned(f"pruned after epoch {pruned[0]}")
        values = [r["val_metric"] for r in result.history if "val_metric" in r]
        if not values:
            warn("the training config's runs give no val_metric: the study has nothing to judge")
            return float("nan")
        return float(values[-1])
