"""How a server is configured (``ServeConfig``, checked when it is made) and how many ONNX
Runtime threads a served model gets (``serving_threads``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError


@dataclass
class ServeConfig:
    max_batch_size: int = 32
    max_wait_ms: float = 2.0
    max_queue: int = 1024
    timeout_ms: float = 10_000.0
    cache_mb: float = 256.0
    api_key: str | None = None
    max_body_bytes: int = 16 * 2**20
    redis: str | None = None  # a shared cache tier below memory (several workers share it)
    threads: int | None = None  # ONNX Runtime threads per model; None: leave the loop a core
    # model control (the v2 repository load route), off unless one of these is given, as
    # Triton's explicit mode: packages under ``repository`` only, or any path
    repository: str | None = None
    allow_reload: bool = False
    # an Ed25519 public key (PEM file): every package, also on reload, must be signed by it
    verify_key: str | None = None
    # /metrics, /dashboard and /dashboard/data without the API key (a Prometheus scraper
    # inside the cluster); by default they need it, as inference does, when one is set
    public_metrics: bool = False
    # with several workers, how long the load route waits for all of them to serve a load
    reload_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ConfigError(f"threads must be a positive integer, got {self.threads!r}")
        if self.max_batch_size < 1 or self.max_queue < 1:
            raise ConfigError("max_batch_size and max_queue must be at least 1 sample")
        if self.max_wait_ms < 0 or self.timeout_ms <= 0 or self.cache_mb < 0:
            raise ConfigError("max_wait_ms >= 0, timeout_ms > 0 and cache_mb >= 0 are required")
        if self.reload_timeout_s <= 0:
            raise ConfigError(f"reload_timeout_s must be > 0, got {self.reload_timeout_s!r}")
        if self.redis is not None and self.cache_mb <= 0:
            raise ConfigError("a Redis tier sits below the memory cache: give cache_mb > 0")
        if self.repository is not None and not Path(self.repository).is_dir():
            raise ConfigError(f"repository {self.repository} is not a folder")
        if self.verify_key is not None:  # a bad key is refused at start, not at first load
            from ..signature import public_key

            public_key(self.verify_key)


def serving_threads(threads: int | None, tuned: int | None = None, workers: int = 1) -> int:
    """ONNX Runtime intra-op threads for a served model: ``threads`` when given; else the
    cores this process may use, shared by ``workers`` processes, less one for the event
    loop (which parses, admits and answers every request), at most what the package was
    tuned for. On 2 cores that is 1: a second pool thread fights the loop for its core,
    and rejections under overload wait behind it."""
    if threads:
        return threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    auto = max(1, (cores or 1) // workers - 1)
    return min(auto, tuned) if tuned else auto
