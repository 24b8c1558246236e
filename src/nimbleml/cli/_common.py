"""What every verb shares: the one-line error handler, progress, data and batch-size parsing."""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import typer

from ..errors import ConfigError, NimbleError, is_storage_full, storage_error

T = TypeVar("T")


# API keyword arguments named in error messages, in the words of the CLI (issue 11: errors
# speak the CLI's language). Only names that are CLI flags are rewritten.
_DATA_ARGS = {"val": "--val DATA", "calib": "--calib DATA", "example_inputs": "--calib DATA"}
_FLAGS = (
    "quantize",
    "runtime",
    "prune",
    "prune_method",
    "metric",
    "max_drop",
    "trust_pickle",
    "fusion",
    "mode",
    "workers",
    "target",
    "objective",
    "time_budget_s",
    "batch_size",
    "verify",
    "id_column",
    "chunk_rows",
)
_RENAME = {"time_budget_s": "time_budget", "verify": "verify_key"}
_ARG = re.compile(r"\b([a-z_]+)=(\(X, y\)|'[^']*'|\"[^\"]*\"|True|None|[0-9.]+)?")


_PHRASES = {
    "example_inputs=, calib= or val=": "--calib DATA or --val DATA",
    "trust_pickle=True (--trust-pickle)": "--trust-pickle",
    "or None (no quantization)": "or none (no quantization)",
}


def cli_words(message: str) -> str:
    """'use quantize='int8'' -> 'use --quantize int8'; 'pass val=(X, y)' -> 'pass --val DATA'."""
    for api, cli in _PHRASES.items():
        message = message.replace(api, cli)

    def swap(m: re.Match[str]) -> str:
        name, value = m.group(1), m.group(2)
        if name in _DATA_ARGS:
            return _DATA_ARGS[name]
        if name not in _FLAGS:
            return m.group(0)
        flag = "--" + _RENAME.get(name, name).replace("_", "-")
        if value in (None, "True"):
            return flag
        if value == "None":
            return f"{flag} none"
        return f"{flag} {value.strip(chr(39) + chr(34))}"

    return _ARG.sub(swap, message)


def _one_line(message: str) -> str:
    return cli_words(
        " | ".join(part.strip() for part in message.strip().splitlines() if part.strip())
    )


def _fail(message: str) -> None:
    one_line = _one_line(message)
    typer.echo(f"error: {one_line}", err=True)
    raise typer.Exit(2)


DEBUG = {"on": False}  # set by the top-level --debug option


def show_warnings_plainly() -> None:
    """Warnings on the command line: 'warning: <message>' once each, in the CLI's words, not
    Python's '<file>:<line>: UserWarning' with a line of our source."""
    seen: set[str] = set()

    def show(message: Any, category: Any, filename: str, lineno: int, *_: Any, **__: Any) -> None:
        text = _one_line(str(message))
        if DEBUG["on"]:
            text += f" ({category.__name__} at {filename}:{lineno})"
        if text not in seen:
            seen.add(text)
            print(f"warning: {text}", file=sys.stderr)

    warnings.showwarning = show


INTERRUPTED = "interrupted; run the same command to resume"


def interrupted() -> None:
    """Ctrl-C / SIGINT anywhere: one line on stderr and exit 130 (128 + SIGINT), the shell's
    convention, never a KeyboardInterrupt traceback."""
    typer.echo(f"\n{INTERRUPTED}" if sys.stderr.isatty() else INTERRUPTED, err=True)
    raise typer.Exit(130)


def _cannot_write(exc: BaseException) -> bool:
    import errno

    return isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM)


def _guard(fn: Callable[[], T]) -> T:
    """User errors: one line, exit 2. Anything else is nimbleml's bug: one line too, exit 1,
    with the traceback only under --debug (a user never has to read one)."""
    HINTS.clear()
    try:
        return fn()
    except NimbleError as exc:
        _fail(" | ".join([str(exc), *HINTS]))
    except FileNotFoundError as exc:
        _fail(f"file not found: {exc.filename}")
    except KeyboardInterrupt:
        interrupted()
    except (typer.Exit, typer.Abort):
        raise
    except Exception as exc:
        if DEBUG["on"]:
            raise
        if is_storage_full(exc) or _cannot_write(exc):  # the disk's, not nimbleml's
            _fail(str(storage_error(getattr(exc, "filename", None), exc)))
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


# hints added to the next error line: what the CLI noticed while reading the arguments
HINTS: list[str] = []
LABEL_LIKE = ("label", "labels", "target", "y", "class", "outcome")


def _data(path: str | None, target: str | None) -> tuple[Any, Any]:
    from ..inputs import load_data

    if path is None:
        return None, None
    X, y = load_data(path, target)
    if target is None and path.lower().endswith(".csv"):
        with open(path, newline="") as fh:
            header = [c.strip() for c in fh.readline().split(",")]
        named = next((c for c in header if c.lower() in LABEL_LIKE), None)
        hint = f"pass --target {named} if that column holds the labels" if named else (
            "pass --target COLUMN to name the label column")  # fmt: skip
        HINTS.append(f"{path} was read without --target, so all {len(header)} of its columns "
                     f"are inputs; {hint}")  # fmt: skip
    return X, y


def check_writable(path: Any, folder: bool = False) -> None:
    """Refuse an output path that cannot be written before any work is done (a benchmark
    must not run for minutes to fail at its last step). Creates nothing."""
    import os
    import tempfile
    from pathlib import Path

    target = Path(path)
    if target.exists() and (target.is_dir() != folder):
        kind = "a folder" if target.is_dir() else "a file"
        want = "a folder (a package or report)" if folder else "a file"
        raise ConfigError(
            f"{target} exists and is {kind}, but this output is {want}: give another path"
        )
    parent = target if folder and target.exists() else target.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".nimbleml-check-"):
            pass
    except OSError as exc:
        raise ConfigError(
            f"cannot write {target}: {parent} is not writable ({exc.strerror or exc})"
        ) from None
    if not os.access(parent, os.W_OK):  # pragma: no cover - root passes the test above
        raise ConfigError(f"cannot write {target}: {parent} is not writable")


def _batch_sizes(text: str, flag: str = "--batch-size") -> list[int]:
    try:
        sizes = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise ConfigError(
            f"{flag} takes comma-separated integers like 1,32; got {text!r}"
        ) from None
    if not sizes or any(s < 1 for s in sizes):
        raise ConfigError(f"{flag} takes positive integers like 1,32; got {text!r}")
    return sizes


def _show(text: str) -> None:
    typer.echo(text)
