"""The training loop: exact gradient accumulation, mixed precision with loss scaling done in
the right order, non-finite losses counted and refused, activation checkpointing, schedules,
early stopping, checkpoints and resume, evaluation with nimbleml's metrics."""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .._deps import require
from ..errors import ConfigError, NimbleError, warn
from . import checkpoint as ckpt
from .config import TrainConfig
from .data import Batch, batches
from .distributed import Distributed
from .losses import _primary, resolve_loss
from .precision import Precision, decide, measured_cost
from .result import TrainReport, TrainResult

_NO_CONTEXT = contextlib.nullcontext()  # reusable: fp32 steps enter no autocast


class TrainingError(NimbleError):
    """Training cannot go on (losses that stay non-finite)."""


def _to(x: Any, device: Any) -> Any:
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    if isinstance(x, tuple | list):
        return type(x)(_to(v, device) for v in x)
    if not hasattr(x, "to") or getattr(getattr(x, "device", None), "type", None) == device:
        return x  # already there (or not a tensor): no call at all
    return x.to(device, non_blocking=True)


def call(model: Any, inputs: Any) -> Any:
    """A model called the way its batches are shaped: dict -> keywords, tuple -> positional."""
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, tuple | list):
        return model(*inputs)
    return model(inputs)


def groups(micro: Iterator[Batch], size: int) -> Iterator[list[Batch]]:
    """Micro-batches in accumulation groups of ``size`` (the last may be shorter)."""
    group: list[Batch] = []
    for b in micro:
        group.append(b)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


class Trainer:
    """``Trainer(**options).fit(model, train_data, val_data)``; the options are those of
    :func:`nimbleml.train` (see TrainConfig)."""

    def __init__(self, **options: Any) -> None:
        unknown = sorted(set(options) - set(TrainConfig.names()))
        if unknown:
            raise ConfigError(
                f"unknown training option(s) {', '.join(unknown)}; known: "
                f"{', '.join(TrainConfig.names())}"
            )
        self.config = TrainConfig(**options)

    # -- set-up ------------------------------------------------------------------------
    def _device(self) -> str:
        torch = require("torch", "nimbleml.train")
        if self.config.device != "auto":
            return self.config.device
        return "cuda" if torch.cuda.is_available() else "cpu"

    def _optimizer(self, model: Any) -> Any:
        torch = require("torch", "nimbleml.train")
        cfg = self.config
        if not isinstance(cfg.optimizer, str):
            return cfg.optimizer  # a torch optimizer of the user's, over this model
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ConfigError("the model has no trainable parameters (requires_grad=True)")
        kind = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}
        extra = {"momentum": 0.9} if cfg.optimizer == "sgd" else {}
        return kind[cfg.optimizer](params, lr=cfg.lr, weight_decay=cfg.weight_decay, **extra)

    def _scheduler(self, optimizer: Any, steps_per_epoch: int) -> tuple[Any, str]:
        """(scheduler, when it steps: 'step' after each optimizer step, 'epoch', 'metric')."""
        torch = require("torch", "nimbleml.train")
        lr = torch.optim.lr_scheduler
        cfg = self.config
        total = max(1, steps_per_epoch * cfg.epochs)
        name = cfg.scheduler
        if name is None and not cfg.warmup_steps:
            return None, "step"
        if name is not None and not isinstance(name, str):
            return name, "step"  # a torch scheduler of the user's: stepped per optimizer step
        if name == "plateau":
            return lr.ReduceLROnPlateau(optimizer, patience=1), "metric"
        if name == "step":
            return lr.StepLR(optimizer, step_size=max(1, cfg.epochs // 3), gamma=0.1), "epoch"
        if name == "onecycle":
            return lr.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total), "step"
        main = (
            lr.CosineAnnealingLR(optimizer, T_max=max(1, total - cfg.warmup_steps))
            if name == "cosine"
            else lr.LambdaLR(optimizer, lambda _s: 1.0)
        )
        if not cfg.warmup_steps:
            return main, "step"
        warm = lr.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / cfg.warmup_steps))
        return lr.SequentialLR(optimizer, [warm, main], milestones=[cfg.warmup_steps]), "step"

    def _checkpointing(self, model: Any) -> list[tuple[Any, Any]]:
        """Activation checkpointing (use_reentrant=False) on the chosen blocks: True picks
        the children of the largest Sequential/ModuleList. Returns what to undo."""
        torch = require("torch", "nimbleml.train")
        from torch.utils.checkpoint import checkpoint

        chosen = self.config.checkpointing
        if chosen is False:
            return []
        named = dict(model.named_modules())
        if chosen is True:
            lists = [m for m in named.values()
                     if isinstance(m, torch.nn.Sequential | torch.nn.ModuleList)]  # fmt: skip
            if not lists:
                raise ConfigError(
                    "checkpointing=True looks for a Sequential or ModuleList of blocks and this "
                    "model has none; name the blocks: checkpointing=['encoder.layers.0', ...]"
                )
            blocks = list(max(lists, key=len).children())
        else:
            missing = [n for n in chosen if n not in named]
            if missing:
                raise ConfigError(
                    f"checkpointing: no submodule {', '.join(missing)}; some that exist: "
                    f"{', '.join(n for n in list(named)[1:9])}"
                )
            blocks = [named[n] for n in chosen]
        undo = []
        for block in blocks:
            original = vars(block).get("forward")  # an instance-level forward of the user's

            def forward(*args: Any, _f: Any = block.forward, _b: Any = block, **kwargs: Any) -> Any:
                if _b.training and torch.is_grad_enabled():
                    return checkpoint(_f, *args, use_reentrant=False, **kwargs)
                return _f(*args, **kwargs)

            block.forward = forward
            undo.append((block, original))
        return undo

    # -- the run -----------------------------------------------------------------------
    def fit(self, model: Any, train_data: Any, val_data: Any = None) -> TrainResult:
        torch = require("torch", "nimbleml.train")
        cfg = self.config
        if not isinstance(model, torch.nn.Module):
            raise ConfigError(f"nimbleml.train takes a torch.nn.Module, got {type(model).__name__}")
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        device = self._device()
        dist = Distributed.from_env(device)
        threads = torch.get_num_threads()  # loader tuning may change them for the run
        try:
            return self._fit(model, train_data, val_data, device, dist)
        finally:
            if torch.get_num_threads() != threads:  # setting it rebuilds the thread pool
                torch.set_num_threads(threads)
            dist.close()

    def _fit(self, model: Any, train_data: Any, val_data: Any, device: str,
             dist: Distributed) -> TrainResult:  # fmt: skip
        torch = require("torch", "nimbleml.train")
        cfg = self.config
        model = model.to(device)
        batch_size = cfg.batch_size
        tuned: dict[str, Any] = {}  # measured choices, into the report's config
        if batch_size == "auto":
            batch_size, tuned["batch_size_search"] = self._find_batch_size(
                model, train_data, device, dist
            )
        loader_args = cfg.dataloader if isinstance(cfg.dataloader, dict) else None
        if cfg.dataloader == "auto" and dist.world == 1:  # under torchrun each rank would race
            from .tuning import is_plain_dataset, tune_loader

            if is_plain_dataset(train_data):
                decision = tune_loader(model, train_data, int(batch_size), loss=cfg.loss,
                                       device=device, precision=cfg.precision)  # fmt: skip
                decision.apply_threads()  # workers + main threads within the cores
                loader_args, tuned["dataloader"] = decision.kwargs, decision.to_dict()
        train = batches(train_data, int(batch_size), loader_args, cfg.seed,
                        rank=dist.rank, world=dist.world)  # fmt: skip
        sample = train.sample()
        loss_name, loss_fn = resolve_loss(cfg.loss, sample.target)
        precision = decide(cfg.precision, device)
        if cfg.precision != "auto" and precision.autocast_dtype is not None and device == "cpu":
            self._warn_emulated(model, sample, loss_fn, device, precision)
        optimizer = self._optimizer(model)
        steps_per_epoch = math.ceil(len(train) / cfg.grad_accum)
        scheduler, stepping = self._scheduler(optimizer, steps_per_epoch)
        scaler = torch.amp.GradScaler(precision.device_type, enabled=precision.scaled)
        undo = self._checkpointing(model)
        net = dist.wrap(model, device)
        state = _State()
        out_dir = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else None
        if cfg.resume and out_dir is not None:
            state = self._resume(model, optimizer, scaler, scheduler, out_dir)
        task = "classification" if loss_name == "cross_entropy" else None
        try:
            for epoch in range(state.epoch, cfg.epochs):
                record = self._epoch(net, train, epoch, optimizer, scaler, scheduler, stepping,
                                     loss_fn, precision, device, dist, state)  # fmt: skip
                if val_data is not None:  # rank 0 evaluates; every rank judges on its figures
                    measured = (self._evaluate(model, val_data, loss_fn, precision, device,
                                               int(batch_size), task) if dist.main else None)  # fmt: skip
                    record.update(dist.share(measured))
                self._after_epoch(record, scheduler, stepping, optimizer, state, model,
                                  scaler, out_dir, dist)  # fmt: skip
                if state.stop:
                    break
        finally:
            for block, original in undo:
                if original is None:
                    del block.forward  # back to the class's forward
                else:
                    block.forward = original
        report = TrainReport(history=state.history, precision=precision.name,
                             precision_reason=precision.reason, loss=loss_name,
                             device=device, config={**_summary(cfg, int(batch_size)), **tuned},
                             step_times_s=state.step_times)  # fmt: skip
        if out_dir is not None and dist.main:
            report.save(out_dir)
        best = (
            out_dir / ckpt.BEST if out_dir is not None and (out_dir / ckpt.BEST).exists() else None
        )
        return TrainResult(model=model.eval(), history=state.history, best_checkpoint=best,
                           report=report)  # fmt: skip

    def _find_batch_size(self, model: Any, train_data: Any, device: str,
                         dist: Distributed) -> tuple[int, dict[str, Any]]:  # fmt: skip
        """batch_size="auto": the batch size search, by rank 0 alone under torchrun (the
        others would race it for the memory and the cores), shared with every process. The
        search finds one process's batch; the global batch is that times the processes, and
        a process's memory budget is its share of this host's."""
        from .tuning import find_batch_size

        found: Any = None
        if dist.main:
            options: dict[str, Any] = {}
            if dist.world > 1:
                local = int(os.environ.get("LOCAL_WORLD_SIZE", dist.world))
                options["steps_per_epoch"] = 10 * dist.world  # 10 global steps an epoch
                if not str(device).startswith("cuda"):
                    import psutil

                    options["memory_budget_mb"] = (
                        psutil.virtual_memory().available / 2**20 / 2 / local
                    )
            try:
                result = find_batch_size(model, train_data, device=device,
                                         loss=self.config.loss, precision=self.config.precision,
                                         **options)  # fmt: skip
            except NimbleError as exc:  # every process stops on it, not just rank 0
                found = exc
            else:
                found = (result.best * dist.world, {**result.to_dict(), "processes": dist.world})
        found = dist.share(found)
        if isinstance(found, NimbleError):
            raise found
        return found

    def _epoch(self, net: Any, train: Any, epoch: int, optimizer: Any, scaler: Any,
               scheduler: Any, stepping: str, loss_fn: Any, precision: Precision, device: str,
               dist: Distributed, state: _State) -> dict[str, Any]:  # fmt: skip
        torch = require("torch", "nimbleml.train")
        cfg = self.config
        net.train()
        loss_total, samples, skipped = 0.0, 0, 0
        mixed = precision.autocast_dtype is not None
        scaled = scaler.is_enabled()
        started = time.perf_counter()
        for group in groups(train.epoch(epoch), cfg.grad_accum):
            step_started = time.perf_counter()
            total = dist.sum(sum(b.n for b in group))  # the samples of this global step
            finite = True
            for i, b in enumerate(group):
                with dist.no_sync(net, final=i == len(group) - 1):
                    with precision.autocast() if mixed else _NO_CONTEXT:
                        out = call(net, _to(b.inputs, device))
                        loss = loss_fn(out, _to(b.target, device))  # the micro-batch's mean
                    value = loss.item()
                    if not dist.all_finite(value):
                        finite = False
                        continue
                    loss_total += value * b.n
                    samples += b.n
                    # its share of the step's samples (DDP averages over the processes too):
                    # exact whatever the micro-batch sizes, and no extra op when it is 1
                    weight = b.n * dist.world / total
                    if weight != 1.0:
                        loss = loss * weight
                    (scaler.scale(loss) if scaled else loss).backward()
            if not finite:
                optimizer.zero_grad(set_to_none=True)
                skipped += 1
                state.nonfinite += 1
                if state.nonfinite >= cfg.max_nonfinite:
                    raise TrainingError(
                        f"the loss was NaN or infinite {state.nonfinite} steps in a row "
                        f"(epoch {epoch + 1}, step {state.step + 1}); lower lr (now {cfg.lr:g}), "
                        "set grad_clip=1.0, or train in precision='fp32'"
                    )
                continue
            state.nonfinite = 0
            if cfg.grad_clip is not None or cfg.grad_clip_value is not None:
                scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
                params = [p for g in optimizer.param_groups for p in g["params"]]
                if cfg.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                if cfg.grad_clip_value is not None:
                    torch.nn.utils.clip_grad_value_(params, cfg.grad_clip_value)
            scale = scaler.get_scale() if scaled else None
            if scale is None:
                optimizer.step()  # no loss scaling: the scaler would only pass it through
            else:
                scaler.step(optimizer)
                scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if scale is not None and scaler.get_scale() < scale:
                skipped += 1  # the scaler found inf gradients and skipped the step: the
                continue  # schedule does not advance for it, and it is not counted
            if scheduler is not None and stepping == "step":
                scheduler.step()  # only after a step the optimizer really took
            state.step += 1
            state.step_times.append(time.perf_counter() - step_started)
            for callback in cfg.callbacks:
                callback("step_end", {"epoch": epoch + 1, "step": state.step,
                                      "loss": loss_total / max(samples, 1), "samples": samples,
                                      "lr": optimizer.param_groups[0]["lr"]})  # fmt: skip
        seconds = time.perf_counter() - started
        loss_total, samples = dist.sum(loss_total), int(dist.sum(samples))  # every process's
        return {
            "epoch": epoch + 1,
            "train_loss": loss_total / samples if samples else float("nan"),
            "samples_per_s": samples / seconds if seconds > 0 else 0.0,
            "seconds": seconds,
            "skipped_steps": skipped,
            "lr": optimizer.param_groups[0]["lr"],
        }

    def _evaluate(self, model: Any, val_data: Any, loss_fn: Any, precision: Precision,
                  device: str, batch_size: int, task: str | None) -> dict[str, Any]:  # fmt: skip
        torch = require("torch", "nimbleml.train")
        from ..metrics import evaluate, resolve

        val = batches(val_data, max(batch_size, 256), shuffle=False)
        model.eval()
        outs, ys, loss_total, n = [], [], 0.0, 0
        with torch.no_grad(), precision.autocast():
            for b in val.epoch(0):
                out = call(model, _to(b.inputs, device))
                loss_total += float(loss_fn(out, _to(b.target, device))) * b.n
                n += b.n
                outs.append(_primary(out).float().cpu().numpy())
                ys.append(b.target.cpu().numpy())
        record: dict[str, Any] = {"val_loss": loss_total / max(n, 1)}
        if self.config.metric is not None or task == "classification":
            metric = resolve(self.config.metric, task)
            value = evaluate(metric, [np.concatenate(outs)], np.concatenate(ys), None, task)
            record.update(val_metric=value, metric=metric.name,
                          higher_is_better=metric.higher_is_better)  # fmt: skip
        return record

    def _after_epoch(self, record: dict[str, Any], scheduler: Any, stepping: str,
                     optimizer: Any, state: _State, model: Any, scaler: Any,
                     out_dir: Path | None, dist: Distributed) -> None:  # fmt: skip
        cfg = self.config
        score, higher = _score(record)
        if scheduler is not None and stepping == "epoch":
            scheduler.step()
        elif scheduler is not None and stepping == "metric":
            scheduler.step(score if not higher else -score)
        better = state.best is None or (score > state.best if higher else score < state.best)
        if better:
            state.best, state.since_best = score, 0
        else:
            state.since_best += 1
        record["best"] = better
        state.history.append(record)
        state.epoch = record["epoch"]
        if cfg.early_stopping is not None and state.since_best >= cfg.early_stopping:
            state.stop = True
            record["stopped_early"] = True
        for callback in cfg.callbacks:  # a callback returns "stop" to end training here
            if callback("epoch_end", dict(record)) == "stop":
                state.stop = True
                record["stopped_by_callback"] = True
        state.stop = bool(dist.share(state.stop))  # rank 0's say, or the processes part ways
        if out_dir is not None and dist.main:
            ckpt.save(self._state_dict(model, optimizer, scaler, scheduler, state), out_dir,
                      record["epoch"], cfg.keep_last, better)  # fmt: skip
            with open(out_dir / "history.jsonl", "a") as fh:
                fh.write(json.dumps(record) + "\n")

    def _state_dict(self, model: Any, optimizer: Any, scaler: Any, scheduler: Any,
                    state: _State) -> dict[str, Any]:  # fmt: skip
        return {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "epoch": state.epoch,
            "step": state.step,
            "best": state.best,
            "since_best": state.since_best,
            "history": state.history,
            "rng": ckpt.rng_state(),
        }

    def _resume(self, model: Any, optimizer: Any, scaler: Any, scheduler: Any,
                out_dir: Path) -> _State:  # fmt: skip
        path = ckpt.latest(out_dir)
        state = _State()
        if path is None:
            return state  # nothing to resume yet: a fresh run
        saved = ckpt.load(path)
        ckpt.check_compatible(model, saved["model"], path)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scaler.load_state_dict(saved["scaler"])
        if scheduler is not None and saved.get("scheduler") is not None:
            scheduler.load_state_dict(saved["scheduler"])
        state.epoch, state.step = saved["epoch"], saved["step"]
        state.best, state.since_best = saved["best"], saved["since_best"]
        state.history = list(saved["history"])
        ckpt.set_rng_state(saved["rng"])
        return state

    def _warn_emulated(self, model: Any, sample: Batch, loss_fn: Any, device: str,
                       precision: Precision) -> None:  # fmt: skip
        from ..compress.torch_native import bf16_support

        native, found = bf16_support()
        if native and precision.name == "bf16-mixed":
            return
        found = found if precision.name == "bf16-mixed" else "no CPU computes fp16 natively"

        def step(m: Any, b: Batch, p: Precision) -> None:
            with p.autocast():
                loss = loss_fn(call(m, _to(b.inputs, device)), _to(b.target, device))
            loss.backward()

        times = measured_cost(model, sample, step, precision)
        warn(
            f"{precision.name} on this CPU is emulated ({found}): a training step measured "
            f"{times:.1f}x the time of fp32; precision='auto' would train in fp32",
            RuntimeWarning,
        )


class _State:
    def __init__(self) -> None:
        self.epoch = 0
        self.step = 0
        self.best: float | None = None
        self.since_best = 0
        self.nonfinite = 0
        self.stop = False
        self.history: list[dict[str, Any]] = []
        self.step_times: list[float] = []


def _score(record: dict[str, Any]) -> tuple[float, bool]:
    """What 'best' is judged on: the val metric, else the val loss, else the train loss."""
    if "val_metric" in record:
        return float(record["val_metric"]), bool(record["higher_is_better"])
    if "val_loss" in record:
        return float(record["val_loss"]), False
    return float(record["train_loss"]), False


def _summary(cfg: TrainConfig, batch_size: int) -> dict[str, Any]:
    keep = ("optimizer", "lr", "weight_decay", "epochs", "grad_accum", "grad_clip",
            "scheduler", "warmup_steps", "early_stopping", "seed")  # fmt: skip
    out = {k: getattr(cfg, k) for k in keep}
    out = {k: (v if isinstance(v, int | float | str | type(None)) else type(v).__name__)
           for k, v in out.items()}  # fmt: skip
    out["batch_size"] = batch_size
    out["checkpointing"] = (
        cfg.checkpointing if isinstance(cfg.checkpointing, bool) else list(cfg.checkpointing)
    )
    return out


def train(model: Any, train_data: Any, val_data: Any = None, **options: Any) -> TrainResult:
    """Train ``model`` on ``train_data`` ((X, y), a Dataset or a DataLoader); see Trainer."""
    return Trainer(**options).fit(model, train_data, val_data)
