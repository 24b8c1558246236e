"""`nimbleml report --monitor STORE -o DIR`: charts and a short text of insights.

The figure builders (``latency_figure``, ``accuracy_figure``, ``resources_figure``) return
matplotlib Figures, so tests and notebooks can look at what ``write_report`` saves as PNGs.
Short runs are the common first use (the README's example records 100 predictions in one
window): every series of a few points carries markers, and the time axis spans the data, not
the four years matplotlib gives a single date, which left such charts blank.
"""

from __future__ import annotations

import datetime as _dt
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..bench.plots import new_figure
from ..errors import ConfigError, storage_error
from .sketch import LogSketch
from .store import Store, open_store, sqlite_path
from .truth import same_label
from .windows import MIN_SAMPLES

UTC = _dt.timezone.utc
MARKERS_UP_TO = 60  # points in a series; more than that and the line alone reads better
MIN_TIME_SPAN_S = 20.0  # the narrowest time axis: one point sits mid-way, ticks 5 s apart
MIN_ACCURACY_SPAN = 0.05  # an accuracy axis never zooms in further (0.8475-0.8479 looked bad)


def _windows(store: Store) -> dict[str, list[dict[str, Any]]]:
    spans = {
        model: (float(first), float(last))
        for model, first, last in store.query(
            "SELECT model, MIN(ts), MAX(ts) FROM predictions GROUP BY model"
        )
    }
    out: dict[str, list[dict[str, Any]]] = {}
    for model, start, seconds, requests, errors, sampled, blob in store.query(
        "SELECT model, start, seconds, requests, errors, sampled, sketch FROM windows ORDER BY start"
    ):
        sk = LogSketch.from_bytes(blob) if blob else LogSketch()
        out.setdefault(model, []).append(
            {"start": start, "seconds": seconds, "requests": requests, "errors": errors, "n": sampled,
             "p50": sk.quantile(0.5), "p95": sk.quantile(0.95), "p99": sk.quantile(0.99), "sketch": sk}
        )  # fmt: skip
    for model, ws in out.items():
        _cover(ws, spans.get(model))
    return out


def _cover(ws: list[dict[str, Any]], span: tuple[float, float] | None) -> None:
    """Each window's time to plot at ("t") and requests per second ("rate"). The window a run
    started or stopped in counts from its first / to its last prediction (at least a second):
    100 predictions in a 60 s window opened 7 ms before read 1.7 requests/s, not 100."""
    first, last = span if span is not None else (np.inf, -np.inf)
    for i, w in enumerate(ws):
        lo, hi = w["start"], w["start"] + w["seconds"]
        if i == 0 and lo <= first < hi:
            lo = first
        if i == len(ws) - 1 and lo <= last < hi:
            hi = last
        w["t"] = (lo + hi) / 2
        w["rate"] = w["requests"] / max(hi - lo, 1.0)


def _accuracy(store: Store, window_s: float) -> dict[str, list[tuple[float, float, int]]]:
    """Per model: (window start, accuracy, labeled predictions) for each window with labels."""
    rows = store.query(
        f"SELECT p.model, {store.window_start('p.ts')}, p.output, l.label FROM predictions p "
        "JOIN labels l ON p.prediction_id = l.prediction_id",
        (window_s, window_s),
    )
    acc: dict[tuple[str, float], list[bool]] = {}
    for model, start, out, label in rows:
        acc.setdefault((model, float(start)), []).append(same_label(out, label))
    result: dict[str, list[tuple[float, float, int]]] = {}
    for (model, start), hits in sorted(acc.items(), key=lambda kv: kv[0][1]):
        result.setdefault(model, []).append((start, float(np.mean(hits)), len(hits)))
    return result


def _resources(store: Store) -> list[tuple[Any, ...]]:
    return store.query(
        "SELECT ts, cpu_percent, rss_mb, gpu_memory_mb, gpu_utilization FROM resources ORDER BY ts"
    )


def _times(starts: Iterable[float]) -> list[_dt.datetime]:
    return [_dt.datetime.fromtimestamp(s, UTC) for s in starts]


def _floats(values: Iterable[Any]) -> list[float]:
    """None (a window without samples) as NaN: a gap in the line."""
    return [np.nan if v is None else float(v) for v in values]


def _markers(points: int) -> dict[str, Any]:
    return {"marker": "o", "markersize": 4} if points <= MARKERS_UP_TO else {}


def _time_axis(ax: Any, times: Sequence[_dt.datetime]) -> None:
    """x from the first to the last point with a little room either side, ticks as HH:MM:SS
    (UTC), the date in the label. Matplotlib widens a single date to four years (2025-2029),
    where one window's point was nowhere to be seen."""
    import matplotlib.dates as mdates

    lo, hi = min(times), max(times)
    span = (hi - lo).total_seconds()
    pad = _dt.timedelta(seconds=max(span * 0.05, (MIN_TIME_SPAN_S - span) / 2))
    ax.set_xlim(lo - pad, hi + pad)
    ax.xaxis.set_major_locator(mdates.AutoDateLocator(minticks=3, maxticks=8, tz=UTC))
    fmt = "%H:%M:%S" if span + 2 * pad.total_seconds() < 86400 else "%m-%d %H:%M"
    ax.xaxis.set_major_formatter(mdates.DateFormatter(fmt, tz=UTC))
    days = f"{lo:%Y-%m-%d}" if lo.date() == hi.date() else f"{lo:%Y-%m-%d} to {hi:%Y-%m-%d}"
    ax.set_xlabel(f"time (UTC, {days})")


def accuracy_limits(values: Sequence[float]) -> tuple[float, float]:
    """y-limits for accuracies: the data with 10% room, at least MIN_ACCURACY_SPAN wide,
    inside [0, 1], so that a 0.0004 wobble does not fill the chart."""
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.1
    lo, hi = lo - pad, hi + pad
    if hi - lo < MIN_ACCURACY_SPAN:
        mid = (lo + hi) / 2
        lo, hi = mid - MIN_ACCURACY_SPAN / 2, mid + MIN_ACCURACY_SPAN / 2
    if hi > 1.0:
        lo, hi = lo - (hi - 1.0), 1.0
    if lo < 0.0:
        lo, hi = 0.0, min(1.0, hi - lo)
    return lo, hi


def latency_figure(windows: dict[str, list[dict[str, Any]]]) -> Any:
    """Latency percentiles and requests/s per window, one line per model and percentile."""
    fig = new_figure((9, 6))
    top, bottom = fig.subplots(2, 1, sharex=True)
    times: list[_dt.datetime] = []
    for model, ws in windows.items():
        t = _times(w["t"] for w in ws)
        times += t
        for q, style in (("p50", "-"), ("p95", "--"), ("p99", ":")):
            top.plot(t, _floats(w[q] for w in ws), style, label=f"{model} {q}", **_markers(len(ws)))
        bottom.plot(t, [w["rate"] for w in ws], label=model, **_markers(len(ws)))
    seconds = next(iter(windows.values()))[0]["seconds"] if windows else 0
    top.set_title(f"latency and throughput per {seconds:g} s window")
    top.set_ylabel("latency (ms)")
    bottom.set_ylabel("requests/s")
    for ax in (top, bottom):
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
    if times:
        _time_axis(bottom, times)
    fig.tight_layout()
    return fig


def accuracy_figure(accuracy: dict[str, list[tuple[float, float, int]]]) -> Any:
    """Accuracy per window of labeled predictions, each point with its count of labels."""
    fig = new_figure((9, 3.5))
    ax = fig.add_subplot()
    ax.set_ylabel("accuracy (labeled predictions)")
    if not accuracy:
        ax.set_title("accuracy over time: no ground truth yet")
        return fig
    times: list[_dt.datetime] = []
    values: list[float] = []
    for model, points in accuracy.items():
        t = _times(p[0] for p in points)
        acc = [p[1] for p in points]
        labeled = sum(p[2] for p in points)
        (line,) = ax.plot(t, acc, label=f"{model} ({labeled} labeled)", clip_on=False,
                          **_markers(len(points)))  # fmt: skip
        if len(accuracy) == 1 and len(points) <= 12:  # with more, the labels would collide
            for when, value, n in zip(t, acc, (p[2] for p in points), strict=True):
                ax.annotate(f"n={n}", (when, value), xytext=(0, 6), textcoords="offset points",
                            ha="center", fontsize=7, color=line.get_color())  # fmt: skip
        times += t
        values += acc
    if len(accuracy) == 1:
        (points,) = accuracy.values()
        labeled = sum(p[2] for p in points)
        overall = sum(p[1] * p[2] for p in points) / labeled
        ax.set_title(f"accuracy over time: {overall:.3f} over {labeled} labeled predictions")
    else:
        ax.set_title("accuracy over time")
    ax.set_ylim(*accuracy_limits(values))
    _time_axis(ax, times)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def resources_figure(rows: Sequence[tuple[Any, ...]]) -> Any:
    """Process CPU % (and GPU utilisation) on the left axis, memory in MB on the right; one
    legend for both axes."""
    fig = new_figure((9, 3.5))
    ax = fig.add_subplot()
    ax.set_ylabel("%")
    if not rows:
        ax.set_title("resources: no samples (the monitor ran with resources_interval_s=None)")
        return fig
    t = _times(r[0] for r in rows)
    mk = _markers(len(rows))
    handles = ax.plot(
        t, _floats(r[1] for r in rows), color="#4c72b0", label="CPU % (process)", **mk
    )
    if any(r[4] is not None for r in rows):
        handles += ax.plot(t, _floats(r[4] for r in rows), "--", color="#55a868",
                           label="GPU utilisation %", **mk)  # fmt: skip
    right = ax.twinx()
    handles += right.plot(t, _floats(r[2] for r in rows), color="#c44e52",
                          label="RSS MB (right axis)", **mk)  # fmt: skip
    if any(r[3] is not None for r in rows):
        handles += right.plot(t, _floats(r[3] for r in rows), "--", color="#8172b3",
                              label="GPU memory MB (right axis)", **mk)  # fmt: skip
    right.set_ylabel("MB")
    for axis, columns, least in ((ax, (1, 4), 100.0), (right, (2, 3), 1.0)):
        top = max((r[c] for r in rows for c in columns if r[c] is not None), default=0.0)
        axis.set_ylim(0, max(top, least) * 1.3)  # from zero, with room for the legend on top
    # on the right axes, which is drawn last, so that no line runs over the legend
    right.legend(handles, [h.get_label() for h in handles], loc="upper left", fontsize=7)
    ax.set_title("resources")
    _time_axis(ax, t)
    fig.tight_layout()
    return fig


def _open(store_url: str) -> Store:
    if store_url.startswith("sqlite:///"):
        path = sqlite_path(store_url)
        if path != ":memory:" and not Path(path).is_file():
            raise ConfigError(f"monitor store not found: {path}")
    return open_store(store_url, read_only=True)


def _collect(store: Store, store_url: str) -> tuple[dict[str, Any], dict[str, Any], list[Any]]:
    windows = _windows(store)
    if not windows:
        raise ConfigError(f"the store {store_url} holds no monitoring windows yet")
    window_s = next(iter(windows.values()))[0]["seconds"]
    accuracy = {
        model: [(_at(windows.get(model, []), start), value, n) for start, value, n in points]
        for model, points in _accuracy(store, window_s).items()
    }
    return windows, accuracy, _resources(store)


def _at(ws: list[dict[str, Any]], start: float) -> float:
    """Where the latency chart put the window starting at ``start`` (else its start)."""
    return next((w["t"] for w in ws if abs(w["start"] - start) < 1e-3), start)


def figures(store_url: str) -> dict[str, Any]:
    """The report's charts as matplotlib Figures, by file name."""
    store = _open(store_url)
    try:
        windows, accuracy, resources = _collect(store, store_url)
    finally:
        store.close()
    return _build(windows, accuracy, resources)


def _build(windows: Any, accuracy: Any, resources: Any) -> dict[str, Any]:
    return {
        "latency_throughput.png": latency_figure(windows),
        "accuracy.png": accuracy_figure(accuracy),
        "resources.png": resources_figure(resources),
    }


def write_report(store_url: str, out_dir: str | Path) -> list[Path]:
    """PNG charts (latency, throughput, accuracy, resources) and insights.txt."""
    store = _open(store_url)
    try:
        windows, accuracy, resources = _collect(store, store_url)
        text = "\n".join(insights(windows, accuracy, store)) + "\n"
    finally:
        store.close()
    out = Path(out_dir)  # created only once there is something to write into it
    made = not out.exists()
    written: list[Path] = []
    path = out
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, fig in _build(windows, accuracy, resources).items():
            path = out / name
            fig.savefig(path, dpi=100)
            written.append(path)
        path = out / "insights.txt"
        path.write_text(text)
        written.append(path)
    except OSError as exc:  # a full or read-only disk: no half-written chart left behind
        for done in [*written, path]:
            if done != out:
                done.unlink(missing_ok=True)
        if made:
            shutil.rmtree(out, ignore_errors=True)
        raise storage_error(path, exc) from exc
    return written


def insights(
    windows: dict[str, list[dict[str, Any]]],
    accuracy: dict[str, list[tuple[float, float, int]]],
    store: Store,
) -> list[str]:
    """Plain sentences: totals, latency with its n, what changed between the first and second
    half, accuracy with its count of labels, what alerted."""
    lines = []
    for model, ws in windows.items():
        total = sum(w["requests"] for w in ws)
        errors = sum(w["errors"] for w in ws)
        lines.append(
            f"{model}: {total} predictions in {len(ws)} window{'s' if len(ws) != 1 else ''} of "
            f"{ws[0]['seconds']:g} s, error rate {errors / total if total else 0:.2%}"
        )
        sketch = LogSketch()
        for w in ws:
            sketch.merge(w["sketch"])
        if sketch.n:
            few = [name for name, need in MIN_SAMPLES.items() if sketch.n < need]
            note = f"; {', '.join(few)} from too few samples to trust" if few else ""
            p50, p95, p99 = (sketch.quantile(q) or 0.0 for q in (0.5, 0.95, 0.99))
            lines.append(
                f"  latency p50 {p50:.3f} ms, p95 {p95:.3f} ms, p99 {p99:.3f} ms "
                f"(n={sketch.n}{note})"
            )
        timed = [w for w in ws if w["p99"] is not None]
        if len(timed) >= 2:
            half = len(timed) // 2
            before = float(np.median([w["p99"] for w in timed[:half]]))
            after = float(np.median([w["p99"] for w in timed[half:]]))
            change = (after - before) / before if before else 0.0
            verb = "rose" if change > 0.2 else "fell" if change < -0.2 else "held steady"
            lines.append(f"  p99 latency {verb}: {before:.3f} ms -> {after:.3f} ms ({change:+.0%})")
        points = accuracy.get(model, [])
        if points:
            labeled = sum(p[2] for p in points)
            overall = sum(p[1] * p[2] for p in points) / labeled
            line = (
                f"  accuracy {overall:.3f} over {labeled} labeled "
                f"prediction{'s' if labeled != 1 else ''}"
            )
            if len(points) >= 2:
                line += (
                    f": {points[0][1]:.3f} in the first labeled window, "
                    f"{points[-1][1]:.3f} in the last"
                )
            lines.append(line)
    alerts = store.query("SELECT ts, model, rule, state, value, threshold FROM alerts ORDER BY ts")
    for ts, model, rule, state, value, threshold in alerts:
        when = _dt.datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")
        lines.append(
            f"alert {rule} {state} on {model} at {when} UTC: {value:.4g} (threshold {threshold:g})"
        )
    if not alerts:
        lines.append("no alerts fired")
    return lines
