"""`nimbleml demo`: the whole job on scikit-learn's digits, told on one page.

train a teacher → distil a shrunk student → optimize it within an accuracy budget → sign the
package → serve it (dynamic batching, a load burst, ground truth) → monitor → profile → cost
→ deploy → batch prediction, then ``DIR/index.html``. The stages are in ``stages.py`` (model
work), ``serving.py`` and ``load.py`` (the server and its client), ``ops.py`` (profile,
cost, deploy, batch), ``page.py`` (the HTML) and ``run.py`` (the order, the folder, the
summary). The data and the small models (``digits``, ``train_mlp``, ``train_pipeline``) are
in ``data.py``; the tests, the benchmarks and README use them too.

Importing this package stays cheap: torch, scikit-learn and the server load when a stage
needs them.
"""

from __future__ import annotations

from .data import digits, new_mlp, train_mlp, train_pipeline
from .run import run_demo

__all__ = ["digits", "new_mlp", "run_demo", "train_mlp", "train_pipeline"]
