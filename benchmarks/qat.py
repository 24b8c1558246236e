"""Quantization-aware training figure of issue 13 (1b), measured side by side in one run.

A noise-free surrogate regressor (Friedman #1, an MLP 10-256-256-1, trained to R^2 ~0.999):
its value is its precision, and int8 rounding eats into it. For each int8 kind ONNX Runtime
offers on this CPU (dynamic per tensor, dynamic per channel, static QDQ per channel):

- post-training int8 (nimbleml.compress) against the budget (R^2 may drop by --max-drop);
- quantization-aware training (nimbleml.qat, the float model as teacher, --epochs) with the
  same kind, packaged and verified against the original.

Every model is timed side by side with nimbleml.benchmark, in rounds of alternating order
(p50 at batch 1 and 32: the median over rounds, n summed). Goal: where
post-training int8 misses max_drop, QAT meets it at int8 speed (QAT p50 / PTQ p50 ~ 1).

    python benchmarks/qat.py [--quick] [--max-drop 0.001] [--width 256] [--json bench-out/qat.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

import nimbleml
from _harness import table
from nimbleml.bench.machine import machine_info
from nimbleml.bench.timer import TimingConfig

KINDS = [("int8", False, "dynamic per tensor"), ("int8", True, "dynamic per channel"),
         ("int8-static", True, "static QDQ per channel")]  # fmt: skip
FP32 = {"precision": "fp32", "dataloader": {}, "device": "cpu", "seed": 0}


class Surrogate(torch.nn.Module):
    def __init__(self, width: int = 64) -> None:
        super().__init__()
        nn = torch.nn
        self.net = nn.Sequential(nn.Linear(10, width), nn.ReLU(), nn.Linear(width, width),
                                 nn.ReLU(), nn.Linear(width, 1))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


def data(rows: int) -> tuple[Any, Any]:
    from sklearn.datasets import make_friedman1

    X, y = make_friedman1(rows + 5000, 10, noise=0.0, random_state=0)
    y = ((y - y.mean()) / y.std()).astype(np.float32)
    X = X.astype(np.float32)
    return (X[:rows], y[:rows]), (X[rows:], y[rows:])


def paired(a: Any, b: Any, X: np.ndarray, calls: int) -> float:
    """p50 of ``a`` over p50 of ``b``, their calls interleaved (ABAB...) so both see the same
    machine: this VM runs the same call at two speeds ~30% apart, minutes at a time."""
    ta, tb = [], []
    for _ in range(50):
        a.predict(X), b.predict(X)
    for _ in range(calls):
        t0 = time.perf_counter_ns()
        a.predict(X)
        t1 = time.perf_counter_ns()
        b.predict(X)
        t2 = time.perf_counter_ns()
        ta.append(t1 - t0)
        tb.append(t2 - t1)
    return statistics.median(ta) / statistics.median(tb)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="less data, fewer epochs")
    parser.add_argument("--max-drop", type=float, default=0.001, help="allowed R^2 drop")
    parser.add_argument("--epochs", type=int, default=5, help="QAT epochs")
    parser.add_argument("--width", type=int, default=256, help="hidden units per layer")
    parser.add_argument("--json", type=Path, default=Path("bench-out/qat.json"))
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    load = os.getloadavg()
    print(f"load average at start: {load[0]:.2f} on {os.cpu_count()} cores", flush=True)
    train, val = data(6000 if args.quick else 15000)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = nimbleml.train(Surrogate(args.width), train, epochs=30, lr=1e-2, batch_size=128,
                           scheduler="cosine", **FP32).model.eval()  # fmt: skip
    print(f"float model trained in {time.perf_counter() - t0:.1f} s", flush=True)
    common = {"metric": "r2", "example_inputs": val[0][:1], "calib": train[0][:512]}
    models: list[tuple[str, Any]] = [("original (torch)", model)]
    models.append(("onnx fp32", nimbleml.compress(model, quantize=None, val=val,
                                                  max_drop=None, **common)))  # fmt: skip
    qat_s: dict[str, float] = {}
    for kind, per_channel, label in KINDS:
        ptq = nimbleml.compress(model, quantize=kind, per_channel=per_channel, val=val,
                                max_drop=None, **common)  # fmt: skip
        t0 = time.perf_counter()
        res = nimbleml.qat(model, train, val, quantize=kind, per_channel=per_channel,
                           epochs=args.epochs, metric="r2", max_drop=args.max_drop,
                           calib=train[0][:512], **FP32)  # fmt: skip
        qat_s[label] = time.perf_counter() - t0
        print(res.table(), flush=True)
        models += [(f"PTQ {label}", ptq), (f"QAT {label}", res.package)]
    timing = TimingConfig(warmup_s=0.2, min_samples=300, time_budget_s=0.5 if args.quick else 1.0)
    p50s: dict[tuple[str, int], list[float]] = {}
    ns: dict[tuple[str, int], int] = {}
    metric: dict[str, float] = {}
    for rnd in range(2 if args.quick else 4):  # rounds in alternating order: drift cancels
        order = models if rnd % 2 == 0 else models[::-1]
        report = nimbleml.benchmark([m for _, m in order], val[0], (1, 32),
                                    names=[n for n, _ in order], val=val, metric="r2",
                                    timing=timing, measure_memory=False)  # fmt: skip
        for r in report.results:
            p50s.setdefault((r.name, r.batch_size), []).append(r.latency.p50_ms)
            ns[(r.name, r.batch_size)] = ns.get((r.name, r.batch_size), 0) + r.latency.n
            metric[r.name] = r.metric_value or 0.0
    p50 = {k: statistics.median(v) for k, v in p50s.items()}
    base = metric["original (torch)"]
    rows: list[list[object]] = []
    figures: dict[str, Any] = {}
    for name, m in models:
        drop = base - metric[name]
        fallback = getattr(m, "using_baseline", False)
        verdict = (
            "baseline"
            if name.startswith("original")
            else ("meets" if drop <= args.max_drop else "misses")
            + (" (runs the original)" if fallback else "")
        )
        rows.append([name, f"{metric[name]:.5f}", f"{drop:+.5f}", verdict,
                     f"{p50[(name, 1)]:.4f} (n={ns[(name, 1)]})",
                     f"{p50[(name, 32)]:.4f} (n={ns[(name, 32)]})"])  # fmt: skip
        figures[name] = {"r2": metric[name], "drop": drop, "fallback": fallback,
                         "p50_ms": {1: p50[(name, 1)], 32: p50[(name, 32)]},
                         "n": {1: ns[(name, 1)], 32: ns[(name, 32)]}}  # fmt: skip
    print()
    print(table(rows, ["model", "R^2", "drop", f"max_drop {args.max_drop:g}", "p50 ms bs1",
                       "p50 ms bs32"]))  # fmt: skip
    goals: list[list[object]] = []
    calls = 1000 if args.quick else 5000
    for _, _, label in KINDS:
        p, q = figures[f"PTQ {label}"], figures[f"QAT {label}"]
        goals.append([f"{label}: R^2 drop PTQ -> QAT", f"{p['drop']:+.5f} -> {q['drop']:+.5f}",
                      f"QAT <= {args.max_drop:g} where PTQ is not"])  # fmt: skip
        pkg = dict(models)
        same = [paired(pkg[f"QAT {label}"], pkg[f"PTQ {label}"], val[0][:b], calls)
                for b in (1, 32)]  # fmt: skip
        figures[f"QAT / PTQ {label}"] = same
        goals.append(["  QAT / PTQ p50, batch 1 / 32 (calls interleaved)",
                      f"{same[0]:.2f} / {same[1]:.2f}", "~1 (int8 speed)"])  # fmt: skip
        goals.append(["  QAT vs the original (torch), batch 1",
                      f"{figures['original (torch)']['p50_ms'][1] / q['p50_ms'][1]:.1f}x faster",
                      "report"])  # fmt: skip
        goals.append(["  QAT time (fine-tuning + package)", f"{qat_s[label]:.1f} s", "report"])
    print()
    print(table(goals, ["figure", "result", "goal"]))
    end = os.getloadavg()
    print(f"\nload average at start {load[0]:.2f}, at end {end[0]:.2f} ({os.cpu_count()} cores)")
    out = {"machine": machine_info().to_dict(), "quick": args.quick, "max_drop": args.max_drop,
           "epochs": args.epochs, "models": figures, "qat_seconds": qat_s,
           "load_average": [load, end]}  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2, default=str))
    print(f"written: {args.json}")


if __name__ == "__main__":
    main()
