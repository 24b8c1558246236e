"""In-process inference: predictor, cache tiers, ensembles."""

from .cache import DiskTier, MemoryTier, RedisTier, TieredCache, make_cache
from .ensemble import EnsembleOutput, EnsemblePredictor
from .predictor import OptimizedPredictor

__all__ = [
    "DiskTier",
    "EnsembleOutput",
    "EnsemblePredictor",
    "MemoryTier",
    "OptimizedPredictor",
    "RedisTier",
    "TieredCache",
    "make_cache",
]
