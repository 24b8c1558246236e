"""The predict verb: a package over every row of a file, in bounded memory, resumable."""

from __future__ import annotations

from pathlib import Path

import typer

from ._common import _guard


def predict(
    package: str = typer.Argument(..., help="the .nimble package to run"),
    data: str = typer.Option(..., help="input rows: .csv, .parquet, .npy or .npz (X)"),
    out: Path = typer.Option(..., help="where the outputs go: .csv or .parquet"),
    batch_size: int = typer.Option(256, help="rows per call of the package"),
    chunk_rows: int = typer.Option(65536, help="rows read, predicted and written at a time"),
    id_column: str | None = typer.Option(
        None, help="a column of row ids, copied to the output [the row number from 0]"
    ),
    restart: bool = typer.Option(
        False, "--restart", help="discard an unfinished run of another job in OUT.parts/"
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
    ray: str | None = typer.Option(
        None, help="run on Ray Data: auto (this machine's cluster), ray://HOST:PORT, or local"
    ),
    workers: int | None = typer.Option(
        None, help="Ray actors, each with the package loaded once [every CPU but one]"
    ),
) -> None:
    """Predict every row of a file; an interrupted run resumes where it stopped."""

    def go() -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        from ..batch import predict_file

        columns = (TextColumn("{task.completed:,.0f} rows"), BarColumn(),
                   TextColumn("{task.fields[speed]}"), TimeElapsedColumn())  # fmt: skip
        started = __import__("time").perf_counter()
        with Progress(*columns, disable=quiet, transient=True) as bar:
            task = bar.add_task("predict", total=None, speed="")

            def show(rows: int, total: int | None) -> None:
                elapsed = __import__("time").perf_counter() - started
                speed = f"{rows / elapsed:,.0f} rows/s" if elapsed > 0 else ""
                bar.update(task, completed=rows, total=total, speed=speed)

            res = predict_file(package, data, out, batch_size=batch_size,
                               chunk_rows=chunk_rows, id_column=id_column,
                               resume=not restart, progress=show, ray=ray,
                               workers=workers)  # fmt: skip
        if ray is not None:
            typer.echo(f"{res.rows:,} rows on Ray in {res.seconds:.1f} s "
                       f"({res.rows_per_second:,.0f} rows/s): {res.out}")  # fmt: skip
            return
        resumed = f", {res.resumed_chunks} chunk(s) kept from an earlier run" if (
            res.resumed_chunks) else ""  # fmt: skip
        typer.echo(f"{res.rows:,} rows in {res.chunks} chunk(s), {res.rows_per_second:,.0f} "
                   f"rows/s{resumed}: {res.out}")  # fmt: skip

    _guard(go)
