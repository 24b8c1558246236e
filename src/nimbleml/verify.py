"""Compare a model's outputs with the original's on real inputs of several shapes.

Export can silently change semantics (a shape baked in, a mask dropped): nothing nimbleml
produces is trusted until its outputs were compared with the original's here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .errors import ConversionError
from .inputs import Feeds, batch_size, rows

Runner = Callable[[Feeds], list[np.ndarray]]


@dataclass(frozen=True)
class Agreement:
    """How closely one set of outputs matches the reference (worst case over outputs)."""

    max_abs_err: float
    max_rel_err: float
    label_agreement: float | None
    cosine: float | None

    def to_dict(self) -> dict[str, float | None]:
        return asdict(self)

    def within(self, atol: float, rtol: float, min_labels: float) -> bool:
        close = self.max_abs_err <= atol or self.max_rel_err <= rtol
        labels_ok = self.label_agreement is None or self.label_agreement >= min_labels
        return close and (labels_ok or self.max_rel_err <= rtol)


def _is_float(a: np.ndarray) -> bool:
    return np.issubdtype(a.dtype, np.floating)


def labels_of(a: np.ndarray) -> np.ndarray:
    """Class labels from an output: itself if integer/str, else argmax over the last axis."""
    if not _is_float(a):
        return a.reshape(a.shape[0], -1)[:, 0] if a.ndim > 1 else a
    if a.ndim >= 2 and a.shape[-1] > 1:
        return np.argmax(a, axis=-1).reshape(a.shape[0], -1)[:, 0]
    return (a.reshape(a.shape[0] if a.ndim else 1, -1)[:, 0] > 0.5).astype(np.int64)


def cosine_rows(ref: np.ndarray, got: np.ndarray) -> float:
    """Mean cosine similarity between matching rows of two float arrays."""
    r = ref.reshape(ref.shape[0], -1).astype(np.float64)
    g = got.reshape(got.shape[0], -1).astype(np.float64)
    num = np.sum(r * g, axis=1)
    den = np.linalg.norm(r, axis=1) * np.linalg.norm(g, axis=1)
    same = np.isclose(den, 0) & np.all(np.isclose(r, g), axis=1)
    cos = np.where(den > 0, num / np.maximum(den, 1e-300), 0.0)
    return float(np.mean(np.where(same, 1.0, cos)))


def compare_outputs(ref: Sequence[np.ndarray], got: Sequence[np.ndarray]) -> Agreement:
    if len(ref) != len(got):
        raise ConversionError(f"the model returns {len(got)} outputs; the original {len(ref)}")
    abs_err, rel_err = 0.0, 0.0
    labels: list[float] = []
    cosines: list[float] = []
    for r, g in zip(ref, got, strict=True):
        r, g = np.asarray(r), np.asarray(g)
        if r.shape != g.shape and r.size == g.size:
            g = g.reshape(r.shape)
        if r.shape != g.shape:
            raise ConversionError(f"output shape {g.shape} differs from the original's {r.shape}")
        if _is_float(r) or _is_float(g):
            rf, gf = r.astype(np.float64), g.astype(np.float64)
            finite = np.isfinite(rf)
            if not np.array_equal(finite, np.isfinite(gf)):
                return Agreement(float("inf"), float("inf"), 0.0, 0.0)
            diff = np.abs(rf[finite] - gf[finite])
            err = float(diff.max()) if diff.size else 0.0
            scale = float(np.abs(rf[finite]).max()) if diff.size else 0.0
            abs_err = max(abs_err, err)
            rel_err = max(rel_err, err / scale if scale > 0 else err)
            if r.ndim and r.shape[0]:
                cosines.append(cosine_rows(np.where(finite, rf, 0), np.where(finite, gf, 0)))
                if r.ndim >= 2 and r.shape[-1] > 1:
                    labels.append(float(np.mean(labels_of(rf) == labels_of(gf))))
        else:
            labels.append(float(np.mean(r == g)) if r.size else 1.0)
    return Agreement(
        max_abs_err=abs_err,
        max_rel_err=rel_err,
        label_agreement=min(labels) if labels else None,
        cosine=min(cosines) if cosines else None,
    )


def variants(feeds: Feeds, max_batch: int = 16) -> list[tuple[str, Feeds]]:
    """Inputs of several shapes from real data: batch 1, a larger batch, and for sequence
    inputs (integer, rank >= 2) a truncated and, where a mask exists, a padded length."""
    n = batch_size(feeds)
    out = [("batch=1", rows(feeds, 1))]
    if n > 1:
        big = min(n, max_batch)
        out.append((f"batch={big}", rows(feeds, big)))
    seq = [k for k, v in feeds.items() if v.ndim >= 2 and np.issubdtype(v.dtype, np.integer)]
    lengths = {feeds[k].shape[1] for k in seq}
    if not seq or len(lengths) != 1:
        return out
    length = lengths.pop()
    base = rows(feeds, min(n, 4))
    if length >= 2:
        short = max(1, length // 2)
        out.append(
            (f"seq={short}", {k: (v[:, :short] if k in seq else v) for k, v in base.items()})
        )
    masks = [k for k in seq if "mask" in k.lower()]
    if masks:
        pad = max(2, length // 4)
        padded: Feeds = {}
        for k, v in base.items():
            if k in seq:
                widths = [(0, 0), (0, pad)] + [(0, 0)] * (v.ndim - 2)
                padded[k] = np.pad(v, widths, constant_values=0)
            else:
                padded[k] = v
        out.append((f"seq={length + pad} (padded, mask 0)", padded))
    return out


# Texts a tokenizer port gets wrong first. Not included: Python's special lowercasings
# ("İ" -> "i̇", a word-final "Σ" -> "ς"), which ONNX Runtime's StringNormalizer does not
# make; a model whose validation texts contain them is judged on those texts.
HARD_TEXTS = (
    "",
    "a",
    "zqxjv unseen wordz xkcd",
    "Punctuation!!! ... ??? (yes) -- ok; fine: [done] 'quoted' \"double\"",
    "digits 123 4567 3.14 2024-01-01 1st 2nd",
    "café naïve Ünïcödé 東京",
    "  leading, trailing  and\tdouble  spaces\n",
    "UPPER CASE AND MiXeD",
)
UNSEEN = "nimbleml-unseen-category"
MISSING_NUMBERS = "missing numbers"  # a case name the server reads back from manifests


def verified_on_missing(manifest: Mapping[str, Any]) -> bool:
    """Whether verification compared the package with the original on missing numbers (only
    kept when the original itself handles them: an imputer, trees with NaN support). The one
    missing-value policy: everything that runs a package refuses NaN unless this is true."""
    cases = (manifest.get("conversion") or {}).get("cases") or []
    return any(isinstance(c, dict) and c.get("case") == MISSING_NUMBERS for c in cases)


def hard_cases(feeds: Feeds) -> list[tuple[str, Feeds]]:
    """Inputs real data rarely holds, for string inputs: for a column of texts, the texts
    above and real texts shouted, re-punctuated and with foreign words; for table columns
    (["batch", 1] strings), unseen categories, missing strings and missing numbers."""
    strings = [k for k, v in feeds.items() if v.dtype == object]
    if not strings:
        return []
    n = batch_size(feeds)
    if len(feeds) == 1 and feeds[strings[0]].ndim == 1:
        real = [str(t) for t in feeds[strings[0]][:2]]
        derived = [f(t) for t in real for f in (str.upper, _repunctuate, _foreign)]
        texts = np.array([*HARD_TEXTS, *derived], dtype=object)
        return [("hard texts", {strings[0]: texts})]
    base = rows(feeds, min(n, 4))
    numbers = [k for k, v in base.items() if np.issubdtype(v.dtype, np.floating)]
    cases = [
        ("unseen categories", {**base, **{k: np.full_like(base[k], UNSEEN) for k in strings}}),
        ("missing strings", {**base, **{k: np.full_like(base[k], "") for k in strings}}),
    ]
    if numbers:
        cases.append(
            (MISSING_NUMBERS, {**base, **{k: np.full_like(base[k], np.nan) for k in numbers}})
        )
    return cases


def _repunctuate(text: str) -> str:
    return "... ".join(text.split(" ")) + "?!"


def _foreign(text: str) -> str:
    return f"{text} café Ünïcödé 東京 42"


def _show(value: np.ndarray) -> str:
    flat = np.asarray(value).ravel()
    if flat.dtype == object or flat.dtype.kind in "US":
        shown = [repr(str(v))[:80] for v in flat[:4]]
    elif np.issubdtype(flat.dtype, np.floating):
        shown = [f"{v:.6g}" for v in flat[:8]]
    else:
        shown = [str(v) for v in flat[:8]]
    more = ", ..." if flat.size > len(shown) else ""
    return shown[0] if flat.size == 1 else "[" + ", ".join(shown) + more + "]"


def _row(a: np.ndarray, i: int, n: int) -> np.ndarray:
    a = np.asarray(a)
    return a.reshape(n, -1)[i] if a.size and a.size % n == 0 else a


def first_disagreement(feeds: Feeds, ref: Sequence[np.ndarray], got: Sequence[np.ndarray]) -> str:
    """The row where the two differ most (a different label first), shown with its input and
    both outputs, so the message says *what* differs on *which* input."""
    n = batch_size(feeds)
    score = np.zeros(n)
    for r, g in zip(ref, got, strict=True):
        r, g = np.asarray(r), np.asarray(g)
        if r.size != g.size or not r.ndim or r.shape[0] != n:
            continue
        g = g.reshape(r.shape)
        if _is_float(r) or _is_float(g):
            diff = np.abs(r.astype(np.float64) - g.astype(np.float64)).reshape(n, -1)
            score = np.maximum(score, np.nan_to_num(diff, nan=np.inf).max(axis=1, initial=0))
        else:
            score += 1e9 * (r.reshape(n, -1) != g.reshape(n, -1)).any(axis=1)
    i = int(np.argmax(score))
    inputs = ", ".join(
        f"{k}={_show(v[i])}" if len(feeds) > 1 else _show(v[i])
        for k, v in feeds.items()
        if v.dtype == object or np.asarray(v[i]).size <= 8
    )
    original = "; ".join(_show(_row(r, i, n)) for r in ref)
    converted = "; ".join(_show(_row(g, i, n)) for g in got)
    return f"row {i} ({inputs or 'input not shown'}): original {original}, converted {converted}"


def _worst(feeds: Feeds, ref: Sequence[np.ndarray], got: Sequence[np.ndarray]) -> str:
    try:
        return f"\n    worst {first_disagreement(feeds, ref, got)}"
    except Exception:  # outputs too unlike to line up by row: the figures above say enough
        return ""


def check(
    original: Runner,
    candidate: Runner,
    cases: Sequence[tuple[str, Feeds]],
    *,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    min_labels: float = 1.0,
    what: str = "the converted model",
) -> list[dict[str, object]]:
    """Run both on every case; return per-case agreement or raise ConversionError."""
    report: list[dict[str, object]] = []
    bad: list[str] = []
    for name, feeds in cases:
        try:
            got = candidate(feeds)
        except Exception as exc:
            bad.append(f"  {name}: {what} failed to run: {str(exc).splitlines()[0][:300]}")
            continue
        ref = original(feeds)
        agreement = compare_outputs(ref, got)
        report.append({"case": name, **agreement.to_dict()})
        if not agreement.within(atol, rtol, min_labels):
            bad.append(
                f"  {name}: max abs err {agreement.max_abs_err:.3g}, max rel err "
                f"{agreement.max_rel_err:.3g}, label agreement {agreement.label_agreement}"
                + _worst(feeds, ref, got)
            )
    if bad:
        raise ConversionError(
            f"{what} disagrees with the original (tolerance abs {atol:g} / rel {rtol:g}, "
            f"labels {min_labels:.0%}):\n" + "\n".join(bad)
        )
    return report
