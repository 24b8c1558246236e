"""Distillation figures of issues 13 and 24, measured side by side in one run on this machine.

1. students: a wide MLP teacher (64-1024-1024-1024-10) trained once on the digits; per seed
   (--seeds, 3) a student shrunk from it (nimbleml.students.shrink, 1/32 wide, a third of the
   hidden layers: 64-32-10) distilled with nimbleml.distill's defaults (the temperature/alpha
   search; --views to try views) beside the same student trained alone with the same options
   (--epochs 40, --lr 0.003), and the first seed's returned
   student optimized into a package (int8 where it verifies). Goals (means over the seeds):
   distilled >= alone + 1 point, within 1.5 points of the teacher; the package >= 10x faster
   than the teacher in torch at batch 1. The time distillation takes (with its search)
   against the alone run is stated.
   Then the first --scarce (300) labelled rows, the rest of the training rows given as
   unlabeled= (the teacher labels them): goal distilled >= alone + 2 points.
2. cache: samples/s of distillation epochs with the teacher's outputs cached against the
   teacher run on every batch (goal >= 2x when the teacher dominates the step).

    python benchmarks/distill.py [--quick] [--seeds 0 1 2] [--json bench-out/distill.json]
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


def _student(teacher: Any) -> torch.nn.Module:
    return nimbleml.students.shrink(teacher, width=1 / 32, depth=1 / 3)  # 64-32-10


def _accuracy(history: list[dict[str, Any]] | None) -> float:
    return float(history[-1]["val_metric"]) if history else float("nan")


def students(train: Any, val: Any, quick: bool, seeds: list[int],
             options: dict[str, Any]) -> tuple[dict[str, Any], Any]:  # fmt: skip
    """The teacher (trained once), then per seed the 64-32-10 student distilled with the
    defaults (the T/alpha search) beside the same student trained alone; the first
    seed's returned student optimized into a package and timed against the teacher."""
    torch.manual_seed(0)
    t0 = time.perf_counter()
    teacher = nimbleml.train(teacher_model(), train, val, epochs=10 if quick else 30, lr=1e-3,
                             **FP32).model  # fmt: skip
    teacher_s = time.perf_counter() - t0
    runs, found, report = [], None, None
    for seed in seeds:
        torch.manual_seed(seed)
        res = nimbleml.distill(teacher, _student(teacher), train, val, compare_models=seed ==
                               seeds[0], **{**FP32, "seed": seed, **options})  # fmt: skip
        runs.append(_run(res, seed))
        print(runs[-1], flush=True)
        if seed == seeds[0]:
            found = res.optimize(max_drop=0.01, time_budget_s=120)
            report = res.report
            print(report.table(), flush=True)
    assert report is not None and found is not None
    t, pkg = report.row("teacher"), report.rows[-1]
    return {
        "teacher_accuracy": t.metric,
        "teacher_train_s": teacher_s,
        "runs": runs,
        **_means(runs, t.metric or 0.0),
        "report": report.to_dict(),
        "package_recipe": found.best.manifest.get("recipe"),
        "package_accuracy": pkg.metric,
        "speedup_b1": t.p50_ms[1] / pkg.p50_ms[1],
        "speedup_b32": t.p50_ms[32] / pkg.p50_ms[32],
    }, teacher


def _run(res: Any, seed: int) -> dict[str, Any]:
    sec = res.report.seconds
    return {
        "seed": seed,
        "distilled": _accuracy(res.history),
        "alone": _accuracy(res.baseline_history),
        "returned": res.returned,
        "temperature": res.report.temperature,
        "alpha": res.report.alpha,
        "views": res.report.views,
        "seconds": sec,
        "time_ratio": (sec["distilled"] + sec["search"]) / sec["alone"] if sec["alone"] else 0,
    }


def _means(runs: list[dict[str, Any]], teacher: float) -> dict[str, float]:
    kd = statistics.mean(r["distilled"] for r in runs)
    alone = statistics.mean(r["alone"] for r in runs)
    return {"distilled_mean": kd, "alone_mean": alone, "kd_minus_alone": kd - alone,
            "teacher_minus_distilled": teacher - kd,
            "time_ratio_mean": statistics.mean(r["time_ratio"] for r in runs)}  # fmt: skip


def scarce(teacher: Any, train: Any, val: Any, rows: int, seeds: list[int],
           options: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """The same teacher; the student given only the first ``rows`` labelled rows and the rest
    of the training rows as unlabeled= (the teacher labels them); the student alone has the
    ``rows`` labelled rows only."""
    X, y = train
    runs = []
    for seed in seeds:
        torch.manual_seed(seed)
        res = nimbleml.distill(teacher, _student(teacher), (X[:rows], y[:rows]), val,
                               unlabeled=X[rows:], compare_models=False,
                               **{**FP32, "seed": seed, **options})  # fmt: skip
        runs.append({**_run(res, seed), "unlabeled": res.report.unlabeled})
        print(runs[-1], flush=True)
    teacher_acc = float((teacher(torch.from_numpy(val[0])).argmax(1).numpy() == val[1]).mean())
    return {"rows": rows, "unlabeled": runs[0]["unlabeled"], "runs": runs,
            **_means(runs, teacher_acc)}  # fmt: skip


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
                                   views=None, temperature=2.0, alpha=0.5, **FP32)  # fmt: skip
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
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=40, help="of each student run")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--views", default=None, help="distill's views= (default: its own)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: runs beside others' jobs do not fight)")  # fmt: skip
    parser.add_argument("--json", type=Path, default=Path("bench-out/distill.json"))
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)
    Xtr, Xva, ytr, yva = digits()
    train, val = (Xtr, ytr), (Xva, yva)
    load = os.getloadavg()
    print(f"load average at start: {load[0]:.2f} on {os.cpu_count()} cores", flush=True)
    results: dict[str, Any] = {"machine": machine_info().to_dict(), "quick": args.quick}
    rows: list[list[object]] = []
    seeds = args.seeds[:1] if args.quick else args.seeds
    options: dict[str, Any] = {"epochs": 10 if args.quick else args.epochs, "lr": args.lr}
    if args.views is not None:
        options["views"] = args.views
    results["options"] = {**options, "seeds": seeds}
    if "students" in args.only:
        s, teacher = students(train, val, args.quick, seeds, options)
        results["students"] = s
        n = len(seeds)
        rows += [
            [f"64-32-10: distilled - alone (mean of {n})", f"{100 * s['kd_minus_alone']:+.2f} pt",
             ">= +1 pt"],
            ["  distilled / alone (means), teacher", f"{s['distilled_mean']:.4f} / "
             f"{s['alone_mean']:.4f}, {s['teacher_accuracy']:.4f}", "report"],
            ["  teacher - distilled (mean)", f"{100 * s['teacher_minus_distilled']:+.2f} pt",
             "<= 1.5 pt"],
            ["  distillation time (search included) / alone", f"{s['time_ratio_mean']:.1f}x",
             "report"],
            ["package vs teacher (torch), p50 batch 1", f"{s['speedup_b1']:.1f}x", ">= 10x"],
            ["  the same at batch 32", f"{s['speedup_b32']:.1f}x", "report"],
            ["  package accuracy", f"{s['package_accuracy']:.4f}", "report"],
        ]  # fmt: skip
    if "students" in args.only and args.scarce:
        sc = results["scarce"] = scarce(teacher, train, val, args.scarce, seeds, options)
        rows += [
            [f"{args.scarce} labelled + {sc['unlabeled']} unlabeled: distilled - alone",
             f"{100 * sc['kd_minus_alone']:+.2f} pt", ">= +2 pt"],
            ["  distilled / alone (means)", f"{sc['distilled_mean']:.4f} / "
             f"{sc['alone_mean']:.4f}", "report"],
            ["  distillation time (search included) / alone", f"{sc['time_ratio_mean']:.1f}x",
             "report"],
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
