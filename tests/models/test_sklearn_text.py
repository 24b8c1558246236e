"""scikit-learn text pipelines become verified packages that take strings.

The dataset is synthesised here (scikit-learn ships no offline text set): support messages of
four intents built from word lists with a seeded RNG, with accented words in the vocabulary
so that Unicode tokenisation is exercised, and stop words between the topic words so that
bigrams depend on their removal.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
from sklearn.linear_model import LogisticRegression, Ridge, SGDClassifier
from sklearn.naive_bayes import BernoulliNB, ComplementNB, MultinomialNB
from sklearn.pipeline import FeatureUnion, make_pipeline
from sklearn.svm import LinearSVC
from sklearn.tree import DecisionTreeClassifier

import nimbleml
from nimbleml.compress.pipeline import convert_verified
from nimbleml.errors import (
    ConversionError,
    ConversionWarning,
    DataError,
    ModelLoadError,
    NoConverterError,
)
from nimbleml.models import load_model
from nimbleml.models.text_patterns import re2_pattern
from nimbleml.verify import HARD_TEXTS, hard_cases, variants

FAST = {"benchmark_time_s": 0.02, "benchmark_batch_sizes": (1,)}
TOPICS = {
    "billing": "refund invoice billing charge payment card café receipt overcharged price",
    "account": "login password account reset locked naïve username verify email résumé",
    "shipping": "shipping delivery package tracking late über courier address parcel box",
    "technical": "error crash bug app update screen slow freezes install version",
}
FILLER = "the a to my is please help i need with and of for it this was on 東京 2024 can not"


def make_texts(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = list(TOPICS)
    texts, y = [], []
    for i in range(n):
        label = labels[i % len(labels)]
        words = list(rng.choice(TOPICS[label].split(), 3)) + list(rng.choice(FILLER.split(), 5))
        rng.shuffle(words)
        if i % 5 == 0:
            words[0] = words[0].capitalize() + ","
        texts.append(" ".join(words) + ("!" if i % 3 == 0 else ""))
        y.append(label)
    return texts, np.array(y)


@pytest.fixture(scope="module")
def intents():
    Xtr, ytr = make_texts(320, seed=0)
    Xva, yva = make_texts(80, seed=1)
    return Xtr, ytr, Xva, yva


def fit(pipeline, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return pipeline.fit(X, y)


def scores(pipeline, texts):
    final = pipeline.steps[-1][1]
    if hasattr(final, "predict_proba"):
        return pipeline.predict_proba(texts)
    return None


def test_tfidf_logistic_regression_package_predicts_like_scikit_learn(intents, tmp_path):
    Xtr, ytr, Xva, yva = intents
    pipe = fit(make_pipeline(TfidfVectorizer(), LogisticRegression()), Xtr, ytr)
    pkg = nimbleml.compress(pipe, quantize=None, val=(Xva, yva), **FAST)
    m = pkg.manifest
    assert m["inputs"] == [{"name": "text", "dtype": "object", "shape": ["batch"]}]
    assert [c["case"] for c in m["conversion"]["cases"]] == [
        "batch=1", "batch=16", "hard texts", f"every validation row ({len(Xva)})"
    ]  # fmt: skip
    assert all(c["label_agreement"] == 1.0 for c in m["conversion"]["cases"])
    texts = Xva + list(HARD_TEXTS)
    assert np.array_equal(pkg.predict(texts), pipe.predict(texts))
    proba = pkg.run(texts)["probabilities"]
    assert np.abs(proba - pipe.predict_proba(texts)).max() < 1e-5
    assert (
        m["validation"]["baseline"]
        == m["validation"]["package"]
        == pytest.approx((pipe.predict(Xva) == yva).mean())
    )
    loaded = nimbleml.load(pkg.save(tmp_path / "intents.nimble"))
    one = np.array(["my parcel is late, where is the courier?"], dtype=object)
    assert loaded.predict(one)[0] == pipe.predict(one)[0] == "shipping"


PIPELINES = {
    "count+multinomial-nb": lambda: make_pipeline(CountVectorizer(), MultinomialNB()),
    "tfidf-char_wb+linear-svc": lambda: make_pipeline(
        TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4)), LinearSVC()
    ),
    "bigrams+stop-words+max_features+min_df": lambda: make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), stop_words="english", max_features=60, min_df=2),
        LogisticRegression(),
    ),
    "char+sublinear+complement-nb": lambda: make_pipeline(
        TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True), ComplementNB()
    ),
    "binary-bigrams-only+bernoulli-nb": lambda: make_pipeline(
        CountVectorizer(ngram_range=(2, 2), stop_words="english", binary=True), BernoulliNB()
    ),
    "char_wb-short-words+sgd": lambda: make_pipeline(
        TfidfVectorizer(analyzer="char_wb", ngram_range=(4, 5), norm="l1"),
        SGDClassifier(loss="log_loss", random_state=0),
    ),
    "union-words+char_wb-weighted": lambda: make_pipeline(
        FeatureUnion(
            [("words", TfidfVectorizer()), ("chars", CountVectorizer(analyzer="char_wb"))],
            transformer_weights={"chars": 0.1},
        ),
        LogisticRegression(),
    ),
    "unicode-pattern+tree": lambda: make_pipeline(
        CountVectorizer(token_pattern=r"[\w']{2,}", lowercase=False), DecisionTreeClassifier()
    ),
}


@pytest.mark.parametrize("name", list(PIPELINES))
def test_text_pipelines_convert_exactly_on_real_and_hard_texts(name, intents):
    Xtr, ytr, Xva, _yva = intents
    pipe = fit(PIPELINES[name](), Xtr, ytr)
    model = load_model(pipe)
    feeds = model.feeds(Xva)
    cases = variants(feeds) + hard_cases(feeds)
    onnx_model, report = convert_verified(model, cases)
    assert report["converter"] == "precision=float"
    texts = Xva + list(HARD_TEXTS)
    out = onnx_model(texts)
    assert np.array_equal(out[0], pipe.predict(texts))
    expected = scores(pipe, texts)
    if expected is not None:
        assert np.abs(out[1] - expected).max() < 1e-5


def test_text_regression_and_one_compress_per_family(intents):
    Xtr, ytr, Xva, yva = intents
    target = np.array([len(t) for t in Xtr], dtype=np.float64)
    ridge = make_pipeline(TfidfVectorizer(ngram_range=(1, 2)), Ridge()).fit(Xtr, target)
    pkg = nimbleml.compress(
        ridge, quantize=None, val=(Xva, np.array([len(t) for t in Xva])), **FAST
    )
    got = pkg.predict(Xva + list(HARD_TEXTS)).reshape(-1)
    assert np.allclose(got, ridge.predict(Xva + list(HARD_TEXTS)), rtol=1e-5, atol=1e-4)
    nb = fit(make_pipeline(CountVectorizer(), MultinomialNB()), Xtr, ytr)
    pkg = nimbleml.compress(nb, quantize=None, val=(Xva, yva), **FAST)
    assert np.array_equal(pkg.predict(Xva), nb.predict(Xva))


def test_string_inputs_are_normalised_and_checked(intents):
    Xtr, ytr, _, _ = intents
    model = load_model(fit(make_pipeline(TfidfVectorizer(), LogisticRegression()), Xtr, ytr))
    assert [s.to_dict() for s in model.inputs] == [
        {"name": "text", "dtype": "object", "shape": ["batch"]}
    ]
    as_list = model(["refund my card", None])[0]
    as_column = model(np.array([["refund my card"], [""]], dtype="U20"))[0]
    assert list(as_list) == list(as_column)  # None travels as the empty text
    with pytest.raises(DataError, match="'text' holds float64 values; the model takes strings"):
        model(np.zeros(3))


def as_python(re2: str) -> str:
    return re.sub(r"\\x\{([0-9a-f]+)\}", lambda m: f"\\U{int(m[1], 16):08x}", re2)


def test_unfitted_text_pipeline_is_refused():
    with pytest.raises(ModelLoadError, match="not fitted"):
        load_model(make_pipeline(TfidfVectorizer(), LogisticRegression()))


def test_rewritten_token_patterns_keep_pythons_unicode_classes():
    """RE2's \\w and \\s are ASCII; the rewritten classes hold Python's own code points."""
    sample = [chr(c) for c in range(0, 0x3100, 7)] + list("_éÜ東京٣\xa0\u2003\t")
    for python, translated in (
        (r"\w", r"\w"),
        (r"\s", r"\s"),
        (r"\d", r"\d"),
        (r"[\w']", r"[\w']"),
    ):
        ours = re.compile(as_python(re2_pattern(translated)))
        assert [bool(ours.fullmatch(c)) for c in sample] == [
            bool(re.fullmatch(python, c)) for c in sample
        ]
    assert re2_pattern(r"(?u)\b\w\w+\b").endswith("]{2,}")  # the default: runs of 2+
    assert re2_pattern(r"\D").startswith("[^")
    assert re2_pattern(r"[]a]\b") == "[\\]a]\\b"  # a leading ] is literal, \b is kept


def test_unreproducible_token_pattern_names_the_text(intents):
    """RE2's \\b is ASCII-only: "café" splits into "caf" in ONNX Runtime, not in Python."""
    Xtr, ytr, Xva, yva = intents
    pattern = r"(?u)\b\w+(?:'\w+)?\b"
    pipe = fit(
        make_pipeline(TfidfVectorizer(token_pattern=pattern), LogisticRegression()), Xtr, ytr
    )
    with pytest.raises(ConversionError) as info:
        nimbleml.compress(pipe, quantize=None, val=(Xva, yva), **FAST)
    message = str(info.value)
    assert "café" in message and "original" in message and "converted" in message
    assert "token_pattern" in message and "RE2" in message


def split_words(text: str) -> list[str]:
    """A tokenizer that is a Python callable: ONNX cannot run it."""
    return text.lower().split()


def test_callable_tokenizer_is_packaged_as_the_original(intents):
    Xtr, ytr, Xva, yva = intents
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # token_pattern unused with a tokenizer
        pipe = fit(make_pipeline(CountVectorizer(tokenizer=split_words), MultinomialNB()), Xtr, ytr)
    model = load_model(pipe)
    with pytest.raises(NoConverterError, match="tokenizer is a Python callable"):
        model.to_onnx(model.feeds(Xva[:2]))
    with pytest.warns(ConversionWarning, match="tokenizer is a Python callable"):
        pkg = nimbleml.compress(pipe, quantize=None, val=(Xva, yva), **FAST)
    assert pkg.manifest["model"]["path"].endswith(".skops")
    assert np.array_equal(pkg.predict(Xva), pipe.predict(Xva))


@pytest.fixture(scope="module")
def big_vocabulary():
    """About 25,000 terms (words and bigrams of a random lexicon): coefficients dominate."""
    rng = np.random.default_rng(0)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    lexicon = ["".join(rng.choice(letters, rng.integers(3, 9))) for _ in range(6000)]
    topics = [rng.choice(lexicon, 300, replace=False) for _ in range(4)]
    texts, y = [], []
    for i in range(2200):
        words = [*rng.choice(topics[i % 4], 4), *rng.choice(lexicon, 8)]
        rng.shuffle(words)
        texts.append(" ".join(words))
        y.append(i % 4)
    y = np.array(y)
    pipe = make_pipeline(TfidfVectorizer(ngram_range=(1, 2)), LogisticRegression(C=10))
    return fit(pipe, texts[:1800], y[:1800]), texts[1800:], y[1800:]


@pytest.mark.parametrize(("quantize", "prune", "max_ratio"), [
    ("int8", None, 0.7), ("int16", None, 0.8), (None, 0.5, 1.01),
])  # fmt: skip
def test_coefficient_recipes_on_a_large_text_vocabulary(big_vocabulary, quantize, prune, max_ratio):
    pipe, Xva, yva = big_vocabulary
    assert len(pipe.steps[0][1].vocabulary_) > 20_000
    pkg = nimbleml.compress(pipe, quantize=quantize, prune=prune, val=(Xva, yva), **FAST)
    m = pkg.manifest
    before, after = m["baseline"]["size_bytes"], m["model"]["size_bytes"]
    v = m["validation"]
    print(f"{quantize or f'prune {prune}'}: {before:,} -> {after:,} bytes, "
          f"accuracy {v['baseline']:.4f} -> {v['package']:.4f}")  # fmt: skip
    assert after <= max_ratio * before  # coef-prune zeros weights but stores them dense
    assert v["drop"] <= 0.01 and m["fallback"] is None
    assert (pkg.predict(Xva) == yva).mean() == pytest.approx(v["package"])


SPARSE = {
    "tfidf-l1-trigrams+logreg": lambda: make_pipeline(
        TfidfVectorizer(norm="l1", ngram_range=(1, 3)), LogisticRegression()
    ),
    "tf-no-idf+sgd": lambda: make_pipeline(
        TfidfVectorizer(use_idf=False), SGDClassifier(loss="log_loss", random_state=0)
    ),
    "count-bigrams-only+multinomial-nb": lambda: make_pipeline(
        CountVectorizer(ngram_range=(2, 2)), MultinomialNB()
    ),
    "stop-words-bigrams+ridge-regressor": lambda: make_pipeline(
        TfidfVectorizer(stop_words="english", ngram_range=(1, 2)), Ridge()
    ),
}


@pytest.mark.parametrize("name", SPARSE)
def test_word_linear_models_score_ngram_by_ngram(intents, name):
    """Word n-grams + a linear model (or MultinomialNB): the graph looks each n-gram's weights
    up (LabelEncoder + Gather) instead of building the dense [N, V] matrix, and agrees with
    scikit-learn to 1e-5 on validation and hard texts."""
    Xtr, ytr, Xva, _ = intents
    regression = "regressor" in name
    target = np.searchsorted(np.unique(ytr), ytr).astype(np.float64) if regression else ytr
    pipe = fit(SPARSE[name](), Xtr, target)
    pkg = nimbleml.compress(pipe, quantize=None, val=(Xva, None), **FAST)
    ops = set(pkg.model.op_types())
    assert "LabelEncoder" in ops and "TfIdfVectorizer" not in ops
    texts = Xva + list(HARD_TEXTS)
    if regression:
        got = pkg.run(texts)["variable"].reshape(-1)
        np.testing.assert_allclose(got, pipe.predict(texts), atol=1e-5)
        return
    assert np.array_equal(pkg.predict(texts), pipe.predict(texts))
    proba = pkg.run(texts)["probabilities"]
    assert np.abs(proba - pipe.predict_proba(texts)).max() < 1e-5
    empty = ["", "!!"]  # a batch in which no text has a token
    assert np.abs(pkg.run(empty)["probabilities"] - pipe.predict_proba(empty)).max() < 1e-5


def test_char_analyzers_keep_the_dense_graph(intents):
    Xtr, ytr, Xva, yva = intents
    pipe = fit(make_pipeline(TfidfVectorizer(analyzer="char_wb"), LogisticRegression()), Xtr, ytr)
    pkg = nimbleml.compress(pipe, quantize=None, val=(Xva, yva), **FAST)
    assert "TfIdfVectorizer" in pkg.model.op_types()
