"""Architecture search figures of issue 13, on the digits, this machine.

The search (NSGA-II over MLP depth 1-4 and width 8-512, --trials candidates, each judged on
its int8 package: accuracy measured on the package, p50 latency at batch 1 measured before
training) against a grid of hand-picked MLPs (depth 1-3 x width 16/64/256/512, 12 points)
trained and packaged the same way: how many grid points the front dominates or matches
(accuracy >= the grid point's - 0.5 point, latency <= its + 10%, the front's packages and the
grid's timed side by side, taking turns), and the latency the search recorded for each Pareto
point against the same package re-timed side by side at the end.

    python benchmarks/nas.py [--trials 12] [--epochs 10] [--json bench-out/nas.json]
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

sys.path.insert(0, str(Path(__file__).parent))

import nimbleml
from _harness import table
from nimbleml.bench.machine import machine_info
from nimbleml.demo import digits
from nimbleml.search.nas import _package_figures, _timed, build

GRID = [{"layers": d, "width": w} for d in (1, 2, 3) for w in (16, 64, 256, 512)]


def grid(train: Any, val: Any, epochs: int, folder: Path) -> list[dict[str, Any]]:
    import torch

    out = []
    for params in GRID:
        torch.manual_seed(0)
        model = build("mlp", params, 64, 10)
        model = nimbleml.train(model, train, val, epochs=epochs, metric="accuracy",
                               dataloader={}, precision="fp32", device="cpu").model  # fmt: skip
        figures = _package_figures(model, val[0], val[1], 1, "accuracy")
        path = folder / f"grid-{params['layers']}x{params['width']}.nimble"
        figures.pop("package").save(path)
        out.append({"params": params, "path": str(path), **figures})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--json", type=Path, default=Path("bench-out/nas.json"))
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    Xtr, Xva, ytr, yva = digits()
    train, val = (Xtr, ytr), (Xva, yva)
    load = os.getloadavg()
    print(f"load average at start: {load[0]:.2f} on {os.cpu_count()} cores", flush=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        front = nimbleml.search_architecture(train, val, family="mlp", n_trials=args.trials,
                                             epochs=args.epochs, out_dir=folder / "front",
                                             time_budget_s=None, precision="fp32",
                                             device="cpu")  # fmt: skip
        search_s = time.perf_counter() - t0
        print(front.table(), flush=True)
        t0 = time.perf_counter()
        points = grid(train, val, args.epochs, folder)
        grid_s = time.perf_counter() - t0
        # the front and the grid timed side by side, taking turns: the comparison of
        # architectures is not left to when each happened to be timed
        both = [nimbleml.load(c.path) for c in front.pareto] + [
            nimbleml.load(g["path"]) for g in points]  # fmt: skip
        together = [t["p50_ms"] for t in _timed(both, val[0], 1, windows=8)]
    ms_front, ms_grid = together[: len(front.pareto)], together[len(front.pareto) :]
    covered = [
        any(c.metric >= g["metric"] - 0.005 and ms <= gm * 1.10
            for c, ms in zip(front.pareto, ms_front, strict=True))
        for g, gm in zip(points, ms_grid, strict=True)
    ]  # fmt: skip
    drift = [abs(c.retimed_ms / c.latency_ms - 1) for c in front.pareto if c.retimed_ms]
    print("\ngrid (hand-picked):")
    for g, gm, ok in zip(points, ms_grid, covered, strict=True):
        print(f"  {g['params']}: accuracy {g['metric']:.4f}, p50 {gm:.4f} ms (timed beside the "
              f"front) {'(matched or dominated)' if ok else '(NOT covered by the front)'}")  # fmt: skip
    rows = [
        ["candidates trained / timed", f"{front.trials}", f"{len(points)}", "same budget"],
        ["wall time (s)", f"{search_s:.0f}", f"{grid_s:.0f}", "report"],
        ["best accuracy", f"{max(c.metric for c in front.pareto):.4f}",
         f"{max(g['metric'] for g in points):.4f}", "report"],
        ["fastest p50 at batch 1, timed side by side (ms)", f"{min(ms_front):.4f}",
         f"{min(ms_grid):.4f}", "report"],
        ["grid points the front dominates or matches", f"{sum(covered)} of {len(points)}", "",
         "all"],
        ["recorded vs re-timed p50, median |diff|", f"{100 * statistics.median(drift):.0f}%",
         "", "<= 10%"],
        ["  the largest", f"{100 * max(drift):.0f}%", "", "report"],
    ]  # fmt: skip
    print()
    print(table(rows, ["figure", "search", "grid", "goal"]))
    end = os.getloadavg()
    print(f"\nload average at start {load[0]:.2f}, at end {end[0]:.2f} ({os.cpu_count()} cores)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": machine_info().to_dict(),
                                     "front": front.to_dict(), "grid": points,
                                     "side_by_side_ms": {"front": ms_front, "grid": ms_grid},
                                     "covered": covered, "drift": drift}, indent=2,
                                    default=str))  # fmt: skip
    print(f"written: {args.json}")


if __name__ == "__main__":
    main()
