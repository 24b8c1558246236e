"""Profile figures of issue 14: how much of a measured run the profiler's per-node kernel
times account for (coverage; goal >= 90% at batch 32), and what profiling costs (overhead),
on a 64->1024->1024->10 MLP as a float ONNX model, as an int8 package, and as a PyTorch
module, at batch 1 and 32, all in one run.

    .venv/bin/python benchmarks/profiling.py [--quick] [--json bench-out/profile.json]

(Not benchmarks/profile.py: a script there would shadow the standard library's `profile`
module, which cProfile imports, for every benchmark run from this folder.)

coverage: summed kernel (op self) time / wall time of the same profiled runs (means);
e2e p50: median run without the profiler; overhead: profiled median / e2e median - 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _harness import table


def main() -> None:
    args = _args()
    load = os.getloadavg()
    print(f"load average at start: {load[0]:.2f} on {os.cpu_count()} cores", flush=True)
    import numpy as np
    import torch

    import nimbleml
    from nimbleml.bench.machine import machine_info
    from nimbleml.demo import digits
    from nimbleml.models.torch_model import TorchModel

    Xtr, Xte, _, yte = digits()
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(64, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 1024),
        torch.nn.ReLU(), torch.nn.Linear(1024, 10),
    ).eval()  # fmt: skip
    runs = 30 if args.quick else 200
    rows, results = [], []
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "mlp.onnx"
        TorchModel(net, Xte[:8]).to_onnx({"input": Xte[:8]}, onnx_path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pkg = nimbleml.compress(net, quantize="int8", calib=Xtr[:256], val=(Xte, yte),
                                    max_drop=None, benchmark_time_s=0.05)  # fmt: skip
        pkg_path = pkg.save(Path(tmp) / "mlp-int8.nimble")
        for label, model in (("onnx float", onnx_path), ("int8 package", pkg_path),
                             ("torch module", net)):  # fmt: skip
            report = nimbleml.profile(model, Xte, batch_sizes=(1, 32), runs=runs, warmup=10)
            for b in report.batches:
                rows.append([label, b.batch_size, b.runs, f"{b.latency_ms:.4f}",
                             f"{b.profiled_ms:.4f}", f"{b.wall_ms:.4f}", f"{b.op_ms:.4f}",
                             f"{100 * b.coverage:.1f}%",
                             f"{100 * b.overhead:+.1f}%",
                             "-" if b.batch_size != 32 else ("yes" if b.coverage >= 0.9 else "NO")])  # fmt: skip
                results.append({"model": label, "batch_size": b.batch_size, "runs": b.runs,
                                "e2e_ms": b.latency_ms, "profiled_ms": b.profiled_ms,
                                "profiled_mean_ms": b.wall_ms,
                                "kernel_ms": b.op_ms, "coverage": b.coverage,
                                "overhead": b.overhead})  # fmt: skip
    header = ["model", "batch", "runs", "e2e p50 ms", "profiled p50", "profiled mean",
              "kernels mean", "coverage", "overhead", "goal met"]  # fmt: skip
    print(table(rows, header))
    print("coverage: kernel (op self) time / wall time of the same profiled runs; goal >= 90% "
          "at batch 32. overhead: profiled median / unprofiled median - 1 (same run count).")  # fmt: skip
    print(
        f"machine: {machine_info().cpu}, {torch.get_num_threads()} torch threads, "
        f"numpy {np.__version__}"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"results": results, "runs": runs,
                                         "machine": machine_info().to_dict()}, indent=2))  # fmt: skip


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="30 profiled runs, not 200")
    parser.add_argument("--json", type=Path, default=Path("bench-out/profile.json"))
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    return args


if __name__ == "__main__":
    main()
