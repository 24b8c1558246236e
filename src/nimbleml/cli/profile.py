"""The profile verb: where a model's (or a training step's) time goes, and what to try."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from ..errors import ConfigError
from ._common import _batch_sizes, _data, _guard, _show, check_writable


def profile(
    model: str = typer.Argument(
        ...,
        help="a .nimble package, an .onnx file, a TorchScript/.pt2 file, or module:function "
        "returning a torch.nn.Module",
    ),
    data: str = typer.Option(
        ...,
        help="input data (.npz/.npy/.csv); with --train, training data with labels (.npz X,y, "
        ".csv with --target, or module:function returning a Dataset)",
    ),
    batch_size: str | None = typer.Option(
        None, help="comma-separated batch sizes [1,32; with --train 64]"
    ),
    output: Path | None = typer.Option(
        None,
        "-o",
        "--output",
        help="write profile.txt, profile.json, profile.png and Chrome traces (Perfetto) here",
    ),
    train: bool = typer.Option(
        False,
        "--train",
        help="profile a training step (data loading, forward, backward, optimizer) instead",
    ),
    target: str | None = typer.Option(None, help="target column of a .csv file"),
    loss: str | None = typer.Option(
        None, help="--train: cross_entropy, mse, l1, smooth_l1, bce_with_logits [by target]"
    ),
    optimizer: str | None = typer.Option(None, help="--train: adamw, adam, sgd [adamw]"),
    precision: str | None = typer.Option(
        None, help="--train: auto, fp32, fp16-mixed, bf16-mixed [fp32]"
    ),
    num_workers: int | None = typer.Option(
        None, help="--train: DataLoader workers for a Dataset [0]"
    ),
    runs: int | None = typer.Option(
        None, help="profiled runs per batch size [as many as --time-budget holds, 10-500]"
    ),
    warmup: int = typer.Option(5, help="runs before the profiled ones, not counted"),
    time_budget: float = typer.Option(
        1.0, help="seconds of profiled runs per batch size, when --runs is not given"
    ),
    top: int = typer.Option(10, help="rows of the op-type and node tables"),
    trust_pickle: bool = typer.Option(
        False,
        "--trust-pickle",
        help="allow loading pickled PyTorch files (they run code when loaded)",
    ),
) -> None:
    """Profile a model or a training step: op table, top nodes, overhead, bottlenecks."""

    def go() -> None:
        from ..profile import profile as run_profile

        if output is not None:
            check_writable(output, folder=True)
        sizes = _batch_sizes(batch_size or ("64" if train else "1,32"))
        for flag, value, least in (("--top", top, 1), ("--warmup", warmup, 1), ("--runs", runs, 1)):
            if value is not None and value < least:
                raise ConfigError(f"{flag} must be an integer >= {least}, got {value}")
        if not time_budget > 0:
            raise ConfigError(f"--time-budget must be > 0 seconds, got {time_budget:g}")
        options = _train_options(train, loss, optimizer, precision, num_workers)
        if train:
            from ..train import sources

            inputs: Any = sources.load(data, target, flag="--data")
        else:
            inputs, _ = _data(data, target)
        report = run_profile(
            model, inputs, sizes, train=train, warmup=warmup, runs=runs,
            time_budget_s=time_budget, train_options=options, trust_pickle=trust_pickle,
        )  # fmt: skip
        written = report.save(output) if output is not None else []
        _show(report.table(top))
        if written:
            _show(f"\nwritten to {output}/: {', '.join(p.name for p in written)}")

    _guard(go)


def _train_options(train: bool, loss: str | None, optimizer: str | None,
                   precision: str | None, workers: int | None) -> dict[str, Any] | None:  # fmt: skip
    given = {"--loss": loss, "--optimizer": optimizer, "--precision": precision,
             "--num-workers": workers}  # fmt: skip
    if not train:
        used = [flag for flag, value in given.items() if value is not None]
        if used:
            raise ConfigError(f"{', '.join(used)} set(s) up a training step: add --train")
        return None
    if workers is not None and workers < 0:
        raise ConfigError(f"--num-workers must be >= 0, got {workers}")
    options: dict[str, Any] = {"precision": precision or "fp32"}
    if loss is not None:
        options["loss"] = loss
    if optimizer is not None:
        options["optimizer"] = optimizer
    if workers:
        options["dataloader"] = {"num_workers": workers, "persistent_workers": False}
    return options
