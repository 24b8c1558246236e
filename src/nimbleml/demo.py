"""`nimbleml demo`: the main job end to end on data scikit-learn ships.

Trains a PyTorch MLP and a scikit-learn pipeline on the digits dataset, compresses both,
benchmarks each against its original, prints the comparison and writes the report.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ._deps import require


def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    require("sklearn", "the demo")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    return Xtr, Xte, ytr, yte


def train_mlp(
    X: np.ndarray, y: np.ndarray, hidden: int = 512, epochs: int = 30, seed: int = 0
) -> Any:
    """A 64→hidden→hidden→10 MLP trained with Adam; returned in eval mode."""
    torch = require("torch", "the demo")
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(X.shape[1], hidden), torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
        torch.nn.Linear(hidden, int(y.max()) + 1),
    )  # fmt: skip
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    xt, yt = torch.from_numpy(X), torch.from_numpy(y.astype(np.int64))
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), 64):
            idx = order[i : i + 64]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    return model.eval()


def train_pipeline(X: np.ndarray, y: np.ndarray) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)).fit(X, y)


def run_demo(out: Path, quick: bool = False, echo: Callable[[str], None] = print) -> None:
    from .bench import TimingConfig, benchmark
    from .compress import compress

    out.mkdir(parents=True, exist_ok=True)
    timing = TimingConfig(time_budget_s=0.5 if quick else 2.0)
    Xtr, Xte, ytr, yte = digits()
    echo(f"digits: {len(Xtr)} training rows, {len(Xte)} test rows")

    jobs = [
        ("mlp", train_mlp(Xtr, ytr, epochs=5 if quick else 30), "int8"),
        ("pipeline", train_pipeline(Xtr, ytr), None),
    ]
    for name, model, quantize in jobs:
        echo(f"\n== {name}: compress (quantize={quantize}), verify, package")
        pkg = compress(
            model, quantize=quantize, val=(Xte, yte), metric="accuracy", max_drop=0.01,
            benchmark_time_s=0.2 if quick else 0.5,
        )  # fmt: skip
        path = pkg.save(out / f"{name}.nimble")
        v = pkg.manifest["validation"]
        echo(f"package {path}: accuracy {v['baseline']:.4f} -> {v['package']:.4f}")
        echo(f"== {name}: benchmark original vs package")
        report = benchmark(
            [model, pkg], Xte, (1, 32), names=[f"{name} original", f"{name} package"],
            val=(Xte, yte), metric="accuracy", timing=timing,
        )  # fmt: skip
        echo(report.table())
        written = report.save(out / f"{name}-report")
        echo("wrote " + ", ".join(str(p) for p in written))
