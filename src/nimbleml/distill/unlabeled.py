"""Rows without labels for distillation (``unlabeled=``): the teacher labels them, as DistilBERT
and TinyBERT were trained on text no one had labelled. They join the training rows with the
label -1, which the loss reads as "no label": only the teacher's term learns from them.
Classification only (a value target has no spare value to mean "no label"). The student trained alone never sees them (it has nothing to learn
from there), so the report's gain is what the unlabeled rows and the teacher bring.

Checked before anything runs: the rows must look like the training inputs (the same width,
the same dict keys), hold no missing value, and the training data must be (X, y) arrays or a
Dataset of (x, y) pairs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._deps import require
from ..errors import ConfigError

NO_LABEL = -1  # the label of an unlabeled row


def rows(unlabeled: Any) -> int:
    first = next(iter(unlabeled.values())) if isinstance(unlabeled, dict) else unlabeled
    return len(first)


def check(unlabeled: Any, train_data: Any) -> int:
    """The number of unlabeled rows; a ConfigError naming the widths (or keys) and the fix
    when they do not match the training inputs."""
    if unlabeled is None:
        return 0
    from ..inputs import refuse_missing

    if isinstance(unlabeled, tuple | list):
        raise ConfigError(
            "unlabeled= takes the rows alone (an array, tensor or dict of arrays shaped like "
            "train_data's inputs), not an (X, y) pair: rows with labels belong in train_data"
        )
    if not (isinstance(unlabeled, dict) or hasattr(unlabeled, "shape")):
        raise ConfigError(
            f"unlabeled= takes an array, tensor or dict of arrays, got {type(unlabeled).__name__}"
        )
    refuse_missing(_numpy(unlabeled), "unlabeled")
    sample = _train_inputs(train_data)
    if isinstance(sample, dict) != isinstance(unlabeled, dict):
        kind = "a dict of arrays" if isinstance(sample, dict) else "one array"
        raise ConfigError(
            f"unlabeled= must be shaped like train_data's inputs ({kind}); give the rows in "
            "the same form"
        )
    if isinstance(sample, dict):
        if set(sample) != set(unlabeled):
            raise ConfigError(
                f"unlabeled= has keys {sorted(unlabeled)}, train_data's inputs {sorted(sample)}; "
                "give the same inputs"
            )
        pairs = [(f"unlabeled[{k!r}]", unlabeled[k], sample[k]) for k in sorted(sample)]
    else:
        pairs = [("unlabeled", unlabeled, sample)]
    for name, got, want in pairs:
        got_shape, want_shape = tuple(got.shape[1:]), tuple(want.shape[1:])
        if got_shape != want_shape:
            raise ConfigError(
                f"{name}: rows of shape {got_shape} ({_width(got_shape)} wide), but the "
                f"training rows are {want_shape} ({_width(want_shape)} wide); give unlabeled "
                "rows with the same columns as train_data's inputs"
            )
    n = rows(unlabeled)
    if n and not (isinstance(train_data, tuple) or hasattr(train_data, "__getitem__")):
        raise ConfigError(
            "unlabeled= needs train_data as (X, y) arrays or a Dataset (a DataLoader's rows "
            "cannot be joined); give the Dataset"
        )
    return n


def merged(train_data: Any, unlabeled: Any, regression: bool) -> Any:
    """The training rows followed by the unlabeled ones, labelled 'no label'."""
    if unlabeled is None or rows(unlabeled) == 0:
        return train_data
    if regression:
        raise ConfigError(
            "unlabeled= is for classification (the loss marks an unlabeled row with the label "
            "-1); for value targets, label the rows with the teacher's predictions and add "
            "them to train_data"
        )
    n = rows(unlabeled)
    if isinstance(train_data, tuple):
        X, y = train_data
        y = _numpy(y)
        fill = np.full((n, *y.shape[1:]), NO_LABEL,
                       dtype=y.dtype if y.dtype.kind in "iu" else np.int64)  # fmt: skip
        joined: Any
        if isinstance(X, dict):
            joined = {k: np.concatenate([_numpy(X[k]), _numpy(unlabeled[k])]) for k in X}
        else:
            joined = np.concatenate([_numpy(X), _numpy(unlabeled).astype(_numpy(X).dtype)])
        return joined, np.concatenate([y.astype(fill.dtype), fill])
    torch = require("torch", "nimbleml.distill")
    return torch.utils.data.ConcatDataset([train_data, _rows_dataset(unlabeled, train_data[0][1])])


def _train_inputs(data: Any) -> Any:
    if isinstance(data, tuple):
        return data[0]
    first = data[0] if hasattr(data, "__getitem__") else None
    x = first[0] if isinstance(first, tuple | list) else first
    if isinstance(x, dict):
        return {k: _numpy(v)[None] for k, v in x.items()}
    return _numpy(x)[None]


def _width(shape: tuple[int, ...]) -> str:
    return str(shape[-1]) if shape else "1"


def _numpy(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _numpy(v) for k, v in x.items()}
    if hasattr(x, "to_numpy"):
        return x.to_numpy()
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def _rows_dataset(X: Any, label: Any) -> Any:
    """Unlabeled rows as a Dataset of (x, no label), the label of the same type as ``label``
    (a training row's: the DataLoader collates them together). The class is made here: no
    torch at import."""
    torch = require("torch", "nimbleml.distill")
    if torch.is_tensor(label):
        none: Any = torch.tensor(NO_LABEL, dtype=label.dtype)
    elif isinstance(label, np.generic | np.ndarray):
        none = np.asarray(NO_LABEL, dtype=np.asarray(label).dtype)
    else:
        none = NO_LABEL

    class Rows(torch.utils.data.Dataset):  # type: ignore[name-defined]
        def __init__(self, X: Any) -> None:
            self.X = _numpy(X)

        def __len__(self) -> int:
            return rows(self.X)

        def __getitem__(self, i: int) -> Any:
            x = (
                {k: torch.as_tensor(v[i]) for k, v in self.X.items()}
                if isinstance(self.X, dict)
                else torch.as_tensor(self.X[i])
            )
            return x, none

    return Rows(X)
