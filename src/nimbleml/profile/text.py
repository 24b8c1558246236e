"""The profile as text: per batch size the timing, the run's split, the op types and the top
nodes; then the bottleneck summary and how things were measured."""

from __future__ import annotations

from typing import Any

from .report import FLOPS_CONVENTION, BatchProfile, ProfileReport

GRAPHS = ("onnx", "openvino")  # profiles whose rows are graph nodes


def _grid(rows: list[list[str]], header: list[str], indent: str = "  ") -> list[str]:
    """Columns: the first and the last left-aligned (names, shapes), numbers right-aligned."""
    cells = [header, *rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    last = len(header) - 1
    lines = [
        indent + "  ".join(c.ljust(w) if j in (0, last) else c.rjust(w)
                           for j, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()
        for r in cells
    ]  # fmt: skip
    lines.insert(1, indent + "-" * max(len(line) - len(indent) for line in lines))
    return lines


def _provider(name: str) -> str:
    return name.replace("ExecutionProvider", "")


def _ms(value: float) -> str:
    return f"{value:.4f}" if value < 0.1 else f"{value:.3f}"


def _runtime(report: ProfileReport) -> str:
    r = report.runtime
    parts = [str(r.get("engine", ""))]
    if "providers" in r:
        parts.append(", ".join(_provider(p) for p in r["providers"]))
        parts.append(f"intra-op threads: {r['intra_op_threads']}")
    if "device" in r:
        parts.append(f"device {r['device']}, {r.get('threads')} threads")
    if "hint" in r:
        parts.append(f"hint {r['hint']}, pinning {'on' if r.get('pinning') else 'off'}")
    for key in ("precision", "loss", "optimizer"):
        if key in r:
            parts.append(f"{key} {r[key]}")
    return "; ".join(p for p in parts if p)


def _split(report: ProfileReport, b: BatchProfile) -> str:
    wall = b.wall_ms
    if b.runtime_ms is not None:
        between = max(0.0, b.runtime_ms - b.op_ms)
        outside = max(0.0, wall - b.runtime_ms)
        engine = "OpenVINO" if report.kind == "openvino" else "ONNX Runtime"
        kernels = "layers" if report.kind == "openvino" else "kernels"
        return (f"{kernels} {_ms(b.op_ms)} ms ({100 * b.coverage:.0f}%), {engine} between "
                f"{kernels} {_ms(between)} ms ({100 * between / wall:.0f}%), outside {engine} "
                f"{_ms(outside)} ms ({100 * outside / wall:.0f}%) of a profiled run (means)")  # fmt: skip
    rest = max(0.0, wall - b.op_ms)
    return (f"ops {_ms(b.op_ms)} ms ({100 * b.coverage:.0f}%), Python and dispatch between "
            f"ops {_ms(rest)} ms ({100 * rest / wall:.0f}%) of a profiled (mean) "
            f"{'step' if report.kind == 'train' else 'run'}")  # fmt: skip


def _batch(report: ProfileReport, b: BatchProfile, top: int) -> list[str]:
    unit = "step" if report.kind == "train" else "run"
    head = (f"batch {b.batch_size}: {_ms(b.latency_ms)} ms a {unit} (median of {b.timed_runs}, "
            f"without the profiler), {b.samples_per_s:,.0f} samples/s")  # fmt: skip
    if b.gflops_per_s is not None and b.flops:
        head += f", {b.flops / 1e6:,.2f} MFLOP a {unit} = {b.gflops_per_s:.2f} GFLOP/s"
    lines = [head, "  " + _split(report, b)]
    lines.append(f"  profiling overhead: {100 * b.overhead:+.0f}% ({_ms(b.profiled_ms)} ms a "
                 f"{unit} over {b.runs} profiled {unit}s; {b.warmup} warm-up {unit}s before)")  # fmt: skip
    if b.peak_memory_mb is not None:
        lines.append(f"  peak memory: {b.peak_memory_mb:.1f} MB over 5 {unit}s")
    if b.phases:
        lines.append("  step: " + ", ".join(
            f"{p.name.replace('_', ' ')} {_ms(p.ms)} ms ({100 * p.share:.0f}%)" for p in b.phases))  # fmt: skip
    lines.append("")
    rows = [[o.op, str(o.nodes), f"{o.calls:g}", _ms(o.ms), f"{100 * o.share:.1f}",
             _provider(o.provider)] for o in b.ops[:top]]  # fmt: skip
    graph = report.kind in GRAPHS  # rows are graph nodes (ONNX, OpenVINO), not shapes
    count = "nodes" if graph else "shapes"
    lines += _grid(rows, ["op type", count, f"calls/{unit}", f"ms/{unit}", "share %", "provider"])
    if len(b.ops) > top:
        rest = b.ops[top:]
        lines.append(f"  ... {len(rest)} more op types, {100 * sum(o.share for o in rest):.1f}%")
    lines.append("")
    shown = b.nodes[:top] + [n for n in b.nodes[top:] if n.stayed_float]
    rows = [[n.name[:48] + (" [float]" if n.stayed_float else ""),  # a PyTorch row: its op
             *([n.op] if graph else []), _ms(n.ms), f"{100 * n.share:.1f}",
             " ".join(n.inputs)[:60] + (" -> " + " ".join(n.outputs) if n.outputs else "")]
            for n in shown]  # fmt: skip
    header = ["top nodes", "op"] if graph else ["top ops by input shape"]
    lines += _grid(rows, [*header, f"ms/{unit}", "share %", "shapes"])
    return lines


def render(report: ProfileReport, top: int = 10) -> str:
    kind = {"onnx": "ONNX", "openvino": "OpenVINO", "torch": "PyTorch",
            "train": "training step"}[report.kind]  # fmt: skip
    title = f"profile of {report.model} ({kind}"
    title += ", int8)" if report.quantized else ")"
    lines: list[Any] = [title, _runtime(report), ""]
    for b in report.batches:
        lines += _batch(report, b, top)
        lines.append("")
    if report.verdict:
        lines.append(f"verdict: {report.verdict}")
    if report.summary:
        lines.append("bottlenecks:")
        lines += [f"- {s}" for s in report.summary]
    lines.append("")
    lines.append("how it was measured:")
    lines += [f"- {n}" for n in [*report.notes, FLOPS_CONVENTION]]
    return "\n".join(str(x) for x in lines).rstrip()
