"""scikit-learn text pipelines (CountVectorizer / TfidfVectorizer first) as one ONNX graph.

skl2onnx's own text converter does not reproduce scikit-learn on real text: it swaps the
default ``token_pattern`` for ``[a-zA-Z0-9_]+`` ("café" becomes "caf"), removes stop words
from whole documents instead of tokens (a document that *is* a stop word vanishes from the
batch, and bigrams keep the stop word between two words), has no ``char_wb`` analyzer, and
lowercases with the ``en_US.UTF-8`` locale that many containers lack. So the vectorizer is
built here from ONNX Runtime's string operators, and only the steps after it (features in,
labels and probabilities out) go through skl2onnx; the two graphs are joined on
``nimble_features``. Every construction below mirrors a line of scikit-learn's analyzers;
what cannot be mirrored (callables, accent stripping, RE2-incompatible patterns) raises
NoConverterError so the original is packaged instead, and anything subtler is left to the
verification on real and hard texts, which names the text where the two disagree.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import numpy as np

from ..errors import ConversionError, NoConverterError
from . import text_sparse
from .text_patterns import DEFAULT_PATTERNS, char_class, re2_pattern

FEATURES = "nimble_features"
OPSET = 21  # StringConcat and RegexFullMatch (char analyzers) need 20
TEXT_INPUT = "text"


def is_text_vectorizer(step: Any) -> bool:
    return hasattr(step, "build_analyzer") and hasattr(step, "transform")


def text_vectorizers(est: Any) -> list[tuple[Any, float]] | None:
    """(vectorizer, weight) for a pipeline that starts with a text vectorizer, or with a
    FeatureUnion of them (words and character n-grams side by side); else None."""
    steps = getattr(est, "steps", None)
    if not steps:
        return None
    first = steps[0][1]
    if is_text_vectorizer(first):
        return [(first, 1.0)]
    parts = [(n, t) for n, t in getattr(first, "transformer_list", []) if not isinstance(t, str)]
    if parts and all(is_text_vectorizer(t) for _, t in parts):
        weights = first.transformer_weights or {}
        return [(t, float(weights.get(name, 1.0))) for name, t in parts]
    return None


def mismatch_hint(vectorizers: list[Any]) -> str:
    """What makes a text graph disagree with scikit-learn, for the ConversionError."""
    hints = []
    for vec in vectorizers:
        pattern = vec.token_pattern or ""
        if vec.analyzer == "word" and pattern.removeprefix("(?u)") not in DEFAULT_PATTERNS:
            hints.append(
                f"token_pattern {pattern!r} runs in ONNX Runtime's RE2 tokenizer, whose \\b "
                "and look-arounds differ from Python's re (nimbleml rewrites only \\w, \\d and "
                "\\s to Python's Unicode classes), so the text shown splits into other tokens. "
                'Fit with the default token_pattern, or one without \\b (e.g. r"[\\w\']{2,}"), '
                "to convert"
            )
    if any(vec.lowercase for vec in vectorizers):
        hints.append(
            "ONNX lowercasing differs from Python's on 'İ' (Python: 'i̇') and a word-final "
            "'Σ' (Python: 'ς')"
        )
    return "Likely cause: " + "; ".join(hints) if hints else ""


# -- what ONNX Runtime can run here -----------------------------------------------------------
def _tiny_session(node: Any) -> Any:
    import onnxruntime as ort
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.STRING, [None])
    y = helper.make_tensor_value_info("y", TensorProto.STRING, None)
    graph = helper.make_graph([node], "probe", [x], [y])
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    so = ort.SessionOptions()
    so.log_severity_level = 4
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


@functools.lru_cache(maxsize=1)
def lowercase_locale() -> str:
    """A locale ONNX Runtime's StringNormalizer can lowercase UTF-8 text with on this machine.
    Its default, en_US.UTF-8, is missing from most slim containers (the session then fails
    to load); C.UTF-8 ships with glibc. The package records the name it was verified with."""
    from onnx import helper

    for name in ("C.UTF-8", "C.utf8", "en_US.UTF-8", "en_US.utf8"):
        node = helper.make_node(
            "StringNormalizer", ["x"], ["y"], case_change_action="LOWER", locale=name
        )
        try:
            out = _tiny_session(node).run(None, {"x": np.array(["ÉA"], dtype=object)})[0]
        except Exception:
            continue
        if out[0] == "éa":
            return name
    raise NoConverterError(
        "ONNX Runtime here has no UTF-8 locale to lowercase text with (tried C.UTF-8 and "
        "en_US.UTF-8); install one (e.g. apt-get install locales) or fit the vectorizer with "
        "lowercase=False. The original model stays runnable (packaged as skops)"
    )


def _check_tokenexp(regex: str, original: str) -> None:
    from onnx import helper

    node = helper.make_node(
        "Tokenizer",
        ["x"],
        ["y"],
        domain="com.microsoft",
        tokenexp=regex,
        mark=0,
        pad_value="#",
        mincharnum=1,
    )
    try:
        _tiny_session(node).run(None, {"x": np.array(["probe text"], dtype=object)})
    except Exception as exc:
        raise NoConverterError(
            f"token_pattern {original!r} cannot run in ONNX Runtime's tokenizer (RE2 has no "
            f"look-arounds, back-references or possessive quantifiers): "
            f"{str(exc).splitlines()[0][:200]}. The original model stays runnable (skops)"
        ) from exc


def check_convertible(vec: Any) -> None:
    """NoConverterError for the vectorizer settings no ONNX graph can reproduce."""
    name = type(vec).__name__
    reasons = []
    if not hasattr(vec, "vocabulary_"):
        reasons.append(f"{name} has no vocabulary (HashingVectorizer hashes with MurmurHash3)")
    if getattr(vec, "input", "content") != "content":
        reasons.append(f"input={vec.input!r} reads files; ONNX takes the texts themselves")
    if callable(vec.analyzer):
        reasons.append("analyzer is a Python callable")
    if vec.preprocessor is not None:
        reasons.append("preprocessor is a Python callable")
    if vec.tokenizer is not None and vec.analyzer == "word":
        reasons.append("tokenizer is a Python callable")
    if vec.strip_accents is not None:
        reasons.append(f"strip_accents={vec.strip_accents!r} needs Unicode normalisation")
    if reasons:
        raise NoConverterError(
            f"{name} cannot be converted to ONNX: {'; '.join(reasons)}. The original model "
            "stays runnable (packaged as skops, not converted)"
        )


# -- the graph ---------------------------------------------------------------------------------
class _Graph:
    """Nodes and initializers with names that cannot clash with skl2onnx's."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self._n = 0

    def _name(self, hint: str) -> str:
        self._n += 1
        return f"nimble_{hint}_{self._n}"

    def op(self, op_type: str, inputs: list[str], hint: str = "", **attrs: Any) -> str:
        return self.ops(op_type, inputs, 1, hint, **attrs)[0]

    def ops(
        self, op_type: str, inputs: list[str], n: int, hint: str = "", **attrs: Any
    ) -> list[str]:
        """A node with ``n`` outputs; their names."""
        from onnx import helper

        outs = [self._name(hint or op_type.lower()) for _ in range(n)]
        domain = attrs.pop("domain", "")
        self.nodes.append(helper.make_node(op_type, inputs, outs, domain=domain, **attrs))
        return outs

    def const(self, value: Any, hint: str = "const") -> str:
        from onnx import numpy_helper

        name = self._name(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name


def _pad_value(terms: list[str]) -> str:
    """A private-use character in no vocabulary term: it fills the tokenizer's ragged rows, so
    no n-gram that touches it can match the pool."""
    for cp in range(0xE000, 0xF900):
        if not any(chr(cp) in t for t in terms):
            return chr(cp)
    raise ConversionError("every private-use character occurs in the vocabulary; cannot pad")


def _pool(vec: Any, pad: str) -> dict[str, Any]:
    """TfIdfVectorizer attributes: vocabulary terms split into tokens, grouped by length."""
    vocab: dict[str, int] = vec.vocabulary_
    min_n, max_n = vec.ngram_range
    groups: dict[int, list[tuple[list[str], int]]] = {}
    for term, index in vocab.items():
        pieces = term.split(" ") if vec.analyzer == "word" else list(term)
        if "" in pieces or not 0 < len(pieces) <= max_n:
            raise ConversionError(
                f"vocabulary term {term!r} cannot be split into the {min_n}-{max_n} tokens it "
                "was made of (a token with a space?); use a token_pattern without spaces"
            )
        groups.setdefault(len(pieces), []).append((pieces, int(index)))
    pool: list[str] = []
    counts: list[int] = []
    indexes: list[int] = []
    for n in range(1, max_n + 1):
        counts.append(len(pool))
        for pieces, index in groups.get(n, []):
            pool.extend(pieces)
            indexes.append(index)
    # char_wb counts a padded word shorter than min_n whole (" a " with ngram_range=(4, 5))
    shortest = min(groups) if vec.analyzer == "char_wb" else min_n
    return {
        "min_gram_length": min(shortest, min_n),
        "max_gram_length": max_n,
        "max_skip_count": 0,
        "mode": "TF",
        "pool_strings": pool,
        "ngram_counts": counts,
        "ngram_indexes": indexes,
    }


def _drop_stop_words(g: _Graph, tokens: str, stop: list[str], pad: str) -> str:
    """Remove stop-word tokens and close the gaps, as scikit-learn does before forming
    n-grams ("cat the dog" gives the bigram "cat dog"): a stable sort of each row on
    (is stop word, position), then the stop words at the end become padding."""
    is_stop = g.op(
        "LabelEncoder",
        [tokens],
        domain="ai.onnx.ml",
        keys_strings=stop,
        values_int64s=[1] * len(stop),
        default_int64=0,
    )
    width = g.op("Shape", [tokens], start=1, end=2)
    one, zero = g.const(np.int64(1)), g.const(np.int64(0))
    positions = g.op("Range", [zero, g.op("Squeeze", [width]), one])
    key = g.op("Add", [g.op("Mul", [is_stop, width]), positions])
    ordered, order = g.ops("TopK", [key, width], 2, axis=1, largest=0, sorted=1)
    moved = g.op("GatherElements", [tokens, order], axis=1)
    was_stop = g.op("GreaterOrEqual", [ordered, width])
    return g.op("Where", [was_stop, g.const(np.array([pad], dtype=object)), moved])


def _tokens(g: _Graph, vec: Any, text: str, pad: str, pad_column: bool = True) -> str:
    """[N, T] tokens (words, or characters with word padding) right-filled with ``pad``."""
    tok: dict[str, Any] = {"domain": "com.microsoft", "mark": 0, "pad_value": pad, "mincharnum": 1}
    space = char_class("s")
    if vec.analyzer == "word":
        regex = re2_pattern(vec.token_pattern)
        _check_tokenexp(regex, vec.token_pattern)
        tokens = g.op("Tokenizer", [text], tokenexp=regex, **tok)
        stop = vec.get_stop_words()
        if stop and vec.ngram_range[1] > 1:
            tokens = _drop_stop_words(g, tokens, sorted(stop), pad)
    elif vec.analyzer == "char":
        # scikit-learn first turns each run of 2+ whitespace characters into one space
        run = f"[{space}]{{2,}}"
        tokens = g.op("Tokenizer", [text], tokenexp=f"{run}|(?s:.)", **tok)
        is_run = g.op("RegexFullMatch", [tokens], pattern=run)
        tokens = g.op("Where", [is_run, g.const(np.array([" "], dtype=object)), tokens])
    else:  # char_wb: characters of each whitespace-separated word, padded with one space
        words = g.op("Tokenizer", [text], tokenexp=f"[^{space}]+", **tok)
        blank = g.const(np.array([" "], dtype=object), "space")
        pad_const = g.const(np.array([pad], dtype=object), "pad")
        padded = g.op("StringConcat", [g.op("StringConcat", [blank, words]), blank])
        words = g.op("Where", [g.op("Equal", [words, pad_const]), pad_const, padded])
        chars = g.op("Tokenizer", [words], tokenexp="(?s:.)", **tok)  # [N, W, C]
        tokens = g.op("Reshape", [chars, g.const(np.array([0, -1], dtype=np.int64))])
    if not pad_column:
        return tokens
    # a batch in which no text has a token gives [N, 0]; one pad column keeps it 2-D
    column = g.op(
        "Expand",
        [
            g.const(np.array([pad], dtype=object), "pad"),
            g.op("Concat", [g.op("Shape", [tokens], end=1), g.const(np.array([1]))], axis=0),
        ],
    )
    return g.op("Concat", [tokens, column], axis=1)


def _normalized_tokens(g: _Graph, vec: Any, text: str, pad_column: bool = True) -> tuple[str, str]:
    """([N, T] tokens of the lowercased text, the padding value)."""
    pad = _pad_value(list(vec.vocabulary_))
    if vec.lowercase:
        text = g.op(
            "StringNormalizer", [text], case_change_action="LOWER", locale=lowercase_locale()
        )
    return _tokens(g, vec, text, pad, pad_column), pad


def _features(g: _Graph, vec: Any, text: str, precision: str) -> str:
    """[N, V] features equal to ``vec.transform(texts).toarray()``."""
    tokens, pad = _normalized_tokens(g, vec, text)
    x = g.op("TfIdfVectorizer", [tokens], **_pool(vec, pad))
    dtype = np.float64 if precision == "double" else np.float32
    if dtype is np.float64:
        x = g.op("Cast", [x], to=11)

    def scalar(value: float) -> str:
        return g.const(np.array(value, dtype=dtype), "scalar")

    if vec.binary:
        x = g.op("Cast", [g.op("Greater", [x, scalar(0)])], to=11 if dtype is np.float64 else 1)
    if getattr(vec, "sublinear_tf", False):  # 1 + log(tf) where tf > 0
        logged = g.op("Add", [g.op("Log", [g.op("Max", [x, scalar(1)])]), scalar(1)])
        x = g.op("Where", [g.op("Greater", [x, scalar(0)]), logged, x])
    idf = getattr(vec, "idf_", None) if getattr(vec, "use_idf", False) else None
    if idf is not None:
        x = g.op("Mul", [x, g.const(np.asarray(idf, dtype=dtype), "idf")])
    norm = getattr(vec, "norm", None)  # TfidfVectorizer only
    if norm in ("l1", "l2"):  # rows of zeros stay zeros, as in sklearn.preprocessing.normalize
        axes = g.const(np.array([1], dtype=np.int64), "axes")
        size = g.op("ReduceL2" if norm == "l2" else "ReduceL1", [x, axes], keepdims=1)
        safe = g.op("Where", [g.op("Equal", [size, scalar(0)]), scalar(1), size])
        x = g.op("Div", [x, safe])
    return g.op("Identity", [x], hint="features")


def _quantized_head(
    g: _Graph, final: Any, x: str, bits: int, precision: str
) -> tuple[str, Any] | None:
    """Scores X·Wᵀ with W stored as int8/int16 plus one float scale per class, and a copy of
    the estimator whose coefficients are the identity, so skl2onnx still writes its labels,
    probabilities and post-transform. None when the coefficients are not on that grid (the
    coef-int8/int16 recipes put them there)."""
    coef = np.atleast_2d(np.asarray(final.coef_, dtype=np.float64))
    levels = 2 ** (bits - 1) - 1
    scale = np.abs(coef).max(axis=1) / levels
    scale[scale == 0] = 1.0
    q = np.round(coef / scale[:, None])
    if not np.allclose(q * scale[:, None], coef, rtol=1e-6, atol=0):
        return None
    qtype = np.int8 if bits == 8 else np.int16
    # Cast and Mul rather than DequantizeLinear: ONNX Runtime fuses DequantizeLinear + MatMul
    # into a matmul that also quantises the features, which moved probabilities by 1e-3
    weights = g.op(
        "Mul",
        [
            g.op("Cast", [g.const(np.ascontiguousarray(q.T.astype(qtype)), "coef_q")], to=1),
            g.const(scale.astype(np.float32), "coef_scale"),
        ],
    )
    if precision == "double":
        weights = g.op("Cast", [weights], to=11)
    scores = g.op("MatMul", [x, weights], hint="scores")
    head = copy.deepcopy(final)
    k = coef.shape[0]
    head.coef_ = np.eye(k, dtype=np.float64) if np.ndim(final.coef_) == 2 else np.ones(1)
    head.n_features_in_ = k
    return scores, head


def text_to_onnx(est: Any, precision: str, coef_bits: int | None, classifier: bool) -> Any:
    """One ONNX model: ``text`` (string [N]) in, the pipeline's outputs out (labels and
    probabilities as arrays, no ZipMap, for a classifier)."""
    from sklearn.pipeline import Pipeline

    vectorizers = text_vectorizers(est)
    if vectorizers is None:
        raise ConversionError("the pipeline does not start with a CountVectorizer/TfidfVectorizer")
    for vec, _ in vectorizers:
        check_convertible(vec)
    rest_steps = est.steps[1:]
    if not rest_steps:
        raise ConversionError("the pipeline has a vectorizer but no estimator after it")
    g = _Graph()
    if text_sparse.applies(vectorizers, rest_steps):
        vec = vectorizers[0][0]
        tokens, _ = _normalized_tokens(g, vec, TEXT_INPUT, pad_column=False)
        x, head = text_sparse.sparse_scores(g, vec, rest_steps[0][1], tokens, precision, coef_bits)
        return _join(g, x, head, head.n_features_in_, precision, classifier)
    parts = []
    for vec, weight in vectorizers:
        part = _features(g, vec, TEXT_INPUT, precision)
        if weight != 1.0:
            dtype = np.float64 if precision == "double" else np.float32
            part = g.op("Mul", [part, g.const(np.array(weight, dtype=dtype), "weight")])
        parts.append(part)
    x = parts[0] if len(parts) == 1 else g.op("Concat", parts, axis=1)
    final = rest_steps[-1][1]
    rest: Any = rest_steps[0][1] if len(rest_steps) == 1 else Pipeline(rest_steps)
    width = sum(len(vec.vocabulary_) for vec, _ in vectorizers)
    if coef_bits and len(rest_steps) == 1 and hasattr(final, "coef_"):
        quantized = _quantized_head(g, final, x, coef_bits, precision)
        if quantized is not None:
            x, rest = quantized
            width = rest.n_features_in_
    return _join(g, x, rest, width, precision, classifier)


def _join(g: _Graph, x: str, rest: Any, width: int, precision: str, classifier: bool) -> Any:
    """The features graph ``g`` (ending in ``x``) joined to skl2onnx's graph of ``rest``."""
    import onnx
    from onnx import TensorProto, helper
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType

    final = rest.steps[-1][1] if hasattr(rest, "steps") else rest
    g.nodes.append(helper.make_node("Identity", [x], [FEATURES]))
    tensor = DoubleTensorType if precision == "double" else FloatTensorType
    options = (
        {id(final): {"zipmap": False}} if classifier and hasattr(final, "predict_proba") else None
    )
    tail = to_onnx(
        rest,
        initial_types=[(FEATURES, tensor([None, width]))],
        options=options,
        target_opset=OPSET,
    )
    opsets = {o.domain: o.version for o in tail.opset_import}
    if opsets.get("", 0) != OPSET:
        raise ConversionError(f"skl2onnx wrote opset {opsets.get('')}, not {OPSET}")
    # LabelEncoder's keys_strings arrived in ai.onnx.ml 2; later versions only add attributes
    opsets["ai.onnx.ml"] = max(opsets.get("ai.onnx.ml", 2), 2)
    opsets["com.microsoft"] = 1
    text_in = helper.make_tensor_value_info(TEXT_INPUT, TensorProto.STRING, ["batch"])
    graph = helper.make_graph(
        g.nodes + list(tail.graph.node),
        "nimbleml_text_pipeline",
        [text_in],
        list(tail.graph.output),
        initializer=g.inits + list(tail.graph.initializer),
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
        ir_version=tail.ir_version,
        producer_name="nimbleml",
    )
    onnx.checker.check_model(model)
    return model
