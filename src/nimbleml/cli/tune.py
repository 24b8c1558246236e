"""The tune verb: an Optuna study from a YAML file (nimbleml.tune on the command line).

study:
  name: digits-mlp                # resumed when it exists in the storage
  n_trials: 50
  directions: [maximize]
  sampler: tpe                    # tpe, nsga2, random
  pruner: asha                    # asha, hyperband, median, none
  storage: null                   # a .journal file (default <name>.journal), postgresql://...
  workers: 1                      # processes on this host
  timeout: null                   # seconds
space:
  lr: {log: [1.0e-4, 1.0e-1]}
  hidden: {int: [32, 512]}
  dropout: {float: [0.0, 0.5]}
  optimizer: {choices: [adamw, sgd]}
objective: mypkg.search:score     # a function of the parameters, or instead:
training:
  model: mypkg.models:build       # called with the parameters that are not training options
  data: train.npz
  val: val.npz
  epochs: 10                      # and any other nimbleml.train option
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from .._yaml import read_mapping
from ..errors import ConfigError
from ._common import _guard

STUDY = ("name", "n_trials", "directions", "sampler", "pruner", "storage", "workers", "timeout")
SECTIONS = ("study", "space", "objective", "training")
KINDS = ("log", "float", "int", "int_log", "choices")


def tune(
    config: Path = typer.Option(
        ...,
        "--config",
        help="YAML with study:, space:, objective: or training: (see nimbleml tune --help)",
    ),
    storage: str | None = typer.Option(
        None, help="a .journal file or postgresql://user:pass@host/db (overrides study.storage)"
    ),
    n_trials: int | None = typer.Option(None, help="finished trials to reach (study.n_trials)"),
    workers: int | None = typer.Option(None, help="processes on this host (study.workers)"),
    study_name: str | None = typer.Option(None, help="the study's name (study.name)"),
    timeout: float | None = typer.Option(None, help="seconds (study.timeout)"),
) -> None:
    """Search hyperparameters with Optuna; every trial scored, pruned, stored, resumable."""

    def go() -> None:
        from ..search.study import shown
        from ..search.study import tune as run

        spec = read_config(config)
        study_opts = spec["study"]
        for key, value in (("storage", storage), ("n_trials", n_trials), ("workers", workers),
                           ("name", study_name), ("timeout", timeout)):  # fmt: skip
            if value is not None:
                study_opts[key] = value
        name = study_opts.pop("name", None)
        if "directions" in study_opts and isinstance(study_opts["directions"], list):
            study_opts["directions"] = tuple(study_opts["directions"])
        study = run(spec["objective"], spec["space"], study_name=name, **study_opts)
        typer.echo(_table(study))
        where = study_opts.get("storage") or f"{name or 'nimbleml-study'}.journal"
        typer.echo(
            f"storage: {shown(str(where))}   live view: optuna-dashboard {shown(str(where))}"
        )

    _guard(go)


def read_config(path: Path) -> dict[str, Any]:
    data = read_mapping(path, f"with sections {', '.join(SECTIONS)}")
    unknown = [str(k) for k in data if k not in SECTIONS]
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown section(s) {', '.join(unknown)}; known: "
            f"{', '.join(SECTIONS)}"
        )
    study = dict(data.get("study") or {})
    bad = [k for k in study if k not in STUDY]
    if bad:
        raise ConfigError(f"study: unknown key(s) {', '.join(bad)}; known: {', '.join(STUDY)}")
    if str(study.get("pruner", "")).lower() == "none":
        study["pruner"] = None
    space = {name: _space_entry(name, spec) for name, spec in (data.get("space") or {}).items()}
    if not space:
        raise ConfigError(f"config file {path}: space: is empty; give at least one parameter")
    if ("objective" in data) == ("training" in data):
        raise ConfigError(
            "give objective: (module:function of the parameters) or training: (a model and "
            "data for nimbleml.train), one of them"
        )
    return {"study": study, "space": space, "objective": _objective(data)}


def _space_entry(name: str, spec: Any) -> Any:
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
        raise ConfigError(
            f"space: {name}: give one of {', '.join(f'{{{k}: ...}}' for k in KINDS)}, got {spec!r}"
        )
    kind, value = next(iter(spec.items()))
    if kind == "choices":
        if not isinstance(value, list):
            raise ConfigError(f"space: {name}: choices takes a list, got {value!r}")
        return value
    if not isinstance(value, list) or len(value) not in (2, 3):
        raise ConfigError(f"space: {name}: {kind} takes [low, high] (or [low, high, step])")
    return (kind, *value)


def _objective(data: dict[str, Any]) -> Any:
    from ..train import sources

    if "objective" in data:
        return sources.import_object(str(data["objective"]), "objective:")
    training = dict(data["training"] or {})
    for key in ("model", "data", "val"):
        if key not in training:
            raise ConfigError(f"training: needs {key}: (model: module:function; data, val)")
    model = sources.import_object(str(training.pop("model")), "training: model:")
    train = sources.load(str(training.pop("data")), training.pop("target", None), None, "data:")
    val = sources.load(str(training.pop("val")), None, None, "val:")
    return {"model": model, "train": train, "val": val, **training}


def _table(study: Any) -> str:
    from optuna.trial import TrialState

    from ..search.trials import state

    trials = study.get_trials(deepcopy=False)
    order = ("complete", "pruned", "failed", "interrupted", "died", "running", "waiting")
    states = {k: sum(1 for t in trials if state(t) == k) for k in order}
    counts = ", ".join(f"{n} {k}" for k, n in states.items() if n)
    lines = [f"study {study.study_name}: {len(trials)} trials ({counts})"]
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    if not done:
        return "\n".join([*lines, "no trial finished"])
    if len(study.directions) == 1:
        reverse = study.direction.name == "MAXIMIZE"
        top = sorted(done, key=lambda t: t.value, reverse=reverse)[:5]
        lines.append(f"{'trial':>5} {'value':>10}  parameters")
        for t in top:
            params = ", ".join(f"{k}={_fmt(v)}" for k, v in t.params.items())
            lines.append(f"{t.number:>5} {t.value:>10.4f}  {params}")
    else:
        lines.append("Pareto front:")
        for t in study.best_trials:
            params = ", ".join(f"{k}={_fmt(v)}" for k, v in t.params.items())
            lines.append(f"{t.number:>5} {t.values}  {params}")
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
