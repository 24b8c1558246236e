"""The nas verb: an architecture search judged on the packages that would ship
(nimbleml.search_architecture on the command line)."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import ConfigError
from ._common import _guard, check_writable


def nas(
    family: str = typer.Option(
        "mlp", help="mlp, cnn (image data, N x C x H x W) or encoder (sequences, N x T x F)"
    ),
    data: str = typer.Option(..., help="training data: .npz (X, y) or .csv with --target"),
    val: str = typer.Option(..., help="validation data, the same kinds as --data"),
    target: str | None = typer.Option(None, help="the label column of .csv data"),
    metric: str = typer.Option("accuracy", help="the metric to maximize, on the package"),
    max_latency_ms: float | None = typer.Option(
        None, help="candidates slower than this at --batch-size are never trained"
    ),
    max_size_mb: float | None = typer.Option(None, help="the same for the package's size"),
    batch_size: int = typer.Option(1, help="the batch size latency is measured at"),
    n_trials: int = typer.Option(40, help="candidates to try"),
    time_budget: float = typer.Option(900.0, help="seconds the search may take"),
    epochs: int = typer.Option(10, help="training epochs of each candidate"),
    storage: str | None = typer.Option(None, help="a .journal file or postgresql://... URL"),
    seed: int = typer.Option(0, help="seed of the sampler"),
    output: Path = typer.Option(
        ...,
        "-o",
        "--output",
        help="folder for the Pareto packages, front.json, front.txt, front.png",
    ),
) -> None:
    """Search architectures for the best metric-latency front, measured on packages."""

    def go() -> None:
        import nimbleml

        from ..train import sources

        if n_trials < 1 or epochs < 1 or batch_size < 1 or time_budget <= 0:
            raise ConfigError(
                "--n-trials, --epochs and --batch-size must be >= 1 and --time-budget > 0"
            )
        check_writable(output, folder=True)
        constraints = {}
        if max_latency_ms is not None:
            constraints["latency_ms"] = max_latency_ms
        if max_size_mb is not None:
            constraints["size_mb"] = max_size_mb
        train = sources.as_arrays(sources.load(data, target, None, "--data"), "--data")
        valid = sources.as_arrays(sources.load(val, target, None, "--val"), "--val")
        front = nimbleml.search_architecture(
            train, valid, family=family, metric=metric, constraints=constraints,
            n_trials=n_trials, time_budget_s=time_budget, batch_size=batch_size,
            epochs=epochs, storage=storage, out_dir=output, seed=seed, device="cpu",
        )  # fmt: skip
        typer.echo(front.table())
        typer.echo(f"front: {output}/ (front.json, front.txt, front.png, trial-N.nimble)")

    _guard(go)
