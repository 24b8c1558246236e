"""Reading a data file in chunks and predicting one chunk: shared by the local run
(batch/__init__.py) and the Ray Data run (batch/ray.py)."""

from __future__ import annotations

import zipfile
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np

from .._deps import require
from ..errors import DataError
from ..inputs import refuse_missing
from ..verify import verified_on_missing


def row_count(data: Path) -> int | None:
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


def read_chunks(data: Path, rows: int) -> Generator[tuple[int, int, Any], None, None]:
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


def predict_chunk(pkg: Any, frame: Any, offset: int, batch_size: int, id_column: str | None,
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
            if is_numeric(spec.dtype):
                check_numbers(frame[[spec.name]], offset, data)
        return frame
    width = specs[0].shape[-1] if len(specs[0].shape) == 2 else None
    if isinstance(width, int) and frame.shape[1] != width:
        raise DataError(f"{data}: {frame.shape[1]} columns, but the package takes {width} "
                        "features (give id_column= for a column of row ids)")  # fmt: skip
    check_numbers(frame, offset, data)
    return frame.to_numpy(dtype=specs[0].dtype) if specs[0].dtype.startswith("float") else frame


def is_numeric(dtype: str) -> bool:
    return dtype.startswith(("float", "int", "uint", "double"))


def check_numbers(frame: Any, offset: int, data: Path) -> None:
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
