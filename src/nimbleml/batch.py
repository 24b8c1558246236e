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
import zipfile
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._deps import require
from .errors import ConfigError, DataError, storage_error
from .inputs import refuse_missing
from .package import sha256
from .verify import verified_on_missing

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
    but one); see :mod:`nimbleml.batch_ray`."""
    from .package import Package, load

    data, out = Path(data), Path(out)
    _check_options(data, out, batch_size, chunk_rows)
    pkg = package if isinstance(package, Package) else load(package)
    if ray is not None:
        from .batch_ray import run_on_ray

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
        with contextlib.closing(_chunks(data, chunk_rows)) as reader:  # closed on errors too
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
    total = _row_count(data)
    rows = chunks = resumed = 0
    for index, offset, frame in reader:
        part = parts / f"part-{index:06d}{_part_suffix(out)}"
        n = len(frame)
        if index in done:
            resumed += 1
        else:
            table = _predict_chunk(pkg, frame, offset, batch_size, id_column, data)
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


def _row_count(data: Path) -> int | None:
    suffix = data.suffix.lower()
    if suffix == ".parquet":
        return int(require("pyarrow.parquet", "Parquet files").ParquetFile(data).metadata.num_rows)
    if suffix == ".npy":
        return int(np.load(data, mmap_mode="r").shape[0])
    if suffix == ".npz":  # from X's header: the array itself is read once, by _chunks
        with zipfile.ZipFile(data) as z:
            if "X.npy" not in z.namelist():
                return None
            with z.open("X.npy") as f:
                version = np.lib.format.read_magic(f)
                read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                        else np.lib.format.read_array_header_2_0)  # fmt: skip
                return int(read(f)[0][0])
    return None  # a CSV's rows are known at the end


def _chunks(data: Path, rows: int) -> Generator[tuple[int, int, Any], None, None]:
    """(chunk index, first row number, DataFrame or, from Parquet, Arrow RecordBatch) for each
    chunk of the file."""
    pd = require("pandas", "batch prediction")
    suffix = data.suffix.lower()
    if suffix == ".csv":
        try:
            with pd.read_csv(data, chunksize=rows) as reader:
                for i, frame in enumerate(reader):
                    yield i, i * rows, frame
        except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
            raise DataError(f"{data}: not a readable CSV ({str(exc).splitlines()[0]})") from None
        return
    if suffix == ".parquet":
        pq = require("pyarrow.parquet", "Parquet files")
        with pq.ParquetFile(data) as f:
            for i, batch in enumerate(f.iter_batches(batch_size=rows)):
                yield i, i * rows, batch  # to pandas only if the fast path does not apply
        return
    if suffix == ".npy":
        X = np.load(data, mmap_mode="r")  # bounded memory: pages come in as chunks are read
    else:
        with np.load(data) as z:
            if "X" not in z.files:
                raise DataError(f"{data} has no array 'X' (it has {', '.join(z.files)})")
            X = z["X"]
    if X.ndim != 2:
        raise DataError(f"{data}: X must be 2-D (rows, features), it is {X.shape}")
    for i, start in enumerate(range(0, X.shape[0], rows)):
        block = np.asarray(X[start : start + rows])
        yield i, start, pd.DataFrame(block, columns=[f"x{j}" for j in range(block.shape[1])])


def _predict_chunk(pkg: Any, frame: Any, offset: int, batch_size: int, id_column: str | None,
                   data: Path) -> dict[str, np.ndarray]:  # fmt: skip
    """The chunk's outputs, by column: the ids first, then each output (2-D ones flattened
    into name_0, name_1, ...)."""
    fast = _arrow_matrix(pkg, frame, offset, id_column)
    if fast is not None:
        ids, inputs = fast
    else:
        if not hasattr(frame, "iloc"):  # an Arrow batch the fast path does not take
            frame = frame.to_pandas()
        if id_column is not None:
            if id_column not in frame.columns:
                raise DataError(f"{data}: no id column {id_column!r}; columns: "
                                f"{', '.join(map(str, frame.columns[:12]))}")  # fmt: skip
            ids = frame[id_column].to_numpy()
            frame = frame.drop(columns=[id_column])
        else:
            ids = np.arange(offset, offset + len(frame))
        inputs = _inputs(pkg, frame, offset, data)
    if not verified_on_missing(pkg.manifest):  # the one missing-value policy (issue 22)
        refuse_missing(inputs, str(data), row_offset=offset)
    outs: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(ids), batch_size):
        piece = _rows(inputs, slice(start, start + batch_size))
        for name, value in pkg.run(piece).items():
            outs.setdefault(name, []).append(np.asarray(value))
    columns: dict[str, np.ndarray] = {id_column or "row": ids}
    for name, values in outs.items():
        value = np.concatenate(values)
        if value.ndim == 1:
            columns[name] = value
        else:
            flat = value.reshape(len(value), -1)
            for k in range(flat.shape[1]):
                columns[f"{name}_{k}"] = flat[:, k]
    return columns


def _arrow_matrix(pkg: Any, batch: Any, offset: int,
                  id_column: str | None) -> tuple[np.ndarray, np.ndarray] | None:  # fmt: skip
    """(ids, row-major rows in the input's float dtype) straight from an Arrow batch of numbers, for a package
    taking one 2-D float input: no pandas in between (its conversions cost a third of the
    run). None where it does not apply; the general path then also names what is wrong."""
    if hasattr(batch, "iloc") or len(pkg.inputs) != 1:
        return None
    spec = pkg.inputs[0]
    pa = require("pyarrow", "Parquet files")
    names = [n for n in batch.schema.names if n != id_column]
    width = spec.shape[-1] if len(spec.shape) == 2 else None
    numeric = all(pa.types.is_floating(batch.schema.field(n).type)
                  or pa.types.is_integer(batch.schema.field(n).type) for n in names)  # fmt: skip
    if (not spec.dtype.startswith("float") or not isinstance(width, int) or len(names) != width
            or spec.name in names or not numeric
            or (id_column is not None and id_column not in batch.schema.names)):  # fmt: skip
        return None
    X = np.empty((batch.num_rows, width), dtype=spec.dtype)  # float64 for a double graph
    for j, name in enumerate(names):
        X[:, j] = batch.column(name).to_numpy(zero_copy_only=False)  # nulls become NaN
    if id_column is not None:
        return batch.column(id_column).to_numpy(zero_copy_only=False), X
    return np.arange(offset, offset + batch.num_rows), X


def _inputs(pkg: Any, frame: Any, offset: int, data: Path) -> Any:
    """The chunk as the package's inputs: its columns by name when the inputs are columns,
    else every column as one 2-D array; a missing column or a value that is not a number is
    named with its row."""
    specs = pkg.inputs
    names = [s.name for s in specs]
    if len(specs) > 1 or names[0] in frame.columns:
        missing = [n for n in names if n not in frame.columns]
        if missing:
            raise DataError(f"{data}: no column {', '.join(map(repr, missing))}; the package "
                            f"takes {', '.join(names)}")  # fmt: skip
        for spec in specs:
            if _numeric(spec.dtype):
                _check_numbers(frame[[spec.name]], offset, data)
        return frame
    width = specs[0].shape[-1] if len(specs[0].shape) == 2 else None
    if isinstance(width, int) and frame.shape[1] != width:
        raise DataError(f"{data}: {frame.shape[1]} columns, but the package takes {width} "
                        "features (give id_column= for a column of row ids)")  # fmt: skip
    _check_numbers(frame, offset, data)
    return frame.to_numpy(dtype=specs[0].dtype) if specs[0].dtype.startswith("float") else frame


def _numeric(dtype: str) -> bool:
    return dtype.startswith(("float", "int", "uint", "double"))


def _check_numbers(frame: Any, offset: int, data: Path) -> None:
    pd = require("pandas", "batch prediction")
    for column in frame.columns:
        values = frame[column]
        if pd.api.types.is_numeric_dtype(values):
            continue
        bad = pd.to_numeric(values, errors="coerce").isna() & values.notna()
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(f"{data}: row {offset + i}, column {column!r}: {values.iloc[i]!r} "
                            "is not a number")  # fmt: skip


def _rows(inputs: Any, index: slice) -> Any:
    return inputs[index] if isinstance(inputs, np.ndarray) else inputs.iloc[index]


def dictionary_columns(names: Any, types: Any) -> list[str]:
    """The columns worth Parquet's dictionary encoding: labels and other text, not numbers
    (for float outputs the dictionary only costs: writing 1M rows of 10 floats takes 5x
    longer with it, for a 10% larger file without it)."""
    pa = require("pyarrow", "Parquet files")
    return [str(n) for n, t in zip(names, types, strict=True)
            if not (pa.types.is_floating(t) or pa.types.is_integer(t))]  # fmt: skip


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
