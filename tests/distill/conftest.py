"""The digits as distillation tests use them: 1,200 training rows scaled to [0, 1], the rest
for validation."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def data():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = (X / 16).astype(np.float32)
    return (X[:1200], y[:1200]), (X[1200:], y[1200:])
