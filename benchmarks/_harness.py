"""Side-by-side timing for benchmark scripts: interleaved rounds, so that both sides of a
ratio see the same machine noise; medians of per-round medians."""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable

import numpy as np


def side_by_side(
    fns: dict[str, Callable[[], object]], rounds: int = 15, calls: int = 200, warmup: int = 50
) -> dict[str, dict[str, float]]:
    """p50/p99 latency (ms) per function, from ``rounds`` interleaved rounds of ``calls``."""
    per_round: dict[str, list[float]] = {k: [] for k in fns}
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    clock = time.perf_counter_ns
    for _ in range(rounds):
        for name, fn in fns.items():
            ts = np.empty(calls)
            for i in range(calls):
                t0 = clock()
                fn()
                ts[i] = clock() - t0
            per_round[name].append(float(np.median(ts)))
            samples[name].extend(ts.tolist())
    out = {}
    for name in fns:
        s = np.asarray(samples[name]) / 1e6
        out[name] = {
            "p50_ms": float(np.median(per_round[name]) / 1e6),
            "p99_ms": float(np.percentile(s, 99)),
            "n": int(s.size),
        }
    return out


def table(rows: list[list[object]], header: list[str]) -> str:
    cells = [[str(c) for c in r] for r in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [
        "  ".join(
            c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in cells
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def quick_args(
    doc: str | None,
    parts: list[str] | None = None,
    more: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.Namespace:
    """The benchmarks' shared command line: --quick for fewer rounds, --only PART... where a
    benchmark has parts, a benchmark's own options added by ``more``; warnings muted."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer rounds, shorter runs")
    if parts:
        parser.add_argument(
            "--only", nargs="+", choices=parts, default=parts, help="run only these parts"
        )
    if more is not None:
        more(parser)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    return args
