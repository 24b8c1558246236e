"""What every verb shares: the one-line error handler, progress, data and batch-size parsing."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import typer

from ..errors import ConfigError, NimbleError

T = TypeVar("T")


def _fail(message: str) -> None:
    one_line = " | ".join(part.strip() for part in message.strip().splitlines() if part.strip())
    typer.echo(f"error: {one_line}", err=True)
    raise typer.Exit(2)


DEBUG = {"on": False}  # set by the top-level --debug option


def _guard(fn: Callable[[], T]) -> T:
    """User errors: one line, exit 2. Anything else is nimbleml's bug: one line too, exit 1,
    with the traceback only under --debug (a user never has to read one)."""
    try:
        return fn()
    except NimbleError as exc:
        _fail(str(exc))
    except FileNotFoundError as exc:
        _fail(f"file not found: {exc.filename}")
    except (typer.Exit, typer.Abort, KeyboardInterrupt):
        raise
    except Exception as exc:
        if DEBUG["on"]:
            raise
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        typer.echo(
            f"error: {type(exc).__name__}: {first} (a bug in nimbleml, not your input; run "
            "with --debug for the traceback and report it)",
            err=True,
        )
        raise typer.Exit(1) from None
    raise AssertionError("unreachable")


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[str], None]]:
    """A spinner with the current step (stderr), or nothing when quiet / not a terminal."""
    if not enabled:
        yield lambda _msg: None
        return
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
        console=Console(stderr=True), transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task("starting", total=None)
        yield lambda msg: bar.update(task, description=msg)


def _data(path: str | None, target: str | None) -> tuple[Any, Any]:
    from ..inputs import load_data

    if path is None:
        return None, None
    return load_data(path, target)


def _batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise ConfigError(
            f"--batch-size takes comma-separated integers like 1,32; got {text!r}"
        ) from None
    if not sizes or any(s < 1 for s in sizes):
        raise ConfigError(f"--batch-size takes positive integers like 1,32; got {text!r}")
    return sizes


def _show(text: str) -> None:
    typer.echo(text)
