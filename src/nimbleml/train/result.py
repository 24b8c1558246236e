"""What a training run gives back: the model, the history, the best checkpoint, and a
report (table, JSON, PNG curves) that says how it was trained and why."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class TrainReport:
    history: list[dict[str, Any]]
    precision: str
    precision_reason: str
    loss: str
    device: str
    config: dict[str, Any]
    step_times_s: list[float] = field(default_factory=list)
    restarts: int = 0  # times torchrun's elastic agent restarted the group (--max-restarts)

    def to_dict(self) -> dict[str, Any]:
        from ..bench.machine import machine_info

        times = np.asarray(self.step_times_s) * 1e3
        steps = (
            {"n": int(times.size), "p50_ms": float(np.percentile(times, 50)),
             "p95_ms": float(np.percentile(times, 95))}
            if times.size else {"n": 0}
        )  # fmt: skip
        return {
            "precision": {"chosen": self.precision, "reason": self.precision_reason},
            "loss": self.loss,
            "device": self.device,
            "config": self.config,
            "step_time": steps,
            "restarts": self.restarts,
            "history": self.history,
            "machine": machine_info().to_dict(),
        }

    def table(self) -> str:
        head = f"{'epoch':>5} {'train loss':>11} {'val loss':>10} {'metric':>10} {'samples/s':>10} {'s':>7}"
        lines = [f"precision: {self.precision} ({self.precision_reason})"]
        if self.restarts:
            lines.append(f"restarts: {self.restarts} (a process failed; torchrun restarted "
                         "every process, which went on from the last checkpoint)")  # fmt: skip
        lines += [f"{name.replace('_', ' ')}: {self.config[name]['summary']}"
                  for name in ("batch_size_search", "dataloader") if name in self.config]  # fmt: skip
        lines += [head, "-" * len(head)]
        for r in self.history:
            val = f"{r['val_loss']:.4f}" if "val_loss" in r else "-"
            metric = f"{r['val_metric']:.4f}" if "val_metric" in r else "-"
            mark = " *" if r.get("best") else ""
            lines.append(f"{r['epoch']:>5} {r['train_loss']:>11.4f} {val:>10} {metric:>10} "
                         f"{r['samples_per_s']:>10.0f} {r['seconds']:>7.2f}{mark}")  # fmt: skip
        lines.append("* = best so far")
        return "\n".join(lines)

    def save(self, directory: str | Path) -> list[Path]:
        """report.json, report.txt and curves.png into ``directory``."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(self.to_dict(), indent=2, default=str))
        (out / "report.txt").write_text(self.table() + "\n")
        written = [out / "report.json", out / "report.txt"]
        with contextlib.suppress(ImportError):  # matplotlib is an extra: text and JSON stand
            written.append(self._plot(out / "curves.png"))
        return written

    def _plot(self, path: Path) -> Path:
        from ..bench.plots import new_figure

        fig = new_figure((9, 3.5))
        loss_ax, metric_ax = fig.subplots(1, 2)
        epochs = [r["epoch"] for r in self.history]
        loss_ax.plot(epochs, [r["train_loss"] for r in self.history], marker="o", label="train")
        if any("val_loss" in r for r in self.history):
            loss_ax.plot(epochs, [r.get("val_loss", np.nan) for r in self.history], marker="o",
                         label="validation")  # fmt: skip
        loss_ax.set(xlabel="epoch", ylabel=f"loss ({self.loss})", title="loss")
        loss_ax.legend(fontsize=7)
        if any("val_metric" in r for r in self.history):
            name = next(r["metric"] for r in self.history if "metric" in r)
            metric_ax.plot(epochs, [r.get("val_metric", np.nan) for r in self.history], marker="o")
            metric_ax.set(xlabel="epoch", ylabel=name, title=f"validation {name}")
        else:
            metric_ax.set_axis_off()
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        return path


@dataclass
class TrainResult:
    model: Any
    history: list[dict[str, Any]]
    best_checkpoint: Path | None
    report: TrainReport

    @property
    def restarts(self) -> int:
        """How many times the group was restarted after a process failed (--max-restarts)."""
        return self.report.restarts

    def optimize(self, val: Any, **options: Any) -> Any:
        """The trained model straight into :func:`nimbleml.optimize` (verified, timed)."""
        from ..optimizer import optimize

        return optimize(self.model, val=val, **options)
