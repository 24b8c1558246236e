"""nimbleml.train: accelerated, exactly-correct, measured training of PyTorch models.

One module per concern: config (options, checked), data (batches from arrays, Datasets,
DataLoaders), losses (means, weighted for exact accumulation), precision (the hardware's choice, with
its reason), loop (the Trainer), checkpoint (atomic, resumable), distributed (torchrun / DDP),
tuning (DataLoader settings and batch size, measured), result (history, report).
"""

from __future__ import annotations

import sys
import types
from typing import Any

from ..errors import TrainingError
from .config import TrainConfig
from .loop import Trainer, train
from .result import TrainReport, TrainResult
from .tuning import BatchSizeResult, LoaderDecision, find_batch_size, tune_loader

__all__ = [
    "BatchSizeResult",
    "LoaderDecision",
    "TrainConfig",
    "TrainReport",
    "TrainResult",
    "Trainer",
    "TrainingError",
    "find_batch_size",
    "train",
    "tune_loader",
]


class _CallableModule(types.ModuleType):
    """``nimbleml.train(...)`` is the function; ``nimbleml.train`` is also this package (Python
    sets the submodule as the parent's attribute on import), so the package calls through."""

    def __call__(self, *args: Any, **kwargs: Any) -> TrainResult:
        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
