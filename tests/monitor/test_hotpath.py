"""The lock-free hot path on its own: recorders extend the list while a taker takes prefixes
as fast as it can, thousands of times, with a 1 µs switch interval; every record is taken
exactly once, whole and aligned."""

import itertools
import sys
import threading

from nimbleml.monitor.hotpath import columns, recorder, take


def test_concurrent_appends_and_takes_lose_nothing():
    rows: list = []
    requests: dict = {}
    errors: dict = {}
    lock = threading.Lock()

    def add_model(model):
        with lock:
            errors.setdefault(model, itertools.count())
            return requests.setdefault(model, itertools.count())

    record = recorder(rows, requests, errors, add_model, 1.0, lambda: 0.0)
    per, recording = 50_000, threading.Barrier(4)
    taken: list = []
    done = threading.Event()

    def records(t):
        recording.wait()
        for i in range(per):
            record(1.0, (t, i), f"m{t % 2}", None, i % 4 == 0)

    def takes():
        while not done.is_set():
            taken.extend(take(rows))
        taken.extend(take(rows))

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        workers = [threading.Thread(target=records, args=(t,)) for t in range(4)]
        taker = threading.Thread(target=takes)
        taker.start()
        for w in workers:
            w.start()
        for w in workers:
            w.join(60)
        done.set()
        taker.join(60)
    finally:
        sys.setswitchinterval(switch)
    ts, lat, models, ids, outputs, errs = columns(taken)
    assert len(ids) == 4 * per and set(ids) == {(t, i) for t in range(4) for i in range(per)}
    assert set(lat) == {1.0} and set(outputs) == {None} and all(isinstance(t, float) for t in ts)
    rows = zip(models, ids, errs, strict=True)
    assert all(m == f"m{t % 2}" and e == (i % 4 == 0) for m, (t, i), e in rows)
    for model in ("m0", "m1"):
        assert repr(requests[model]) == f"count({2 * per})"
        assert repr(errors[model]) == f"count({2 * per // 4})"


def test_sampled_recorder_keeps_the_ids_ground_truth_expects():
    from nimbleml.monitor.hotpath import id_fraction

    rows: list = []
    counters: dict = {}
    errors: dict = {"default": itertools.count()}
    counters["default"] = itertools.count()
    record = recorder(rows, counters, errors, lambda m: counters[m], 0.3, lambda: 0.5)
    for i in range(3000):
        record(1.0, i)
    record(1.0)  # no id: rand() = 0.5 >= 0.3, not kept
    kept = columns(rows)[3]
    assert kept == [i for i in range(3000) if id_fraction(i) < 0.3]
    assert repr(counters["default"]) == "count(3001)"
