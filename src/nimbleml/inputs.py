"""Inputs as nimbleml moves them around: a dict of named numpy arrays ("feeds").

Users may give a single array or tensor, a tuple/list of them (positional), a dict of
named ones, or a pandas DataFrame (its columns by name); everything is normalised here once,
with errors that name the problem.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import DataError

Feeds = dict[str, np.ndarray]
Dim = int | str | None
# ONNX string tensors hold no None/NaN: a missing string travels as "" (models/sklearn_inputs.py)
MISSING = ""


@dataclass(frozen=True)
class TensorSpec:
    """Name, dtype and shape of one model input or output; symbolic dims are strings."""

    name: str
    dtype: str
    shape: tuple[Dim, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TensorSpec:
        return cls(str(d["name"]), str(d["dtype"]), tuple(d["shape"]))


def to_numpy(x: Any) -> np.ndarray:
    """A numpy array from an array, a torch tensor, a pandas object, or a nested list."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch
        return np.asarray(x.detach().cpu().numpy())
    if hasattr(x, "to_numpy"):  # pandas
        return np.asarray(x.to_numpy())
    try:
        return np.asarray(x)
    except Exception as exc:
        raise DataError(
            f"cannot turn a {type(x).__name__} into an array ({exc}); pass a numpy array, "
            "a torch tensor, or a dict of them"
        ) from exc


def _is_frame(x: Any) -> bool:
    return hasattr(x, "columns") and hasattr(x, "iloc") and hasattr(x, "to_numpy")


def as_feeds(x: Any, names: Sequence[str]) -> Feeds:
    """Normalise ``x`` to feeds for a model whose inputs are ``names``.

    A DataFrame gives its columns by name (extra columns ignored, as scikit-learn does)
    when the model's inputs are columns; a single-input model takes it whole."""
    if _is_frame(x):
        columns = [str(c) for c in x.columns]
        if all(n in columns for n in names):
            return {n: to_numpy(x[n]) for n in names}
        if len(names) > 1:
            missing = [n for n in names if n not in columns]
            raise DataError(
                f"the DataFrame has no column {', '.join(repr(m) for m in missing)}; the model "
                f"takes columns {list(names)}"
            )
    if isinstance(x, Mapping):
        missing = [n for n in names if n not in x]
        extra = [k for k in x if k not in names]
        if missing or extra:
            raise DataError(
                f"inputs do not match the model: missing {missing or 'none'}, unexpected "
                f"{extra or 'none'}; the model takes {list(names)}"
            )
        return {n: to_numpy(x[n]) for n in names}
    if isinstance(x, tuple | list) and len(names) > 1:
        if len(x) != len(names):
            raise DataError(
                f"got {len(x)} positional inputs but the model takes {len(names)}: {list(names)}"
            )
        return {n: to_numpy(v) for n, v in zip(names, x, strict=True)}
    if len(names) != 1:
        raise DataError(
            f"the model takes {len(names)} inputs {list(names)}; pass a dict or a tuple of them"
        )
    if isinstance(x, tuple) and len(x) == 1:
        x = x[0]
    return {names[0]: to_numpy(x)}


def batch_size(feeds: Mapping[str, np.ndarray]) -> int:
    """The shared first dimension of all inputs; an error if they disagree."""
    sizes = {k: (v.shape[0] if v.ndim else 1) for k, v in feeds.items()}
    if len(set(sizes.values())) > 1:
        raise DataError(f"inputs disagree on the batch size (first dimension): {sizes}")
    return next(iter(sizes.values())) if sizes else 0


def take(feeds: Mapping[str, np.ndarray], index: Any) -> Feeds:
    """Rows ``index`` (a slice or index array) of every input."""
    return {k: v[index] for k, v in feeds.items()}


def rows(feeds: Mapping[str, np.ndarray], n: int, start: int = 0) -> Feeds:
    """``n`` rows starting at ``start``, wrapping around (repeats rows when n > batch)."""
    total = batch_size(feeds)
    if total == 0:
        raise DataError("the inputs have no rows; pass at least one example")
    idx = (np.arange(n) + start) % total
    return take(feeds, idx)


def _is_column(arr: np.ndarray, spec: TensorSpec) -> bool:
    """A 1-D column for a [batch, 1] input, or a [n, 1] column for a [batch] input."""
    if arr.ndim == 1:
        return len(spec.shape) == 2 and spec.shape[1] == 1
    return arr.ndim == 2 and arr.shape[1] == 1 and len(spec.shape) == 1


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and v != v) or type(v).__name__ == "NAType"


def _strings(arr: np.ndarray, name: str) -> np.ndarray:
    """An object array of str, with None/NaN/pd.NA as MISSING; numbers are a DataError."""
    if arr.dtype.kind in "US":
        return arr.astype(object)
    if arr.dtype.kind == "f" and arr.size and np.isnan(arr).all():
        return np.full(arr.shape, MISSING, dtype=object)
    if arr.dtype != object:
        raise DataError(
            f"input '{name}' holds {arr.dtype} values; the model takes strings there "
            "(text, or the categories it was fitted on)"
        )
    flat = arr.ravel()
    if all(type(v) is str for v in flat):
        return arr
    out = np.empty(flat.shape, dtype=object)
    for i, v in enumerate(flat):
        if isinstance(v, str):
            out[i] = v
        elif _is_missing(v):
            out[i] = MISSING
        else:
            raise DataError(
                f"input '{name}' holds {v!r} ({type(v).__name__}) in row {i}; the model takes "
                "strings there (None or NaN for a missing value)"
            )
    return out.reshape(arr.shape)


def cast_to_specs(feeds: Mapping[str, np.ndarray], specs: Sequence[TensorSpec]) -> Feeds:
    """Cast each input to the dtype its spec asks for (float64 -> float32, int32 -> int64...,
    str -> object strings); a 1-D column fits a [batch, 1] input and the other way round."""
    out: Feeds = {}
    for spec in specs:
        arr = feeds[spec.name]
        if _is_column(arr, spec):
            arr = arr.reshape(-1, 1) if arr.ndim == 1 else arr.reshape(-1)
        if spec.dtype == "object":
            arr = _strings(arr, spec.name)
        elif str(arr.dtype) != spec.dtype:
            if arr.dtype == object:  # a list with None in a numeric column
                flat = [np.nan if _is_missing(v) else v for v in arr.ravel()]
                arr = np.array(flat, dtype=object).reshape(arr.shape)
            try:
                with np.errstate(over="raise", invalid="raise"):
                    arr = arr.astype(spec.dtype)
            except FloatingPointError:
                raise DataError(_out_of_range(arr, spec)) from None
            except (TypeError, ValueError) as exc:
                raise DataError(
                    f"input '{spec.name}' has dtype {arr.dtype}, which cannot become the "
                    f"{spec.dtype} the model takes ({exc})"
                ) from exc
        out[spec.name] = np.ascontiguousarray(arr)
    return out


def _out_of_range(arr: np.ndarray, spec: TensorSpec) -> str:
    """Which value does not fit the model's dtype, and where."""
    kind = np.dtype(spec.dtype)
    info = np.finfo(kind) if kind.kind == "f" else np.iinfo(kind)
    with np.errstate(invalid="ignore"):
        bad = ~np.isnan(arr) & ((arr > info.max) | (arr < info.min))
    where = np.argwhere(bad)
    at = (
        f" (first at index {tuple(int(i) for i in where[0])}: {arr[tuple(where[0])]:g})"
        if len(where)
        else ""
    )
    return (
        f"input '{spec.name}' holds {int(bad.sum())} value(s) outside the range of the "
        f"{spec.dtype} the model takes (±{info.max:g}){at}; rescale or clip the data"
    )


def check_shapes(feeds: Mapping[str, np.ndarray], specs: Sequence[TensorSpec]) -> None:
    """Raise DataError when an input's rank or fixed dimensions disagree with its spec."""
    for spec in specs:
        arr = feeds[spec.name]
        if _is_column(arr, spec):
            continue
        if len(spec.shape) != arr.ndim:
            raise DataError(
                f"input '{spec.name}' has shape {arr.shape} (rank {arr.ndim}); the model "
                f"takes rank {len(spec.shape)} {_fmt_shape(spec.shape)}"
            )
        for axis, (want, got) in enumerate(zip(spec.shape, arr.shape, strict=True)):
            if isinstance(want, int) and want > 0 and want != got and axis > 0:
                raise DataError(
                    f"input '{spec.name}' has shape {arr.shape}; the model takes "
                    f"{_fmt_shape(spec.shape)} (dimension {axis} must be {want})"
                )


def _fmt_shape(shape: Sequence[Dim]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


MISSING_FIX = (
    "fill or drop those rows first, or put an imputer in the model (a package verified on "
    "missing values accepts them)"
)


def first_missing(x: Any) -> tuple[int, str] | None:
    """(row, "column ...") of the first missing number (NaN, None, pd.NA) in an array, a dict
    of columns or a DataFrame; None when there is none. Strings are not looked at (an empty
    string is a category); infinities are not missing (checked where they matter)."""
    if _is_frame(x):
        columns = {str(c): x[c].to_numpy() for c in x.columns}
    elif isinstance(x, Mapping):
        columns = {str(k): np.asarray(v) for k, v in x.items()}
    else:
        columns = {"": np.asarray(x)}
    found: list[tuple[int, str]] = []
    for name, col in columns.items():
        if col.dtype.kind not in "fcO" or col.size == 0 or not col.ndim:
            continue
        flat = col.reshape(len(col), -1)
        mask = _missing_mask(flat)
        if not mask.any():
            continue
        row, j = (int(v) for v in np.argwhere(mask)[0])
        if flat.shape[1] == 1 and name:
            label = f"column {name!r}"
        elif (name and len(columns) > 1) or name not in ("", "X"):
            label = f"column {j} of input {name!r}"
        else:
            label = f"column {j}"
        found.append((row, label))
    return min(found, key=lambda f: f[0]) if found else None


def _missing_mask(flat: np.ndarray) -> np.ndarray:
    if flat.dtype.kind in "fc":
        return np.isnan(flat)
    if any(isinstance(v, str) for v in flat.ravel()):  # a string column: None is a category
        return np.zeros(flat.shape, dtype=bool)
    return np.vectorize(_is_missing, otypes=[bool])(flat)


def refuse_missing(x: Any, where: str, fix: str = MISSING_FIX, row_offset: int = 0) -> None:
    """The one missing-value policy (issue 22): a missing number is refused with its row and
    column, unless the caller knows the model was verified on missing values. ``where`` names
    the data ("--val val.npz", "training batch"); rows count from 0, plus ``row_offset``."""
    hit = first_missing(x)
    if hit is None:
        return
    row, column = hit
    raise DataError(f"{where}: row {row + row_offset}, {column} holds a missing value (NaN); {fix}")


def load_data(path: str, target: str | None = None) -> tuple[Any, np.ndarray | None]:
    """Read X (an array or a dict of named arrays) and optional y from .npz, .npy or .csv."""
    import os

    if not os.path.exists(path):
        raise DataError(f"data file not found: {path}")
    lower = path.lower()
    if lower.endswith((".npy", ".npz")):
        try:
            X, y = _load_numpy(path)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise DataError(_numpy_problem(path, exc)) from None
    elif lower.endswith(".csv"):
        X, y = _load_csv(path, target)
    else:
        raise DataError(f"unknown data format for {path}: use .npz (X and y), .npy, or .csv")
    first = next(iter(X.values())) if isinstance(X, dict) else X
    if getattr(first, "ndim", 1) == 0 or len(first) == 0:
        raise DataError(f"{path} holds no rows: X needs at least one sample")
    return X, y


def _numpy_problem(path: str, exc: Exception) -> str:
    """One line for a .npy/.npz file numpy cannot read without unpickling."""
    if "Object arrays" in str(exc):
        return (
            f"{path} holds Python objects (strings?), which nimbleml does not unpickle; save "
            "numbers with np.savez, and pass texts or tables through the Python API"
        )
    # numpy's own message for a non-numpy file talks about unpickling: not advice to give
    detail = "" if "pickle" in str(exc) else f" ({str(exc).splitlines()[0][:120]})"
    return (
        f"{path} is not a numpy .npy/.npz file nimbleml can read safely{detail}; write it "
        "with np.save / np.savez (X and y)"
    )


def _load_numpy(path: str) -> tuple[Any, np.ndarray | None]:
    # the file is opened here: numpy leaks its own handle when a .npz is not a zip
    with open(path, "rb") as fh:
        if path.lower().endswith(".npy"):
            return np.load(fh, allow_pickle=False), None
        with np.load(fh, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    y = arrays.pop("y", None)
    if "X" in arrays and len(arrays) == 1:
        return arrays["X"], y
    if not arrays:
        raise DataError(f"{path} holds no input arrays; save X (and y) with np.savez")
    return arrays, y


def _load_csv(path: str, target: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    import csv

    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise DataError(f"{path} is empty; it needs a header row and data rows") from None
        body = [row for row in reader if row]
    if target is not None and target not in header:
        raise DataError(f"target column '{target}' is not in {path}; columns are {header}")
    try:
        table = np.asarray(body, dtype=np.float64)
    except ValueError:
        raise DataError(_bad_cell(path, header, body)) from None
    if np.isnan(table).any():
        row, col = np.argwhere(np.isnan(table))[0]
        raise DataError(
            f"{path}: data row {row + 1}, column {header[col]!r} is NaN (a missing value); "
            f"{MISSING_FIX}"
        )
    if not body:
        raise DataError(f"{path} holds a header and no data rows; X needs at least one sample")
    if table.ndim != 2 or table.shape[1] != len(header):
        bad = next(i for i, r in enumerate(body) if len(r) != len(header))
        raise DataError(
            f"{path}: data row {bad + 1} has {len(body[bad])} values, the header "
            f"{len(header)}; every row needs one value per column"
        )
    if target is None:
        return table.astype(np.float32), None
    col = header.index(target)
    y = table[:, col]
    X = np.delete(table, col, axis=1).astype(np.float32)
    if np.all(y == np.round(y)):
        return X, y.astype(np.int64)
    return X, y


def _bad_cell(path: str, header: list[str], body: list[list[str]]) -> str:
    """The first cell of a CSV that is not a number, by data row (1 = the first below the
    header) and column name: an empty cell is a missing value, anything else a non-number."""
    for i, row in enumerate(body):
        for j, cell in enumerate(row):
            try:
                float(cell)
            except ValueError:
                name = header[j] if j < len(header) else f"#{j + 1}"
                if not cell.strip():
                    return (
                        f"{path}: data row {i + 1}, column {name!r} is empty (a missing "
                        f"value); {MISSING_FIX}"
                    )
                return (
                    f"{path}: data row {i + 1}, column {name!r} holds {cell[:40]!r}, not a "
                    "number; a CSV given to nimbleml holds numbers only below its header"
                )
    return f"{path} must hold numbers only below its header"  # pragma: no cover


def refuse_missing_pair(data: Any, where: str) -> None:
    """``data``: (X, y) arrays, tensors, DataFrames or dicts of columns; ``where`` names it
    ("train_data", "--data train.npz")."""
    if not (isinstance(data, tuple | list) and len(data) == 2):
        return
    x, y = data
    if _scannable(x):
        refuse_missing(x, where)
    if y is not None and _scannable(y):
        refuse_missing(y, f"{where} labels")


def _scannable(x: Any) -> bool:
    return isinstance(x, dict) or hasattr(x, "shape") or hasattr(x, "columns")
