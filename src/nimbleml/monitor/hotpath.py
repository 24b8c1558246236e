"""ModelMonitor's prediction hot path: one closure per sampling mode, no lock, one extend.

``recorder`` builds the function that ``ModelMonitor.record`` is on an instance. Everything it
touches is bound once, as closure cells (no ``self.`` attribute lookups, no global lookups, no
bound-method creation): the two counter dicts, the list's ``extend``, ``time.time``, the
rate.

Why no lock is needed (CPython, with the GIL; each step below is one C call that runs no
Python code, so no other thread runs in the middle of it):

- request and error counters are ``itertools.count`` objects: ``next()`` is atomic, so counts
  stay exact whatever the threads and the sampling;
- a sampled record is one ``list.extend`` by its six fields (timestamp, latency, model, id,
  output, error): the list is the six columns interleaved (``columns`` slices them apart),
  and a record is in it whole or not at all, never half-written, never misaligned. (Six
  appends to six lists would need a lock to stay aligned; appending one tuple a record made
  a GC-tracked object that lived until the flush, and the collections it triggered made the
  hot path ~15% slower. The 6-tuple given to ``extend`` is freed at once, back to the tuple
  free list, so it neither reaches malloc nor advances the collector.)
- the flush takes a prefix (``take``): ``n = len(rows)``, copy ``rows[:n]``, ``del rows[:n]``.
  Recorders only ever add at the end, and only the flush removes (flushes are serialised by
  ModelMonitor's flush lock), so the first ``n`` items do not change between the copy and the
  delete, and a record appended meanwhile stays for the next flush. Nothing is lost or seen
  twice. tests/monitor/test_hotpath.py checks it (4 threads appending, thousands of takes,
  a 1 µs switch interval; a take that copied the list and then cleared it fails there in
  most runs), and test_monitor.py the whole monitor with threads recording while two
  threads flush.
- this relies on the GIL: a free-threaded CPython build would need the argument checked
  again (itertools.count above all).

Nothing is allocated before the sampling decision when the id is None (the fields come after
it); an id is hashed as ``crc32(str(id))`` so that ground truth, in any process, knows whether
its prediction was sampled.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable
from typing import Any

# a record's fields, in order: ts (time.time()), latency_ms, model, prediction_id, output, error
FIELDS = 6
Recorder = Callable[..., None]

_TWO_32 = 4294967296.0


def id_fraction(prediction_id: Any) -> float:
    """A stable number in [0, 1) per id: the same ids are sampled in every process."""
    return zlib.crc32(str(prediction_id).encode()) / _TWO_32


def recorder(
    rows: list[Any],
    requests: dict[str, Any],
    errors: dict[str, Any],
    add_model: Callable[[str], Any],
    rate: float,
    rand: Callable[[], float],
) -> Recorder:
    """The record function for ``rate``: at 1.0 there is no sampling branch at all.

    ``requests`` / ``errors``: model -> itertools.count; ``add_model(model)`` creates both
    (the errors one first) and returns the requests one."""
    extend, count, now = rows.extend, requests.get, time.time

    if rate >= 1.0:

        def record(
            latency_ms: float,
            prediction_id: Any = None,
            model: str = "default",
            output: Any = None,
            error: bool = False,
        ) -> None:
            next(count(model) or add_model(model))
            if error:
                next(errors[model])
            extend((now(), latency_ms, model, prediction_id, output, error))

        return record

    crc32 = zlib.crc32
    limit = rate * _TWO_32  # crc32 / 2**32 >= rate <=> crc32 >= rate * 2**32 (both exact)

    def record_sampled(
        latency_ms: float,
        prediction_id: Any = None,
        model: str = "default",
        output: Any = None,
        error: bool = False,
    ) -> None:
        next(count(model) or add_model(model))
        if error:
            next(errors[model])
        if prediction_id is None:
            if rand() >= rate:
                return
        elif crc32(str(prediction_id).encode()) >= limit:
            return
        extend((now(), latency_ms, model, prediction_id, output, error))

    return record_sampled


def take(rows: list[Any]) -> list[Any]:
    """Remove and return the records added so far; lock-free against concurrent extends (see
    the module's docstring). Only one caller at a time (the flush lock)."""
    n = len(rows)
    n -= n % FIELDS  # a no-op: records arrive whole, six fields at once
    batch = rows[:n]
    del rows[:n]
    return batch


def columns(batch: list[Any]) -> list[list[Any]]:
    """The six columns of a taken batch: ts, latency_ms, model, prediction_id, output, error."""
    return [batch[i::FIELDS] for i in range(FIELDS)]


def interleave(*cols: list[Any]) -> list[Any]:
    """Columns of equal length as records, for one ``extend`` (record_batch)."""
    flat: list[Any] = [None] * (FIELDS * len(cols[0]))
    for i, col in enumerate(cols):
        flat[i::FIELDS] = col
    return flat
