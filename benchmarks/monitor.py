"""Figures for ModelMonitor (issue 4), on this machine.

    .venv/bin/python benchmarks/monitor.py [--quick]

- hot path: median µs per record at 100% sampling, and for a record that is not sampled
  (goals: <= 1 µs and <= 0.3 µs); records/s at 100% and 20% sampling;
- sketch error against exact percentiles;
- ground-truth join rate (labels joined per second);
- retention: time to delete 1M expired records.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _harness import table
from nimbleml.monitor import LogSketch, ModelMonitor


def per_record_us(m: ModelMonitor, n: int, **kw: object) -> float:
    """Median over 20 blocks of the per-call time of m.record (loop overhead subtracted)."""
    record = m.record
    blocks, empty = [], []
    for _ in range(20):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            record(1.0, **kw)
        blocks.append((time.perf_counter_ns() - t0) / n)
        t0 = time.perf_counter_ns()
        for _ in range(n):
            pass
        empty.append((time.perf_counter_ns() - t0) / n)
        m._cols = type(m._cols)()  # drop the columns between blocks, as a flush would
    return (float(np.median(blocks)) - float(np.median(empty))) / 1e3


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n = 20_000 if args.quick else 100_000
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
        us_full = per_record_us(full, n // 10)
        us_unsampled = per_record_us(never, n // 10)
        rows.append(["record, 100% sampling (µs, median)", f"{us_full:.3f}", "goal <= 1"])
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
