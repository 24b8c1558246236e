"""Distillation figures of issue 13, measured side by side in one run on this machine.

1. students: a wide MLP teacher (64-1024-1024-1024-10) trained on the digits; a student
   shrunk from it (nimbleml.students.shrink, 1/16 wide, a third of the hidden layers: 64-64-10)
   trained without the teacher and distilled (T=4, alpha=0.7) on the same budget, and the
   distilled student optimized into a package (int8 where it verifies). The report: accuracy,
   p50 latency at batch 1 and 32 with n, size. Goal: the distilled package >= 10x faster than
   the teacher in torch at batch 1, within 1 point of the teacher's accuracy.
   Then the same teacher and student on only the first --scarce (300) labelled rows: a task
   where the student alone loses accuracy, to see whether the teacher's soft targets help.
2. cache: samples/s of distillation epochs with the teacher's outputs cached against the
   teacher run on every batch (goal >= 2x when the teacher dominates the step).

    python benchmarks/distill.py [--quick] [--json bench-out/distill.json]
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

import torch

sys.path.insert(0, str(Path(__file__).parent))

import nimbleml
from _harness import table
from nimbleml.bench.machine import machine_info
from nimbleml.demo import digits

FP32 = {"precision": "fp32", "dataloader": {}, "device": "cpu", "seed": 0}


def teacher_model() -> torch.nn.Module:
    nn = torch.nn
    return nn.Sequential(
        nn.Linear(64, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
        nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10),
    )  # fmt: skip


def students(train: Any, val: Any, quick: bool) -> tuple[dict[str, Any], Any]:
    torch.manual_seed(0)
    t0 = time.perf_counter()
    teacher = nimbleml.train(teacher_model(), train, val, epochs=10 if quick else 30, lr=1e-3,
                             **FP32).model  # fmt: skip
    teacher_s = time.perf_counter() - t0
    student = nimbleml.students.shrink(teacher, width=1 / 16, depth=1 / 3)
    t0 = time.perf_counter()
    res = nimbleml.distill(teacher, student, train, val, temperature=4.0, alpha=0.7,
                           epochs=15 if quick else 60, lr=3e-3, **FP32)  # fmt: skip
    distill_s = time.perf_counter() - t0
    found = res.optimize(max_drop=0.01, time_budget_s=120)
    report = res.report
    print(report.table(), flush=True)
    t, pkg = report.row("teacher"), report.rows[-1]
    return {
        "teacher_accuracy": t.metric,
        "report": report.to_dict(),
        "package_recipe": found.best.manifest.get("recipe"),
        "teacher_train_s": teacher_s,
        "distill_s": distill_s,
        "speedup_b1": t.p50_ms[1] / pkg.p50_ms[1],
        "speedup_b32": t.p50_ms[32] / pkg.p50_ms[32],
        "accuracy_gap": (t.metric or 0) - (pkg.metric or 0),
        "kd_minus_alone": (report.row("student (distilled)").metric or 0)
        - (report.row("student (no teacher)").metric or 0),
    }, teacher


def scarce(teacher: Any, train: Any, val: Any, rows: int, quick: bool) -> dict[str, Any]:
    """The same teacher, the student trained on only the first ``rows`` labelled rows (the
    teacher saw them all): where the student alone loses accuracy, does distillation help?"""
    X, y = train
    torch.manual_seed(0)
    student = nimbleml.students.shrink(teacher, width=1 / 16, depth=1 / 3)
    res = nimbleml.distill(teacher, student, (X[:rows], y[:rows]), val, temperature=4.0,
                           alpha=0.9, epochs=30 if quick else 100, lr=3e-3, **FP32)  # fmt: skip
    print(res.report.table(), flush=True)
    kd, alone = res.report.row("student (distilled)"), res.report.row("student (no teacher)")
    return {
        "rows": rows,
        "report": res.report.to_dict(),
        "kd_minus_alone": (kd.metric or 0) - (alone.metric or 0),
        "teacher_minus_alone": (res.report.row("teacher").metric or 0) - (alone.metric or 0),
    }


def cache(train: Any, val: Any, quick: bool) -> dict[str, Any]:
    torch.manual_seed(0)
    teacher = teacher_model()  # untrained is as slow as trained: the step cost is measured
    epochs = 2 if quick else 4
    runs: dict[str, list[float]] = {"cached": [], "online": []}
    for r in range(2 if quick else 3):  # alternating order
        for mode in ("cached", "online")[:: 1 if r % 2 == 0 else -1]:
            torch.manual_seed(0)
            student = nimbleml.students.shrink(teacher, width=1 / 16, depth=1 / 3)
            res = nimbleml.distill(teacher, student, train, val, epochs=epochs, baseline=False,
                                   compare_models=False, cache_teacher=mode == "cached",
                                   **FP32)  # fmt: skip
            runs[mode].append(statistics.median(h["samples_per_s"] for h in res.history[1:]))
    sps = {k: statistics.median(v) for k, v in runs.items()}
    return {"samples_per_s": sps, "ratio": sps["cached"] / sps["online"], "runs": runs,
            "epochs_per_run": epochs}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer epochs and repetitions")
    parser.add_argument("--only", nargs="+", choices=["students", "cache"],
                        default=["students", "cache"])  # fmt: skip
    parser.add_argument("--scarce", type=int, default=300,
                        help="also distil on only this many labelled rows (0: skip)")  # fmt: skip
    parser.add_argument("--json", type=Path, default=Path("bench-out/distill.json"))
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    Xtr, Xva, ytr, yva = digits()
    train, val = (Xtr, ytr), (Xva, yva)
    load = os.getloadavg()
    print(f"load average at start: {load[0]:.2f} on {os.cpu_count()} cores", flush=True)
    results: dict[str, Any] = {"machine": machine_info().to_dict(), "quick": args.quick}
    rows: list[list[object]] = []
    if "students" in args.only:
        s, teacher = students(train, val, args.quick)
        results["students"] = s
        rep = s["report"]
        metric = {r["name"]: r["metric"] for r in rep["rows"]}
        rows += [
            ["distilled package vs teacher (torch), p50 batch 1", f"{s['speedup_b1']:.1f}x",
             ">= 10x"],
            ["  the same at batch 32", f"{s['speedup_b32']:.1f}x", "report"],
            ["accuracy: teacher - distilled package", f"{100 * s['accuracy_gap']:+.2f} pt",
             "<= 1 pt"],
            ["accuracy: distilled - student alone", f"{100 * s['kd_minus_alone']:+.2f} pt",
             "report"],
            ["  teacher / alone / distilled / package", " / ".join(
                f"{v:.4f}" for v in metric.values() if v is not None), "report"],
        ]  # fmt: skip
    if "students" in args.only and args.scarce:
        sc = results["scarce"] = scarce(teacher, train, val, args.scarce, args.quick)
        rows += [
            [f"{args.scarce} labelled rows: teacher - student alone",
             f"{100 * sc['teacher_minus_alone']:+.2f} pt", "report"],
            [f"{args.scarce} labelled rows: distilled - student alone",
             f"{100 * sc['kd_minus_alone']:+.2f} pt", "report"],
        ]  # fmt: skip
    if "cache" in args.only:
        c = results["cache"] = cache(train, val, args.quick)
        rows.append(["distillation samples/s, cached teacher vs online",
                     f"{c['ratio']:.1f}x ({c['samples_per_s']['cached']:.0f} vs "
                     f"{c['samples_per_s']['online']:.0f})", ">= 2x"])  # fmt: skip
    print()
    print(table(rows, ["figure", "result", "goal"]))
    end = os.getloadavg()
    print(f"\nload average at start {load[0]:.2f}, at end {end[0]:.2f} ({os.cpu_count()} cores)")
    results["load_average"] = [load, end]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2, default=str))
    print(f"written: {args.json}")


if __name__ == "__main__":
    main()
