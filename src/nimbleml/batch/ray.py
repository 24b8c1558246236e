"""Batch prediction on a Ray cluster: ``predict_file(..., ray="auto")``.

The same job as :mod:`nimbleml.batch`, run by Ray Data, the existing engine for it:
``read_parquet`` (or ``read_csv`` / ``read_numpy``) → ``map_batches`` with the package loaded
once per actor → ``write_parquet`` into ``<out>.ray/``; the driver then joins those files, in
the input's order (``preserve_order``), into ``out``. The package travels to the actors
through Ray's object store, so a cluster's nodes need not see the package's path, but every
node must see the input file and ``<out>.ray/`` (shared storage, as for any Ray Data job).

A worker that dies is retried by Ray; a run stopped on the driver starts over (the local
path's resume needs chunk boundaries that Ray Data does not expose). Column checks that need
the whole file (a missing column, a value that is not a number, with its row number) are made
on the driver before the cluster is asked for anything.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .._deps import require
from ..errors import ConfigError, DataError
from .chunks import check_numbers, dictionary_columns, is_numeric, predict_chunk, row_count

RAY_INPUTS = (".parquet", ".csv", ".npy")


def run_on_ray(package: Any, data: Path, out: Path, *, address: str, workers: int | None,
               batch_size: int, chunk_rows: int, id_column: str | None,
               progress: Callable[[int, int | None], None] | None) -> tuple[int, int]:  # fmt: skip
    """Predict every row of ``data`` on Ray into ``out``; (rows, output files joined)."""
    if data.suffix.lower() not in RAY_INPUTS:
        raise ConfigError(f"{data}: on Ray, predict reads {', '.join(RAY_INPUTS)} files, not "
                          f"'{data.suffix}'; convert it, or run without --ray")  # fmt: skip
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or workers < 1):  # fmt: skip
        raise ConfigError(f"workers must be a whole number >= 1, got {workers!r}")
    ray = require("ray", "batch prediction on Ray (pip install 'nimbleml[ray]')")
    _check_columns_first(package, data, id_column)
    staging = out.with_name(out.name + ".ray")
    shutil.rmtree(staging, ignore_errors=True)  # what a stopped run left: it starts over
    with _connected(ray, address) as cluster_cpus:
        if cluster_cpus < 2:
            raise ConfigError(f"the Ray cluster has {cluster_cpus:g} CPU; predict on Ray needs "
                              "2 or more (one reads and writes); run without --ray")  # fmt: skip
        # one CPU is left to Ray Data's read and write tasks: actors holding every CPU would
        # wait forever for the reads that feed them
        n = workers or max(1, int(cluster_cpus) - 1)
        cpus = (cluster_cpus - 1) / n
        try:
            rows = _job(ray, package, data, staging, n, cpus, batch_size, chunk_rows,
                        id_column)  # fmt: skip
            files = _join(staging, out, id_column)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    if progress is not None:
        progress(rows, rows)
    return rows, files


@contextlib.contextmanager
def _connected(ray: Any, address: str) -> Iterator[float]:
    """Ray, connected to ``address`` ('auto': the cluster this machine belongs to; 'local': a
    new instance on this machine, stopped at the end; 'ray://host:port': Ray Client); already
    connected, that connection is used and kept. Yields the cluster's CPU count."""
    ours = not ray.is_initialized()
    if ours:
        try:
            ray.init(address=None if address == "local" else address, include_dashboard=False,
                     log_to_driver=False, configure_logging=False)  # fmt: skip
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise ConfigError(f"cannot connect to Ray at {address!r} "
                              f"({str(exc).splitlines()[0][:200]}); start one with "
                              "`ray start --head`, or pass --ray local") from None  # fmt: skip
    try:
        yield float(ray.cluster_resources().get("CPU", 1))
    finally:
        if ours:
            ray.shutdown()


def _job(ray: Any, package: Any, data: Path, staging: Path, workers: int, cpus: float,
         batch_size: int, chunk_rows: int, id_column: str | None) -> int:  # fmt: skip
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # the driver numbers rows by position
    context.enable_progress_bars = False
    total = row_count(data)
    # blocks of at most chunk_rows rows, at least one per worker (a file of one row group is
    # read as one block); streaming, so memory stays bounded
    per_block = min(chunk_rows, -(-total // workers)) if total else chunk_rows
    reader = {".parquet": ray.data.read_parquet, ".csv": ray.data.read_csv,
              ".npy": ray.data.read_numpy}[data.suffix.lower()]  # fmt: skip
    ds = reader(str(data)).repartition(target_num_rows_per_block=max(1, per_block))
    ds = ds.map_batches(_Predictor, fn_constructor_args=(_pack(package), cpus,
                                                         batch_size, id_column, data.name),
                        batch_size=chunk_rows, batch_format="pandas", num_cpus=cpus,
                        compute=ray.data.ActorPoolStrategy(size=workers))  # fmt: skip
    ds.write_parquet(str(staging))
    return int(sum(_parquet_rows(f) for f in _files(staging)))


class _Predictor:
    """One per Ray actor: the package unpacked and loaded once, then called per batch."""

    def __init__(self, packed: bytes, cpus: float, batch_size: int, id_column: str | None,
                 source: str) -> None:  # fmt: skip
        from ..package import load

        self._dir = tempfile.mkdtemp(prefix="nimbleml-ray-")
        with tarfile.open(fileobj=io.BytesIO(packed)) as tar:
            tar.extractall(self._dir, filter="data")
        folder = Path(self._dir) / "package.nimble"
        manifest = json.loads((folder / "manifest.json").read_text())
        # ONNX Runtime's threads: this actor's share of the node, not every core of it
        manifest.setdefault("runtime", {})["intra_op_num_threads"] = max(1, int(cpus))
        (folder / "manifest.json").write_text(json.dumps(manifest))
        self.package = load(folder)
        self.batch_size, self.id_column, self.source = batch_size, id_column, Path(source)

    def __call__(self, frame: Any) -> Any:
        if "data" in frame.columns and frame.shape[1] == 1:  # read_numpy: one column of rows
            pd = require("pandas", "batch prediction")
            X = np.stack(frame["data"].to_numpy())
            frame = pd.DataFrame(X, columns=[f"x{j}" for j in range(X.shape[1])])
        columns = predict_chunk(self.package, frame, 0, self.batch_size, self.id_column,
                                 self.source)  # fmt: skip
        if self.id_column is None:
            del columns["row"]  # numbered by the driver, which knows each row's place
        return require("pandas", "batch prediction").DataFrame(columns)

    def __del__(self) -> None:
        shutil.rmtree(getattr(self, "_dir", ""), ignore_errors=True)


def _pack(package: Any) -> bytes:
    """The package folder as a tar archive in memory (a few MB: it is sent once per actor)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(str(package.directory), arcname="package.nimble")
    return buffer.getvalue()


def _check_columns_first(package: Any, data: Path, id_column: str | None) -> None:
    """What the local path reports chunk by chunk, found before Ray starts: a missing column,
    and a value that is not a number with its row number. A Parquet file's numeric columns
    need no look (their type says so); a CSV is read once, in chunks."""
    pd = require("pandas", "batch prediction")
    suffix = data.suffix.lower()
    if suffix == ".npy":
        return  # numbers by construction; the width is checked by the package itself
    if suffix == ".csv":
        columns = list(pd.read_csv(data, nrows=0).columns)
    else:
        pa = require("pyarrow", "Parquet files")
        schema = require("pyarrow.parquet", "Parquet files").ParquetFile(data).schema_arrow
        columns = list(schema.names)
    if id_column is not None and id_column not in columns:
        raise DataError(f"{data}: no id column {id_column!r}; columns: "
                        f"{', '.join(map(str, columns[:12]))}")  # fmt: skip
    used = [c for c in columns if c != id_column]
    specs = package.inputs
    names = [s.name for s in specs]
    if len(specs) > 1 or names[0] in used:  # inputs are columns, by name
        missing = [n for n in names if n not in used]
        if missing:
            raise DataError(f"{data}: no column {', '.join(map(repr, missing))}; the package "
                            f"takes {', '.join(names)}")  # fmt: skip
        numeric = [s.name for s in specs if is_numeric(s.dtype)]
    else:  # every column is one feature of one 2-D input
        width = specs[0].shape[-1] if len(specs[0].shape) == 2 else None
        if isinstance(width, int) and len(used) != width:
            raise DataError(f"{data}: {len(used)} columns, but the package takes {width} "
                            "features (give id_column= for a column of row ids)")  # fmt: skip
        numeric = used
    if suffix == ".csv":
        with pd.read_csv(data, usecols=numeric, chunksize=65536) as chunks:
            for i, frame in enumerate(chunks):
                check_numbers(frame, i * 65536, data)
        return
    for name in numeric:
        kind = schema.field(name).type
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)
                or pa.types.is_boolean(kind)):  # fmt: skip
            check_numbers(pd.read_parquet(data, columns=[name]), 0, data)


def _files(staging: Path) -> list[Path]:
    return sorted(staging.glob("*.parquet"))


def _parquet_rows(path: Path) -> int:
    pq = require("pyarrow.parquet", "Parquet files")
    return int(pq.ParquetFile(path).metadata.num_rows)


def _join(staging: Path, out: Path, id_column: str | None) -> int:
    """Ray's output files, in order, into ``out``; rows numbered from 0 without id_column."""
    pa = require("pyarrow", "Parquet files")
    pq = require("pyarrow.parquet", "Parquet files")
    files = _files(staging)
    tmp = out.with_name(out.name + ".tmp")
    tmp.unlink(missing_ok=True)
    offset, writer = 0, None
    try:
        for f in files:
            table = pq.read_table(f)
            if id_column is None:
                rows = pa.array(np.arange(offset, offset + table.num_rows))
                table = table.add_column(0, "row", rows)
            offset += table.num_rows
            if out.suffix == ".parquet":
                names, types = table.schema.names, table.schema.types
                writer = writer or pq.ParquetWriter(
                    tmp, table.schema, use_dictionary=dictionary_columns(names, types)
                )
                writer.write_table(table)
            else:
                table.to_pandas().to_csv(tmp, mode="a", header=writer is None, index=False)
                writer = writer or True
    finally:
        if writer not in (None, True):
            writer.close()
    if writer is None:
        require("pandas", "batch prediction").DataFrame({"row": []}).to_parquet(tmp)
    os.replace(tmp, out)
    return len(files)


__all__ = ["RAY_INPUTS", "run_on_ray"]
