"""Text linear models scored n-gram by n-gram, without the dense [N, V] feature matrix.

The dense graph (ONNX Runtime's TfIdfVectorizer, then idf, the norm and the linear model over
all V columns) streams V floats a row through five operators: with a 50,000-term vocabulary
that cost ~110 µs at 1 row and ~75 µs a row at 1,000 rows here, slower than scikit-learn's
sparse matrices at 1,000 rows. A linear model's scores are a sum over the text's n-grams,

    z[c] = Σ_t tf_t·idf_t·W[t, c] / ‖tf·idf‖ + b[c],

so each n-gram occurrence i (term id_i) adds w_i = idf[id_i] times its row of W, and the L2
norm, which needs the count of each distinct term, comes from pairs of equal ids:

    ‖tf·idf‖² = Σ_t (c_t·idf_t)² = Σ_i Σ_j [id_i = id_j]·w_i·w_j.

Out-of-vocabulary n-grams and padding get the id V, whose weight and row are zero. This covers
word analyzers (any n-gram range, stop words) without ``binary`` or ``sublinear_tf``, one
vectorizer, followed by a model with ``coef_`` or a MultinomialNB (linear in the counts). The
result is verified against scikit-learn like every conversion.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

INT_MAX = np.iinfo(np.int64).max


def applies(vectorizers: list[tuple[Any, float]], rest_steps: list[Any]) -> bool:
    """Whether the n-gram sum reproduces this pipeline (else the dense graph is built)."""
    if len(vectorizers) != 1 or len(rest_steps) != 1:
        return False
    vec, weight = vectorizers[0]
    final = rest_steps[0][1]
    linear = hasattr(final, "coef_") and hasattr(final, "intercept_")
    words = {w for term in vec.vocabulary_ for w in term.split(" ")}
    return (
        weight == 1.0
        and (len(words) + 1) ** vec.ngram_range[1] < 2**62  # n-gram codes fit in int64
        and vec.analyzer == "word"
        and not vec.binary
        and not getattr(vec, "sublinear_tf", False)
        and (linear or type(final).__name__ == "MultinomialNB")
    )


def _weights(final: Any) -> tuple[np.ndarray, Any]:
    """The [V, C] matrix the n-grams sum over, and a copy of the estimator whose own weights
    are the identity, so skl2onnx still writes its intercept, labels and probabilities."""
    head = copy.deepcopy(final)
    if hasattr(final, "coef_"):
        matrix = np.atleast_2d(np.asarray(final.coef_, np.float64)).T
        k = matrix.shape[1]
        head.coef_ = np.eye(k)
    else:  # MultinomialNB: joint log likelihood = X · feature_log_prob_ᵀ + class_log_prior_
        matrix = np.asarray(final.feature_log_prob_, np.float64).T
        k = matrix.shape[1]
        head.feature_log_prob_ = np.eye(k)
        head.feature_count_ = np.eye(k)
    head.n_features_in_ = k
    return matrix, head


def sparse_scores(
    g: Any, vec: Any, final: Any, tokens: str, precision: str, coef_bits: int | None
) -> tuple[str, Any]:
    """[N, C] scores (before the intercept) from [N, L] padded tokens, and the head."""
    real = np.float64 if precision == "double" else np.float32
    vocab: dict[str, int] = vec.vocabulary_
    size = len(vocab)
    ids = _term_ids(g, tokens, vocab, *vec.ngram_range)
    idf = getattr(vec, "idf_", None) if getattr(vec, "use_idf", False) else None
    per_term = np.append(np.ones(size) if idf is None else np.asarray(idf, np.float64), 0.0)
    # [N, M, 1] straight from a [V + 1, 1] table: no Unsqueeze
    w3 = g.op("Gather", [g.const(per_term.astype(real)[:, None], "term_weight"), ids], axis=0)
    matrix, head = _weights(final)
    matrix = np.vstack([matrix, np.zeros((1, matrix.shape[1]))])  # the row of id V
    rows = _rows(g, matrix, ids, coef_bits, real)
    scores = g.op("ReduceSum", [g.op("Mul", [rows, w3]), g.const(np.array([1], np.int64))],
                  keepdims=0)  # fmt: skip
    norm = getattr(vec, "norm", None)
    if norm in ("l1", "l2"):
        if norm == "l1":  # every w_i >= 0
            total = g.op("ReduceSum", [w3, g.const(np.array([1], np.int64))], keepdims=0)
        else:
            left = g.op("Unsqueeze", [ids, g.const(np.array([2], np.int64))])
            right = g.op("Unsqueeze", [ids, g.const(np.array([1], np.int64))])
            same = g.op("Cast", [g.op("Equal", [left, right])], to=11 if real is np.float64 else 1)
            pairs = g.op("Mul", [g.op("MatMul", [same, w3]), w3])  # [N, M, 1]
            squared = g.op("ReduceSum", [pairs, g.const(np.array([1], np.int64))], keepdims=0)
            total = g.op("Sqrt", [squared])  # [N, 1]
        # a text with no known term has scores 0 and total 0: any positive floor keeps it 0
        tiny = g.const(np.array(np.finfo(real).tiny, real))
        scores = g.op("Div", [scores, g.op("Max", [total, tiny])])
    return scores, head


def _rows(g: Any, matrix: np.ndarray, ids: str, bits: int | None, real: Any) -> str:
    """[N, M, C] rows of ``matrix`` for each id; int8/int16 storage when the coefficients are
    on that grid (the coef-int8/int16 recipes put them there)."""
    if bits:
        levels = 2 ** (bits - 1) - 1
        scale = np.abs(matrix).max(axis=0) / levels
        scale[scale == 0] = 1.0
        q = np.round(matrix / scale)
        if np.allclose(q * scale, matrix, rtol=1e-6, atol=0):
            stored = g.const(q.astype(np.int8 if bits == 8 else np.int16), "coef_q")
            picked = g.op("Cast", [g.op("Gather", [stored, ids], axis=0)],
                          to=11 if real is np.float64 else 1)  # fmt: skip
            return g.op("Mul", [picked, g.const(scale.astype(real), "coef_scale")])
    return g.op("Gather", [g.const(matrix.astype(real), "coef"), ids], axis=0)


def _term_ids(g: Any, tokens: str, vocab: dict[str, int], min_n: int, max_n: int) -> str:
    """[N, M] vocabulary index of every n-gram (len(vocab) when it is not a term).

    Tokens become integers first (one LabelEncoder over the words the vocabulary uses), and an
    n-gram is the base-(U+1) number of its token ids: joining strings (StringConcat, Concat of
    string tensors) cost more than the whole rest of the graph at 1 row."""
    size = len(vocab)
    by_length: dict[int, list[tuple[list[str], int]]] = {}
    for term, index in vocab.items():
        pieces = term.split(" ")
        by_length.setdefault(len(pieces), []).append((pieces, int(index)))
    words = sorted({w for terms in by_length.values() for pieces, _ in terms for w in pieces})
    code_of = {w: i for i, w in enumerate(words)}
    base = len(words) + 1  # the last code: a token the vocabulary does not use
    uid = g.op(
        "LabelEncoder", [tokens], domain="ai.onnx.ml", hint="token_ids",
        keys_strings=words, values_int64s=list(range(len(words))), default_int64=base - 1,
    )  # fmt: skip
    axes = g.const(np.array([1], np.int64))
    parts = []
    for n in range(min_n, max_n + 1):
        terms = by_length.get(n)
        if not terms:
            continue
        if n == 1:
            table = np.full(base, size, np.int64)
            for pieces, index in terms:
                table[code_of[pieces[0]]] = index
            parts.append(g.op("Gather", [g.const(table, "unigram_ids"), uid], axis=0))
            continue
        code = None
        for k in range(n):
            stop = k - (n - 1)
            piece = g.op("Slice", [
                uid, g.const(np.array([k], np.int64)),
                g.const(np.array([stop if stop < 0 else INT_MAX], np.int64)), axes,
            ])  # fmt: skip
            code = piece if code is None else g.op(
                "Add", [g.op("Mul", [code, g.const(np.array(base, np.int64))]), piece]
            )  # fmt: skip
        keys = []
        for pieces, _ in terms:
            value = 0
            for w in pieces:
                value = value * base + code_of[w]
            keys.append(value)
        parts.append(g.op(
            "LabelEncoder", [code], domain="ai.onnx.ml", hint=f"gram{n}_ids",
            keys_int64s=keys, values_int64s=[index for _, index in terms], default_int64=size,
        ))  # fmt: skip
    if not parts:
        return g.op("Gather", [g.const(np.full(base, size, np.int64)), uid], axis=0)
    return parts[0] if len(parts) == 1 else g.op("Concat", parts, axis=1)
