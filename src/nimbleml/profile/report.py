"""ProfileReport: what a profile measured, as a text table, JSON, a bar chart and traces.

Every figure is per run (inference) or per step (training), from the profiled runs only:
warm-up runs are excluded. ``latency_ms`` and ``samples_per_s`` come from the same number of
runs timed *without* the profiler, so that the profiler's own cost is not in them; the ratio
of the two is ``overhead``.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = 1
FLOPS_CONVENTION = (
    "FLOPs count 2 per multiply-add (torch.utils.flop_counter's convention), matrix "
    "multiplications and convolutions only"
)


@dataclass
class OpStat:
    """One op type at one batch size: time per run and its share of the op (kernel) time."""

    op: str
    nodes: int  # distinct graph nodes (ONNX, OpenVINO) or distinct input shapes (PyTorch)
    calls: float  # per run
    ms: float  # per run
    share: float  # of the summed op time, 0-1
    provider: str


@dataclass
class NodeStat:
    """One graph node (ONNX) or one op at one input shape (PyTorch)."""

    name: str
    op: str
    ms: float  # per run
    share: float
    inputs: list[str]  # "float[32,64]"
    outputs: list[str]
    provider: str
    stayed_float: bool = False  # a float matmul/conv in a model that is otherwise quantized


@dataclass
class PhaseStat:
    """A part of a training step: data_loading, forward, backward, optimizer."""

    name: str
    ms: float  # median per step, measured without the profiler
    share: float  # of the step


@dataclass
class BatchProfile:
    batch_size: int
    runs: int  # profiled runs (or training steps), warm-up excluded
    warmup: int
    timed_runs: int  # runs timed without the profiler
    latency_ms: float  # median per run without the profiler
    profiled_ms: float  # median per run with it
    samples_per_s: float
    op_ms: float  # summed kernel / op self time per run
    runtime_ms: float | None  # ONNX Runtime's own model_run time per run (ONNX only)
    coverage: float  # op_ms / mean profiled wall time of the same runs
    overhead: float  # profiled_ms / latency_ms - 1: what the profiler costs
    ops: list[OpStat]
    nodes: list[NodeStat]
    flops: float | None = None  # per run (per step when training)
    gflops_per_s: float | None = None
    peak_memory_mb: float | None = None
    phases: list[PhaseStat] = field(default_factory=list)
    trace: str | None = None  # the Chrome trace's file name (written by save)

    @property
    def wall_ms(self) -> float:
        """Mean wall time of a profiled run: what ``coverage`` divides by."""
        return self.op_ms / self.coverage if self.coverage > 0 else self.profiled_ms

    def op(self, name: str) -> OpStat | None:
        return next((o for o in self.ops if o.op == name), None)

    def phase(self, name: str) -> PhaseStat | None:
        return next((p for p in self.phases if p.name == name), None)


@dataclass
class ProfileReport:
    """A profile of one model (or training step) at one or more batch sizes."""

    model: str
    kind: str  # "onnx", "openvino", "torch" or "train"
    runtime: dict[str, Any]  # what ran it: providers, threads, device, precision...
    batches: list[BatchProfile]
    quantized_ops: list[str] = field(default_factory=list)  # integer op types that ran
    summary: list[str] = field(default_factory=list)  # the bottlenecks, in plain words
    verdict: str | None = None  # training: "input-bound" or "compute-bound"
    notes: list[str] = field(default_factory=list)  # how things were measured
    machine: dict[str, Any] = field(default_factory=dict)
    created_at: str = field(
        default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    )
    traces: dict[str, Any] = field(default_factory=dict, repr=False)  # file name -> trace

    @property
    def quantized(self) -> bool:
        return bool(self.quantized_ops)

    def batch(self, batch_size: int) -> BatchProfile:
        for b in self.batches:
            if b.batch_size == batch_size:
                return b
        raise KeyError(f"no profile at batch size {batch_size}; there are {self.batch_sizes}")

    @property
    def batch_sizes(self) -> list[int]:
        return [b.batch_size for b in self.batches]

    def stayed_float(self) -> list[NodeStat]:
        """Float matmuls/convolutions of a quantized model, at the largest batch size."""
        if not self.batches:
            return []
        return [n for n in self.batches[-1].nodes if n.stayed_float]

    # -- outputs -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "kind": "profile",
            "created_at": self.created_at,
            "model": self.model,
            "profiled": self.kind,
            "runtime": self.runtime,
            "quantized": self.quantized,
            "quantized_ops": self.quantized_ops,
            "verdict": self.verdict,
            "summary": self.summary,
            "notes": self.notes,
            "flops_convention": FLOPS_CONVENTION,
            "batches": [asdict(b) for b in self.batches],
            "machine": self.machine,
        }

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text)
        return text

    def table(self, top: int = 10) -> str:
        from .text import render

        return render(self, top)

    def figure(self) -> Any:
        from .plot import figure

        return figure(self)

    def save(self, directory: str | Path) -> list[Path]:
        """profile.txt, profile.json, profile.png (with the 'report' extra) and the Chrome
        traces (open them in https://ui.perfetto.dev or chrome://tracing) in ``directory``."""
        from .._deps import available

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for name, trace in self.traces.items():
            path = out / name
            path.write_text(json.dumps(trace))
            written.append(path)
        if available("matplotlib"):
            self.figure().savefig(out / "profile.png", dpi=100)
            written.append(out / "profile.png")
        elif "profile.png not written" not in " ".join(self.notes):
            self.notes.append(
                "profile.png not written: the chart needs matplotlib "
                "(pip install 'nimbleml[report]')"
            )
        (out / "profile.txt").write_text(self.table() + "\n")
        self.to_json(out / "profile.json")
        return [*written, out / "profile.txt", out / "profile.json"]


def op_table(by_node: dict[str, dict[str, Any]], runs: int, total_us: float) -> list[OpStat]:
    """Per-node figures ({"op", "provider", "calls", "us"}) summed by op type, slowest first:
    per run, with the share of the total and the providers (ONNX Runtime) or kernels
    (OpenVINO) that ran them."""
    grouped: dict[str, dict[str, Any]] = {}
    for n in by_node.values():
        g = grouped.setdefault(n["op"], {"nodes": 0, "calls": 0, "us": 0.0, "providers": set()})
        g["nodes"] += 1
        g["calls"] += n["calls"]
        g["us"] += n["us"]
        g["providers"].add(n["provider"])
    return [
        OpStat(op=op, nodes=g["nodes"], calls=g["calls"] / runs, ms=g["us"] / runs / 1e3,
               share=g["us"] / total_us, provider=",".join(sorted(g["providers"])))
        for op, g in sorted(grouped.items(), key=lambda kv: -kv[1]["us"])
    ]  # fmt: skip
