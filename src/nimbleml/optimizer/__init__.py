"""Accuracy-budgeted search for the fastest model on this machine."""

from .engine import optimize
from .result import Candidate, OptimizationResult

__all__ = ["Candidate", "OptimizationResult", "optimize"]
