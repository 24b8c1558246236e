"""Cache tiers for predictions: memory (LRU, bounded in bytes), disk (bounded in bytes, TTL),
Redis (short timeouts, survives its own outages). Write-through; concurrent identical misses
make one model call (single-flight).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
import time
from _thread import allocate_lock as _allocate_lock
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._counters import peek
from .._deps import require
from ..errors import ConfigError
from .codec import decode, encode, short_key

Outputs = list[np.ndarray]
log = logging.getLogger("nimbleml.cache")


@dataclass
class TierStats:
    hits: int = 0
    misses: int = 0
    errors: int = 0
    evictions: int = 0

    def to_dict(self) -> dict[str, Any]:
        total = self.hits + self.misses
        return {
            "hits": self.hits,
            "misses": self.misses,
            "errors": self.errors,
            "evictions": self.evictions,
            "hit_rate": self.hits / total if total else None,
        }


class Tier:
    """One cache level: get/put of encoded outputs by key."""

    name = "tier"

    def __init__(self) -> None:
        self.stats = TierStats()

    def get(self, key: bytes) -> Outputs | None:
        raise NotImplementedError

    def peek(self, key: bytes) -> Outputs | None:
        """A lookup that counts nothing and changes nothing (first tier only)."""
        return None

    def put(self, key: bytes, outputs: Outputs) -> None:
        raise NotImplementedError

    def info(self) -> dict[str, Any]:
        return self.stats.to_dict()

    def close(self) -> None:
        """Release connections or files (nothing to do for most tiers)."""


class MemoryTier(Tier):
    """LRU in process memory, bounded by the bytes of the arrays it holds."""

    name = "memory"

    def __init__(self, max_bytes: int) -> None:
        super().__init__()
        if max_bytes <= 0:
            raise ConfigError(f"memory cache size must be > 0 bytes, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self._items: OrderedDict[bytes, tuple[tuple[np.ndarray, ...], int]] = OrderedDict()
        self._lock = threading.Lock()
        # counters that are exact without a lock (itertools.count is atomic under the GIL)
        self._hits, self._misses = itertools.count(), itertools.count()
        self._evictions = 0

    @property
    def stats(self) -> TierStats:
        return TierStats(peek(self._hits), peek(self._misses), 0, self._evictions)

    @stats.setter
    def stats(self, value: TierStats) -> None:  # Tier.__init__ assigns one; counters rule here
        pass

    def get(self, key: bytes) -> Outputs | None:
        item = self._items.get(key)  # one C call: safe without the lock
        if item is None:
            next(self._misses)
            return None
        with contextlib.suppress(KeyError):  # evicted meanwhile: still a valid answer
            self._items.move_to_end(key)
        next(self._hits)
        return list(item[0])

    def peek(self, key: bytes) -> Outputs | None:
        item = self._items.get(key)
        return None if item is None else list(item[0])

    def put(self, key: bytes, outputs: Outputs) -> None:
        size = 64 + len(key)
        for arr in outputs:  # a caller mutating a result must not change the cache
            size += arr.nbytes
            arr.setflags(write=False)
        if size > self.max_bytes:
            return
        items = self._items
        with self._lock:
            if key in items:
                self.bytes -= items.pop(key)[1]
            # tuples of arrays drop out of the garbage collector's sight: a big cache
            # then costs the collector nothing
            items[key] = (tuple(outputs), size)
            self.bytes += size
            while self.bytes > self.max_bytes:
                self.bytes -= items.popitem(last=False)[1][1]
                self._evictions += 1

    def info(self) -> dict[str, Any]:
        return {
            **super().info(),
            "bytes": self.bytes,
            "max_bytes": self.max_bytes,
            "entries": len(self._items),
        }


class DiskTier(Tier):
    """Files in a folder, bounded in bytes (oldest first out), entries expire after ttl_s."""

    name = "disk"

    def __init__(self, directory: str | Path, max_bytes: int, ttl_s: float = 86400.0) -> None:
        super().__init__()
        if max_bytes <= 0 or ttl_s <= 0:
            raise ConfigError("disk cache needs max_bytes > 0 and ttl_s > 0")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes, self.ttl_s = int(max_bytes), float(ttl_s)
        self._lock = threading.Lock()
        self._index: OrderedDict[str, int] = OrderedDict()  # name -> size, oldest first
        entries = sorted((p for p in self.directory.glob("*.nmc")), key=lambda p: p.stat().st_mtime)
        for p in entries:
            self._index[p.name] = p.stat().st_size
        self.bytes = sum(self._index.values())
        self._evict()

    def _path(self, key: bytes) -> Path:
        return self.directory / f"{short_key(key).hex()}.nmc"

    def get(self, key: bytes) -> Outputs | None:
        path = self._path(key)
        try:
            age = time.time() - path.stat().st_mtime
            if age > self.ttl_s:
                self._remove(path.name)
                self.stats.misses += 1
                return None
            out = decode(path.read_bytes())
        except FileNotFoundError:
            self.stats.misses += 1
            return None
        except (OSError, ValueError) as exc:
            self.stats.errors += 1
            log.warning("disk cache entry %s unreadable (%s); dropped", path.name, exc)
            self._remove(path.name)
            return None
        self.stats.hits += 1
        return out

    def put(self, key: bytes, outputs: Outputs) -> None:
        data = encode(outputs)
        if len(data) > self.max_bytes:
            return
        path = self._path(key)
        tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)  # atomic: readers see the old entry or the new one
        except OSError as exc:
            self.stats.errors += 1
            log.warning("disk cache write failed (%s)", exc)
            tmp.unlink(missing_ok=True)
            return
        with self._lock:
            self.bytes -= self._index.pop(path.name, 0)
            self._index[path.name] = len(data)
            self.bytes += len(data)
        self._evict()

    def _evict(self) -> None:
        with self._lock:
            while self.bytes > self.max_bytes and self._index:
                name, size = self._index.popitem(last=False)
                self.bytes -= size
                self.stats.evictions += 1
                (self.directory / name).unlink(missing_ok=True)

    def _remove(self, name: str) -> None:
        with self._lock:
            self.bytes -= self._index.pop(name, 0)
        (self.directory / name).unlink(missing_ok=True)

    def info(self) -> dict[str, Any]:
        return {
            **super().info(),
            "bytes": self.bytes,
            "max_bytes": self.max_bytes,
            "entries": len(self._index),
        }


class RedisTier(Tier):
    """A shared Redis tier with short timeouts. When Redis is unreachable, calls are skipped
    for ``retry_s`` (a counter and one warning say so), then tried again: it reconnects."""

    name = "redis"

    def __init__(
        self,
        url: str,
        ttl_s: float = 3600.0,
        timeout_s: float = 0.05,
        retry_s: float = 1.0,
        prefix: str = "nimbleml:",
    ) -> None:
        super().__init__()
        redis = require("redis", "the Redis cache tier")
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(
                f"Redis URL must start with redis://, rediss:// or unix://; got {url!r}"
            )
        self.url, self.ttl_s, self.retry_s, self.prefix = url, ttl_s, retry_s, prefix
        self.client = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry_on_timeout=False
        )
        self._errors = (redis.exceptions.RedisError, OSError)
        self._down_until = 0.0
        self.outages = 0
        self.available = True

    def _call(self, fn: Callable[[], Any]) -> Any:
        if self._down_until and time.monotonic() < self._down_until:
            self.stats.errors += 1
            return None
        try:
            result = fn()
        except self._errors as exc:
            self.stats.errors += 1
            if self.available:
                self.outages += 1
                log.warning("Redis cache at %s unreachable (%s); serving without it", self.url, exc)
            self.available = False
            self._down_until = time.monotonic() + self.retry_s
            return None
        if not self.available:
            log.warning("Redis cache at %s is back", self.url)
        self.available, self._down_until = True, 0.0
        return result

    def get(self, key: bytes) -> Outputs | None:
        name = self.prefix.encode() + short_key(key)
        data = self._call(lambda: self.client.get(name))
        if data is None:
            self.stats.misses += 1
            return None
        try:
            out = decode(data)
        except ValueError:
            self.stats.errors += 1
            return None
        self.stats.hits += 1
        return out

    def put(self, key: bytes, outputs: Outputs) -> None:
        data, name = encode(outputs), self.prefix.encode() + short_key(key)
        self._call(lambda: self.client.set(name, data, px=int(self.ttl_s * 1000)))

    def info(self) -> dict[str, Any]:
        return {**super().info(), "available": self.available, "outages": self.outages}

    def close(self) -> None:
        self.client.close()


class _Flight:
    """One model call in progress. Its lock is held by the leader until the result (or the
    error) is set; followers wait by acquiring it: no event, no shared lock."""

    __slots__ = ("error", "lock", "result")

    def __init__(self) -> None:
        self.lock = _allocate_lock()
        self.lock.acquire()
        self.result: Outputs | None = None
        self.error: BaseException | None = None


class TieredCache:
    """Tiers checked in order; a hit in a lower tier is copied to the ones above;
    a computed value is written to every tier. ``get_or_compute`` is single-flight:
    concurrent identical misses make one model call and all get its result (or its error)."""

    def __init__(self, tiers: Sequence[Tier]) -> None:
        if not tiers:
            raise ConfigError("a cache needs at least one tier")
        self.tiers = list(tiers)
        self._inflight: dict[bytes, _Flight] = {}
        self._single = len(self.tiers) == 1
        # exact without a lock (itertools.count is atomic under the GIL)
        self._computed, self._coalesced = itertools.count(), itertools.count()

    @property
    def computed(self) -> int:
        """Model calls made through get_or_compute."""
        return peek(self._computed)

    @property
    def coalesced(self) -> int:
        """Callers that waited for another's identical model call instead of making one."""
        return peek(self._coalesced)

    def get(self, key: bytes) -> Outputs | None:
        for i, tier in enumerate(self.tiers):
            out = tier.get(key)
            if out is not None:
                for upper in self.tiers[:i]:
                    upper.put(key, out)
                return out
        return None

    def put(self, key: bytes, outputs: Outputs, first: int = 0) -> None:
        """Write to every tier (from index ``first``: 1 writes the tiers below memory)."""
        for tier in self.tiers[first:]:
            tier.put(key, outputs)

    def get_or_compute(self, key: bytes, compute: Callable[..., Outputs], *args: Any) -> Outputs:
        """The cached outputs for ``key``, or ``compute(*args)`` run once for every
        concurrent caller with that key."""
        first = self.tiers[0]
        out = first.get(key)  # the common hit, without the single-flight bookkeeping
        if out is not None:
            return out
        mine = _Flight()
        flight = self._inflight.setdefault(key, mine)  # atomic: exactly one caller leads
        if flight is not mine:
            return self._follow(flight)
        try:
            # a leader that finished just before we registered has filled the first tier
            out = first.peek(key)
            if out is None:
                if self._single:  # the common setup: memory only
                    out = compute(*args)
                    next(self._computed)
                    first.put(key, out)
                else:
                    out = self._lookup_or_compute(key, compute, args)
            mine.result = out
            return out
        except BaseException as exc:
            mine.error = exc
            raise
        finally:
            del self._inflight[key]
            mine.lock.release()

    def _follow(self, flight: _Flight) -> Outputs:
        next(self._coalesced)
        flight.lock.acquire()  # returns once the leader is done
        flight.lock.release()
        if flight.error is not None:
            raise flight.error
        assert flight.result is not None
        return flight.result

    def _lookup_or_compute(
        self, key: bytes, compute: Callable[..., Outputs], args: tuple[Any, ...]
    ) -> Outputs:
        tiers = self.tiers
        for i in range(1, len(tiers)):
            out = tiers[i].get(key)
            if out is not None:
                for upper in tiers[:i]:
                    upper.put(key, out)
                return out
        out = compute(*args)
        next(self._computed)
        self.put(key, out)
        return out

    def close(self) -> None:
        for tier in self.tiers:
            tier.close()

    def info(self) -> dict[str, Any]:
        return {
            "tiers": {t.name: t.info() for t in self.tiers},
            "model_calls": self.computed,
            "coalesced": self.coalesced,
        }


def make_cache(
    size_mb: float = 500,
    disk_dir: str | Path | None = None,
    disk_mb: float = 1024,
    disk_ttl_s: float = 86400,
    redis_url: str | None = None,
    redis_ttl_s: float = 3600,
) -> TieredCache:
    """Memory tier always; disk and Redis tiers when given."""
    if size_mb <= 0:
        raise ConfigError(f"cache_size_mb must be > 0, got {size_mb}")
    tiers: list[Tier] = [MemoryTier(int(size_mb * 2**20))]
    if disk_dir is not None:
        tiers.append(DiskTier(disk_dir, int(disk_mb * 2**20), disk_ttl_s))
    if redis_url is not None:
        tiers.append(RedisTier(redis_url, redis_ttl_s))
    return TieredCache(tiers)
