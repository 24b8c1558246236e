"""Synthetic reports in the formats nimbleml writes: a 2-core x86 machine without a GPU (as
this one), and one with a T4 the figures ran on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from nimbleml.cost import serve_report


def machine(cores: int = 2, gpu: str | None = None, cpu: str = "AMD EPYC 7B13") -> dict[str, Any]:
    return {
        "cpu": cpu, "cpu_flags": ["avx", "avx2", "fma"], "logical_cores": cores,
        "physical_cores": max(1, cores // 2), "memory_gb": 8.0, "os": "Linux 6.1",
        "gpus": [{"name": gpu, "memory_mb": 15360.0, "driver": "550"}] if gpu else [],
        "libraries": {"nimbleml": "0.1.0", **({"onnxruntime-gpu": "1.20"} if gpu else {})},
    }  # fmt: skip


def serve(iris=(2400.0, 18.2), mlp=(640.0, 21.5), mlp1=(150.0, 24.0), **kw: Any) -> dict:
    models = [
        {"name": "iris", "capacity_rps": iris[0], "p99_ms": iris[1], "p50_ms": 2.0,
         "max_batch_size": 32, "requests": 7200},
        {"name": "mlp", "capacity_rps": mlp[0], "p99_ms": mlp[1], "p50_ms": 9.0,
         "max_batch_size": 16, "requests": 1920},
        {"name": "mlp", "capacity_rps": mlp1[0], "p99_ms": mlp1[1], "p50_ms": 8.0,
         "max_batch_size": 1, "requests": 450},
    ]  # fmt: skip
    return serve_report(models, 25.0, "Poisson arrivals, open loop", machine=machine(**kw))


def bench(gpu: str | None = None, n: int = 2000) -> dict[str, Any]:
    """Two models at batch 1 and 32: (p99 ms, samples/s)."""
    figures = {("model.ts", 1): (0.9, 1500.0), ("model.ts", 32): (12.0, 9000.0),
               ("model.nimble", 1): (0.4, 3000.0), ("model.nimble", 32): (6.0, 16000.0)}  # fmt: skip
    results = [
        {"name": name, "framework": "onnx", "batch_size": b,
         "latency_ms": {"n": n, "p50_ms": p99 / 2, "p99_ms": p99,
                        "unreliable": [] if n >= 1000 else ["p99"]},
         "performance": {"samples_per_second": rate}, "metric": {"name": None, "value": None}}
        for (name, b), (p99, rate) in figures.items()
    ]  # fmt: skip
    return {"schema": 1, "created_at": "2026-12-01T00:00:00+00:00", "baseline": "model.ts",
            "machine": machine(gpu=gpu), "results": results}  # fmt: skip


def train(device: str = "cpu", gpu: str | None = None) -> dict[str, Any]:
    history = [{"epoch": e, "train_loss": 1.0 / e, "samples_per_s": 5000.0, "seconds": 360.0}
               for e in (1, 2, 3)]  # fmt: skip
    return {"precision": {"chosen": "fp32", "reason": "cpu"}, "loss": "cross_entropy",
            "device": device, "config": {}, "step_time": {"n": 0}, "history": history,
            "machine": machine(gpu=gpu)}  # fmt: skip


@pytest.fixture
def reports(tmp_path: Path) -> Path:
    """serve.json, bench.json, train/report.json and an old prices CSV in a folder."""
    (tmp_path / "serve.json").write_text(json.dumps(serve()))
    (tmp_path / "bench.json").write_text(json.dumps(bench()))
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "report.json").write_text(json.dumps(train()))
    return tmp_path
