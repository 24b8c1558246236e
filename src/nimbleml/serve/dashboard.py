"""/dashboard: one self-contained page (``dashboard_page.py``: no CDN, no external script,
it draws its own SVG charts) and the 15 minutes of history behind it.

``History`` reads the server once a second, on a small task of the app's event loop that
hands the reading to a worker thread (the accuracy join is an SQL query), into fixed-size
ring buffers: 900 rows of floats a model (0.17 MB) and eleven readings of the latency sketch
for the trailing percentiles (0.13 MB). A page opened now shows the last 15 minutes, not only
what happened since it was opened; each later poll, ``/dashboard/data?since=T``, carries only
the rows after T (the whole history of one model is about 150 kB of JSON, one row under 1 kB).
A reading costs about 0.5 ms of CPU here, 5 ms when the accuracy is recomputed (every 5 s).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..monitor.core import MIN_SAMPLES
from ..monitor.sketch import LogSketch
from .batcher import REASONS

log = logging.getLogger("nimbleml.serve")

WINDOW_S = 900.0  # history kept and drawn
INTERVAL_S = 1.0  # one row a second
LATENCY_WINDOW_S = 10.0  # percentiles over the trailing 10 s: one second alone has too few
ACCURACY_WINDOW_S = 60.0  # accuracy of the predictions made in the last minute…
ACCURACY_EVERY_S = 5.0  # …recomputed every 5 s (an SQL join; labels arrive late anyway)
ALERTS_SHOWN = 50
HTTP_CLASSES = ("ok", "client_error", "server_error", "shed")


class Ring:
    """Rows of floats in named columns, at most ``size`` of them (the oldest is overwritten
    first); the first column is the time, NaN is "no value" (sent as null)."""

    def __init__(self, columns: Iterable[str], size: int) -> None:
        if size < 1:
            raise ConfigError(f"a ring needs room for at least one row, got size={size}")
        self.columns = ["t", *columns]
        self.data = np.full((size, len(self.columns)), np.nan)
        self.appended = 0

    def __len__(self) -> int:
        return min(self.appended, len(self.data))

    def append(self, t: float, row: Mapping[str, float | None]) -> None:
        values = [row.get(c) for c in self.columns[1:]]
        self.data[self.appended % len(self.data)] = [
            t,
            *(math.nan if v is None else v for v in values),
        ]
        self.appended += 1

    def rows(self, since: float | None = None) -> np.ndarray:
        """The rows in time order; only those after ``since`` when it is given."""
        n = len(self)
        rows = self.data[(self.appended - n + np.arange(n)) % len(self.data)]
        return rows if since is None else rows[rows[:, 0] > since]

    def to_json(self, since: float | None = None) -> dict[str, list[float | None]]:
        """Columns as lists: times to the millisecond, values to 4 significant digits."""
        rows = self.rows(since)
        out: dict[str, list[float | None]] = {"t": np.round(rows[:, 0], 3).tolist()}
        values = _significant(rows[:, 1:], 4)
        for i, name in enumerate(self.columns[1:]):
            out[name] = [None if v != v else v for v in values[:, i].tolist()]
        return out


def _significant(values: np.ndarray, digits: int) -> np.ndarray:
    """``values`` rounded to ``digits`` significant digits, vectorised (formatting each one
    in Python took 45 ms for a full ring): an integer count of a power of ten, scaled back by
    an exact operation, so that each prints as short as it reads."""
    with np.errstate(divide="ignore", invalid="ignore"):
        exp = np.floor(np.log10(np.abs(values))) - (digits - 1)
    exp = np.nan_to_num(exp, nan=0.0, posinf=0.0, neginf=0.0)
    up = 10.0 ** np.maximum(-exp, 0)  # exact powers of ten: divide by them, never by 0.1
    down = 10.0 ** np.maximum(exp, 0)
    return np.round(values * up / down) * down / up


def batch_buckets(max_batch_size: int) -> list[tuple[str, str]]:
    """(column, label) of the batch-size histogram: 1, 2, 3-4, 5-8… up to the first power
    of two at or above ``max_batch_size``, then one bucket for bigger batches (a request
    larger than the limit is run as one batch)."""
    out, upper = [("size_1", "1")], 1
    while upper < max_batch_size:
        low, upper = upper + 1, upper * 2
        out.append((f"size_{upper}", str(low) if low == upper else f"{low}–{upper}"))
    out.append(("size_more", f"> {upper}"))
    return out


def _bucket(size: int, top: int) -> str:
    upper = 1 << (size - 1).bit_length()
    return f"size_{upper}" if upper <= top else "size_more"


class _Track:
    """One model's ring and what its cumulative counters read last time."""

    def __init__(self, columns: list[str], size: int, latency_points: int) -> None:
        self.ring = Ring(columns, size)
        self.entry: Any = None  # a reload swaps the entry: its batcher counts from zero
        self.previous: dict[str, float] | None = None
        self.sketches: collections.deque[np.ndarray] = collections.deque(maxlen=latency_points)
        self.quality: tuple[float | None, float | None] = (None, None)
        self.quality_at = -math.inf


class History:
    """The dashboard's memory: a row a second per model and one for the process, kept for
    ``window_s``. ``start()`` / ``stop()`` run it on the app's event loop (the app's
    lifespan calls them); ``sample()`` is one reading, ``data()`` what /dashboard/data sends."""

    def __init__(
        self, server: Any, window_s: float = WINDOW_S, interval_s: float = INTERVAL_S
    ) -> None:
        import psutil

        if window_s <= 0 or interval_s <= 0 or interval_s > window_s:
            raise ConfigError(
                f"the dashboard needs 0 < interval_s <= window_s, got {interval_s} and {window_s}"
            )
        self.server, self.window_s, self.interval_s = server, float(window_s), float(interval_s)
        self.size = math.ceil(window_s / interval_s)
        self.accuracy_window_s, self.accuracy_every_s = ACCURACY_WINDOW_S, ACCURACY_EVERY_S
        self.buckets = batch_buckets(server.config.max_batch_size)
        self.process = psutil.Process()
        self.process.cpu_percent(None)  # the first call primes the counter
        self.process_ring = Ring(
            [*(f"http_{c}" for c in HTTP_CLASSES), "cpu_percent", "rss_mb"], self.size
        )
        self.tracks: dict[str, _Track] = {}
        self.alert_events: list[dict[str, Any]] = []
        self.latest: float | None = None  # the time of the newest row
        self._previous_http: dict[str, int] | None = None
        self._last: float | None = None
        self._lock = threading.Lock()  # sample() runs on a worker thread, data() on the loop
        self._task: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None

    # -- running --------------------------------------------------------------------------
    def start(self) -> None:
        """Sample every ``interval_s`` from now on, on the running event loop."""
        self._stop = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(self._stop))

    async def stop(self) -> None:
        """Stop sampling; returns once a reading in progress has finished (no thread is
        left behind)."""
        if self._task is None or self._stop is None:
            return
        self._stop.set()
        await self._task
        self._task = None

    async def _run(self, stop: asyncio.Event) -> None:
        due = time.monotonic()
        while not stop.is_set():
            try:
                await asyncio.to_thread(self.sample)
            except Exception:  # a failed reading leaves a gap, the next one tries again
                log.exception("dashboard sample failed")
            due = max(due + self.interval_s, time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), due - time.monotonic())

    # -- reading --------------------------------------------------------------------------
    def sample(self, now: float | None = None) -> None:
        """Read every counter once; append a row per model and one for the process (the
        first reading of each only sets where the next one counts from)."""
        clock = time.monotonic() if now is None else now  # rates: immune to clock changes
        now = time.time() if now is None else now
        monitor = self.server.monitor
        if not monitor.background:  # nobody else flushes it
            monitor.flush()
        dt = None if self._last is None else max(clock - self._last, 1e-3)
        self._last = clock
        process = self._process_row(dt)
        rows = {}
        for name, entry in list(self.server.entries.items()):
            track = self.tracks.get(name)
            if track is None:
                track = self._new_track(entry)
                with self._lock:  # data() may be reading the tracks
                    self.tracks[name] = track
            row = self._model_row(name, entry, track, now, dt)
            if row is not None:
                rows[name] = row
        events = monitor.store.query(
            "SELECT ts, model, rule, state, value, threshold, severity FROM alerts "
            f"WHERE ts >= ? ORDER BY ts DESC LIMIT {ALERTS_SHOWN}",
            (now - self.window_s,),
        )
        keys = ("at", "model", "rule", "state", "value", "threshold", "severity")
        with self._lock:
            if process is not None:
                self.process_ring.append(now, process)
            for name, row in rows.items():
                self.tracks[name].ring.append(now, row)
            for name in set(self.tracks) - set(self.server.entries):
                del self.tracks[name]
            self.alert_events = [dict(zip(keys, e, strict=True)) for e in events]
            self.latest = now if process is not None or rows else self.latest

    def _new_track(self, entry: Any) -> _Track:
        tiers = list(entry.cache.info()["tiers"]) if entry.cache is not None else []
        columns = [
            "p50_ms", "p95_ms", "p99_ms", "latency_n", "ok", "server_error", "shed",
            "queue_samples", "queue_ms", *(f"dispatch_{r}" for r in REASONS),
            *(c for c, _ in self.buckets), *(f"hit_{t}" for t in tiers), "quality", "coverage",
        ]  # fmt: skip
        return _Track(columns, self.size, round(LATENCY_WINDOW_S / self.interval_s) + 1)

    def _process_row(self, dt: float | None) -> dict[str, float | None] | None:
        http = dict.fromkeys(HTTP_CLASSES, 0)
        for code, n in dict(self.server.codes).items():  # a copy: the loop keeps counting
            key = (
                "shed" if code == 503
                else "server_error" if code >= 500
                else "client_error" if code >= 400
                else "ok"
            )  # fmt: skip
            http[key] += n
        previous, self._previous_http = self._previous_http, http
        cpu = self.process.cpu_percent(None)
        rss = self.process.memory_info().rss / 2**20
        if previous is None or dt is None:
            return None
        row: dict[str, float | None] = {"cpu_percent": cpu, "rss_mb": rss}
        for key, n in http.items():
            row[f"http_{key}"] = _delta(n, previous.get(key, 0)) / dt
        return row

    def _counters(self, name: str, entry: Any) -> dict[str, float]:
        """Every cumulative counter of one model, flat."""
        counts = self.server.monitor.counts(name)
        stats = entry.batcher.stats
        out: dict[str, float] = {
            "requests": counts["requests"], "errors": counts["errors"], "shed": stats.shed,
            "batched": stats.requests, "wait_s": stats.queue_wait_s,
        }  # fmt: skip
        for reason, n in dict(stats.batches).items():
            out[f"dispatch_{reason}"] = n
        top = int(self.buckets[-2][0].split("_")[1])
        for size, n in dict(stats.batch_sizes).items():
            key = _bucket(size, top)
            out[key] = out.get(key, 0) + n
        if entry.cache is not None:
            for tier, info in entry.cache.info()["tiers"].items():
                out[f"hits_{tier}"], out[f"misses_{tier}"] = info["hits"], info["misses"]
        return out

    def _model_row(
        self, name: str, entry: Any, track: _Track, now: float, dt: float | None
    ) -> dict[str, float | None] | None:
        current = self._counters(name, entry)
        previous = track.previous
        if previous is not None and track.entry is not entry:  # reloaded: a new batcher
            previous = {k: previous[k] for k in ("requests", "errors")}
        track.previous, track.entry = current, entry
        latency = self._latency(name, track)
        quality = self._quality(name, track, now)
        if previous is None or dt is None:
            return None
        d = {k: _delta(v, previous.get(k, 0)) for k, v in current.items()}
        row: dict[str, float | None] = {
            **latency, **quality,
            "ok": (d["requests"] - d["errors"]) / dt,
            "server_error": d["errors"] / dt,
            "shed": d["shed"] / dt,
            "queue_samples": entry.batcher.queued_samples,
            "queue_ms": d["wait_s"] / d["batched"] * 1e3 if d["batched"] else None,
        }  # fmt: skip
        for reason in REASONS:
            row[f"dispatch_{reason}"] = d.get(f"dispatch_{reason}", 0) / dt
        for column, _ in self.buckets:
            row[column] = d.get(column, 0)
        for key in current:
            if key.startswith("hits_"):
                tier = key[5:]
                looked = d[key] + d[f"misses_{tier}"]
                row[f"hit_{tier}"] = 100 * d[key] / looked if looked else None
        return row

    def _latency(self, name: str, track: _Track) -> dict[str, float | None]:
        """p50/p95/p99 over the trailing LATENCY_WINDOW_S: the difference of two readings of
        the monitor's cumulative sketch (n too: the page marks percentiles with too few)."""
        counts = self.server.monitor.latency_totals(name).counts
        track.sketches.append(counts)
        sketch = LogSketch()
        sketch.counts = np.maximum(counts - track.sketches[0], 0)
        sketch.n = int(sketch.counts.sum())
        out: dict[str, float | None] = {"latency_n": sketch.n}
        for q in (50, 95, 99):
            out[f"p{q}_ms"] = sketch.quantile(q / 100)
        return out

    def _quality(self, name: str, track: _Track, now: float) -> dict[str, float | None]:
        """Accuracy (%) or MAE of the predictions of the last ACCURACY_WINDOW_S that have
        ground truth, and coverage: the labelled share of them (%)."""
        if now - track.quality_at >= self.accuracy_every_s:
            track.quality_at = now
            monitor, since = self.server.monitor, now - self.accuracy_window_s
            result = monitor.accuracy(name, since=since)
            made = monitor.store.query(
                "SELECT COUNT(*) FROM predictions WHERE model = ? AND ts >= ? "
                "AND prediction_id IS NOT NULL",
                (name, since),
            )[0][0]
            value = result.get("accuracy")
            track.quality = (
                value * 100 if value is not None else result.get("mae"),
                100 * result["labeled"] / made if made else None,
            )
        return {"quality": track.quality[0], "coverage": track.quality[1]}

    # -- what the page gets ---------------------------------------------------------------
    def data(self, since: float | None = None) -> dict[str, Any]:
        """The JSON of /dashboard/data: the series (after ``since`` when given) and, per
        model, what holds now (health, counts, active alerts with when they fired)."""
        monitor = self.server.monitor
        with self._lock:
            process = self.process_ring.to_json(since)
            series = {name: t.ring.to_json(since) for name, t in self.tracks.items()}
            events, latest = list(self.alert_events), self.latest
        models = []
        for name, entry in sorted(list(self.server.entries.items())):
            counts = monitor.counts(name)
            tiers = list(entry.cache.info()["tiers"]) if entry.cache is not None else []
            models.append(
                {
                    "name": name,
                    "health": monitor.health(name),
                    "requests": counts["requests"],
                    "errors": counts["errors"],
                    "shed": entry.batcher.stats.shed,
                    "queue": entry.batcher.queued_samples,
                    "latency": monitor.latency(name, last_s=self.window_s),
                    "quality": "mae" if monitor.task == "regression" else "accuracy",
                    "batch_buckets": [{"column": c, "label": label} for c, label in self.buckets],
                    "cache_tiers": tiers,
                    "alerts": _active_alerts(monitor, name),
                    "series": series.get(name) or Ring([], 1).to_json(),
                }
            )
        return {
            "time": time.time(),
            "window_s": self.window_s,
            "interval_s": self.interval_s,
            "latency_window_s": LATENCY_WINDOW_S,
            "accuracy_window_s": self.accuracy_window_s,
            "min_samples": MIN_SAMPLES,
            "latest": latest,
            "process": process,
            "models": models,
            "alerts": events,
        }


def _active_alerts(monitor: Any, model: str) -> list[dict[str, Any]]:
    """The alerts firing now on ``model``, with when they fired (``since``)."""
    keys = ("name", "severity", "metric", "op", "threshold")
    return [
        {**{k: getattr(rule, k) for k in keys}, "value": state.value, "since": state.since}
        for rule, state, _ in monitor.engine.active(model)
    ]


def _delta(now: float, before: float) -> float:
    """How much a cumulative counter grew; one that went down was reset (counts from 0)."""
    return now - before if now >= before else now
