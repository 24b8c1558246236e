"""scikit-learn (and LightGBM / XGBoost) models as packages: latency at 1 and 1,000 rows,
label agreement, size; the original and the package timed side by side in one run.

    .venv/bin/python benchmarks/sklearn_models.py [--quick] [--only text frame boosting forest coef]

Models: TF-IDF + LogisticRegression and TF-IDF + MultinomialNB on synthetic emails (a
50,000-term vocabulary), a ColumnTransformer pipeline over numeric and string columns,
HistGradientBoosting with missing values, LightGBM, XGBoost, RandomForest(100). Goals: the
package >= 10x faster than scikit-learn at 1 row for every one, >= 30x for the text linear
models. Part `coef`: 8/16-bit coefficients of the text LogisticRegression, size and accuracy
before and after.
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

import nimbleml
from _harness import quick_args, side_by_side, table

PARTS = ["text", "frame", "boosting", "forest", "coef"]
CLASSES = ("billing", "support", "sales", "spam")


def synthetic_emails(n: int, vocab: int = 60_000, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Emails of 8-40 words: each class draws one word in ten from its own 300-word topic
    (so short emails are hard to place), the rest from a shared Zipf-distributed vocabulary
    of made-up words, plus numbers, punctuation and a few accented words."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = np.array(["".join(rng.choice(letters, rng.integers(3, 10))) for _ in range(vocab)])
    topics = [rng.choice(vocab, 300, replace=False) for _ in CLASSES]
    zipf = 1.0 / np.arange(1, vocab + 1)
    zipf /= zipf.sum()
    extras = ["café", "naïve", "€42", "10:30", "re:", "!!!", "déjà-vu", "2026"]
    texts, labels = [], rng.integers(0, len(CLASSES), n)
    for c in labels:
        k = int(rng.integers(8, 41))
        own = words[rng.choice(topics[c], max(1, k // 10))]
        shared = words[rng.choice(vocab, k - len(own), p=zipf)]
        parts = [*own, *shared, *rng.choice(extras, int(rng.integers(0, 3)))]
        rng.shuffle(parts)
        texts.append(" ".join(parts).capitalize() + rng.choice([".", "?", "!"]))
    return texts, labels


def synthetic_customers(n: int, seed: int = 0) -> tuple[Any, np.ndarray]:
    """A DataFrame with numeric (some missing) and string columns, and a churn label."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    city = rng.choice(["Paris", "Lyon", "Berlin", "Madrid", "Oslo", "Rome"], n)
    plan = rng.choice(["free", "basic", "pro", "team"], n, p=[0.4, 0.3, 0.2, 0.1])
    age = rng.normal(40, 12, n).round()
    income = rng.lognormal(10.5, 0.5, n)
    income[rng.random(n) < 0.1] = np.nan
    tenure = rng.exponential(24, n)
    logit = (
        -0.03 * (age - 40) - 0.04 * tenure + (plan == "free") * 1.2 + (city == "Oslo") * 0.8
        + np.where(np.isnan(income), 0.5, -0.3 * (np.log(np.nan_to_num(income, nan=1)) - 10.5))
    )  # fmt: skip
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    frame = pd.DataFrame(
        {"age": age, "income": income, "tenure": tenure, "city": city, "plan": plan}
    )
    return frame, y


def text_models() -> dict[str, Any]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.naive_bayes import MultinomialNB
    from sklearn.pipeline import make_pipeline

    texts, y = synthetic_emails(6_000)
    tr, te = slice(0, 5_000), slice(5_000, None)
    vec = {"ngram_range": (1, 2), "max_features": 50_000, "min_df": 1}
    out = {}
    for name, est in (
        ("TF-IDF + LogisticRegression", LogisticRegression(max_iter=300)),
        ("TF-IDF + MultinomialNB", MultinomialNB()),
    ):
        model = make_pipeline(TfidfVectorizer(**vec), est).fit(texts[tr], y[tr])
        out[name] = (model, np.array(texts[te], dtype=object), y[te])
    return out


def frame_model() -> dict[str, Any]:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    X, y = synthetic_customers(6_000)
    numeric = make_pipeline(SimpleImputer(strategy="median"), StandardScaler())
    prep = ColumnTransformer([
        ("num", numeric, ["age", "income", "tenure"]),
        ("cat", OneHotEncoder(handle_unknown="ignore"), ["city", "plan"]),
    ])  # fmt: skip
    model = make_pipeline(prep, LogisticRegression(max_iter=500)).fit(X[:5_000], y[:5_000])
    return {"ColumnTransformer + LogisticRegression": (model, X[5_000:], y[5_000:])}


def boosting_models() -> dict[str, Any]:
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import HistGradientBoostingClassifier

    X, y = load_breast_cancer(return_X_y=True)
    X = X.astype(np.float32)
    rng = np.random.default_rng(0)
    X[rng.random(X.shape) < 0.05] = np.nan  # missing values, handled by the trees
    idx = rng.permutation(len(X))
    tr, te = idx[:400], idx[400:]
    out = {
        "HistGradientBoosting (NaN)": HistGradientBoostingClassifier(max_iter=100, random_state=0)
    }
    try:
        import lightgbm

        out["LightGBM (100 trees)"] = lightgbm.LGBMClassifier(n_estimators=100, verbose=-1)
    except ImportError:
        print("LightGBM not installed: pip install 'nimbleml[gbm]'")
    try:
        import xgboost

        out["XGBoost (100 trees)"] = xgboost.XGBClassifier(n_estimators=100, max_depth=4)
    except ImportError:
        print("XGBoost not installed: pip install 'nimbleml[gbm]'")
    return {name: (est.fit(X[tr], y[tr]), X[te], y[te]) for name, est in out.items()}


def forest_model() -> dict[str, Any]:
    from sklearn.ensemble import RandomForestClassifier

    from nimbleml.demo import digits

    Xtr, Xte, ytr, yte = digits()
    return {"RandomForest (100 trees)": (RandomForestClassifier(100, random_state=0).fit(Xtr, ytr), Xte, yte)}  # fmt: skip


def rows_of(X: Any, n: int) -> Any:
    """``n`` rows of an array, an object array of texts, or a DataFrame (repeating rows)."""
    idx = np.arange(n) % len(X)
    return X.iloc[idx] if hasattr(X, "iloc") else X[idx]


def skops_size(model: Any) -> int:
    import skops.io

    return len(skops.io.dumps(model))


def measure(name: str, model: Any, X: Any, y: np.ndarray, rounds: int) -> list[str]:
    pkg = nimbleml.compress(model, quantize=None, val=(X, y))
    labels = np.asarray(pkg.predict(X))
    agreement = float(np.mean(labels == model.predict(X)))
    row = [name]
    for n in (1, 1000):
        x = rows_of(X, n)
        t = side_by_side(
            {"sklearn": partial(model.predict_proba, x), "package": partial(pkg.predict, x)},
            rounds=rounds, calls=200 if n == 1 else 10, warmup=20 if n == 1 else 3,
        )  # fmt: skip
        a, b = t["sklearn"]["p50_ms"], t["package"]["p50_ms"]
        row += [f"{a:.3f} / {b:.3f}", f"{a / b:.1f}x"]
    linear_text = name.startswith("TF-IDF")
    row += [
        f"{100 * agreement:.2f}%",
        f"{skops_size(model) / 1e3:,.0f} kB -> {pkg.size_bytes() / 1e3:,.0f} kB",
        ">= 30x" if linear_text else ">= 10x",
    ]
    return row


def coef_figures(rounds: int) -> list[list[str]]:
    name, (model, X, y) = next(iter(text_models().items()))
    out = []
    base = nimbleml.compress(model, quantize=None, val=(X, y))
    for q in ("int16", "int8"):
        pkg = nimbleml.compress(model, quantize=q, val=(X, y))
        v = pkg.manifest["validation"]
        out.append([
            f"{name}, coef-{q}", f"{base.size_bytes() / 1e3:,.0f} kB -> {pkg.size_bytes() / 1e3:,.0f} kB",
            f"{base.size_bytes() / pkg.size_bytes():.2f}x", f"{v['baseline']:.4f} -> {v['package']:.4f}",
        ])  # fmt: skip
    return out


def main() -> None:
    args = quick_args(__doc__, PARTS)
    rounds = 3 if args.quick else 9
    makers = {"text": text_models, "frame": frame_model, "boosting": boosting_models,
              "forest": forest_model}  # fmt: skip
    rows = []
    for part in args.only:
        if part in makers:
            for name, (model, X, y) in makers[part]().items():
                rows.append(measure(name, model, X, y, rounds))
                print(f"{name}: done", flush=True)
    if rows:
        print()
        print(table(rows, ["model", "1 row p50 ms (sklearn / package)", "speedup",
                           "1000 rows p50 ms", "speedup", "agreement", "size (skops -> package)",
                           "goal at 1 row"]))  # fmt: skip
    if "coef" in args.only:
        print()
        print(table(coef_figures(rounds), ["model", "size", "smaller", "accuracy before -> after"]))


if __name__ == "__main__":
    main()
