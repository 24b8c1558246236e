"""Batch prediction over a file: ``nimbleml.predict_file(package, "in.csv", "out.parquet")``.

The input is read in chunks of ``chunk_rows`` (CSV through pandas, Parquet through pyarrow's
record batches, ``.npy`` memory-mapped), so memory stays bounded whatever the file's size;
each chunk runs through the package in batches of ``batch_size`` and its outputs, with the
rows' ids, are written as one part file, atomically, in ``<out>.parts/``. A run that stops
(a crash, Ctrl-C, a bad row) keeps its finished parts: the next run of the same job (the same
input file, package and chunk size, recorded in ``job.json``) skips them. A part counts as
finished only as ``done.jsonl`` records it (its size and sha256, appended once the part is
in place): a part cut short (a disk that lost a file's tail) or one a kill left unrecorded is
done again, never joined into the output. When every chunk is done the parts are joined into
``out`` and the folder is removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._deps import require
from ..errors import ConfigError, DataError, storage_error
from ..package import sha256
from .chunks import dictionary_columns, predict_chunk, read_chunks, row_count

INPUTS = (".csv", ".parquet", ".npy", ".npz")
OUTPUTS = (".csv", ".parquet")


@dataclass
class PredictResult:
    out: Path
    rows: int
    chunks: int
    resumed_chunks: int  # parts a previous run had finished, not computed again
    seconds: float

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


def predict_file(package: Any, data: str | Path, out: str | Path, *, batch_size: int = 256,
                 chunk_rows: int = 65536, id_column: str | None = None, resume: bool = True,
                 progress: Callable[[int, int | None], None] | None = None,
                 ray: str | None = None, workers: int | None = None) -> PredictResult:  # fmt: skip
    """Run ``package`` (a .nimble path or a loaded Package) over every row of ``data`` (.csv,
    .parquet, .npy or .npz with X) and write its outputs to ``out`` (.csv or .parquet) with
    each row's id: ``id_column``'s values, or the row number from 0. ``progress(rows_done,
    rows_total)`` is called after each chunk (rows_total None when the file does not say).
    ``resume=False`` discards what an unfinished run of another job left in ``<out>.parts``.

    ``ray``: run the job on Ray Data instead ('auto': the cluster this machine belongs to,
    'ray://host:port', or 'local': a new instance here), with ``workers`` actors (every CPU
    but one); see :mod:`nimbleml.batch.ray`."""
    from ..package import Package, load

    data, out = Path(data), Path(out)
    _check_options(data, out, batch_size, chunk_rows)
    pkg = package if isinstance(package, Package) else load(package)
    if ray is not None:
        from .ray import run_on_ray

        started = time.perf_counter()
        rows, files = run_on_ray(pkg, data, out, address=ray, workers=workers,
                                 batch_size=batch_size, chunk_rows=chunk_rows,
                                 id_column=id_column, progress=progress)  # fmt: skip
        return PredictResult(out, rows, files, 0, time.perf_counter() - started)
    parts = out.with_name(out.name + ".parts")
    job = {"input": str(data.resolve()), "size": data.stat().st_size,
           "mtime_ns": data.stat().st_mtime_ns, "content": content_fingerprint(data),
           "chunk_rows": chunk_rows,
           "package": _fingerprint(pkg), "id_column": id_column, "out": out.suffix,
           "parts": _part_suffix(out)}  # fmt: skip
    _open_parts(parts, job, resume)
    started = time.perf_counter()
    try:
        with contextlib.closing(read_chunks(data, chunk_rows)) as reader:  # closed on errors too
            rows, chunks, resumed = _run(reader, pkg, parts, out, batch_size, id_column, data,
                                         progress)  # fmt: skip
    except BaseException:
        if not _finished(parts):  # nothing worth keeping: leave no folder behind
            shutil.rmtree(parts, ignore_errors=True)
        raise
    _join(parts, out, chunks)
    shutil.rmtree(parts)
    return PredictResult(out, rows, chunks, resumed, time.perf_counter() - started)


def _run(reader: Iterator[tuple[int, int, Any]], pkg: Any, parts: Path, out: Path,
         batch_size: int, id_column: str | None, data: Path,
         progress: Callable[[int, int | None], None] | None) -> tuple[int, int, int]:  # fmt: skip
    """Every chunk not done yet, predicted and written; (rows, chunks, chunks resumed)."""
    done = _finished(parts)
    total = row_count(data)
    rows = chunks = resumed = 0
    for index, offset, frame in reader:
        part = parts / f"part-{index:06d}{_part_suffix(out)}"
        n = len(frame)
        if index in done:
            resumed += 1
        else:
            table = predict_chunk(pkg, frame, offset, batch_size, id_column, data)
            with _writing(part):
                _write_atomic(table, part)
                _record(parts, part)
        rows, chunks = rows + n, chunks + 1
        if progress is not None:
            progress(rows, total)
    return rows, chunks, resumed


def _check_options(data: Path, out: Path, batch_size: int, chunk_rows: int) -> None:
    if not data.is_file():
        raise DataError(f"data file not found: {data}")
    if data.suffix.lower() not in INPUTS:
        raise ConfigError(f"{data}: predict reads {', '.join(INPUTS)} files, not '{data.suffix}'")
    if out.suffix.lower() not in OUTPUTS:
        raise ConfigError(f"{out}: predict writes {', '.join(OUTPUTS)} files, not '{out.suffix}'")
    if out.resolve() == data.resolve():
        raise ConfigError(f"{out} is the input file: give another output path")
    for name, value in (("batch_size", batch_size), ("chunk_rows", chunk_rows)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a whole number >= 1, got {value!r}")
    if out.suffix.lower() == ".parquet" or data.suffix.lower() == ".parquet":
        require("pyarrow", "Parquet files")


def _fingerprint(pkg: Any) -> str:
    """What the package computes: its manifest and model file, hashed."""
    h = hashlib.sha256(json.dumps(pkg.manifest, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


SAMPLE = 1 << 16  # bytes read at the start, the end and 16 places between


def content_fingerprint(path: Path) -> str:
    """A cheap hash of a file's content (the first and last 64 KiB and 16 blocks spread
    between, ~1 MiB read whatever the size): an edit that keeps the size and sets the mtime
    back still changes it where it touches a sampled block, and the first/last blocks catch
    the common edits (a header, appended or rewritten rows)."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        if size <= 18 * SAMPLE:
            h.update(fh.read())
        else:
            for i in range(18):
                fh.seek((size - SAMPLE) * i // 17)
                h.update(fh.read(SAMPLE))
    return h.hexdigest()[:16]


DONE = "done.jsonl"  # a line per finished part: {"part": name, "bytes": size, "sha256": ...}


def _finished(parts: Path) -> set[int]:
    """The chunk indices whose part files are complete: recorded in done.jsonl and still of
    the recorded size and content (a record a kill cut short is not one)."""
    try:
        lines = (parts / DONE).read_text().splitlines()
    except OSError:
        return set()
    done = set()
    for line in lines:
        try:
            record = json.loads(line)
            path = parts / record["part"]
            if path.stat().st_size == record["bytes"] and sha256(path) == record["sha256"]:
                done.add(int(record["part"][5:11]))
        except (ValueError, KeyError, TypeError, OSError):
            continue
    return done


def _record(parts: Path, part: Path) -> None:
    """``part`` as finished, once it is in place (flushed to the disk first)."""
    line = json.dumps({"part": part.name, "bytes": part.stat().st_size, "sha256": sha256(part)})
    with open(parts / DONE, "a") as fh:
        fh.write(line + "\n")


def _open_parts(parts: Path, job: dict[str, Any], resume: bool) -> None:
    """The parts folder of this job: kept from an unfinished run of the same job, refused
    (or, with resume=False, emptied) when another job left it. A folder this run would make
    on a disk that cannot take it is not left behind."""
    meta = parts / "job.json"
    if parts.exists():
        try:
            same = json.loads(meta.read_text()) == job
        except (OSError, ValueError):
            same = False
        if not same and resume and _finished(parts):
            raise ConfigError(
                f"{parts} holds an unfinished run of another job (another input, package or "
                "chunk size); remove it, or pass resume=False (--restart) to start over"
            )
        if same and resume:
            return
        shutil.rmtree(parts)
    try:
        with _writing(meta):
            parts.mkdir(parents=True)
            tmp = meta.with_name(meta.name + ".tmp")
            tmp.write_text(json.dumps(job))
            os.replace(tmp, meta)
    except BaseException:
        shutil.rmtree(parts, ignore_errors=True)
        raise


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """A write that fails for the disk's sake (full, read-only, not permitted) raised as the
    StorageError naming ``path`` and its folder (an OSError of a write names no file)."""
    try:
        yield
    except OSError as exc:
        raise storage_error(path, exc) from exc


def _part_suffix(out: Path) -> str:
    """Parts of a Parquet output are Arrow IPC files: written and read back at memory speed,
    so the output is encoded as Parquet once, by the join."""
    return ".arrow" if out.suffix == ".parquet" else out.suffix


def _write_atomic(columns: dict[str, np.ndarray], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        if path.suffix == ".arrow":
            pa = require("pyarrow", "Parquet files")
            table = pa.table(columns)
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
                w.write_table(table)
        else:
            require("pandas", "batch prediction").DataFrame(columns).to_csv(tmp, index=False)
        with open(tmp, "rb+") as fh:  # on the disk before the rename, or a crash cuts it short
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _join(parts: Path, out: Path, chunks: int) -> None:
    """The parts, in order, into ``out`` (written aside, then moved into place)."""
    files = [parts / f"part-{i:06d}{_part_suffix(out)}" for i in range(chunks)]
    tmp = out.with_name(out.name + ".tmp")
    try:
        with _writing(out):
            _join_into(tmp, files, out)
            os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)  # the parts stay: the next run joins them again
        raise


def _join_into(tmp: Path, files: list[Path], out: Path) -> None:
    if out.suffix == ".parquet":
        pa = require("pyarrow", "Parquet files")
        pq = require("pyarrow.parquet", "Parquet files")
        writer = None
        try:
            for f in files:
                with pa.memory_map(str(f)) as source:  # written while the map is open
                    table = pa.ipc.open_file(source).read_all()
                    schema = table.schema
                    writer = writer or pq.ParquetWriter(
                        tmp, schema, use_dictionary=dictionary_columns(schema.names, schema.types)
                    )
                    writer.write_table(table)
        finally:
            if writer is not None:
                writer.close()
        if writer is None:  # no rows at all
            require("pandas", "batch prediction").DataFrame({"row": []}).to_parquet(tmp)
    else:
        with open(tmp, "wb") as dst:
            for i, f in enumerate(files):
                with open(f, "rb") as src:
                    if i:
                        src.readline()  # the header once
                    shutil.copyfileobj(src, dst)
