"""The bench-train verb: one model and its data trained under several configurations in one
run (nimbleml.train.bench), the table printed, JSON + TXT + PNG written with a timestamp."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from ..errors import ConfigError
from ._common import _guard, _show, check_writable


def bench_train(
    model: str = typer.Option(
        ..., "--model", help="module:function (or file.py:function) returning a torch.nn.Module"
    ),
    data: str = typer.Option(
        ..., help="training data: .npz (X, y), .csv with --target, an image folder, module:function"
    ),
    val: str | None = typer.Option(None, help="validation data (final loss and metric on it)"),
    target: str | None = typer.Option(None, help="the label column of .csv data"),
    batch_size: int = typer.Option(64, help="samples per optimizer step"),
    epochs: int = typer.Option(1, help="passes over the data per configuration"),
    lr: float = typer.Option(1e-3, help="learning rate (AdamW)"),
    compare_amp: bool = typer.Option(
        False, "--compare-amp", help="fp32 against the mixed precision this hardware supports"
    ),
    full_suite: bool = typer.Option(
        False,
        "--full-suite",
        help="also accumulation, checkpointing, the tuned DataLoader, the found batch size",
    ),
    repeats: int = typer.Option(1, help="rounds over all configurations (median samples/s)"),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N"),
    output: Path = typer.Option(
        Path("."), "-o", "--output", help="folder for train-bench_<time>.json, .txt and .png"
    ),
) -> None:
    """Train one model under several configurations and compare them side by side."""

    def go() -> None:
        from ..train import sources
        from ..train.bench import bench_train as run
        from ..train.bench import compare_amp as amp_rows
        from ..train.bench import full_suite as suite_rows

        for flag, value in (("--epochs", epochs), ("--batch-size", batch_size),
                            ("--repeats", repeats)):  # fmt: skip
            if value < 1:
                raise ConfigError(f"{flag} must be an integer >= 1, got {value}")
        if not lr > 0:
            raise ConfigError(f"--lr must be > 0, got {lr}")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
            raise ConfigError(f"--device {device!r}: give auto, cpu, cuda or cuda:N")
        check_writable(output, folder=True)
        sources.import_object(model, "--model")  # a wrong name fails before any data is read
        train_data = sources.load(data, target, flag="--data")
        val_data = sources.load(val, target, flag="--val") if val else None
        # --compare-amp is the default; --full-suite holds its rows and more
        configs = suite_rows(train_data, batch_size, device) if full_suite else amp_rows(device)
        result = run(lambda: sources.build_model(model), train_data, configs, val=val_data,
                     epochs=epochs, repeats=repeats, device=device, batch_size=batch_size,
                     lr=lr)  # fmt: skip
        _show(result.table())
        for path in result.save(output):
            _show(f"wrote {path}")

    _guard(go)
