"""The dynamic batcher on its own: dispatch, windows, shapes, lengths, limits, draining."""

import asyncio
import threading
import time

import numpy as np
import pytest

from nimbleml.errors import QueueFull, ServingError
from nimbleml.serve import DynamicBatcher


def rows(n: int, width: int = 4, value: float = 0.0) -> dict[str, np.ndarray]:
    return {"x": np.full((n, width), value, dtype=np.float32)}


class SlowModel:
    """Records each batch's rows; holds every call until released (or for ``delay_s``)."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.calls: list[int] = []
        self.delay_s = delay_s
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, feeds):
        self.gate.wait(10)
        time.sleep(self.delay_s)
        x = feeds["x"]
        self.calls.append(len(x))
        return [x.sum(axis=1)]


def run(coro):
    return asyncio.run(coro)


def test_an_idle_worker_dispatches_at_once_without_waiting_the_window():
    async def go():
        model = SlowModel()
        b = DynamicBatcher(model, max_batch_size=32, max_wait_ms=500)
        b.start()
        t0 = time.perf_counter()
        out = await b.submit(rows(1, value=1.0))
        elapsed = time.perf_counter() - t0
        await b.drain()
        return out, elapsed, b.stats

    out, elapsed, stats = run(go())
    assert out[0].tolist() == [4.0]
    assert elapsed < 0.25  # far below the 500 ms window
    assert stats.batches["idle"] == 1 and stats.batch_sizes[1] == 1


def test_requests_queued_while_busy_are_batched_and_counted_in_samples():
    async def go():
        model = SlowModel()
        b = DynamicBatcher(model, max_batch_size=8, max_wait_ms=50)
        b.start()
        model.gate.clear()
        first = b.enqueue(rows(1, value=1.0))  # the worker takes it and blocks in the model
        await asyncio.sleep(0.05)
        futures = [b.enqueue(rows(2, value=float(i))) for i in range(6)]  # 12 samples wait
        assert b.queued_samples == 12
        model.gate.set()
        results = await asyncio.gather(first, *futures)
        await b.drain()
        return model.calls, results, b.stats

    calls, results, stats = run(go())
    assert calls == [1, 8, 4]  # samples, not requests: 4 requests of 2 fill a batch of 8
    assert stats.batches["full"] == 1 and stats.batches["window"] == 1
    for i, out in enumerate(results[1:]):
        assert out[0].tolist() == [4.0 * i, 4.0 * i]  # each request got its own rows back


def test_only_requests_of_the_same_trailing_shape_share_a_batch():
    async def go():
        model = SlowModel()
        b = DynamicBatcher(model, max_batch_size=16, max_wait_ms=20)
        b.start()
        model.gate.clear()
        first = b.enqueue(rows(1))
        await asyncio.sleep(0.05)
        narrow = [b.enqueue(rows(1, width=4, value=1.0)) for _ in range(3)]
        wide = [b.enqueue(rows(1, width=6, value=1.0)) for _ in range(2)]
        model.gate.set()
        out = await asyncio.gather(first, *narrow, *wide)
        await b.drain()
        return model.calls, out

    calls, out = run(go())
    assert sorted(calls[1:]) == [2, 3]
    assert [o[0][0] for o in out[1:]] == [4.0, 4.0, 4.0, 6.0, 6.0]


def test_wrong_output_length_fails_every_request_of_the_batch():
    async def go():
        b = DynamicBatcher(lambda feeds: [np.zeros(1)], max_batch_size=8, max_wait_ms=1)
        b.start()
        results = await asyncio.gather(b.submit(rows(2)), b.submit(rows(3)), return_exceptions=True)
        await b.drain()
        return results

    for result in run(go()):
        assert isinstance(result, ServingError) and "rows for" in str(result)


def test_a_full_queue_refuses_at_once_and_drain_answers_everyone():
    async def go():
        model = SlowModel()
        b = DynamicBatcher(model, max_batch_size=4, max_wait_ms=1, max_queue=6)
        b.start()
        model.gate.clear()
        running = b.enqueue(rows(1))
        await asyncio.sleep(0.05)
        waiting = [b.enqueue(rows(3)), b.enqueue(rows(3))]
        t0 = time.perf_counter()
        with pytest.raises(QueueFull, match="6 of 6"):
            b.enqueue(rows(1))
        refused_in = time.perf_counter() - t0
        assert b.stats.shed == 1
        model.gate.set()
        await b.drain()
        with pytest.raises(QueueFull, match="shutting down"):
            b.enqueue(rows(1))
        return refused_in, [f.done() and f.exception() is None for f in [running, *waiting]]

    refused_in, answered = run(go())
    assert refused_in < 0.01 and all(answered)


def test_drain_gives_up_on_a_stuck_model_with_errors_not_silence():
    async def go():
        model = SlowModel()
        b = DynamicBatcher(model, max_batch_size=1, max_wait_ms=0)
        b.start()
        model.gate.clear()
        stuck = b.enqueue(rows(1))
        await asyncio.sleep(0.05)
        queued = b.enqueue(rows(1))
        await b.drain(timeout_s=0.2)
        error = queued.exception() if queued.done() else None
        model.gate.set()
        return error, stuck

    error, _ = run(go())
    assert isinstance(error, ServingError) and "shut down" in str(error)
