"""One process of ``nimbleml train``: the model and data built from their names, trackers
and the progress display as callbacks, the Trainer, then what was asked for afterwards (the
weights, a verified package). Under torchrun every process runs this; only rank 0 shows
progress, logs to trackers and writes files (the loop writes checkpoints from rank 0 only).
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from .._deps import require
from ..errors import ConfigError
from ._common import _show


def run(spec: dict[str, Any], progress: str, save_model: Path | None,
        optimize: tuple[float, float, Path | None] | None, cloud: str | None = None) -> None:  # fmt: skip
    torch = require("torch", "nimbleml train")
    from ..train import Trainer, loggers, sources
    from .train import PRECISION_REASON, options

    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    main = rank == 0
    _check_gpus(torch, spec["device"], world)
    train_data = sources.load(spec["train"], spec["target"], spec["image_size"], "--data")
    val_data = (
        sources.load(spec["val"], spec["target"], spec["image_size"], "--val")
        if spec["val"] else None
    )  # fmt: skip
    torch.manual_seed(spec["seed"])  # the same first weights in every process and every run
    model = sources.build_model(spec["factory"], spec["arch"], spec["num_classes"],
                                dict(spec["kwargs"]))  # fmt: skip
    if spec["strategy"] == "fsdp":  # blocks to shard, checked before a tracker writes
        from ..train.fsdp import blocks

        blocks(model, spec["fsdp_blocks"])
    trackers = [loggers.make(s) for s in spec["log"]] if main else []
    display = Display(progress if main else "none", spec,
                      _micro_batches(train_data, spec["batch_size"]), world)  # fmt: skip
    opts = options(spec)
    for tracker in trackers:
        tracker.start({k: v for k, v in opts.items() if v is not None} | {"nproc": world})
        if isinstance(tracker, loggers.MLflowLogger) and spec["checkpoint_dir"]:
            out = Path(spec["checkpoint_dir"])
            tracker.artifacts = [out / n for n in ("report.json", "report.txt", "curves.png",
                                                   "history.jsonl")]  # fmt: skip
    ok = False
    try:
        trainer = Trainer(**opts, callbacks=[display, *trackers])
        trainer.precision_reason = spec.get(PRECISION_REASON)
        with display:
            result = trainer.fit(model, train_data, val_data)
        ok = True
    finally:
        for tracker in trackers:
            tracker.close(ok)
    if not main:
        return
    _show(result.report.table())
    if spec["checkpoint_dir"]:
        _show(f"checkpoints, history.jsonl, report and curves: {spec['checkpoint_dir']}/")
    if save_model is not None:
        torch.save(result.model.state_dict(), save_model)
        _show(f"weights: {save_model}")
    if optimize is not None:
        _optimize(result, val_data, spec, *optimize)
    if cloud:
        from .cost import after

        after(cloud, "this run's training time", train_report=result.report.to_dict())


def _check_gpus(torch: Any, device: str, world: int) -> None:
    """nccl takes one GPU per process: more processes on this node than GPUs is an error
    (each would need a GPU of its own), said before the process group hangs or crashes."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    on_gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if world > 1 and on_gpu and torch.cuda.device_count() < local:
        raise ConfigError(
            f"--nproc {local} on {torch.cuda.device_count()} GPU(s): each process needs a GPU "
            f"of its own (nccl); give --nproc {torch.cuda.device_count()}, or --device cpu to "
            "train on the CPU (gloo)"
        )


def _optimize(result: Any, val_data: Any, spec: dict[str, Any], max_drop: float,
              time_budget: float, output: Path | None) -> None:  # fmt: skip
    from ..train import sources
    from ..train.launch import cores

    torch = require("torch", "nimbleml train")
    torch.set_num_threads(cores())  # timed on the whole machine, as it will be served
    X, y = sources.as_arrays(val_data)
    metric = spec["metric"] or ("accuracy" if result.report.loss == "cross_entropy" else "mse")
    found = result.optimize(val=(X, y), metric=metric, max_drop=max_drop,
                            time_budget_s=time_budget)  # fmt: skip
    assert output is not None
    found.best.save(output)
    _show(found.table())
    _show(f"package: {output}")


class Display:
    """The progress of a run as the Trainer reports it (``step_end`` / ``epoch_end``):
    'rich': a live bar with epoch, step, loss, samples/s and time left, on a terminal;
    'lines': one line per epoch on stderr; 'off' (--quiet): no progress, but a resume is
    always said ('resuming from ...', one line on stderr: the same command either starts
    over or goes on, and the user must be able to tell which); 'none': nothing (the
    processes other than rank 0)."""

    def __init__(self, mode: str, spec: dict[str, Any], micro_batches: int | None,
                 world: int) -> None:  # fmt: skip
        self.epochs, self.world = int(spec["epochs"]), world
        self.steps_per_epoch = (
            math.ceil(micro_batches / spec["grad_accum"]) if micro_batches else None
        )
        self.console: Any = None
        if mode == "rich":
            stream = sys.stderr if sys.stderr.isatty() else sys.stdout
            mode = "rich" if stream.isatty() else "lines"  # under torchrun: rank 0's terminal
            if mode == "rich":
                from rich.console import Console

                self.console = Console(file=stream)
        self.mode = mode
        self.bar: Any = None
        self.task: Any = None
        self.first: tuple[float, float] = (0.0, 0.0)  # (time, samples) at the epoch's first step
        self.epoch = 0

    def __enter__(self) -> Display:
        if self.mode == "rich":
            from rich import progress as rp

            self.bar = rp.Progress(
                rp.TextColumn("epoch {task.fields[epoch]}/" + str(self.epochs)), rp.BarColumn(),
                rp.TextColumn("step"), rp.MofNCompleteColumn(),
                rp.TextColumn("loss {task.fields[loss]}"),
                rp.TextColumn("{task.fields[rate]} samples/s"), rp.TimeRemainingColumn(),
                console=self.console, transient=True,
            )  # fmt: skip
            self.bar.__enter__()
            total = self.steps_per_epoch * self.epochs if self.steps_per_epoch else None
            self.task = self.bar.add_task("train", total=total, epoch=1, loss="-", rate="-")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def __call__(self, event: str, info: dict[str, Any]) -> None:
        if self.mode == "none" or (self.mode == "off" and event != "resume"):
            return
        if event == "resume":
            line = (
                f"resuming from {info['checkpoint']} (epoch {info['epoch']} of {self.epochs} done)"
            )
            if self.bar is not None:
                self.bar.console.print(line, highlight=False, markup=False)
            else:
                print(line, file=sys.stderr, flush=True)
        elif event == "step_end":
            now, samples = time.perf_counter(), float(info.get("samples", 0))
            if info.get("epoch") != self.epoch:  # rates from the first step on: set-up excluded
                self.epoch, self.first = int(info.get("epoch", 0)), (now, samples)
            seconds, done = now - self.first[0], samples - self.first[1]
            rate = f"{done * self.world / seconds:,.0f}" if seconds > 0 and done else "-"
            if self.bar is not None:
                self.bar.update(self.task, completed=int(info.get("step", 0)), epoch=self.epoch,
                                loss=f"{float(info.get('loss', math.nan)):.4f}", rate=rate)  # fmt: skip
        elif event == "epoch_end":
            line = epoch_line(info, self.epochs)
            if self.bar is not None:
                self.bar.console.print(line, highlight=False, markup=False)
                if self.steps_per_epoch:
                    self.bar.update(self.task, completed=int(info["epoch"]) * self.steps_per_epoch)
            else:
                print(line, file=sys.stderr, flush=True)


def _micro_batches(data: Any, batch_size: int | str) -> int | None:
    """Batches per epoch in each process (None when not known before training)."""
    from torch.utils.data import DataLoader

    from ..train import sources

    if isinstance(data, DataLoader):
        return len(data)
    rows = sources.rows(data)
    return math.ceil(rows / batch_size) if rows and isinstance(batch_size, int) else None


def epoch_line(record: dict[str, Any], epochs: int) -> str:
    """'epoch 3/10: train_loss 0.1234, val_loss 0.2345, accuracy 0.9600, 5,120 samples/s, 1.2 s'"""
    parts = [f"train_loss {record['train_loss']:.4f}"]
    if "val_loss" in record:
        parts.append(f"val_loss {record['val_loss']:.4f}")
    if "val_metric" in record:
        parts.append(f"{record.get('metric', 'metric')} {record['val_metric']:.4f}")
    parts.append(f"{record.get('samples_per_s', 0):,.0f} samples/s")
    parts.append(f"{record.get('seconds', 0):.1f} s")
    if record.get("nonfinite_steps"):
        parts.append(f"{record['nonfinite_steps']} step(s) skipped: loss NaN or infinite")
    mark = " (best)" if record.get("best") else ""
    stop = ", stopped early" if record.get("stopped_early") else ""
    return f"epoch {record['epoch']}/{epochs}: {', '.join(parts)}{mark}{stop}"
