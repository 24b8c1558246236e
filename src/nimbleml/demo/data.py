"""The demo's data and small models: scikit-learn's digits, an MLP and a pipeline trained on
them. The tests, the benchmarks and README's examples use them too."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._deps import require


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


def new_mlp(inputs: int, classes: int, hidden: int, seed: int = 0) -> Any:
    """An untrained inputs→hidden→hidden→classes MLP (the demo's teacher, before training)."""
    torch = require("torch", "the demo")
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(inputs, hidden), torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
        torch.nn.Linear(hidden, classes),
    )  # fmt: skip
