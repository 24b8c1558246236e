"""`nimbleml report --monitor STORE -o DIR`: charts and a short text of insights."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

import numpy as np

from ..bench.plots import _pyplot
from ..errors import ConfigError
from .core import same_label
from .sketch import LogSketch
from .store import Store, open_store, sqlite_path


def _windows(store: Store) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for model, start, seconds, requests, errors, sampled, blob in store.query(
        "SELECT model, start, seconds, requests, errors, sampled, sketch FROM windows ORDER BY start"
    ):
        sk = LogSketch.from_bytes(blob) if blob else LogSketch()
        out.setdefault(model, []).append(
            {"start": start, "seconds": seconds, "requests": requests, "errors": errors, "n": sampled,
             "p50": sk.quantile(0.5), "p95": sk.quantile(0.95), "p99": sk.quantile(0.99)}
        )  # fmt: skip
    return out


def _accuracy(store: Store, window_s: float) -> dict[str, list[tuple[float, float, int]]]:
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


def _times(starts: list[float]) -> list[_dt.datetime]:
    return [_dt.datetime.fromtimestamp(s, _dt.timezone.utc) for s in starts]


def write_report(store_url: str, out_dir: str | Path) -> list[Path]:
    """PNG charts (latency, throughput, accuracy, resources) and insights.txt."""
    if store_url.startswith("sqlite:///"):
        path = sqlite_path(store_url)
        if path != ":memory:" and not Path(path).is_file():
            raise ConfigError(f"monitor store not found: {path}")
    store = open_store(store_url, read_only=True)
    windows = _windows(store)
    if not windows:
        raise ConfigError(f"the store {store_url} holds no monitoring windows yet")
    out = Path(out_dir)  # created only once there is something to write into it
    out.mkdir(parents=True, exist_ok=True)
    plt = _pyplot()
    window_s = next(iter(windows.values()))[0]["seconds"]
    written = []

    fig, axes = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for model, ws in windows.items():
        t = _times([w["start"] for w in ws])
        for q, style in (("p50", "-"), ("p95", "--"), ("p99", ":")):
            axes[0].plot(t, [w[q] for w in ws], style, label=f"{model} {q}")
        axes[1].plot(t, [w["requests"] / w["seconds"] for w in ws], label=model)
    axes[0].set_ylabel("latency (ms)")
    axes[0].legend(fontsize=7)
    axes[1].set_ylabel("requests/s")
    axes[1].legend(fontsize=7)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(out / "latency_throughput.png", dpi=100)
    plt.close(fig)
    written.append(out / "latency_throughput.png")

    accuracy = _accuracy(store, window_s)
    fig, ax = plt.subplots(figsize=(9, 3.5))
    for model, points in accuracy.items():
        ax.plot(_times([p[0] for p in points]), [p[1] for p in points], marker="o", label=model)
    ax.set_ylabel("accuracy (labeled predictions)")
    ax.set_title("accuracy over time" if accuracy else "accuracy over time: no ground truth yet")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=100)
    plt.close(fig)
    written.append(out / "accuracy.png")

    res = store.query("SELECT ts, cpu_percent, rss_mb FROM resources ORDER BY ts")
    fig, ax = plt.subplots(figsize=(9, 3.5))
    if res:
        t = _times([r[0] for r in res])
        ax.plot(t, [r[1] for r in res], label="CPU %")
        ax2 = ax.twinx()
        ax2.plot(t, [r[2] for r in res], color="#c44e52", label="RSS MB")
        ax2.set_ylabel("RSS MB")
    ax.set_ylabel("CPU %")
    ax.set_title("resources")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(out / "resources.png", dpi=100)
    plt.close(fig)
    written.append(out / "resources.png")

    (out / "insights.txt").write_text("\n".join(insights(windows, accuracy, store)) + "\n")
    written.append(out / "insights.txt")
    store.close()
    return written


def insights(
    windows: dict[str, list[dict[str, Any]]],
    accuracy: dict[str, list[tuple[float, float, int]]],
    store: Store,
) -> list[str]:
    """Plain sentences: totals, what changed between the first and second half, what alerted."""
    lines = []
    for model, ws in windows.items():
        total = sum(w["requests"] for w in ws)
        errors = sum(w["errors"] for w in ws)
        lines.append(
            f"{model}: {total} predictions in {len(ws)} windows, error rate {errors / total if total else 0:.2%}"
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
        if len(points) >= 2:
            lines.append(
                f"  accuracy: {points[0][1]:.3f} in the first labeled window, {points[-1][1]:.3f} in the last"
            )
    alerts = store.query("SELECT ts, model, rule, state, value, threshold FROM alerts ORDER BY ts")
    for ts, model, rule, state, value, threshold in alerts:
        when = _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        lines.append(
            f"alert {rule} {state} on {model} at {when} UTC: {value:.4g} (threshold {threshold:g})"
        )
    if not alerts:
        lines.append("no alerts fired")
    return lines
