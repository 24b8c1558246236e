"""ModelMonitor: a few hundred nanoseconds a prediction on the hot path; everything else off it.

The hot path (hotpath.py) counts the request (exactly, whatever the sampling rate), decides
whether to sample, and only then extends one list by the record's six fields, without a
lock. A background thread takes what was added every ``flush_interval_s``, slices it into
columns, aggregates them in numpy (log-bucket sketches per window: windows.py), writes one
SQLite transaction, evaluates alerts and applies retention. Ground truth is joined with the
predictions in the store (truth.py).
"""

from __future__ import annotations

import functools
import itertools
import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .._counters import advance, peek
from ..errors import ConfigError
from . import truth
from .alerts import AlertEngine, AlertEvent, AlertRule
from .hotpath import Recorder, columns, id_fraction, interleave, recorder, take
from .sketch import LogSketch
from .store import open_store
from .truth import plain, same_label, task_of
from .windows import MIN_SAMPLES, Window, aggregate, fold, for_store, forget_before, merged

# MIN_SAMPLES and same_label lived here first: serve/dashboard.py reads MIN_SAMPLES from here
__all__ = ["MIN_SAMPLES", "ModelMonitor", "parse_duration", "same_label"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: str | float | None) -> float | None:
    """'14d', '12h', '30m', '45s' or seconds -> seconds; None stays None."""
    if value is None:
        return None
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise ConfigError(
                f"cannot read duration {value!r}: use a number of seconds or e.g. '14d', '12h', '30m'"
            )
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if seconds <= 0:
        raise ConfigError(f"a duration must be > 0, got {value!r}")
    return seconds


class ModelMonitor:
    """Monitor predictions: latency percentiles (with n), throughput, errors, accuracy against
    ground truth that arrives later, alerts, health, retention, resources, Prometheus.

    ``store``: 'sqlite:///path.db' (WAL) or 'sqlite:///:memory:'. ``retention``: how long raw
    records are kept ('14d'); per-window summaries stay. ``task``: 'classification' or
    'regression' for the ground-truth join (inferred from the outputs when None).
    """

    def __init__(
        self,
        sampling_rate: float = 1.0,
        store: str = "sqlite:///monitor.db",
        retention: str | float | None = "14d",
        alerts: Sequence[AlertRule] = (),
        callbacks: Sequence[Callable[[AlertEvent], None]] = (),
        window_s: float = 60.0,
        flush_interval_s: float = 1.0,
        resources_interval_s: float | None = 10.0,
        task: str | None = None,
        background: bool = True,
    ) -> None:
        if window_s <= 0 or flush_interval_s <= 0:
            raise ConfigError("window_s and flush_interval_s must be > 0 seconds")
        if task not in (None, "classification", "regression"):
            raise ConfigError(f"task must be 'classification', 'regression' or None, got {task!r}")
        self.window_s, self.flush_interval_s = float(window_s), float(flush_interval_s)
        self.retention_s = parse_duration(retention)
        self.resources_interval_s = resources_interval_s
        self.task = task
        self.store = open_store(store)
        self.engine = AlertEngine(list(alerts), list(callbacks))
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()  # one flush at a time (background or caller)
        self._rows: list[Any] = []  # sampled records, 6 fields each; take() removes them
        self._labels: list[tuple[Any, Any, float]] = []
        self._requests: dict[str, Any] = {}  # model -> itertools.count (exact, never sampled)
        self._errors: dict[str, Any] = {}
        self._flushed: dict[str, list[int]] = {}
        self._windows: dict[tuple[str, float], Window] = {}  # windows.py
        self._totals: dict[str, LogSketch] = {}
        self._latency_sum: dict[str, float] = {}
        self._collectors: dict[str, Any] = {}  # extra Prometheus collectors, by name
        self.labels_unsampled = 0
        self._rand = random.random
        self.sampling_rate = sampling_rate  # builds the hot path (self.record)
        self._last_resources: float | None = None  # when the last sample was taken
        self._last_retention = 0.0
        if resources_interval_s is not None:
            from .resources import prime

            prime()  # CPU % is measured between samples: the first from here, not over 0 s
        self._started = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(target=self._run, name="nimble-monitor", daemon=True)
            self._thread.start()

    # -- hot path -------------------------------------------------------------------------
    @property
    def sampling_rate(self) -> float:
        """The share of records kept (counts are exact whatever it is). Setting it rebuilds
        the hot path: ``monitor.record`` looked up afterwards uses the new rate (a bound
        ``rec = monitor.record`` taken before keeps the old one)."""
        return self._rate

    @sampling_rate.setter
    def sampling_rate(self, value: float) -> None:
        if not 0.0 < float(value) <= 1.0:
            raise ConfigError(f"sampling_rate must be in (0, 1], got {value!r}")
        self._rate = float(value)
        hot = recorder(
            self._rows, self._requests, self._errors, self._add_model, self._rate, self._rand
        )
        hot.__doc__ = ModelMonitor.record.__doc__
        self._hot: Recorder = hot
        self.record = hot  # type: ignore[method-assign]  # the instance's own, see record()

    def record(
        self,
        latency_ms: float,
        prediction_id: Any = None,
        model: str = "default",
        output: Any = None,
        error: bool = False,
    ) -> None:
        """Record one prediction: latency (ms), the id ground truth will name, the model, its
        output, whether it failed. Counts are exact; the rest is kept at ``sampling_rate``
        (by a stable hash of the id when there is one, else at random).

        On an instance, ``record`` is a closure built for its sampling rate
        (``hotpath.recorder``): no lock (counters are ``itertools.count``, a sampled record is
        one ``list.extend`` by its six fields; both atomic under the GIL, and the flush takes
        a prefix of the list, so concurrent threads lose nothing: the reasoning is in
        hotpath.py), no attribute or global lookups, and at rate 1.0 no sampling branch.

        Cost against prometheus_client ``Histogram.observe`` (the 17 ms buckets of our
        /metrics), interleaved in one run, medians of 21 rounds x 10,000 calls, on the 2-core
        shared dev machine: before (a lock, ``self.`` lookups, six column appends) 0.45 µs vs
        0.80 µs = 0.58x; after 0.19-0.22 µs vs 0.76-0.83 µs = 0.25x (goal <= 0.5x;
        ``benchmarks/monitor.py`` prints it). Where before's time went, adding one step at a
        time (another run, 0.39 µs in all): the call 25 ns, counters 57, sampling check 16,
        the lock 160, time() and six ``self._cols.x.append`` 130. Appending a tuple a record
        instead of extending by six fields was 15% slower: the tuples fed the collector.
        """
        self._hot(latency_ms, prediction_id, model, output, error)

    def _add_model(self, model: str) -> Any:
        """A model's first record: its counters (errors first: the hot path reads it once the
        requests one exists); returns the requests counter."""
        with self._lock:
            self._errors.setdefault(model, itertools.count())
            return self._requests.setdefault(model, itertools.count())

    def record_batch(
        self,
        latency_ms: Any,
        prediction_ids: Sequence[Any] | None = None,
        model: str = "default",
        outputs: Sequence[Any] | None = None,
        errors: Any = None,
    ) -> None:
        lat = np.asarray(latency_ms, dtype=np.float64).reshape(-1)
        n = lat.size
        errs = (
            np.zeros(n, dtype=bool)
            if errors is None
            else np.asarray(errors, dtype=bool).reshape(-1)
        )
        for name, seq in (
            ("prediction_ids", prediction_ids),
            ("outputs", outputs),
            ("errors", errors),
        ):
            if seq is not None and len(seq) != n:
                raise ConfigError(f"record_batch: {name} has {len(seq)} items for {n} latencies")
        if self._rate < 1.0:
            if prediction_ids is not None:
                keep = np.array([id_fraction(p) < self._rate for p in prediction_ids], dtype=bool)
            else:
                keep = np.random.random(n) < self._rate
        else:
            keep = np.ones(n, dtype=bool)
        idx = np.flatnonzero(keep).tolist()
        k = len(idx)
        requests = self._requests.get(model) or self._add_model(model)
        advance(requests, n)  # C-level, atomic under the GIL like the hot path's next()
        advance(self._errors[model], int(errs.sum()))
        self._rows.extend(  # whole records in one extend: no lock needed (hotpath.py)
            interleave(
                [time.time()] * k,
                lat[keep].tolist(),
                [model] * k,
                [prediction_ids[i] for i in idx] if prediction_ids is not None else [None] * k,
                [outputs[i] for i in idx] if outputs is not None else [None] * k,
                errs[keep].tolist(),
            )
        )

    def record_ground_truth(self, prediction_id: Any, label: Any, ts: float | None = None) -> None:
        """Ground truth for an earlier prediction; joined by id on the next flush."""
        if prediction_id is None:
            raise ConfigError(
                "record_ground_truth needs the prediction_id the prediction was recorded with"
            )
        if self._rate < 1.0 and id_fraction(prediction_id) >= self._rate:
            self.labels_unsampled += 1  # its prediction was not sampled: nothing to join with
            return
        with self._lock:
            self._labels.append((prediction_id, label, time.time() if ts is None else ts))

    # -- off the hot path -------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.wait(self.flush_interval_s):
            try:
                self.flush()
            except Exception:  # keep monitoring; the next flush retries
                import logging

                logging.getLogger("nimbleml.monitor").exception("monitor flush failed")

    def flush(self, now: float | None = None) -> list[AlertEvent]:
        """Aggregate and write what was recorded since the last flush; evaluate alerts.

        Flushes run one at a time: called while the background thread is writing, flush()
        waits for it, so everything recorded before the call is in the store, the summaries
        and the alert states (``health()``) when it returns. Without the wait, health() right
        after flush() missed the background's batch and changed half a second later."""
        with self._flush_lock:
            return self._flush(time.time() if now is None else now)

    def _flush(self, now: float, final: bool = False) -> list[AlertEvent]:
        batch = take(self._rows)  # lock-free against the hot path (hotpath.py)
        with self._lock:
            labels, self._labels = self._labels, []
            deltas = {}
            for model, requests in list(self._requests.items()):
                req, err = peek(requests), peek(self._errors[model])
                done = self._flushed.setdefault(model, [0, 0])
                deltas[model] = (req - done[0], err - done[1])
                done[0], done[1] = req, err
        ts_col, lat_col, model_col, pid_col, out_col, err_col = columns(batch)
        touched = aggregate(ts_col, lat_col, model_col, deltas, self.window_s, now)
        fold(touched, self._windows, self._totals, self._latency_sum)
        if self.task is None:
            self.task = next((task_of(o) for o in out_col if o is not None), None)
        resources = self._sample_resources(now, final)
        rows = [
            (t, m, None if p is None else str(p), la, int(e), plain(o))
            for t, m, p, la, e, o in zip(
                ts_col, model_col, pid_col, lat_col, err_col, out_col, strict=True
            )
        ]
        self.store.write(
            rows,
            [(str(p), plain(label), t) for p, label, t in labels],
            for_store(touched, self.window_s),
            resources,
        )
        events: list[AlertEvent] = []  # evaluated after the write, so the join sees this batch
        for model in list(self._requests):
            value_of = functools.partial(self._rule_value, model=model, now=now)
            events += self.engine.evaluate(model, value_of, now)
        if events:
            alerts = [
                (e.at, e.model, e.rule, e.state, e.value, e.threshold, e.severity) for e in events
            ]
            self.store.write([], [], [], alerts=alerts)
        self._forget_old_windows(now)
        if self.retention_s and now - self._last_retention > 60:
            self._last_retention = now
            self.apply_retention(now)
        return events

    def _forget_old_windows(self, now: float) -> None:
        horizon = now - max(86400.0, max((r.window_s for r in self.engine.rules), default=0) * 3)
        forget_before(self._windows, horizon)

    def _sample_resources(self, now: float, final: bool = False) -> list[tuple[Any, ...]]:
        """A sample every ``resources_interval_s`` from the start, and a last one on close
        (unless one was just taken): a run shorter than the interval still has its CPU % and
        memory, and a longer one its end."""
        if self.resources_interval_s is None:
            return []
        last = self._last_resources
        if final:
            due = last is None or now - last >= 0.1
        else:
            due = now - (self._started if last is None else last) >= self.resources_interval_s
        if not due:
            return []
        self._last_resources = now
        from .resources import sample

        return [(now, *sample())]

    def apply_retention(self, now: float | None = None) -> int:
        """Delete raw records older than the retention period; summaries stay."""
        if self.retention_s is None:
            return 0
        now = time.time() if now is None else now
        return self.store.delete_before(now - self.retention_s)

    def close(self) -> None:
        """Stop the background thread and write what is left."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        with self._flush_lock:
            self._flush(time.time(), final=True)
        self.store.close()

    def __enter__(self) -> ModelMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- questions --------------------------------------------------------------------------
    def counts(self, model: str = "default") -> dict[str, int]:
        """Exact request and error counts (never sampled)."""
        requests = self._requests.get(model)
        if requests is None:
            return {"requests": 0, "errors": 0}
        return {"requests": peek(requests), "errors": peek(self._errors[model])}

    def _merged(self, model: str, since: float | None) -> tuple[LogSketch, int, int]:
        return merged(self._windows, model, since)

    def latency(self, model: str = "default", last_s: float | None = None) -> dict[str, Any]:
        """p50/p95/p99 (ms, 1% relative error) with n; percentiles with too few samples are
        listed in 'unreliable'. Covers what was flushed (call flush() first for the latest)."""
        since = None if last_s is None else time.time() - last_s
        sk, _, _ = self._merged(model, since)
        out: dict[str, Any] = {
            "n": sk.n,
            "unreliable": [k for k, need in MIN_SAMPLES.items() if sk.n < need],
        }
        for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
            out[f"{name}_ms"] = sk.quantile(q)
        return out

    def latency_totals(self, model: str = "default") -> LogSketch:
        """A copy of every latency flushed so far for ``model`` in one sketch: two readings
        subtracted give the distribution between them (the dashboard's trailing percentiles)."""
        sketch = LogSketch()
        total = self._totals.get(model)
        return sketch if total is None else sketch.merge(total)

    @property
    def background(self) -> bool:
        """Whether a background thread flushes; else whoever reads calls flush()."""
        return self._thread is not None

    def _rule_value(self, rule: AlertRule, model: str, now: float) -> tuple[float | None, int]:
        since = now - rule.window_s
        if rule.metric in ("accuracy", "mae"):
            acc = self.accuracy(model, since=since)
            key = "accuracy" if rule.metric == "accuracy" else "mae"
            return acc.get(key), acc["labeled"]
        sk, req, err = self._merged(model, since)
        if rule.metric.startswith("latency_"):
            return sk.quantile(float(rule.metric[-2:]) / 100), sk.n
        if rule.metric == "error_rate":
            return (err / req if req else None), req
        rate = req / rule.window_s
        if rule.metric == "throughput":
            return rate, req
        _, before, _ = self._merged(model, since - rule.window_s)
        previous = (before - req) / rule.window_s
        return (1 - rate / previous if previous > 0 else None), before - req

    def accuracy(self, model: str = "default", since: float | None = None) -> dict[str, Any]:
        """Join predictions with ground truth by id: accuracy (classification) or MAE
        (regression) over labeled predictions since ``since``, with counts."""
        return truth.accuracy(self.store, model, self.task, since)

    def accuracy_by_window(self, model: str = "default") -> list[dict[str, Any]]:
        return truth.accuracy_by_window(self.store, model, self.task, self.window_s)

    def labels_report(self, model: str = "default") -> dict[str, Any]:
        """Coverage (labeled / predictions with an id), orphan labels, label delay percentiles."""
        return truth.labels_report(self.store, model, self.labels_unsampled)

    def health(self, model: str = "default") -> dict[str, Any]:
        """healthy / degraded (a warning alert is active) / failing (a critical one is)."""
        active = self.engine.active(model)
        reasons = [
            f"{rule.name}: {rule.metric} {state.value:.4g} {rule.op} {rule.threshold:g}"
            for rule, state, _ in active
        ]
        status = "healthy"
        if any(rule.severity == "critical" for rule, _, _ in active):
            status = "failing"
        elif active:
            status = "degraded"
        return {"model": model, "status": status, "reasons": reasons}

    def models(self) -> list[str]:
        return sorted(self._requests)

    def add_collector(self, name: str, collector: Any) -> None:
        """Expose more metrics on /metrics (a cache's hits, a server's queues): a
        prometheus_client collector, read at scrape time only; ``name`` replaces an earlier
        one of that name."""
        self._collectors[name] = collector
