"""Figures for the foundation issue, measured side by side in one run on this machine.

    .venv/bin/python benchmarks/foundation.py [--quick] [--json bench-out/foundation.json]

1. torch MLP 64→512→512→10 on digits, batch 1: int8 package vs torch eager fp32
   (goal: ≥ 3× faster, ≥ 3.9× smaller, accuracy drop ≤ 1 point).
2. scikit-learn StandardScaler+LogisticRegression and RandomForest(100), one row:
   package vs predict_proba (goals: ≥ 30× and ≥ 300×), label agreement on the test split.
3. TransformerEncoder (2 layers, padded batches with a mask): int8 cosine to the
   original (goal ≥ 0.99) and speedup.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import torch
from sklearn.ensemble import RandomForestClassifier

sys.path.insert(0, str(Path(__file__).parent))
# appended, not first: tests/profile/ would shadow the standard library's profile module,
# which torch.export imports (the dynamo exporter then failed with "profile has no run")
sys.path.append(str(Path(__file__).parents[1] / "tests"))

import nimbleml
from _harness import side_by_side, table
from conftest import make_encoder, token_batch
from nimbleml.bench.machine import machine_info
from nimbleml.demo import digits, train_mlp, train_pipeline


def eager(module, x):
    def call():
        with torch.inference_mode():
            return module(x)

    return call


def eager_kwargs(module, feeds):
    def call():
        with torch.inference_mode():
            return module(**feeds)

    return call


def mlp_figures(rounds: int) -> dict:
    Xtr, Xte, ytr, yte = digits()
    model = train_mlp(Xtr, ytr, hidden=512, epochs=30)
    pkg = nimbleml.compress(model, quantize="int8", val=(Xte, yte), max_drop=0.01)
    x = Xte[:1]
    t = side_by_side(
        {
            "torch eager fp32": eager(model, torch.from_numpy(x)),
            "int8 package": lambda: pkg.predict(x),
        },
        rounds=rounds,
    )
    m = pkg.manifest
    state = sum(p.numel() * p.element_size() for p in model.state_dict().values())
    return {
        "latency": t,
        "speedup": t["torch eager fp32"]["p50_ms"] / t["int8 package"]["p50_ms"],
        "size_ratio_vs_fp32_onnx": m["baseline"]["size_bytes"] / m["model"]["size_bytes"],
        "size_ratio_vs_torch_weights": state / m["model"]["size_bytes"],
        "accuracy_baseline": m["validation"]["baseline"],
        "accuracy_package": m["validation"]["package"],
        "accuracy_drop_points": 100 * m["validation"]["drop"],
        "fallback": m["fallback"],
    }


def sklearn_figures(rounds: int) -> dict:
    Xtr, Xte, ytr, yte = digits()
    out = {}
    for name, est in (
        ("StandardScaler+LogisticRegression", train_pipeline(Xtr, ytr)),
        ("RandomForest(100)", RandomForestClassifier(100, random_state=0).fit(Xtr, ytr)),
    ):
        pkg = nimbleml.compress(est, quantize=None, val=(Xte, yte))
        x = Xte[:1]
        t = side_by_side(
            {"predict_proba": partial(est.predict_proba, x), "package": partial(pkg.run, x)},
            rounds=rounds,
            calls=50 if "Forest" in name else 200,
        )
        out[name] = {
            "latency": t,
            "speedup": t["predict_proba"]["p50_ms"] / t["package"]["p50_ms"],
            "label_agreement": float(np.mean(pkg.predict(Xte) == est.predict(Xte))),
        }
    return out


def encoder_figures(rounds: int) -> dict:
    torch.manual_seed(0)
    model = make_encoder(vocab=1000, dim=64, layers=2, classes=4)
    val = token_batch(n=256, length=32, vocab=1000, seed=1)
    pkg = nimbleml.compress(model, quantize="int8", val=(val, None), metric="cosine")
    out = {
        "cosine": pkg.manifest["validation"]["package"],
        "converter": pkg.manifest["conversion"]["converter"],
    }
    for bs in (1, 8):
        feeds = {k: v[:bs] for k, v in val.items()}
        tensors = {k: torch.from_numpy(v) for k, v in feeds.items()}
        t = side_by_side(
            {
                "torch eager fp32": eager_kwargs(model, tensors),
                "int8 package": lambda f=feeds: pkg.predict(f),
            },
            rounds=rounds,
            calls=100,
        )
        out[f"batch_{bs}"] = {
            "latency": t,
            "speedup": t["torch eager fp32"]["p50_ms"] / t["int8 package"]["p50_ms"],
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--json", type=Path, default=Path("bench-out/foundation.json"))
    args = parser.parse_args()
    rounds = 5 if args.quick else 15
    warnings.simplefilter("ignore")
    results = {
        "machine": machine_info().to_dict(),
        "mlp": mlp_figures(rounds),
        "sklearn": sklearn_figures(rounds),
        "encoder": encoder_figures(rounds),
    }
    mlp, enc = results["mlp"], results["encoder"]
    rows = [
        ["MLP int8 vs torch eager, batch 1", f"{mlp['latency']['torch eager fp32']['p50_ms']:.4f}",
         f"{mlp['latency']['int8 package']['p50_ms']:.4f}", f"{mlp['speedup']:.2f}x", ">= 3x"],
        ["MLP size (fp32 ONNX / int8)", "", "", f"{mlp['size_ratio_vs_fp32_onnx']:.2f}x", ">= 3.9x"],
        ["MLP accuracy drop (points)", f"{mlp['accuracy_baseline']:.4f}", f"{mlp['accuracy_package']:.4f}",
         f"{mlp['accuracy_drop_points']:.2f}", "<= 1"],
    ]  # fmt: skip
    for name, r in results["sklearn"].items():
        goal = ">= 300x" if "Forest" in name else ">= 30x"
        rows.append([f"{name} vs predict_proba, 1 row", f"{r['latency']['predict_proba']['p50_ms']:.4f}",
                     f"{r['latency']['package']['p50_ms']:.4f}", f"{r['speedup']:.1f}x", goal])  # fmt: skip
        rows.append(
            [f"{name} label agreement", "", "", f"{100 * r['label_agreement']:.1f}%", "100%"]
        )
    rows.append(["Encoder int8 cosine to original", "", "", f"{enc['cosine']:.5f}", ">= 0.99"])
    for bs in (1, 8):
        e = enc[f"batch_{bs}"]
        rows.append([f"Encoder int8 vs torch eager, batch {bs}", f"{e['latency']['torch eager fp32']['p50_ms']:.4f}",
                     f"{e['latency']['int8 package']['p50_ms']:.4f}", f"{e['speedup']:.2f}x", "report"])  # fmt: skip
    print(table(rows, ["figure", "baseline p50 ms", "package p50 ms", "result", "goal"]))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2, default=str))
    print(f"\nwritten: {args.json}")


if __name__ == "__main__":
    main()
