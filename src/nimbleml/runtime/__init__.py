"""In-process inference: predictor, cache tiers, ensembles."""

from .cache import DiskTier, MemoryTier, RedisTier, TieredCache, make_cache
from .predictor import OptimizedPredictor

__all__ = ["DiskTier", "MemoryTier", "OptimizedPredictor", "RedisTier", "TieredCache", "make_cache"]
