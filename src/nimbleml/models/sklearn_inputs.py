"""What a scikit-learn model takes: one numeric matrix, a column of texts, or named columns.

A pipeline fitted on a DataFrame whose first step is a ColumnTransformer reads its columns
by name and may mix numbers and strings, which no single tensor can hold; skl2onnx's answer
is one ONNX input per column (``("batch", 1)``, float or string), and nimbleml follows it,
so the manifest lists the columns and a DataFrame or a dict of columns goes in as it is.
The column kinds are read from the fitted model (an encoder's string categories, an
imputer's string statistics), never from data, because a package opened later has none.

Missing strings: ONNX string tensors hold no None or NaN, so a missing string travels as
``MISSING`` (the empty string), and both sides read it as missing: the copy converted to
ONNX has its string imputers and NaN categories rewritten to ``MISSING``, and the original
gets NaN back when the DataFrame is rebuilt from the feeds (so a genuine empty string counts
as missing too).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._deps import require
from ..errors import ConversionError
from ..inputs import MISSING, Feeds, TensorSpec

NUMBER, STRING, TEXT = "number", "string", "text"  # TEXT: read by a vectorizer, "" is text


@dataclass(frozen=True)
class Layout:
    """``kind``: "matrix" (``X`` float [batch, n]), "text" (``text`` string [batch]) or
    "frame" (one [batch, 1] input per column, ``columns`` = ((name, NUMBER|STRING|TEXT), ...)).

    Numbers are float64, as scikit-learn computes: the original is always judged on the
    user's own values, never on float32-rounded copies of them (issue 22: a row near a tree
    threshold rounded to float32 goes down the other branch, and both sides agreed on the
    rounded row while the user's real row disagreed). The float graph casts them down and is
    checked for that; the double graph takes them as they are."""

    kind: str
    n_features: int = 0
    columns: tuple[tuple[str, str], ...] = ()

    def specs(self) -> list[TensorSpec]:
        if self.kind == "text":
            from .sklearn_text import TEXT_INPUT

            return [TensorSpec(TEXT_INPUT, "object", ("batch",))]
        if self.kind == "frame":
            return [
                TensorSpec(name, "float64" if kind == NUMBER else "object", ("batch", 1))
                for name, kind in self.columns
            ]
        return [TensorSpec("X", "float64", ("batch", self.n_features))]


def column_transformer(est: Any) -> Any | None:
    """The ColumnTransformer a pipeline starts with (or the estimator itself), else None."""
    first = est.steps[0][1] if hasattr(est, "steps") and est.steps else est
    return first if hasattr(first, "transformers_") else None


def frame_columns(est: Any) -> tuple[tuple[str, str], ...] | None:
    """(name, kind) of every column the model reads, in fitted order; None unless the model
    was fitted on a DataFrame through a ColumnTransformer. Dropped columns are not inputs
    (scikit-learn does not need them either)."""
    names = getattr(est, "feature_names_in_", None)
    ct = column_transformer(est)
    if names is None or ct is None:
        return None
    names = [str(n) for n in names]
    kinds: dict[int, str] = {}
    for label, trans, cols in ct.transformers_:
        if isinstance(trans, str) and trans == "drop":
            continue
        indices = _indices(ct, label, cols, names)
        for i, kind in zip(indices, _column_kinds(trans, len(indices)), strict=True):
            if kinds.get(i, NUMBER) == NUMBER:
                kinds[i] = kind
    return tuple((names[i], kinds[i]) for i in sorted(kinds))


def _indices(ct: Any, label: str, cols: Any, names: list[str]) -> list[int]:
    resolved = getattr(ct, "_transformer_to_input_indices", {}).get(label)
    if resolved is not None:
        return [int(i) for i in resolved]
    if isinstance(cols, str | int):
        cols = [cols]
    if isinstance(cols, slice):
        return list(range(len(names)))[cols]
    cols = list(np.asarray(cols).tolist())
    if cols and isinstance(cols[0], bool):
        return [i for i, keep in enumerate(cols) if keep]
    return [names.index(c) if isinstance(c, str) else int(c) for c in cols]


def _parts(est: Any) -> list[Any]:
    """``est`` and, for a Pipeline or a nested ColumnTransformer, every step inside it."""
    if hasattr(est, "steps"):
        return [p for _, step in est.steps for p in _parts(step)]
    if hasattr(est, "transformers_"):
        return [p for _, t, _ in est.transformers_ if not isinstance(t, str) for p in _parts(t)]
    return [est]


def _is_text(values: Any) -> bool:
    flat = np.asarray(values, dtype=object).ravel()
    return any(isinstance(v, str) for v in flat)


def _column_kinds(trans: Any, n: int) -> list[str]:
    """The kind of each of a transformer's ``n`` input columns: STRING where an encoder's
    categories or an imputer's statistics are strings (one per column: an encoder fitted on
    [zip codes, plan names] takes numbers in one, strings in the other), TEXT for a text
    vectorizer's column, else NUMBER."""
    kinds = [NUMBER] * n
    if isinstance(trans, str):  # "passthrough"
        return kinds
    for part in _parts(trans):
        per_column = getattr(part, "categories_", None)
        if per_column is None:
            per_column = getattr(part, "statistics_", None)
        if per_column is not None and len(per_column) == n:
            kinds = [STRING if _is_text([v]) else k for k, v in zip(kinds, per_column, strict=True)]
        elif hasattr(part, "vocabulary_"):
            return [TEXT] * n
    return kinds


def frame_from_feeds(feeds: Feeds, columns: tuple[tuple[str, str], ...]) -> Any:
    """The DataFrame scikit-learn sees: float64 numbers, strings with NaN for missing."""
    pd = require("pandas", "scikit-learn models fitted on DataFrames")
    data: dict[str, np.ndarray] = {}
    for name, kind in columns:
        col = np.asarray(feeds[name]).reshape(-1)
        if kind == STRING:
            col = col.astype(object)
            col[col == MISSING] = np.nan
        elif kind == TEXT:
            col = col.astype(object)
        else:
            col = col.astype(np.float64)
        data[name] = col
    return pd.DataFrame(data)


def conversion_copy(est: Any) -> Any:
    """A deep copy whose string imputers and NaN categories use ``MISSING``: skl2onnx
    converts a string SimpleImputer only when ``missing_values`` is a string, and writes a
    NaN category as the text "nan"."""
    est = copy.deepcopy(est)
    for part in _parts(est):
        stats = getattr(part, "statistics_", None)
        if stats is not None and _is_text(stats) and _is_nan(part.missing_values):
            part.missing_values = MISSING
        categories = getattr(part, "categories_", None)
        if categories is not None:
            part.categories_ = [_nan_to_missing(c) for c in categories]
    return est


def text_column_options(est: Any) -> dict[int, dict[str, Any]]:
    """skl2onnx options for a text vectorizer on one column of a table (its own converter
    runs there): the locale this machine can lowercase with, and the token pattern in RE2
    with Python's Unicode classes. Its stop-word handling differs from scikit-learn's (see
    sklearn_text); the verification judges the rest."""
    from .sklearn_text import is_text_vectorizer, lowercase_locale, re2_pattern

    options: dict[int, dict[str, Any]] = {}
    for part in _parts(est):
        if is_text_vectorizer(part) and hasattr(part, "vocabulary_"):
            opts: dict[str, Any] = {"locale": lowercase_locale()} if part.lowercase else {}
            if part.analyzer == "word" and isinstance(part.token_pattern, str):
                opts["tokenexp"] = re2_pattern(part.token_pattern)
            options[id(part)] = opts
    return options


def _is_nan(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def _nan_to_missing(values: np.ndarray) -> np.ndarray:
    if values.dtype != object or not any(_is_nan(v) for v in values):
        return values
    return np.array([MISSING if _is_nan(v) else v for v in values], dtype=object)


def frame_initial_types(columns: tuple[tuple[str, str], ...], precision: str) -> list[Any]:
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType, StringTensorType

    number = DoubleTensorType if precision == "double" else FloatTensorType
    return [
        (name, number([None, 1]) if kind == NUMBER else StringTensorType([None, 1]))
        for name, kind in columns
    ]


def restore_input_names(onx: Any, names: list[str]) -> None:
    """Give the ONNX inputs the column names back: skl2onnx turns "monthly fee" into
    "monthly_fee", and a package must take the DataFrame the model was fitted on."""
    graph = onx.graph
    taken = {o for n in graph.node for o in n.output} | {o.name for o in graph.output}
    rename = {}
    for spec, name in zip(graph.input, names, strict=True):
        if spec.name == name:
            continue
        if name in taken:
            raise ConversionError(
                f"column {name!r} has the name of a value inside the converted graph; "
                "rename the column before fitting"
            )
        rename[spec.name] = name
        spec.name = name
    if rename:
        for node in graph.node:
            for i, value in enumerate(node.input):
                if value in rename:
                    node.input[i] = rename[value]
