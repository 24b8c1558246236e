"""nimbleml.train: accelerated, exactly-correct, measured training of PyTorch models.

One module per concern: config (options, checked), data (batches from arrays, Datasets,
DataLoaders), losses (means, weighted for exact accumulation), precision (the hardware's choice, with
its reason), loop (the Trainer), checkpoint (atomic, resumable), distributed (torchrun / DDP),
fsdp (FSDP2, strategy="fsdp"), launch (torchrun, restarts, machines), loader_settings
(DataLoader settings and batch size, measured), result (history, report).
"""

from __future__ import annotations

from ..errors import TrainingError
from .config import TrainConfig
from .loader_settings import BatchSizeResult, LoaderDecision, find_batch_size, tune_loader
from .loop import Trainer, train
from .result import TrainReport, TrainResult

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
