"""The bottleneck summary: plain sentences, each derived from the measured table (the top op
type's share, whether the model is int8, the kernels-vs-overhead split, the batch-size
scaling, the training phases), each with what to try. Nothing here is said unless a figure
of the report says it."""

from __future__ import annotations

from .report import BatchProfile, ProfileReport

OVERHEAD_BOUND = 0.5  # kernels under half the run: the run is framework-bound
FLOAT_MATMUL_SHARE = 0.25  # float matrix products this big a share: int8 is worth trying
DATA_MOVEMENT = frozenset({
    "Transpose", "Reshape", "Cast", "Concat", "Gather", "Slice", "Split", "Expand", "Squeeze",
    "Unsqueeze", "Identity", "Flatten", "ReorderInput", "ReorderOutput", "MemcpyToHost",
    "MemcpyFromHost", "aten::copy_", "aten::contiguous", "aten::cat", "aten::to",
    "aten::_to_copy", "aten::transpose", "aten::permute", "aten::clone",
})  # fmt: skip
# op names holding these do the heavy arithmetic (FusedGemm, NhwcFusedConv, aten::addmm...)
MATMUL_LIKE = ("MatMul", "Gemm", "Conv", "addmm", "aten::mm", "bmm", "conv", "linear",
               "matmul", "FullyConnected")  # fmt: skip


def summarize(report: ProfileReport) -> list[str]:
    if not report.batches:
        return []
    lines = [_top_op(report, b, first=i == 0) for i, b in enumerate(report.batches) if b.ops]
    lines += _stayed_float(report)
    lines += _overhead(report)
    lines += _movement(report)
    lines += _scaling(report)
    lines += _distortion(report)
    if report.kind == "train":
        lines += _phases(report)
    return [line for line in lines if line]


def _pct(share: float) -> str:
    return f"{100 * share:.0f}%"


def _top_op(report: ProfileReport, b: BatchProfile, first: bool) -> str:
    """The top op type's share; the first line also says what int8 can (or did) do."""
    top = b.ops[0]
    where = {"onnx": "of kernel time", "openvino": "of layer time"}.get(report.kind, "of op time")
    text = f"{_pct(top.share)} {where} in {top.op} at batch {b.batch_size}"
    if top.nodes > 1:
        graph = report.kind in ("onnx", "openvino")
        text += f" ({top.nodes} {'nodes' if graph else 'shapes'})"
    if not first:
        return text
    if report.quantized:
        integer = [
            o for o in report.quantized_ops if o not in ("QuantizeLinear", "DequantizeLinear")
        ]
        text += f"; the model is already int8 ({', '.join(integer or report.quantized_ops)})"
    elif report.kind != "train" and matmul_share(b) >= FLOAT_MATMUL_SHARE:
        how = (
            "--runtime openvino --quantize int8" if report.kind == "openvino" else "--quantize int8"
        )
        text += (
            f"; the model computes in float ({_pct(matmul_share(b))} in matrix products): int8 "
            f"quantization (nimbleml compress {how}) targets exactly these ops"
        )
    return text


def matmul_share(b: BatchProfile) -> float:
    """The share of the time in matrix products (MatMul, Gemm, Conv, addmm...)."""
    return sum(o.share for o in b.ops if any(k in o.op for k in MATMUL_LIKE))


def _stayed_float(report: ProfileReport) -> list[str]:
    float_nodes = report.stayed_float()
    if not float_nodes:
        return []
    share = sum(n.share for n in float_nodes)
    ops = sorted({n.op for n in float_nodes})
    names = ", ".join(n.name for n in float_nodes[:3]) + (" ..." if len(float_nodes) > 3 else "")
    return [
        f"{len(float_nodes)} {'/'.join(ops)} node(s) still compute in float in this int8 model "
        f"({_pct(share)} of kernel time at batch {report.batches[-1].batch_size}: {names}); "
        "quantizing them too (int8-static, or excluding fewer nodes) would cut that time if "
        "the accuracy budget allows"
    ]


def _overhead(report: ProfileReport) -> list[str]:
    out = []
    for b in report.batches:
        if b.coverage >= OVERHEAD_BOUND:
            continue
        who = {
            "onnx": "ONNX Runtime and the Python call",
            "openvino": "OpenVINO and the Python call",
        }.get(report.kind, "Python and the dispatcher")
        hint = (
            "larger batches, or the server's dynamic batching, spread it over more samples"
            if report.kind != "train"
            else "a larger batch size gives the ops more work per step"
        )
        out.append(
            f"at batch {b.batch_size} the ops are only {_pct(b.coverage)} of the run: "
            f"{_pct(1 - b.coverage)} is {who} around them ({b.wall_ms - b.op_ms:.3f} ms a "
            f"run); {hint}"
        )
    return out


def _movement(report: ProfileReport) -> list[str]:
    b = report.batches[-1]
    moved = [o for o in b.ops if o.op in DATA_MOVEMENT]
    share = sum(o.share for o in moved)
    if share < 0.15:
        return []
    names = ", ".join(o.op for o in moved[:4])
    return [
        f"{_pct(share)} of op time at batch {b.batch_size} moves or reshapes data ({names}) "
        "rather than computing: look for layout changes or copies that a fused or "
        "channels-last model would not need"
    ]


def _scaling(report: ProfileReport) -> list[str]:
    if len(report.batches) < 2:
        return []
    small, large = report.batches[0], report.batches[-1]
    ratio = large.samples_per_s / small.samples_per_s if small.samples_per_s else 0.0
    unit = "steps" if report.kind == "train" else "runs"
    text = (
        f"batch {large.batch_size} reaches {ratio:.{1 if ratio >= 1 else 2}f}x the samples/s of batch "
        f"{small.batch_size} ({large.samples_per_s:,.0f} vs {small.samples_per_s:,.0f}, "
        f"{unit} timed without the profiler)"
    )
    if ratio >= 1.5:
        text += "; where latency allows, batch requests (nimbleml serve batches dynamically)"
    elif ratio < 1:
        text += f"; batch {large.batch_size} is slower per sample here: larger batches do not pay"
    elif ratio < 1.2:
        text += "; larger batches barely help: the ops are already busy at the small batch"
    return [text]


def _distortion(report: ProfileReport) -> list[str]:
    """The profiler's own cost, when it is large enough to skew the shares."""
    heavy = [b for b in report.batches if b.overhead > 0.5]
    if not heavy:
        return []
    worst = max(heavy, key=lambda b: b.overhead)
    unit = "step" if report.kind == "train" else "run"
    calmer = [b for b in report.batches if b.overhead < worst.overhead / 2]
    trust = (f"trust the tables at batch {', '.join(str(b.batch_size) for b in calmer)} more, "
             "and" if calmer else "trust")  # fmt: skip
    return [
        f"the profiler made a {unit} {100 * worst.overhead:.0f}% slower at batch "
        f"{worst.batch_size}: its per-op cost skews the shares toward ops that are called "
        f"often; {trust} the latency and samples/s, which were timed without it"
    ]


def _phases(report: ProfileReport) -> list[str]:
    out = []
    for b in report.batches:
        if not b.phases:
            continue
        top = max(b.phases, key=lambda p: p.share)
        split = ", ".join(f"{p.name.replace('_', ' ')} {_pct(p.share)}" for p in b.phases)
        if top.name == "data_loading":
            out.append(
                f"input-bound at batch {b.batch_size}: data loading takes {_pct(top.share)} of "
                f"the step ({split}); more DataLoader workers (dataloader={{'num_workers': "
                "N}), cheaper __getitem__/collate, or data cached in memory would speed "
                "training more than a faster model"
            )
        else:
            out.append(
                f"compute-bound at batch {b.batch_size}: {top.name} takes {_pct(top.share)} "
                f"of the step ({split})"
            )
    return out
