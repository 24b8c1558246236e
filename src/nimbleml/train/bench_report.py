"""What ``bench_train`` returns: one row per configuration and the result that prints them as
a table, writes them as JSON, TXT and PNG (``train-bench_YYYYMMDD_HHMMSS.*``) and draws the
figure. The run itself (presets, warm-up, timing, memory) is in bench.py.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = 1
P95_MIN_STEPS = 200  # 10 steps beyond the 95th percentile (nimbleml.bench.stats.MIN_SAMPLES)


@dataclass
class BenchRow:
    label: str
    options: dict[str, Any]  # the Trainer options of this row (JSON-safe)
    samples_per_s: float = 0.0
    step_p50_ms: float | None = None
    step_p95_ms: float | None = None
    steps: int = 0  # n behind the step percentiles
    peak_memory_mb: float | None = None
    train_loss: float | None = None  # the last epoch's
    val_loss: float | None = None
    metric: float | None = None
    metric_name: str | None = None
    batch_size: int | None = None  # per optimizer step (micro-batch x grad_accum)
    precision: str | None = None
    seconds: float = 0.0  # training time of all epochs (the loop's clock)
    runs: list[float] = field(default_factory=list)  # samples/s of each repeat
    speedup: float | None = None  # samples/s over the baseline row's
    note: str = ""
    skipped: str = ""  # why the row did not run

    @property
    def ran(self) -> bool:
        return not self.skipped


@dataclass
class TrainBenchResult:
    rows: list[BenchRow]
    baseline: str
    device: str
    epochs: int
    repeats: int
    memory: str  # how peak memory was measured
    samples: int | None
    model: str
    machine: dict[str, Any]
    created_at: str
    notes: list[str] = field(default_factory=list)

    def row(self, label: str) -> BenchRow:
        return next(r for r in self.rows if r.label == label)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "kind": "train-bench",
            "created_at": self.created_at,
            "model": self.model,
            "samples": self.samples,
            "device": self.device,
            "epochs": self.epochs,
            "repeats": self.repeats,
            "baseline": self.baseline,
            "memory": self.memory,
            "rows": [asdict(r) for r in self.rows],
            "notes": self.notes,
            "machine": self.machine,
        }

    def table(self) -> str:
        metric = next((r.metric_name for r in self.rows if r.metric_name), None) or "metric"
        head = ["configuration", "samples/s", "step p50 ms", "step p95 ms", "n", "peak MB",
                "final loss", metric, "speedup"]  # fmt: skip
        body: list[list[str]] = []
        foot: list[str] = []
        for r in self.rows:
            label = r.label
            if r.note or r.skipped:
                foot.append(f"[{len(foot) + 1}] {r.label}: {r.skipped or r.note}")
                label += f" [{len(foot)}]"
            if not r.ran:
                body.append([label, "skipped", *["-"] * (len(head) - 2)])
                continue
            p95 = "-" if r.step_p95_ms is None else f"{r.step_p95_ms:.2f}"
            p95 += "*" if r.step_p95_ms is not None and r.steps < P95_MIN_STEPS else ""
            body.append([
                label, f"{r.samples_per_s:,.0f}", _num(r.step_p50_ms, ".2f"), p95,
                str(r.steps), _num(r.peak_memory_mb, ".1f"), _num(r.train_loss, ".4f"),
                _num(r.metric, ".4f"), "-" if r.speedup is None else f"{r.speedup:.2f}x",
            ])  # fmt: skip
        title = (f"training benchmark: {self.model}, {self.samples or '?'} samples, "
                 f"{self.epochs} epoch(s) x {self.repeats} repeat(s), device {self.device}")  # fmt: skip
        lines = [title, _grid(body, head), *foot]
        lines.append(f"peak MB: {self.memory}")
        lines.append(f"speedup: samples/s over the '{self.baseline}' row's, in this run; "
                     f"* = p95 of fewer than {P95_MIN_STEPS} steps (an estimate)")  # fmt: skip
        lines += self.notes
        return "\n".join(lines)

    def figure(self) -> Any:
        """samples/s (and peak memory) per configuration, bars on linear axes from zero."""
        from ..bench.plots import new_figure

        rows = [r for r in self.rows if r.ran]
        panels = [("samples/s", [r.samples_per_s for r in rows])]
        if all(r.peak_memory_mb is not None for r in rows):
            what = "CUDA max allocated" if self.device.startswith("cuda") else "RSS growth"
            panels.append((f"peak memory, MB ({what})", [r.peak_memory_mb or 0.0 for r in rows]))
        fig = new_figure((max(6.0, 1.3 * len(rows)) * len(panels), 4.2))
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, (title, values) in zip(axes, panels, strict=True):
            x = range(len(values))
            ax.bar(x, values, color="#4c72b0" if title == "samples/s" else "#55a868")
            for i, (v, r) in enumerate(zip(values, rows, strict=True)):
                text = f"{v:,.0f}" if title == "samples/s" else f"{v:.1f}"
                if title == "samples/s" and r.speedup is not None:
                    text += f"\n{r.speedup:.2f}x"
                ax.annotate(text, (i, v), xytext=(0, 3), textcoords="offset points",
                            ha="center", va="bottom", fontsize=8)  # fmt: skip
            ax.set_xticks(list(x), [r.label for r in rows], fontsize=8, rotation=20, ha="right")
            ax.set_ylim(0, max([*values, 1e-9]) * 1.25)
            ax.set_title(title + (f" ({self.device})" if title == "samples/s" else ""))
        fig.tight_layout()
        return fig

    def save(self, directory: str | Path = ".") -> list[Path]:
        """train-bench_YYYYMMDD_HHMMSS.json and .txt (and .png with matplotlib) in
        ``directory``; the time is this result's creation time, local."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        stamp = _dt.datetime.fromisoformat(self.created_at).astimezone().strftime("%Y%m%d_%H%M%S")
        stem, n = f"train-bench_{stamp}", 2
        while any((out / f"{stem}{ext}").exists() for ext in (".json", ".txt", ".png")):
            stem, n = f"train-bench_{stamp}_{n}", n + 1  # two runs in one second
        written = [out / f"{stem}.json", out / f"{stem}.txt"]
        written[0].write_text(json.dumps(self.to_dict(), indent=2, default=str))
        written[1].write_text(self.table() + "\n")
        try:
            self.figure().savefig(out / f"{stem}.png", dpi=100)
            written.append(out / f"{stem}.png")
        except ImportError:  # matplotlib is an extra: the table and JSON stand
            pass
        return written


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None or value != value else format(value, fmt)


def _grid(rows: list[list[str]], header: list[str]) -> str:
    cells = [header, *rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if j == 0 else c.rjust(w)
                       for j, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in cells]  # fmt: skip
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
