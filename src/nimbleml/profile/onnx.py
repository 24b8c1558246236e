"""ONNX models and packages under ONNX Runtime's own profiler.

The profiled session is built with the very options the model runs with (its threads,
spinning, graph optimisation and providers: ``OnnxModel.session``'s), plus
``enable_profiling``. ONNX Runtime records from the session's creation and has no switch to
start later, so the warm-up runs are run on the profiled session itself (its arena and
thread pool warm, as in production) and their events are dropped: only events that start
after the end of the last warm-up ``model_run`` are counted. The session is ended
(``end_profiling``) before its file is read, so the file is complete; the file goes to a
temporary folder, never the working directory, and is bounded by the number of runs (at most
MAX_EVENTS kernel events).

Kernel time is the events of category "Node" whose name ends in ``_kernel_time``; their args
carry ``op_name``, ``provider`` and the input and output types and shapes. A run is split
into kernels, ONNX Runtime between kernels (``model_run`` minus the kernels: the executor,
allocations) and outside ONNX Runtime (the Python call, input binding, output copies: the
wall time minus ``model_run``).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BenchmarkError
from ..inputs import Feeds
from ..models.onnx_model import OnnxModel, default_providers, session_options
from .common import (
    TOP_NODES,
    Settings,
    batches_of,
    median_ms,
    shape_text,
    timed,
)
from .report import BatchProfile, NodeStat, ProfileReport, op_table

# integer (or integer-weight) ops: a model running any of them is a quantized model
QUANTIZED_OPS = frozenset({
    "MatMulInteger", "ConvInteger", "QLinearMatMul", "QLinearConv", "DynamicQuantizeLinear",
    "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QGemm", "QAttention", "QLinearAdd",
    "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearAveragePool",
    "QLinearGlobalAveragePool", "QLinearConcat", "QuantizeLinear", "DequantizeLinear",
    "DynamicQuantizeLSTM", "MatMulNBits", "QOrderedMatMul",
})  # fmt: skip
# ops that do the heavy arithmetic: in a quantized model, these with float inputs stayed float
FLOAT_COMPUTE = frozenset({
    "MatMul", "Gemm", "Conv", "ConvTranspose", "FusedMatMul", "FusedGemm", "FusedConv",
    "NhwcFusedConv", "Attention", "MultiHeadAttention", "LSTM", "GRU", "RNN", "Einsum",
})  # fmt: skip
FLOAT_TYPES = ("float", "float16", "double", "bfloat16")
# FLOPs: 2 x output elements x the reduced dimension (input 0's last axis)
MATMUL_OPS = frozenset({
    "MatMul", "Gemm", "FusedMatMul", "FusedGemm", "MatMulInteger", "DynamicQuantizeMatMul",
    "QLinearMatMul", "MatMulIntegerToFloat", "QGemm", "MatMulNBits",
})  # fmt: skip
CONV_WEIGHT = {"Conv": 1, "FusedConv": 1, "NhwcFusedConv": 1, "ConvInteger": 1, "QLinearConv": 3}


def profile_onnx(model: OnnxModel, feeds: Feeds, sizes: list[int], settings: Settings,
                 name: str) -> ProfileReport:  # fmt: skip
    """Profile ``model`` at each batch size (``feeds``: checked inputs, any number of rows)."""
    graph = model.proto().graph
    weights = _conv_weights(graph)
    n_ops = max(1, len(graph.node))
    batches, traces, quantized = [], {}, set()
    with tempfile.TemporaryDirectory(prefix="nimbleml-profile-") as tmp:
        for size in sizes:
            batch, trace, seen = _profile_batch(model, feeds, size, settings,
                                                Path(tmp) / f"b{size}", weights, n_ops)  # fmt: skip
            quantized |= seen
            traces[batch.trace or ""] = trace
            batches.append(batch)
    providers = model.session.get_providers()
    threads = model.session.get_session_options().intra_op_num_threads
    runtime = {
        "engine": f"onnxruntime {_ort_version()}",
        "providers": providers,
        "intra_op_threads": threads or "onnxruntime's default (one per physical core)",
        "spinning": model.spin and not (threads and threads > 1),
        "graph_optimization": "all",
    }
    return ProfileReport(model=name, kind="onnx", runtime=runtime, batches=batches,
                         quantized_ops=sorted(quantized), traces=traces,
                         notes=_notes(settings))  # fmt: skip


def _notes(settings: Settings) -> list[str]:
    return [
        f"ONNX Runtime's profiler; the first {settings.warmup} run(s) of each batch size warm "
        "the profiled session and their events are dropped",
        "latency and samples/s: as many runs without the profiler (the model's own session), "
        "just before the profiled ones; profiling overhead = profiled / unprofiled - 1 (medians)",
        "coverage: summed kernel time / wall time of the same profiled runs (means); the rest is ONNX "
        "Runtime between kernels (model_run minus kernels) and outside it (the Python call, "
        "inputs and outputs)",
        "FLOPs from the shapes the profiler recorded (the MatMul, Gemm and Conv families)",
    ]


def _ort_version() -> str:
    import onnxruntime as ort

    return str(ort.__version__)


def _runner(session: Any) -> Any:
    """The session's run bound to its outputs, the call OnnxModel.run makes."""
    import onnxruntime as ort

    names = [o.name for o in session.get_outputs()]
    core = getattr(session, "_sess", None)
    if core is not None and callable(getattr(core, "run", None)):
        options = ort.RunOptions()
        return lambda feeds: core.run(names, feeds, options)
    return lambda feeds: session.run(names, feeds)  # pragma: no cover - other builds


def _profiled_session(model: OnnxModel, prefix: Path) -> Any:
    import onnxruntime as ort

    so = session_options(model.threads, spin=model.spin)
    so.enable_profiling = True
    so.profile_file_prefix = str(prefix)
    return ort.InferenceSession(model.data, so, providers=model.providers or default_providers())


def _profile_batch(model: OnnxModel, feeds: Feeds, size: int, settings: Settings, prefix: Path,
                   weights: dict[str, list[int]], n_ops: int) -> tuple[BatchProfile, Any, set[str]]:  # fmt: skip
    inputs = batches_of(feeds, size)
    k = len(inputs)
    plain = model.run
    warm = timed(lambda i: plain(inputs[i % k]), settings.warmup)
    runs = settings.count(float(np.median(warm)), n_ops)
    unprofiled = timed(lambda i: plain(inputs[i % k]), runs)
    # then the profiled session, not interleaved: each session has its own intra-op pool,
    # and a pool that spins after its runs slowed the other's by up to 10x on 2 cores
    session = _profiled_session(model, prefix)
    run = _runner(session)
    for i in range(settings.warmup):
        run(inputs[i % k])
    profiled = timed(lambda i: run(inputs[i % k]), runs)
    path = session.end_profiling()  # the file is complete only once profiling has ended
    events = json.loads(Path(path).read_text())
    del session
    return _digest(events, size, runs, settings.warmup, unprofiled, profiled, weights)


def _digest(events: list[dict[str, Any]], size: int, runs: int, warmup: int,
            unprofiled: np.ndarray, profiled: np.ndarray,
            weights: dict[str, list[int]]) -> tuple[BatchProfile, Any, set[str]]:  # fmt: skip
    model_runs = sorted(
        (e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
        key=lambda e: e["ts"],
    )
    if len(model_runs) < warmup + runs:
        raise BenchmarkError(
            f"ONNX Runtime's profile holds {len(model_runs)} runs, not the {warmup + runs} made; "
            "it cannot be split into warm-up and profiled runs"
        )
    last_warm = model_runs[warmup - 1]
    cutoff = last_warm["ts"] + last_warm["dur"]
    measured = [e for e in events if e.get("ts", 0) >= cutoff]
    kernels = [e for e in measured
               if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time")]  # fmt: skip
    runtime_us = sum(e["dur"] for e in model_runs[warmup:])
    by_node = _by_node(kernels, weights)
    total_us = sum(n["us"] for n in by_node.values()) or 1e-9
    quantized = {n["op"] for n in by_node.values() if n["op"] in QUANTIZED_OPS}
    ops = op_table(by_node, runs, total_us)
    nodes: list[NodeStat] = []
    for name, n in sorted(by_node.items(), key=lambda kv: -kv[1]["us"]):
        stayed = bool(quantized) and n["op"] in FLOAT_COMPUTE and _is_float(n["inputs"])
        if len(nodes) < TOP_NODES or stayed:  # every float survivor is named
            nodes.append(NodeStat(
                name=name, op=n["op"], ms=n["us"] / runs / 1e3, share=n["us"] / total_us,
                inputs=[shape_text(*s) for s in n["inputs"]],
                outputs=[shape_text(*s) for s in n["outputs"]],
                provider=n["provider"], stayed_float=stayed,
            ))  # fmt: skip
    flops = sum(n["flops"] for n in by_node.values()) / runs
    latency = median_ms(unprofiled)
    profiled_mean = float(profiled.mean()) * 1e3
    op_ms = total_us / runs / 1e3
    trace_name = f"trace-onnx-b{size}.json"
    batch = BatchProfile(
        batch_size=size, runs=runs, warmup=warmup, timed_runs=len(unprofiled), latency_ms=latency,
        profiled_ms=median_ms(profiled), samples_per_s=size / (latency / 1e3),
        op_ms=op_ms, runtime_ms=runtime_us / runs / 1e3,
        coverage=op_ms / profiled_mean if profiled_mean > 0 else 0.0,
        overhead=median_ms(profiled) / latency - 1, ops=ops, nodes=nodes,
        flops=flops or None, gflops_per_s=flops / (latency / 1e3) / 1e9 if flops else None,
        trace=trace_name,
    )  # fmt: skip
    trace = {
        "traceEvents": measured,
        "displayTimeUnit": "ms",
        "otherData": {
            "source": "ONNX Runtime profiler",
            "batch_size": size,
            "profiled_runs": runs,
            "warmup_runs_dropped": warmup,
        },
    }
    return batch, trace, quantized


def _by_node(kernels: list[dict[str, Any]],
             weights: dict[str, list[int]]) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Kernel events summed per graph node: op, provider, time, calls, shapes, FLOPs."""
    by_node: dict[str, dict[str, Any]] = {}
    for e in kernels:
        args = e.get("args", {})
        name = e["name"].removesuffix("_kernel_time")
        node = by_node.setdefault(name, {
            "op": args.get("op_name", "?"), "provider": args.get("provider", "?"), "us": 0.0,
            "calls": 0, "inputs": _shapes(args.get("input_type_shape")),
            "outputs": _shapes(args.get("output_type_shape")), "flops": 0.0,
        })  # fmt: skip
        node["us"] += e["dur"]
        node["calls"] += 1
        node["flops"] += _flops(node["op"], node["inputs"], node["outputs"], weights.get(name))
    return by_node


def _shapes(spec: Any) -> list[tuple[str, list[int]]]:
    """[{'float': [32, 64]}, ...] -> [('float', [32, 64]), ...]"""
    out = []
    for item in spec or []:
        for dtype, shape in dict(item).items():
            out.append((str(dtype), [int(d) for d in shape]))
    return out


def _is_float(inputs: list[tuple[str, list[int]]]) -> bool:
    return bool(inputs) and inputs[0][0] in FLOAT_TYPES


def _flops(op: str, inputs: list[tuple[str, list[int]]], outputs: list[tuple[str, list[int]]],
           weight: list[int] | None) -> float:  # fmt: skip
    """2 x multiply-adds of one call, from the recorded shapes; 0 where they do not say."""
    if not inputs or not outputs or not outputs[0][1]:
        return 0.0
    out_elems = float(np.prod(outputs[0][1]))
    if op in MATMUL_OPS and inputs[0][1]:
        return 2.0 * out_elems * inputs[0][1][-1]
    if op in CONV_WEIGHT:
        index = CONV_WEIGHT[op]
        dims = inputs[index][1] if len(inputs) > index and inputs[index][1] else weight
        if dims and len(dims) >= 3:  # [C_out, C_in / groups, k...]
            return 2.0 * out_elems * float(np.prod(dims[1:]))
    return 0.0


def _conv_weights(graph: Any) -> dict[str, list[int]]:
    """Node name -> weight dims of the graph's convolutions: ONNX Runtime pre-packs a
    constant weight and then records its shape as []. Fused nodes keep the Conv's name."""
    dims = {t.name: list(t.dims) for t in graph.initializer}
    out = {}
    for node in graph.node:
        index = CONV_WEIGHT.get(node.op_type)
        if index is not None and len(node.input) > index and node.input[index] in dims:
            out[node.name] = dims[node.input[index]]
    return out
