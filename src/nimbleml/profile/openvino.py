"""OpenVINO models and packages under OpenVINO's own per-layer counters.

Each batch size gets a compilation of the model fixed to that shape with ``PERF_COUNT``
on, and otherwise the very properties the model runs with (``OpenVinoModel.config``: its
threads, precision hint, latency hint, pinning). After ``warmup`` untimed runs, each
profiled run is one ``infer`` on it, timed; then ``get_profiling_info()`` (outside the
timing) gives every executed layer's real time, its layer type and the kernel that ran it
(``exec_type``, e.g. ``brgemm_avx512_I8``). The counters describe the last run only, so
they are read after each run and summed. Layer shapes come from the compiled model's
runtime graph (the layers OpenVINO fused are one layer there, named after the first).

A run is split into layers (the summed counters), OpenVINO between layers (its own
``latency`` of the request minus the layers) and outside OpenVINO (the Python call,
input and output copies: the wall time minus that latency).
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from ..inputs import Feeds
from ..models.openvino_model import OpenVinoModel, low_level_infer
from .common import TOP_NODES, Settings, batches_of, median_ms, shape_text, timed
from .report import BatchProfile, NodeStat, ProfileReport, op_table

# layer types that do the heavy arithmetic; in an int8 model, these on a float kernel
# stayed float
FLOAT_COMPUTE = frozenset({
    "FullyConnected", "MatMul", "Convolution", "GroupConvolution", "Deconvolution",
    "FullyConnectedQuantizedLegacy", "FullyConnectedCompressed", "ScaledDotProductAttention",
})  # fmt: skip
_INT_KERNELS = ("_i8", "_u8", "_i4", "_u4")


def profile_openvino(model: OpenVinoModel, feeds: Feeds, sizes: list[int], settings: Settings,
                     name: str) -> ProfileReport:  # fmt: skip
    """Profile ``model`` at each batch size (``feeds``: checked inputs, any number of rows)."""
    batches, traces, quantized = [], {}, set()
    for size in sizes:
        batch, trace, seen = _profile_batch(model, feeds, size, settings)
        quantized |= seen
        traces[batch.trace or ""] = trace
        batches.append(batch)
    import openvino

    cfg = model.config()
    runtime = {
        "engine": f"openvino {str(openvino.__version__).split('-')[0]}",
        "device": "CPU",
        "threads": cfg.get("INFERENCE_NUM_THREADS") or len(os.sched_getaffinity(0)),
        "precision": cfg["INFERENCE_PRECISION_HINT"],
        "hint": cfg["PERFORMANCE_HINT"],
        "pinning": cfg.get("ENABLE_CPU_PINNING", True),
    }
    return ProfileReport(model=name, kind="openvino", runtime=runtime, batches=batches,
                         quantized_ops=sorted(quantized), traces=traces,
                         notes=_notes(settings))  # fmt: skip


def _notes(settings: Settings) -> list[str]:
    return [
        f"OpenVINO's per-layer counters (PERF_COUNT) on a compilation fixed to each batch "
        f"size, read after every profiled run; {settings.warmup} warm-up run(s) before, not "
        "counted",
        "latency and samples/s: as many runs of the model's own call path (no counters), "
        "just before the profiled ones; profiling overhead = profiled / unprofiled - 1 "
        "(medians)",
        "coverage: summed layer time / wall time of the same profiled runs (means); the rest "
        "is OpenVINO between layers (its request latency minus the layers) and outside it "
        "(the Python call, input and output copies)",
        "a layer is what OpenVINO executed: fused operations count as one layer (named "
        "after the first); provider = the kernel that ran it; int8 = an i8/u8 kernel",
        "the traces lay each run's layers end to end in execution order: OpenVINO reports "
        "how long a layer took, not when it started",
        "FLOPs from the runtime graph's shapes (fully connected, matrix products, convolutions)",
    ]


def _profile_batch(model: OpenVinoModel, feeds: Feeds, size: int,
                   settings: Settings) -> tuple[BatchProfile, Any, set[str]]:  # fmt: skip
    inputs = batches_of(feeds, size)
    k = len(inputs)
    plain = model.run
    warm = timed(lambda i: plain(inputs[i % k]), max(settings.warmup, model.static_after))
    shapes = tuple(inputs[0][s.name].shape for s in model.inputs)
    compiled = model.compile(shapes, PERF_COUNT=True)
    layers = _layers(compiled)
    runs = settings.count(float(np.median(warm)), max(1, len(layers)))
    unprofiled = timed(lambda i: plain(inputs[i % k]), runs)
    request = compiled.create_infer_request()
    views = [request.get_input_tensor(j).data for j in range(len(model.inputs))]
    args = [[f[s.name] for s in model.inputs] for f in inputs]
    infer = low_level_infer() or (lambda r, *_: r.infer())

    def call(i: int) -> None:  # the model's own call path (OpenVinoModel.run), on this request
        for view, arr in zip(views, args[i % k], strict=True):
            np.copyto(view, arr, casting="unsafe")
        infer(request, {}, True, False)
        for j in range(len(model.outputs)):
            request.get_output_tensor(j).data.copy()

    for i in range(settings.warmup):
        call(i)
    clock = time.perf_counter
    wall, latency, counters = np.empty(runs), np.empty(runs), []
    for i in range(runs):
        t0 = clock()
        call(i)
        wall[i] = clock() - t0
        latency[i] = request.latency  # ms, OpenVINO's own
        counters.append(
            [(p.node_name, p.node_type, p.exec_type, p.real_time.total_seconds() * 1e6)
             for p in request.get_profiling_info() if p.status.name == "EXECUTED"]
        )  # fmt: skip
    return _digest(size, runs, settings.warmup, unprofiled, wall, latency, counters, layers)


def _layers(compiled: Any) -> dict[str, dict[str, Any]]:
    """Runtime layer name -> input and output shapes (with precisions) and FLOPs per call."""
    out = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        ins, outs = [], []
        for i in range(op.get_input_size()):
            value = op.input_value(i)
            shape = value.get_partial_shape()
            if shape.is_static and int(np.prod(shape.to_shape())) > 0:
                ins.append((value.get_element_type().get_type_name(), list(shape.to_shape())))
        for i in range(op.get_output_size()):
            shape = op.get_output_partial_shape(i)
            if shape.is_static:
                kind = op.get_output_element_type(i).get_type_name()
                outs.append((kind, list(shape.to_shape())))
        info = op.get_rt_info()
        layer = info["layerType"].astype(str) if "layerType" in info else op.get_type_name()
        out[op.get_friendly_name()] = {"inputs": ins, "outputs": outs,
                                       "flops": _flops(layer, ins, outs)}  # fmt: skip
    return out


def _flops(layer: str, ins: list[Any], outs: list[Any]) -> float:
    """2 x multiply-adds of one call, from the runtime graph's shapes; 0 where unknown."""
    if not ins or not outs or not outs[0][1]:
        return 0.0
    out_elems = float(np.prod(outs[0][1]))
    if layer.startswith("FullyConnected") or layer == "MatMul":
        return 2.0 * out_elems * ins[0][1][-1] if ins[0][1] else 0.0
    if layer in ("Convolution", "GroupConvolution") and len(ins) > 1 and len(ins[1][1]) >= 3:
        weight = ins[1][1]
        per_output = weight[2:] if layer == "GroupConvolution" else weight[1:]
        return 2.0 * out_elems * float(np.prod(per_output))
    return 0.0


def _digest(size: int, runs: int, warmup: int, unprofiled: np.ndarray, wall: np.ndarray,
            latency: np.ndarray, counters: list[list[tuple[str, str, str, float]]],
            layers: dict[str, dict[str, Any]]) -> tuple[BatchProfile, Any, set[str]]:  # fmt: skip
    by_node: dict[str, dict[str, Any]] = {}
    events, clock_us = [], 0.0
    for run in counters:
        for name, op, kernel, us in run:
            node = by_node.setdefault(name, {"op": op, "provider": kernel, "us": 0.0, "calls": 0})
            node["us"] += us
            node["calls"] += 1
            events.append({"name": name, "cat": op, "ph": "X", "ts": clock_us, "dur": us,
                           "pid": 0, "tid": 0, "args": {"kernel": kernel}})  # fmt: skip
            clock_us += us
    total_us = sum(n["us"] for n in by_node.values()) or 1e-9
    quantized = {n["op"] for n in by_node.values() if _integer(n["provider"])}
    nodes: list[NodeStat] = []
    for name, n in sorted(by_node.items(), key=lambda kv: -kv[1]["us"]):
        stayed = bool(quantized) and n["op"] in FLOAT_COMPUTE and not _integer(n["provider"])
        shapes = layers.get(name, {})
        if len(nodes) < TOP_NODES or stayed:
            nodes.append(NodeStat(
                name=name, op=n["op"], ms=n["us"] / runs / 1e3, share=n["us"] / total_us,
                inputs=[shape_text(*s) for s in shapes.get("inputs", [])],
                outputs=[shape_text(*s) for s in shapes.get("outputs", [])],
                provider=n["provider"], stayed_float=stayed,
            ))  # fmt: skip
    flops = sum(layers.get(name, {}).get("flops", 0.0) * n["calls"] for name, n in by_node.items())
    flops /= runs
    latency_ms = median_ms(unprofiled)
    op_ms = total_us / runs / 1e3
    wall_mean = float(wall.mean()) * 1e3
    trace_name = f"trace-openvino-b{size}.json"
    batch = BatchProfile(
        batch_size=size, runs=runs, warmup=warmup, timed_runs=len(unprofiled),
        latency_ms=latency_ms, profiled_ms=median_ms(wall), samples_per_s=size / (latency_ms / 1e3),
        op_ms=op_ms, runtime_ms=float(latency.mean()),
        coverage=op_ms / wall_mean if wall_mean > 0 else 0.0,
        overhead=median_ms(wall) / latency_ms - 1, ops=op_table(by_node, runs, total_us),
        nodes=nodes, flops=flops or None,
        gflops_per_s=flops / (latency_ms / 1e3) / 1e9 if flops else None, trace=trace_name,
    )  # fmt: skip
    trace = {
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {
            "source": "OpenVINO per-layer counters (PERF_COUNT), layers laid end to end",
            "batch_size": size,
            "profiled_runs": runs,
            "warmup_runs_dropped": warmup,
        },
    }
    return batch, trace, quantized


def _integer(kernel: str) -> bool:
    name = kernel.lower()
    return any(tag in name for tag in _INT_KERNELS)
