"""Tuning figures of issue 13: ASHA pruning against no pruning on the same budget.

The same study (TPE, seed 0, the same number of trials) over a digits MLP's learning rate,
width and weight decay, each trial a nimbleml.train run of up to --epochs epochs, once with
pruner=None and once with pruner="asha" (successive halving), in journal files of a temporary
folder: share of trials pruned, best validation accuracy, wall time. Goal: the same best
within 0.5 point in at most half the time.

    python benchmarks/tune.py [--trials 30] [--epochs 12] [--json bench-out/tune.json]
"""

from __future__ import annotations

import argparse
import json
import os
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


def run(pruner: str | None, trials: int, epochs: int, folder: str) -> dict[str, Any]:
    from optuna.trial import TrialState

    Xtr, Xva, ytr, yva = digits()
    config = {"model": build, "train": (Xtr, ytr), "val": (Xva, yva), "epochs": epochs,
              "precision": "fp32", "dataloader": {}, "device": "cpu"}  # fmt: skip
    space = {"lr": ("log", 1e-5, 1e-1), "hidden": ("int", 16, 256),
             "weight_decay": ("log", 1e-6, 1e-1)}  # fmt: skip
    t0 = time.perf_counter()
    study = nimbleml.tune(config, space, n_trials=trials, pruner=pruner, seed=0,
                          storage=os.path.join(folder, f"{pruner}.journal"),
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
    parser.add_argument("--json", type=Path, default=Path("bench-out/tune.json"))
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    load = os.getloadavg()
    print(f"load average at start: {load[0]:.2f} on {os.cpu_count()} cores", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        plain = run(None, args.trials, args.epochs, folder)
        asha = run("asha", args.trials, args.epochs, folder)
    rows = [
        [f"trials (each up to {args.epochs} epochs)", plain["trials"], asha["trials"],
         "", "same budget"],
        ["trials pruned", f"{plain['pruned']:.0%}", f"{asha['pruned']:.0%}", "", "report"],
        ["epochs trained in all", plain["epochs_run"], asha["epochs_run"],
         f"{asha['epochs_run'] / plain['epochs_run']:.2f}x", "report"],
        ["best validation accuracy", f"{plain['best']:.4f}", f"{asha['best']:.4f}",
         f"{100 * (asha['best'] - plain['best']):+.2f} pt", "within 0.5 pt"],
        ["wall time (s)", f"{plain['seconds']:.1f}", f"{asha['seconds']:.1f}",
         f"{asha['seconds'] / plain['seconds']:.2f}x", "<= 0.5x"],
    ]  # fmt: skip
    print(table(rows, ["figure", "no pruning", "ASHA", "ASHA vs none", "goal"]))
    end = os.getloadavg()
    print(f"\nload average at start {load[0]:.2f}, at end {end[0]:.2f} ({os.cpu_count()} cores)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": machine_info().to_dict(), "none": plain,
                                     "asha": asha, "load_average": [load, end]}, indent=2,
                                    default=str))  # fmt: skip
    print(f"written: {args.json}")


if __name__ == "__main__":
    main()
