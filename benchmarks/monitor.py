"""Figures for ModelMonitor (issue 4), on this machine.

    .venv/bin/python benchmarks/monitor.py [--quick]

- hot path: record against prometheus_client's Histogram.observe (same buckets as our
  export), interleaved rounds in this run, medians and the ratio (goal <= 0.5x), for
  record(ms) and the predictor's record(ms, id, model, output); median µs of a record that is
  not sampled (goal <= 0.3 µs); records/s at 100% and 20% sampling;
- sketch error against exact percentiles;
- ground-truth join rate (labels joined per second);
- retention: time to delete 1M expired records.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _harness import table
from nimbleml.monitor import LogSketch, ModelMonitor
from nimbleml.monitor.export import BOUNDS_MS


def _block_ns(fn: Callable[..., object], n: int, args: tuple[object, ...]) -> float:
    """ns per call of ``fn(*args)`` over ``n`` calls, loop included."""
    t0 = time.perf_counter_ns()
    for _ in range(n):
        fn(*args)
    return (time.perf_counter_ns() - t0) / n


def _loop_ns(n: int) -> float:
    t0 = time.perf_counter_ns()
    for _ in range(n):
        pass
    return (time.perf_counter_ns() - t0) / n


def per_record_us(m: ModelMonitor, n: int, rounds: int = 20) -> float:
    """Median over ``rounds`` blocks of the per-call time of m.record(1.0) (loop subtracted)."""
    blocks, empty = [], []
    for _ in range(rounds):
        blocks.append(_block_ns(m.record, n, (1.0,)))
        empty.append(_loop_ns(n))
        del m._rows[:]  # drop the records between blocks, as a flush would
    return (float(np.median(blocks)) - float(np.median(empty))) / 1e3


def record_vs_observe(
    m: ModelMonitor, rounds: int, calls: int, args: tuple[object, ...] = (1.0,)
) -> dict[str, float]:
    """m.record(*args) against prometheus_client Histogram.observe(1.0), the same buckets as
    /metrics (17, in ms), side by side: each round times a block of ``calls`` of each (the
    order alternating) and an empty loop, subtracted. Costs: medians over rounds; ratio: the
    median of the per-round ratios (each from two adjacent blocks, so a slow spell of the
    shared machine hits both sides), with their interquartile range."""
    from prometheus_client import CollectorRegistry, Histogram

    hist = Histogram("bench_latency_ms", "latency", buckets=BOUNDS_MS, registry=CollectorRegistry())
    fns = {"record": (m.record, args), "observe": (hist.observe, (1.0,))}
    times: dict[str, list[float]] = {"record": [], "observe": [], "loop": []}
    for fn, a in fns.values():  # warm-up
        _block_ns(fn, calls, a)
    del m._rows[:]
    for r in range(rounds):
        for name in ("record", "observe") if r % 2 == 0 else ("observe", "record"):
            fn, a = fns[name]
            times[name].append(_block_ns(fn, calls, a))
        times["loop"].append(_loop_ns(calls))
        del m._rows[:]  # drop the records between rounds, as a flush would
    loop = np.asarray(times["loop"])
    rec, obs = np.asarray(times["record"]) - loop, np.asarray(times["observe"]) - loop
    per_round = rec / obs
    out = {"record_us": float(np.median(rec)) / 1e3, "observe_us": float(np.median(obs)) / 1e3}
    out["ratio"] = float(np.median(per_round))
    out["ratio_lo"], out["ratio_hi"] = (float(q) for q in np.percentile(per_round, [25, 75]))
    out["n"] = rounds * calls
    return out


def ratio_row(label: str, r: dict[str, float], rounds: int, calls: int) -> list[str]:
    met = "met" if r["ratio"] <= 0.5 else "NOT met"
    return [
        label,
        f"{r['record_us']:.3f} vs {r['observe_us']:.3f} µs: {r['ratio']:.2f}x",
        f"goal <= 0.5x: {met}; medians of {rounds} interleaved rounds x {calls:,} calls "
        f"(n = {int(r['n']):,} a side); per-round ratio IQR {r['ratio_lo']:.2f}-{r['ratio_hi']:.2f}x",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=None, help="record vs observe rounds")
    args = parser.parse_args()
    n = 20_000 if args.quick else 100_000
    rounds = args.rounds or (9 if args.quick else 21)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        full = ModelMonitor(
            store=f"sqlite:///{tmp}/a.db", background=False, resources_interval_s=None
        )
        sampled = ModelMonitor(
            sampling_rate=0.2,
            store=f"sqlite:///{tmp}/b.db",
            background=False,
            resources_interval_s=None,
        )
        never = ModelMonitor(
            sampling_rate=1e-9,
            store=f"sqlite:///{tmp}/c.db",
            background=False,
            resources_interval_s=None,
        )
        calls = n // 10
        plain = record_vs_observe(full, rounds, calls)
        rows.append(
            ratio_row("record(ms) vs Histogram.observe, 100% sampling", plain, rounds, calls)
        )
        call = (1.0, "req-17", "default", 1)  # what OptimizedPredictor passes
        predictor = record_vs_observe(full, rounds, calls, call)
        rows.append(ratio_row("record(ms, id, model, output) vs observe", predictor, rounds, calls))
        us_unsampled = per_record_us(never, calls)
        rows.append(["record, not sampled (µs, median)", f"{us_unsampled:.3f}", "goal <= 0.3"])
        full.close()
        full = ModelMonitor(
            store=f"sqlite:///{tmp}/a2.db", background=False, resources_interval_s=None
        )
        for name, m in (("100%", full), ("20%", sampled)):
            t0 = time.perf_counter()
            for i in range(n):
                m.record(1.0 + (i % 7), model="default", output=i % 3)
            elapsed = time.perf_counter() - t0
            t1 = time.perf_counter()
            m.flush()
            flush_s = time.perf_counter() - t1
            rows.append([f"records/s at {name} sampling (hot path)", f"{n / elapsed:,.0f}",
                         f"flush of the batch took {flush_s * 1e3:.0f} ms off the hot path; counts exact: {m.counts()['requests'] == n}"])  # fmt: skip

        rng = np.random.default_rng(0)
        values = rng.lognormal(0, 1.5, 1_000_000)
        sk = LogSketch()
        sk.add(values)
        ordered = np.sort(values)
        errs = []
        for q in (0.5, 0.95, 0.99):
            exact = ordered[int(q * (len(values) - 1))]
            errs.append(f"p{int(q * 100)} {abs(sk.quantile(q) - exact) / exact:.3%}")
        rows.append(
            ["sketch relative error vs exact (1M lognormal)", ", ".join(errs), "goal <= 1%"]
        )

        join = ModelMonitor(
            store=f"sqlite:///{tmp}/j.db", background=False, resources_interval_s=None
        )
        k = 100_000 if not args.quick else 20_000
        for i in range(k):
            join.record(1.0, prediction_id=i, output=i % 2)
        join.flush()
        for i in range(k):
            join.record_ground_truth(i, i % 2)
        t0 = time.perf_counter()
        join.flush()
        acc = join.accuracy()
        join_s = time.perf_counter() - t0
        rows.append(["label join (write + join + accuracy)", f"{k / join_s:,.0f} labels/s",
                     f"{acc['labeled']} joined, accuracy {acc['accuracy']:.3f}"])  # fmt: skip

        ret = ModelMonitor(
            store=f"sqlite:///{tmp}/r.db",
            background=False,
            resources_interval_s=None,
            retention="1h",
        )
        million = 1_000_000 if not args.quick else 200_000
        ret.record_batch(np.ones(million))
        ret.flush()
        t0 = time.perf_counter()
        deleted = ret.apply_retention(now=time.time() + 7200)
        rows.append([f"retention: delete {deleted:,} expired records", f"{time.perf_counter() - t0:.2f} s",
                     "summaries kept: " + str(ret.store.query("SELECT SUM(requests) FROM windows")[0][0])])  # fmt: skip
        for m in (full, sampled, never, join, ret):
            m.close()
    print(table(rows, ["figure", "value", "note"]))


if __name__ == "__main__":
    main()
