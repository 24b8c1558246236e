"""In-process inference: predictor, cache tiers, ensembles (threaded or fused into one graph)."""

from .cache import DiskTier, MemoryTier, RedisTier, TieredCache, make_cache
from .ensemble import EnsembleOutput, EnsemblePredictor
from .fused import FusedEnsemble
from .predictor import OptimizedPredictor

__all__ = [
    "DiskTier",
    "EnsembleOutput",
    "EnsemblePredictor",
    "FusedEnsemble",
    "MemoryTier",
    "OptimizedPredictor",
    "RedisTier",
    "TieredCache",
    "make_cache",
]
