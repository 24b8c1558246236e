"""Batch prediction figure of issue 14: a file of --rows rows (64 float features, the digits
MLP's inputs) predicted by nimbleml.predict_file in chunks against package.predict on the whole
array in memory. Each runs in its own process, so each peak RSS is its own.

Goal: rows/s of the file >= 0.9x the in-memory call, at bounded memory (peak RSS stated).
With the `ray` extra, the same file on a local Ray instance (started first; its start time is
stated, not counted) with 2 actors and with 1, vs the local path in 1 process.

    python benchmarks/predict.py [--rows 1000000] [--json bench-out/predict.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from _harness import table
from nimbleml.bench.machine import machine_info

CHILD = r"""
import json, resource, sys, time, warnings
warnings.simplefilter("ignore")
import numpy as np, nimbleml
mode, pkg, data, out = sys.argv[1:5]
t0 = time.perf_counter()
if mode == "memory":
    import pyarrow.parquet as pq
    X = pq.read_table(data).to_pandas().to_numpy(np.float32)  # the whole array in memory
    loaded = time.perf_counter()
    y = nimbleml.load(pkg).predict(X)
    rows, seconds, load_s = len(X), time.perf_counter() - loaded, loaded - t0
else:
    ray, load_s = {}, 0.0
    if mode.startswith("ray"):  # a local Ray instance, started first and timed on its own
        import ray as ray_module
        ray_module.init(include_dashboard=False, log_to_driver=False)
        ray, load_s = {"ray": "auto", "workers": int(mode[3:])}, time.perf_counter() - t0
    res = nimbleml.predict_file(pkg, data, out, chunk_rows=int(sys.argv[5]),
                                batch_size=int(sys.argv[6]), **ray)
    rows, seconds = res.rows, res.seconds
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"rows": rows, "seconds": seconds, "load_s": load_s, "peak_mb": peak}))
"""


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median rows/s."""
    return sorted(runs, key=lambda r: r["rows"] / r["seconds"])[len(runs) // 2]


def child(*args: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True,
                          check=True)  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--chunk-rows", type=int, default=65536)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--json", type=Path, default=Path("bench-out/predict.json"))
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray runs")
    parser.add_argument("--rounds", type=int, default=3, help="memory/file pairs, alternated")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    import pandas as pd

    import nimbleml
    from nimbleml.demo import digits, train_mlp

    load = os.getloadavg()
    print(f"load average at start: {load[0]:.2f} on {os.cpu_count()} cores", flush=True)
    Xtr, Xva, ytr, yva = digits()
    model = train_mlp(Xtr, ytr, hidden=128, epochs=4)
    results: dict[str, Any] = {"machine": machine_info().to_dict(), "rows": args.rows}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        pkg = folder / "m.nimble"
        nimbleml.compress(model, quantize="int8", calib=Xtr[:256], val=(Xva, yva),
                          max_drop=None).save(pkg)  # fmt: skip
        rng = np.random.default_rng(0)
        X = Xtr[rng.integers(0, len(Xtr), args.rows)]
        data = folder / "rows.parquet"
        pd.DataFrame(X, columns=[f"p{i}" for i in range(64)]).to_parquet(data)
        csv = folder / "rows.csv"
        pd.DataFrame(X[: args.rows // 10], columns=[f"p{i}" for i in range(64)]).to_csv(
            csv, index=False
        )
        del X
        print(f"input: {data.stat().st_size / 2**20:.0f} MB parquet, {args.rows:,} rows",
              flush=True)  # fmt: skip
        # memory and file alternate, --rounds times: the machine's speed drifts by tens of
        # percent over seconds, so one pair can land on two speeds; the medians are compared
        pairs = []
        for _ in range(args.rounds):
            pairs.append((child("memory", str(pkg), str(data), ""),
                          child("file", str(pkg), str(data), str(folder / "out.parquet"),
                                str(args.chunk_rows), str(args.batch_size))))  # fmt: skip
        mem = median_run([m for m, _ in pairs])
        par = median_run([f for _, f in pairs])
        ratios = sorted((f["rows"] / f["seconds"]) / (m["rows"] / m["seconds"]) for m, f in pairs)
        small = child("file", str(pkg), str(csv), str(folder / "out.csv"), str(args.chunk_rows),
                      str(args.batch_size))  # fmt: skip
        ray_runs = {}
        if not args.no_ray and importlib.util.find_spec("ray") is not None:
            for mode in ("ray1", "ray2"):
                ray_runs[mode] = child(mode, str(pkg), str(data),
                                       str(folder / f"{mode}.parquet"), str(args.chunk_rows),
                                       str(args.batch_size))  # fmt: skip
    results.update(memory=mem, parquet=par, csv=small, ratios=ratios, **ray_runs)
    rate = {k: v["rows"] / v["seconds"] for k, v in (("memory", mem), ("parquet", par),
                                                      ("csv", small))}  # fmt: skip
    rows = [
        ["package.predict(X), the whole array in memory", f"{rate['memory']:,.0f}",
         f"{mem['peak_mb']:,.0f}", "", "baseline"],
        [f"predict_file parquet -> parquet ({args.chunk_rows:,}-row chunks)",
         f"{rate['parquet']:,.0f}", f"{par['peak_mb']:,.0f}",
         f"{rate['parquet'] / rate['memory']:.2f}x", ">= 0.9x"],
        [f"  each round's ratio, file / memory (n={args.rounds})", "", "",
         " ".join(f"{r:.2f}x" for r in ratios), ""],
        [f"predict_file csv -> csv ({args.rows // 10:,} rows)", f"{rate['csv']:,.0f}",
         f"{small['peak_mb']:,.0f}", f"{rate['csv'] / rate['memory']:.2f}x", "report"],
    ]  # fmt: skip
    for mode, label in (("ray1", "1 actor"), ("ray2", "2 actors")):
        if mode in ray_runs:
            r = ray_runs[mode]["rows"] / ray_runs[mode]["seconds"]
            rows.append([f"predict_file on Ray, {label} (Ray started in "
                         f"{ray_runs[mode]['load_s']:.0f} s before)", f"{r:,.0f}",
                         f"{ray_runs[mode]['peak_mb']:,.0f} (driver)",
                         f"{r / rate['memory']:.2f}x", f"{r / rate['parquet']:.2f}x of 1 process"])  # fmt: skip
    print(table(rows, ["run", "rows/s", "peak RSS MB", "vs memory", "goal"]))
    print(f"(the in-memory run also spent {mem['load_s']:.1f} s reading the file, not counted)")
    end = os.getloadavg()
    print(f"\nload average at start {load[0]:.2f}, at end {end[0]:.2f} ({os.cpu_count()} cores)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2, default=str))
    print(f"written: {args.json}")


if __name__ == "__main__":
    main()
