"""Honest benchmarks: timer, statistics, memory, machine fingerprint, reports."""

from .core import benchmark
from .report import BenchmarkReport, BenchmarkResult, PerformanceMetrics
from .stats import LatencyStats
from .timer import TimingConfig

__all__ = [
    "BenchmarkReport",
    "BenchmarkResult",
    "LatencyStats",
    "PerformanceMetrics",
    "TimingConfig",
    "benchmark",
]
