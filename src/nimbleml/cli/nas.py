"""The nas verb: an architecture search judged on the packages that would ship
(nimbleml.search_architecture on the command line).

A YAML file (``--config``) holds the same settings; a flag given wins; an unknown key is an
error that lists the known ones:

    search: {family: mlp, metric: accuracy, n_trials: 40, time_budget: 900, epochs: 10,
             batch_size: 1, seed: 0, storage: nas.journal, start: [{layers: 1, width: 256}]}
    data: {train: train.npz, val: val.npz}
    constraints: {max_latency_ms: 0.5, max_size_mb: 2}
    output: {output: front/}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from ..errors import ConfigError
from ._common import _guard, check_writable

DEFAULTS: dict[str, Any] = {
    "family": "mlp", "metric": "accuracy", "n_trials": 40, "time_budget": 900.0, "epochs": 10,
    "batch_size": 1, "seed": 0, "storage": None, "start": None, "train": None, "val": None,
    "target": None, "max_latency_ms": None, "max_size_mb": None, "output": None, "force": False,
}  # fmt: skip
SECTIONS = {
    "search": ("family", "metric", "n_trials", "time_budget", "epochs", "batch_size", "seed",
               "storage", "start"),
    "data": ("train", "val", "target"),
    "constraints": ("max_latency_ms", "max_size_mb"),
    "output": ("output",),
}  # fmt: skip
WHOLE = ("n_trials", "epochs", "batch_size", "seed")
NUMBERS = ("time_budget", "max_latency_ms", "max_size_mb")


def nas(
    config: Path | None = typer.Option(
        None, "--config", help="YAML with search:, data:, constraints:, output:; flags win"
    ),
    family: str | None = typer.Option(
        None, help="mlp, cnn (image data, N x C x H x W) or encoder (sequences, N x T x F) [mlp]"
    ),
    data: str | None = typer.Option(None, help="training data: .npz (X, y) or .csv with --target"),
    val: str | None = typer.Option(None, help="validation data, the same kinds as --data"),
    target: str | None = typer.Option(None, help="the label column of .csv data"),
    metric: str | None = typer.Option(
        None, help="the metric to maximize, on the package [accuracy]"
    ),
    max_latency_ms: float | None = typer.Option(
        None, help="candidates slower than this at --batch-size are never trained"
    ),
    max_size_mb: float | None = typer.Option(None, help="the same for the package's size"),
    batch_size: int | None = typer.Option(None, help="the batch size latency is measured at [1]"),
    n_trials: int | None = typer.Option(None, help="candidates to try [40]"),
    time_budget: float | None = typer.Option(None, help="seconds the search may take [900]"),
    epochs: int | None = typer.Option(None, help="training epochs of each candidate [10]"),
    storage: str | None = typer.Option(None, help="a .journal file or postgresql://... URL"),
    seed: int | None = typer.Option(None, help="seed of the sampler [0]"),
    output: Path | None = typer.Option(
        None, "-o", "--output", help="folder for the Pareto packages, front.json, .txt, .png"
    ),
    force: bool = typer.Option(
        False, "--force", help="clear -o first when it holds an earlier search's output"
    ),
) -> None:
    """Search architectures for the best metric-latency front, measured on packages."""
    given = {
        "family": family, "train": data, "val": val, "target": target, "metric": metric,
        "max_latency_ms": max_latency_ms, "max_size_mb": max_size_mb, "batch_size": batch_size,
        "n_trials": n_trials, "time_budget": time_budget, "epochs": epochs, "storage": storage,
        "seed": seed, "output": output, "force": force or None,
    }  # fmt: skip
    _guard(lambda: run(settings(given, config)))


def _check(key: str, value: Any, where: str) -> Any:
    if value is None:
        return None
    try:
        if key in WHOLE:
            if isinstance(value, bool) or float(value) != int(float(value)):
                raise ValueError
            return int(float(value))
        if key in NUMBERS:
            return float(value)
    except (TypeError, ValueError):
        kind = "a whole number" if key in WHOLE else "a number"
        raise ConfigError(f"{where} must be {kind}, got {value!r}") from None
    return value


def settings(given: dict[str, Any], config: Path | None) -> dict[str, Any]:
    """Defaults, then the YAML file, then the flags given."""
    spec = dict(DEFAULTS)
    if config is not None:
        from .._yaml import read_sections

        spec.update(read_sections(config, SECTIONS, _check))
    spec.update({k: v for k, v in given.items() if v is not None})
    for key, flag in (("train", "--data"), ("val", "--val"), ("output", "-o")):
        if not spec[key]:
            raise ConfigError(f"no {key}: give {flag} (or {key}: in the --config file)")
    if spec["n_trials"] < 1 or spec["epochs"] < 1 or spec["batch_size"] < 1:
        raise ConfigError("--n-trials, --epochs and --batch-size must be >= 1")
    if spec["time_budget"] <= 0:
        raise ConfigError(f"--time-budget takes seconds > 0, got {spec['time_budget']:g}")
    return spec


def run(spec: dict[str, Any]) -> None:
    import nimbleml

    from ..inputs import refuse_missing_pair
    from ..search.nas_output import prepare as prepare_output
    from ..train import sources

    output = Path(spec["output"])
    check_writable(output, folder=True)
    prepare_output(output, bool(spec["force"]), "-o", "--force")  # before any work
    constraints = {k.removeprefix("max_"): spec[k] for k in ("max_latency_ms", "max_size_mb")
                   if spec[k] is not None}  # fmt: skip
    train = sources.as_arrays(sources.load(str(spec["train"]), spec["target"], None, "--data"),
                              "--data")  # fmt: skip
    valid = sources.as_arrays(sources.load(str(spec["val"]), spec["target"], None, "--val"),
                              "--val")  # fmt: skip
    refuse_missing_pair(train, f"--data {spec['train']}")
    refuse_missing_pair(valid, f"--val {spec['val']}")

    def progress(t: dict[str, Any]) -> None:
        params = ", ".join(f"{k}={v}" for k, v in t["params"].items())
        if t["state"] == "complete":
            what = f"{t['metric_name']} {t['metric']:.4f}, p50 {t['latency_ms']:.4f} ms"
        else:
            what = f"not kept: {t['reason']}"
        # the trial's number is the N of its trial-N.nimble and of the table's rows
        typer.echo(f"trial {t['number']} [{t['count']}/{t['n_trials']}] ({params}): {what}",
                   err=True)  # fmt: skip

    front = nimbleml.search_architecture(
        train, valid, family=spec["family"], metric=spec["metric"], constraints=constraints,
        n_trials=spec["n_trials"], time_budget_s=spec["time_budget"],
        batch_size=spec["batch_size"], epochs=spec["epochs"], storage=spec["storage"],
        out_dir=output, seed=spec["seed"], start=spec["start"], progress=progress,
        device="cpu",
    )  # fmt: skip
    typer.echo(front.table())
    typer.echo(f"front: {output}/ (front.json, front.txt, front.png, trial-N.nimble)")
