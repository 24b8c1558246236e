"""Dynamic batching with per-request futures, counted in samples.

- A request that finds the worker idle is dispatched at once (no window to wait out).
- Requests that queue while the worker is busy are batched: the window is anchored on the
  first queued request, and a batch goes as soon as it is full (in samples).
- Requests batch only with others of the same trailing shape (token lengths, image sizes).
- Outputs are checked against the inputs in length; every waiting request gets its result
  or its error, never silence.
- The queue is bounded in samples: a request that does not fit is refused at once.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ServingError
from ..inputs import Feeds

REASONS = ("idle", "full", "window")


class QueueFull(ServingError):
    """The queue has no room for this request: answer 503 with Retry-After."""


@dataclass
class _Request:
    feeds: Feeds
    rows: int
    shape_key: tuple[Any, ...]
    future: asyncio.Future[list[np.ndarray]]
    enqueued: float


@dataclass
class BatcherStats:
    batches: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    batch_sizes: collections.Counter[int] = field(default_factory=collections.Counter)
    samples: int = 0
    shed: int = 0
    errors: int = 0
    queue_wait_s: float = 0.0
    compute_s: float = 0.0


class DynamicBatcher:
    """Batches calls of ``run(feeds) -> outputs`` made from one asyncio event loop."""

    def __init__(
        self,
        run: Callable[[Feeds], list[np.ndarray]],
        max_batch_size: int = 32,
        max_wait_ms: float = 2.0,
        max_queue: int = 1024,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ServingError("need max_batch_size >= 1, max_queue >= 1, max_wait_ms >= 0")
        self.run = run
        self.max_batch_size, self.max_wait_s, self.max_queue = (
            max_batch_size,
            max_wait_ms / 1e3,
            max_queue,
        )
        self.stats = BatcherStats()
        self._queue: collections.deque[_Request] = collections.deque()
        self._queued_rows = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="nimble-infer")
        self._busy = False
        self._closing = False

    @property
    def queued_samples(self) -> int:
        return self._queued_rows

    def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def submit(self, feeds: Feeds) -> list[np.ndarray]:
        """Queue one request and wait for its outputs."""
        return await self.enqueue(feeds)

    def enqueue(self, feeds: Feeds) -> asyncio.Future[list[np.ndarray]]:
        """Queue one request (any number of rows) now, without yielding to the event loop;
        raises QueueFull at once when it does not fit or the batcher is shutting down."""
        if self._closing:
            raise QueueFull("the server is shutting down")
        first = next(iter(feeds.values()))
        rows = int(first.shape[0]) if first.ndim else 1
        if self._queued_rows + rows > self.max_queue:
            self.stats.shed += 1
            raise QueueFull(f"queue full ({self._queued_rows} of {self.max_queue} samples waiting)")
        loop = asyncio.get_running_loop()
        shape_key = tuple((k, v.dtype.str, v.shape[1:]) for k, v in feeds.items())
        request = _Request(feeds, rows, shape_key, loop.create_future(), time.perf_counter())
        self._queue.append(request)
        self._queued_rows += rows
        assert self._wakeup is not None
        self._wakeup.set()
        return request.future

    async def _next_batch(self) -> tuple[list[_Request], str]:
        assert self._wakeup is not None
        idle = not self._queue
        while not self._queue:
            self._wakeup.clear()
            await self._wakeup.wait()
        first = self._queue.popleft()
        self._busy = True  # a batch in hand counts as work: drain() must wait for it
        batch, rows = [first], first.rows
        self._take_matching(batch, first, rows)
        rows = sum(r.rows for r in batch)
        if idle or rows >= self.max_batch_size:
            return batch, "full" if rows >= self.max_batch_size else "idle"
        deadline = first.enqueued + self.max_wait_s
        while rows < self.max_batch_size:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return batch, "window"
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return batch, "window"
            self._take_matching(batch, first, rows)
            rows = sum(r.rows for r in batch)
        return batch, "full"

    def _take_matching(self, batch: list[_Request], first: _Request, rows: int) -> None:
        """Move queued requests of the same trailing shapes into ``batch`` while they fit."""
        kept: collections.deque[_Request] = collections.deque()
        while self._queue:
            r = self._queue.popleft()
            if r.shape_key == first.shape_key and rows + r.rows <= self.max_batch_size:
                batch.append(r)
                rows += r.rows
            else:
                kept.append(r)
        kept.extend(self._queue)
        self._queue = kept

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch, reason = await self._next_batch()
            rows = sum(r.rows for r in batch)
            self._queued_rows -= rows
            started = time.perf_counter()
            for r in batch:
                self.stats.queue_wait_s += started - r.enqueued
            feeds = {k: np.concatenate([r.feeds[k] for r in batch]) for k in batch[0].feeds}
            try:
                outputs = await loop.run_in_executor(self._executor, self.run, feeds)
                bad = [o.shape[0] for o in outputs if np.ndim(o) == 0 or o.shape[0] != rows]
                if bad:
                    raise ServingError(f"the model returned {bad[0]} rows for {rows} inputs")
            except Exception as exc:  # every waiting request gets the error
                self.stats.errors += 1
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(exc)
                continue
            finally:
                self._busy = False
                self.stats.compute_s += time.perf_counter() - started
            self.stats.batches[reason] += 1
            self.stats.batch_sizes[rows] += 1
            self.stats.samples += rows
            offset = 0
            for r in batch:
                if not r.future.done():  # a caller that timed out no longer waits
                    r.future.set_result([o[offset : offset + r.rows] for o in outputs])
                offset += r.rows

    async def drain(self, timeout_s: float = 30.0) -> None:
        """Refuse new requests, then wait until everything accepted has been answered;
        anything still waiting after ``timeout_s`` gets an error, never silence."""
        self._closing = True
        deadline = time.perf_counter() + timeout_s
        while (self._queue or self._busy) and time.perf_counter() < deadline:
            await asyncio.sleep(0.005)
        if self._task is not None:
            self._task.cancel()
        for r in self._queue:
            if not r.future.done():
                r.future.set_exception(ServingError("the server shut down before this request ran"))
        self._queue.clear()
        self._executor.shutdown(wait=False)
