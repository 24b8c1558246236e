"""Accuracy-budgeted search for the fastest model on this machine."""

from .result import Candidate, OptimizationResult
from .search import optimize

__all__ = ["Candidate", "OptimizationResult", "optimize"]
