"""Temperature and alpha, when not given: a short search on a held-out part of the training
data. A fifth of the labelled rows (seeded) is held out; each candidate is a short run (a
quarter of the epochs, at least 2 and at most 10) on the rest (and the unlabeled rows), scored on the
held-out rows by the run's metric (ties: the lower held-out loss). The final run then trains
on all the rows with the winner; the report gives the choice, its score and every try.

The candidates are few on purpose (the search costs about one full run): with views the
student matches the teacher's function, which the hard labels only blur (Beyer et al. 2022
found alpha = 1 best), so alpha = 1 at two temperatures, and two mixes with the labels (on the
digits' small students alpha = 0.5 did better); without views Hinton et al.'s temperatures
(2, 4) and alphas (0.5, 0.9), and T = 1: on the digits a teacher is nearly one-hot on the rows it
was trained on, and at a short budget softer targets only slowed the student (T=2, alpha=0.5:
-1.1 points against the student alone at lr 1e-3, 40 epochs; T=1 matched it).
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .._deps import require
from . import unlabeled as unlabeled_rows

WITH_VIEWS = [(1.0, 1.0), (2.0, 1.0), (2.0, 0.5), (4.0, 0.5)]
WITHOUT_VIEWS = [(1.0, 0.5), (2.0, 0.5), (4.0, 0.5), (2.0, 0.9)]
DEFAULT = {True: (1.0, 1.0), False: (2.0, 0.5)}  # when no search can run (views or not)
HELD_OUT = 0.2


@dataclass
class Choice:
    temperature: float
    alpha: float
    score: float
    metric: str
    held_out: int
    epochs: int
    tried: list[dict[str, float]] = field(default_factory=list)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def candidates(temperature: float | None, alpha: float | None,
               views: bool) -> list[tuple[float, float]]:  # fmt: skip
    """The (T, alpha) pairs to try, the given one of the two held fixed."""
    grid = WITH_VIEWS if views else WITHOUT_VIEWS
    if temperature is not None:
        alphas = sorted({a for _, a in grid}, reverse=True)
        return [(float(temperature), a) for a in alphas]
    if alpha is not None:
        temps = sorted({t for t, _ in grid})
        return [(t, float(alpha)) for t in temps]
    return list(grid)


def split(data: Any, seed: int) -> tuple[Any, Any] | None:
    """(the rest, the held-out fifth) of the labelled rows, or None when they cannot be
    split (a DataLoader, or fewer than 10 rows)."""
    torch = require("torch", "nimbleml.distill")
    n = len(data[1]) if isinstance(data, tuple) else len(data) if hasattr(data, "__len__") else 0
    if n < 10 or isinstance(data, torch.utils.data.DataLoader):
        return None
    order = np.random.default_rng(seed).permutation(n)
    cut = max(2, round(n * HELD_OUT))
    held, rest = np.sort(order[:cut]), np.sort(order[cut:])
    if isinstance(data, tuple):
        X, y = data

        def take(index: Any) -> Any:
            rows = {k: v[index] for k, v in X.items()} if isinstance(X, dict) else X[index]
            return rows, y[index]

        return take(rest), take(held)
    subset = torch.utils.data.Subset
    return subset(data, rest.tolist()), subset(data, held.tolist())


def search(setup: Any, start: Any, train_data: Any, unlabeled: Any,
           temperature: float | None, alpha: float | None) -> Choice:  # fmt: skip
    """The (T, alpha) of the candidates that scores best on the held-out rows."""
    views = setup.spec is not None
    options = setup.options
    epochs = int(options.get("epochs", 10))
    short = max(1, min(epochs, 10, max(2, math.ceil(epochs / 4))))
    tries = candidates(temperature, alpha, views)
    parts = split(train_data, int(options.get("seed", 0)))
    if parts is None or len(tries) == 1:
        t, a = tries[0] if len(tries) == 1 else DEFAULT[views]
        why = "a DataLoader or under 10 rows cannot be split" if parts is None else "one choice"
        return Choice(t, a, math.nan, "", 0, 0, [], note=f"no search ({why})")
    rest, held = parts
    fit = unlabeled_rows.merged(rest, unlabeled, setup.regression)
    # the short runs write nothing and tell no callback: they are not the user's run
    override: dict[str, Any] = {"epochs": short, "checkpoint_dir": None, "resume": False, "callbacks": [],
                "early_stopping": None}  # fmt: skip
    tried = []
    for t, a in tries:
        _, history, _, _ = setup.run(copy.deepcopy(start), fit, held, t, a, **override)
        last = history[-1]
        metric = last.get("metric", "val loss")
        if "val_metric" in last:
            score = float(last["val_metric"])
            key = (score if last.get("higher_is_better", True) else -score, -last["val_loss"])
        else:
            score = float(last["val_loss"])
            key = (-score, 0.0)
        tried.append({"temperature": t, "alpha": a, "score": score, "key": key,
                      "metric": metric})  # fmt: skip
    best = max(tried, key=lambda r: r["key"])
    rows = [{k: r[k] for k in ("temperature", "alpha", "score")} for r in tried]
    held_n = len(held[1]) if isinstance(held, tuple) else len(held)
    return Choice(best["temperature"], best["alpha"], best["score"], str(best["metric"]),
                  held_n, short, rows)  # fmt: skip
