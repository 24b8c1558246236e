"""Tuning figures of issue 13: ASHA pruning against no pruning on the same budget.

The same study (TPE, the same seed, the same number of trials) over a digits MLP's learning rate,
width and weight decay, each trial a nimbleml.train run of up to --epochs epochs, once with
pruner=None and once with pruner="asha" (successive halving), in journal files of a temporary
folder: share of trials pruned, best validation accuracy, wall time; for several seeds of the
sampler, as one pair of studies says little (ASHA may drop the one trial that would have won).
Goal: the same best within 0.5 point in at most half the time (medians over the seeds).

    python benchmarks/tune.py [--trials 30] [--epochs 12] [--seeds 0,1,2,3,4] [--json ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
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


def build(hidden: int) -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden),
        torch.nn.ReLU(), torch.nn.Linear(hidden, 10),
    )  # fmt: skip


def run(pruner: str | None, trials: int, epochs: int, folder: str, seed: int) -> dict[str, Any]:
    from optuna.trial import TrialState

    Xtr, Xva, ytr, yva = digits()
    config = {"model": build, "train": (Xtr, ytr), "val": (Xva, yva), "epochs": epochs,
              "precision": "fp32", "dataloader": {}, "device": "cpu"}  # fmt: skip
    space = {"lr": ("log", 1e-5, 1e-1), "hidden": ("int", 16, 256),
             "weight_decay": ("log", 1e-6, 1e-1)}  # fmt: skip
    t0 = time.perf_counter()
    study = nimbleml.tune(config, space, n_trials=trials, pruner=pruner, seed=seed,
                          storage=os.path.join(folder, f"{pruner}-{seed}.journal"),
                          study_name=str(pruner))  # fmt: skip
    seconds = time.perf_counter() - t0
    states = [t.state for t in study.trials]
    return {
        "pruner": pruner, "trials": len(states), "seconds": seconds,
        "pruned": sum(s == TrialState.PRUNED for s in states) / len(states),
        "best": study.best_value, "best_params": study.best_params,
        "epochs_run": sum(len(t.intermediate_values) for t in study.trials),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seeds", default="0,1,2,3,4",
                        help="the TPE sampler's seeds: one pair of studies each")  # fmt: skip
    parser.add_argument("--json", type=Path, default=Path("bench-out/tune.json"))
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    seeds = [int(s) for s in args.seeds.split(",")]
    load = os.getloadavg()
    print(f"load average at start: {load[0]:.2f} on {os.cpu_count()} cores", flush=True)
    pairs = []
    with tempfile.TemporaryDirectory() as folder:
        for seed in seeds:
            plain = run(None, args.trials, args.epochs, folder, seed)
            asha = run("asha", args.trials, args.epochs, folder, seed)
            pairs.append((seed, plain, asha))
            print(f"seed {seed}: best {plain['best']:.4f} / {asha['best']:.4f}, "
                  f"{asha['pruned']:.0%} pruned, time {plain['seconds']:.1f} / "
                  f"{asha['seconds']:.1f} s ({asha['seconds'] / plain['seconds']:.2f}x)",
                  flush=True)  # fmt: skip
    gaps = [100 * (a["best"] - p["best"]) for _, p, a in pairs]
    times = [a["seconds"] / p["seconds"] for _, p, a in pairs]
    epochs = [a["epochs_run"] / p["epochs_run"] for _, p, a in pairs]
    med = statistics.median
    rows = [
        [f"trials per study (each up to {args.epochs} epochs)", args.trials, args.trials, "",
         "same budget"],
        ["studies (TPE seeds)", len(seeds), len(seeds), args.seeds, "report"],
        ["trials pruned (median)", "0%", f"{med(a['pruned'] for _, _, a in pairs):.0%}", "",
         "report"],
        ["epochs trained (median ratio)", "", "", f"{med(epochs):.2f}x", "report"],
        ["best validation accuracy (median)", f"{med(p['best'] for _, p, _ in pairs):.4f}",
         f"{med(a['best'] for _, _, a in pairs):.4f}", f"{med(gaps):+.2f} pt", "within 0.5 pt"],
        ["  the worst seed", "", "", f"{min(gaps):+.2f} pt", "report"],
        ["wall time (median ratio)", f"{med(p['seconds'] for _, p, _ in pairs):.1f} s",
         f"{med(a['seconds'] for _, _, a in pairs):.1f} s", f"{med(times):.2f}x", "<= 0.5x"],
        ["  per seed", "", "", " ".join(f"{t:.2f}" for t in times), "report"],
    ]  # fmt: skip
    print(table(rows, ["figure", "no pruning", "ASHA", "ASHA vs none", "goal"]))
    end = os.getloadavg()
    print(f"\nload average at start {load[0]:.2f}, at end {end[0]:.2f} ({os.cpu_count()} cores)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": machine_info().to_dict(), "seeds": seeds,
                                     "pairs": [{"seed": s, "none": p, "asha": a}
                                               for s, p, a in pairs],
                                     "load_average": [load, end]}, indent=2,
                                    default=str))  # fmt: skip
    print(f"written: {args.json}")


if __name__ == "__main__":
    main()
