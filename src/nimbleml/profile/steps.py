"""Training steps under the profiler, split into data loading, forward, backward and
optimizer, built from nimbleml's trainer: its batching (``train.data.batches``: (X, y), a
Dataset or a DataLoader), its loss choice (``resolve_loss``), its optimizer and precision
(``Trainer``'s), and the way it calls a model (``train.loop.call``).

A step here is what the trainer's loop does for one micro-batch: fetch the batch (and move it
to the device), forward and loss, backward, optimizer step and ``zero_grad``. Each phase is
timed with ``perf_counter`` (after a CUDA synchronise on a GPU) and is also a
``record_function`` region in the trace. The phase split comes from steps run *without* the
profiler. The verdict is "input-bound" when data loading is the largest phase: the model
waits for its data, and a faster model would not train faster.

The trainer's ``dataloader="auto"`` tuning is not run: the profile measures the DataLoader
as given (pass ``dataloader={"num_workers": 2}`` to measure a setting). The model is a copy:
the profiled steps do not change the caller's weights.
"""

from __future__ import annotations

import copy
import io
import itertools
import time
from typing import Any

from .._deps import require
from ..errors import ConfigError
from .common import Settings
from .pytorch import REGIONS, profile_calls
from .report import PhaseStat, ProfileReport

TRAIN_OPTIONS = ("loss", "optimizer", "lr", "weight_decay", "precision", "dataloader", "seed",
                 "device")  # fmt: skip


class Steps:
    """Training steps of a copy of ``model`` on ``data``; ``self.log`` holds each step's
    phase seconds, in order."""

    def __init__(self, model: Any, data: Any, batch_size: int, options: dict[str, Any]) -> None:
        torch = require("torch", "profiling a training step")
        from ..train.data import batches
        from ..train.loop import Trainer
        from ..train.losses import resolve_loss
        from ..train.precision import decide

        trainer = Trainer(**options)
        cfg = trainer.config
        self.torch, self.device = torch, trainer._device()
        self.cuda = self.device.startswith("cuda")
        self.model = _copy(torch, model).to(self.device).train()
        loader_args = cfg.dataloader if isinstance(cfg.dataloader, dict) else None
        self.data = batches(data, batch_size, loader_args, cfg.seed)
        sample = self.data.sample()
        self.loss_name, self.loss_fn = resolve_loss(cfg.loss, sample.target)
        self.optimizer = trainer._optimizer(self.model)
        self.precision = decide(cfg.precision, self.device)
        self.scaler = torch.amp.GradScaler(self.precision.device_type,
                                           enabled=self.precision.scaled)  # fmt: skip
        self.epoch, self.batches = 0, self.data.epoch(0)
        self.log: list[tuple[float, ...]] = []

    def _next(self) -> Any:
        try:
            return next(self.batches)
        except StopIteration:  # as training does: the next epoch
            self.epoch += 1
            self.batches = self.data.epoch(self.epoch)
            return next(self.batches)

    def _mark(self, marks: list[float]) -> None:
        if self.cuda:
            self.torch.cuda.synchronize(self.device)
        marks.append(time.perf_counter())

    def __call__(self, _i: int = 0) -> None:
        from torch.profiler import record_function

        from ..train.loop import _to, call

        marks = [time.perf_counter()]
        with record_function("data_loading"):
            batch = self._next()
            inputs, target = _to(batch.inputs, self.device), _to(batch.target, self.device)
            self._mark(marks)
        with record_function("forward"), self.precision.autocast():
            loss = self.loss_fn(call(self.model, inputs), target)
            self._mark(marks)
        with record_function("backward"):
            (self.scaler.scale(loss) if self.scaler.is_enabled() else loss).backward()
            self._mark(marks)
        with record_function("optimizer"):
            if self.scaler.is_enabled():
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self._mark(marks)
        self.log.append(tuple(b - a for a, b in itertools.pairwise(marks)))

    def flops(self) -> float | None:
        """FLOPs of forward + loss + backward on one batch (the optimizer's are not counted)."""
        from torch.utils.flop_counter import FlopCounterMode

        from ..train.loop import _to, call

        batch = self.data.sample(self.data.batch_size)
        inputs, target = _to(batch.inputs, self.device), _to(batch.target, self.device)
        with FlopCounterMode(display=False) as counter, self.precision.autocast():
            self.loss_fn(call(self.model, inputs), target).backward()
        self.optimizer.zero_grad(set_to_none=True)
        return float(counter.get_total_flops()) or None


def _copy(torch: Any, model: Any) -> Any:
    """A copy to train: a deep copy, but TorchScript through save and load, since a deep
    copy's parameters are no longer leaves and no optimizer takes them."""
    if isinstance(model, torch.jit.ScriptModule):
        buffer = io.BytesIO()
        torch.jit.save(model, buffer)
        buffer.seek(0)
        return torch.jit.load(buffer)
    return copy.deepcopy(model)


def check_options(options: dict[str, Any] | None) -> dict[str, Any]:
    options = dict(options or {})
    unknown = sorted(set(options) - set(TRAIN_OPTIONS))
    if unknown:
        raise ConfigError(
            f"train_options: {', '.join(unknown)} not used by a profiled step; it takes "
            f"{', '.join(TRAIN_OPTIONS)}"
        )
    return options


def profile_train(model: Any, data: Any, sizes: list[int], settings: Settings, name: str,
                  options: dict[str, Any] | None = None) -> ProfileReport:  # fmt: skip
    torch = require("torch", "profiling a training step")
    options = check_options(options)
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(
            f"train=True profiles a PyTorch training step and takes a torch.nn.Module (or a "
            f"TorchScript file), got {type(model).__name__}"
        )
    batches, traces, runtime = [], {}, {}
    for size in sizes:
        steps = Steps(model, data, size, options)
        batch, trace, _ = profile_calls(steps, size, settings, f"trace-train-b{size}.json",
                                        flops=steps.flops, device=steps.device,
                                        regions=REGIONS)  # fmt: skip
        # profile_calls runs: warm-up steps, then `runs` steps without the profiler (these)
        measured = steps.log[settings.warmup : settings.warmup + batch.timed_runs]
        means = [sum(step[i] for step in measured) / len(measured) for i in range(len(REGIONS))]
        total = sum(means) or 1e-12
        batch.phases = [PhaseStat(name=p, ms=m * 1e3, share=m / total)
                        for p, m in zip(REGIONS, means, strict=True)]  # fmt: skip
        traces[batch.trace or ""] = trace
        batches.append(batch)
        runtime = {"engine": f"torch {torch.__version__}", "device": steps.device,
                   "threads": torch.get_num_threads(), "precision": steps.precision.name,
                   "loss": steps.loss_name, "optimizer": type(steps.optimizer).__name__,
                   "dataloader": options.get("dataloader") or "DataLoader defaults"}  # fmt: skip
    verdict = "input-bound" if _largest(batches[-1]) == "data_loading" else "compute-bound"
    notes = [
        "a step: fetch the batch, forward + loss, backward, optimizer step + zero_grad (one "
        "micro-batch); phases timed with perf_counter over steps run without the profiler",
        f"the profiled steps ran under torch.profiler (warm-up steps dropped); the first "
        f"{settings.warmup} step(s) warm up and are not counted",
        "verdict: input-bound when data loading is the largest phase (at the largest batch size)",
    ]
    return ProfileReport(model=name, kind="train", runtime=runtime, batches=batches,
                         verdict=verdict, traces=traces, notes=notes)  # fmt: skip


def _largest(batch: Any) -> str:
    return str(max(batch.phases, key=lambda p: p.share).name)
