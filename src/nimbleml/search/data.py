"""The one missing-value policy (issue 22) for the searches' training data: a NaN in the
inputs or the labels of (X, y) data is refused with its row and column before any teacher,
candidate or fine-tuning runs on it (a NaN trains into NaN weights, silently). A Dataset or a
DataLoader is read lazily by training and is not scanned here."""

from __future__ import annotations

from typing import Any

from ..inputs import refuse_missing


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
