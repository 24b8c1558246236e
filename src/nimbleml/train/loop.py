"""The training loop: exact gradient accumulation, mixed precision with loss scaling done in
the right order, non-finite losses counted and refused, activation checkpointing, schedules,
early stopping, checkpoints and resume, evaluation with nimbleml's metrics."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .._deps import require
from ..errors import (
    ConfigError,
    NimbleError,
    PeerLostError,
    TrainingError,
    running_user_code,
)
from . import checkpoint as ckpt
from . import parts
from . import usercode as uc
from .config import TrainConfig
from .data import Batch, batches, refuse_missing_in
from .distributed import Distributed
from .fsdp import blocks as fsdp_blocks
from .fsdp import grad_scaler as fsdp_scaler
from .fsdp import precision_for as fsdp_precision
from .losses import _primary, resolve_loss
from .outcome import say_nonfinite, summary
from .outcome import score as judged_on
from .precision import Precision, decide, warn_if_slower
from .result import TrainReport, TrainResult
from .state import State, restore, state_dict
from .usercode import BACKWARD, CALLBACK, DATA, FORWARD, LOSS, OPTIMIZER, STEP

_NO_CONTEXT = contextlib.nullcontext()  # reusable: fp32 steps enter no autocast
_DATA_CHECK = "the Dataset's __getitem__ / __len__ and the DataLoader's collate_fn"


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


def groups(micro: Iterator[Batch], size: int, fetched: list[int]) -> Iterator[list[Batch]]:
    """Micro-batches in accumulation groups of ``size`` (the last may be shorter);
    ``fetched[0]`` counts the micro-batches read (the one a data error is in)."""
    group: list[Batch] = []
    for b in micro:
        fetched[0] += 1
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
        # why this precision, when a caller chose it for the user (the command line's fp32
        # default): said in the report instead of "chosen explicitly"
        self.precision_reason: str | None = None

    # -- set-up ------------------------------------------------------------------------
    def _device(self) -> str:
        torch = require("torch", "nimbleml.train")
        if self.config.device != "auto":
            return self.config.device
        return "cuda" if torch.cuda.is_available() else "cpu"

    def _optimizer(self, model: Any) -> Any:
        return parts.optimizer(self.config, model)

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
        blocks = fsdp_blocks(model, cfg.fsdp_blocks) if cfg.strategy == "fsdp" else None
        try:
            dist = Distributed.from_env(device, cfg.strategy)
        except Exception as exc:  # the processes did not meet: another one is gone
            if isinstance(exc, NimbleError) or not uc.is_peer_lost(exc):
                raise
            rank = os.environ.get("RANK", "?")
            raise PeerLostError(f"process {rank}: {uc.PEER_LOST} ({type(exc).__name__}) "
                                "while the processes met; another process stopped first") from exc  # fmt: skip
        dist.blocks = blocks
        threads = torch.get_num_threads()  # loader tuning may change them for the run
        try:
            return self._fit(model, train_data, val_data, device, dist)
        except Exception as exc:
            if dist.world > 1 and not isinstance(exc, NimbleError) and uc.is_peer_lost(exc):
                raise PeerLostError(
                    f"process {dist.rank}: {uc.PEER_LOST} ({type(exc).__name__}); another process "
                    "stopped first"
                ) from exc
            raise
        finally:
            if torch.get_num_threads() != threads:  # setting it rebuilds the thread pool
                torch.set_num_threads(threads)
            dist.close()

    # long (~95 lines): the run's story in order; its pieces are already functions (parts.py)
    def _fit(self, model: Any, train_data: Any, val_data: Any, device: str,
             dist: Distributed) -> TrainResult:  # fmt: skip
        torch = require("torch", "nimbleml.train")
        cfg = self.config
        out_dir = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else None
        resume = cfg.resume or dist.restarts > 0  # torchrun restarted the group: go on
        if out_dir is not None and dist.main:  # before any work: not after the first epoch
            ckpt.check_writable(out_dir)
            ckpt.clean_temp(out_dir)  # what a killed run left
            if not resume:
                ckpt.start_over(out_dir)
        model = model.to(device)
        batch_size = cfg.batch_size
        from .measure import is_plain_dataset

        # the DataLoader tuning: a Dataset of one process (under torchrun ranks would race)
        tune = cfg.dataloader == "auto" and dist.world == 1 and is_plain_dataset(train_data)
        loader_args = cfg.dataloader if isinstance(cfg.dataloader, dict) else None
        train = None
        if batch_size != "auto" and not tune:
            train = batches(train_data, int(batch_size), loader_args, cfg.seed,
                            rank=dist.rank, world=dist.world)  # fmt: skip
        probe = train or batches(train_data, 8, None, cfg.seed, shuffle=False)
        with running_user_code("reading the first training batch", _DATA_CHECK):
            sample = probe.sample()
        uc.first_forward(model, _to(sample.inputs, device), call)  # names a misfit at once
        tuned: dict[str, Any] = {}  # measured choices, into the report's config
        if batch_size == "auto":
            batch_size, tuned["batch_size_search"] = self._find_batch_size(
                model, train_data, device, dist
            )
        if tune:
            from .loader_settings import tune_loader

            decision = tune_loader(model, train_data, int(batch_size), loss=cfg.loss,
                                   device=device, precision=cfg.precision)  # fmt: skip
            decision.apply_threads()  # workers + main threads within the cores
            loader_args, tuned["dataloader"] = decision.kwargs, decision.to_dict()
        if train is None:
            train = batches(train_data, int(batch_size), loader_args, cfg.seed,
                            rank=dist.rank, world=dist.world)  # fmt: skip
        val = (
            batches(val_data, max(int(batch_size), 256), shuffle=False,
                    where="the validation data")
            if val_data is not None and (dist.main or dist.sharded) else None
        )  # fmt: skip
        loss_name, loss_fn = resolve_loss(cfg.loss, sample.target)
        precision = decide(cfg.precision, device)
        if self.precision_reason and cfg.precision != "auto":
            precision = dataclasses.replace(precision, reason=self.precision_reason)
        if dist.sharded:  # fp32 on a CPU; on a GPU through FSDP's own policy too
            precision = fsdp_precision(precision, device)
        if cfg.precision != "auto" and precision.autocast_dtype is not None and device == "cpu":
            warn_if_slower(model, sample, self._step_fn(loss_fn, device), precision)
        net = dist.wrap(model, device, precision)  # FSDP shards in place: before the optimizer
        undo = parts.activation_checkpointing(cfg.checkpointing, model)
        optimizer = self._optimizer(model)
        steps_per_epoch = math.ceil(len(train) / cfg.grad_accum)
        scheduler, stepping = parts.scheduler(cfg, optimizer, steps_per_epoch)
        scaler = (fsdp_scaler(precision) if dist.sharded and precision.scaled else
                  torch.amp.GradScaler(precision.device_type, enabled=precision.scaled))  # fmt: skip
        state = State()
        if resume and out_dir is not None:
            state = restore(model, optimizer, scaler, scheduler, out_dir, dist)
            if state.resumed_from is not None:
                self._tell("resume", {"epoch": state.epoch, "checkpoint": str(state.resumed_from)})
        task = "classification" if loss_name == "cross_entropy" else None
        try:
            for epoch in range(state.epoch, cfg.epochs):
                record = self._epoch(net, train, epoch, optimizer, scaler, scheduler, stepping,
                                     loss_fn, precision, device, dist, state)  # fmt: skip
                if val_data is not None:  # rank 0 evaluates; every rank judges on its figures
                    measured = (
                        self._evaluate(model, val, loss_fn, precision, device, task)
                        if dist.main or dist.sharded
                        else None
                    )  # FSDP: all gather
                    record.update(dist.share(measured))
                self._after_epoch(record, scheduler, stepping, optimizer, state, model,
                                  scaler, out_dir, dist)  # fmt: skip
                if state.stop:
                    break
        finally:
            parts.undo(undo)
        say_nonfinite(state.history, cfg.lr)
        report = TrainReport(history=state.history, precision=precision.name,
                             precision_reason=precision.reason, loss=loss_name,
                             device=device, config={**summary(cfg, int(batch_size)), **tuned},
                             step_times_s=state.step_times, restarts=dist.restarts)  # fmt: skip
        if out_dir is not None and dist.main:
            report.save(out_dir)
        best = (
            out_dir / ckpt.BEST if out_dir is not None and (out_dir / ckpt.BEST).exists() else None
        )
        return TrainResult(model=dist.unwrap(model).eval(), history=state.history,
                           best_checkpoint=best, report=report)  # fmt: skip

    def _find_batch_size(self, model: Any, train_data: Any, device: str,
                         dist: Distributed) -> tuple[int, dict[str, Any]]:  # fmt: skip
        """batch_size="auto": the batch size search, by rank 0 alone under torchrun (the
        others would race it for the memory and the cores), shared with every process. The
        search finds one process's batch; the global batch is that times the processes, and
        a process's memory budget is its share of this host's."""
        from .loader_settings import find_batch_size

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

    # long (~105 lines): the hot step loop in one frame, no call a step (accumulation, AMP...)
    def _epoch(self, net: Any, train: Any, epoch: int, optimizer: Any, scaler: Any,
               scheduler: Any, stepping: str, loss_fn: Any, precision: Precision, device: str,
               dist: Distributed, state: State) -> dict[str, Any]:  # fmt: skip
        """One pass over the data. The user's code in it (the data, the model, the loss, the
        callbacks) is named by ``stage`` (a local store, no cost a step shows) when it
        raises: one except clause around the epoch turns that into a UserCodeError."""
        torch = require("torch", "nimbleml.train")
        cfg = self.config
        net.train()
        loss_total, samples, skipped, nonfinite = 0.0, 0, 0, 0
        mixed = precision.autocast_dtype is not None
        scaled = scaler.is_enabled()
        started = time.perf_counter()
        fetched = [0]  # micro-batches read this epoch
        stage, callback, group, i = DATA, None, [], 0
        batches = train.epoch(epoch)  # closed at the end: an error ends its workers at once
        try:
            for group in groups(batches, cfg.grad_accum, fetched):
                step_started = time.perf_counter()
                total = dist.sum(sum(b.n for b in group))  # the samples of this global step
                finite = True
                for i, b in enumerate(group):
                    with dist.no_sync(net, final=i == len(group) - 1):
                        with precision.autocast() if mixed else _NO_CONTEXT:
                            stage = FORWARD
                            out = call(net, _to(b.inputs, device))
                            stage = LOSS
                            loss = loss_fn(out, _to(b.target, device))  # the micro-batch's mean
                        value = loss.item()
                        if not dist.all_finite(value):
                            if not math.isfinite(value):  # a missing value is refused, not skipped
                                at = fetched[0] - len(group) + i
                                refuse_missing_in(b, uc.batch_name(epoch, at))
                            finite = False
                            continue
                        loss_total += value * b.n
                        samples += b.n
                        # its share of the step's samples (DDP averages over the processes too):
                        # exact whatever the micro-batch sizes, and no extra op when it is 1
                        weight = b.n * dist.world / total
                        if weight != 1.0:
                            loss = loss * weight
                        stage = BACKWARD
                        (scaler.scale(loss) if scaled else loss).backward()
                stage = STEP
                if not finite:
                    optimizer.zero_grad(set_to_none=True)
                    skipped += 1
                    nonfinite += 1
                    state.nonfinite += 1
                    if state.nonfinite >= cfg.max_nonfinite:
                        raise TrainingError(
                            f"the loss was NaN or infinite {state.nonfinite} steps in a row "
                            f"(epoch {epoch + 1}, step {state.step + 1}) on finite data; lower lr "
                            f"(now {cfg.lr:g}), set grad_clip=1.0, or train in precision='fp32'"
                        )
                    stage = DATA
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
                stage = DATA
                if scale is not None and scaler.get_scale() < scale:
                    skipped += 1  # the scaler found inf gradients and skipped the step: the
                    continue  # schedule does not advance for it, and it is not counted
                if scheduler is not None and stepping == "step":
                    scheduler.step()  # only after a step the optimizer really took
                state.step += 1
                state.step_times.append(time.perf_counter() - step_started)
                stage = CALLBACK
                for callback in cfg.callbacks:
                    callback("step_end", {"epoch": epoch + 1, "step": state.step,
                                          "loss": loss_total / max(samples, 1), "samples": samples,
                                          "lr": optimizer.param_groups[0]["lr"]})  # fmt: skip
                stage = DATA
        except Exception as exc:
            if stage == STEP and not isinstance(cfg.optimizer, str):
                stage = OPTIMIZER  # the user's own optimizer
            if stage == CALLBACK:
                where = f"at step_end, step {state.step} of epoch {epoch + 1}"
            elif stage == DATA:  # reading the next batch
                where = uc.batch_name(epoch, fetched[0])
            else:  # micro-batch i of the group in hand
                where = uc.batch_name(epoch, fetched[0] - len(group) + i)
            error = uc.translate(stage, exc, where, user_loss=callable(cfg.loss),
                                 callback=callback)  # fmt: skip
            if error is exc:
                raise
            raise error from exc
        finally:
            batches.close()
        seconds = time.perf_counter() - started
        loss_total, samples = dist.sum(loss_total), int(dist.sum(samples))  # every process's
        return {
            "epoch": epoch + 1,
            "train_loss": loss_total / samples if samples else float("nan"),
            "samples_per_s": samples / seconds if seconds > 0 else 0.0,
            "seconds": seconds,
            "skipped_steps": skipped,
            "nonfinite_steps": nonfinite,
            "lr": optimizer.param_groups[0]["lr"],
        }

    def _evaluate(self, model: Any, val: Any, loss_fn: Any, precision: Precision,
                  device: str, task: str | None) -> dict[str, Any]:  # fmt: skip
        torch = require("torch", "nimbleml.train")
        from ..metrics import evaluate, resolve

        model.eval()
        outs, ys, loss_total, n = [], [], 0.0, 0
        stage, k = DATA, 0
        try:
            with torch.no_grad(), precision.autocast(), contextlib.closing(val.epoch(0)) as vb:
                for k, b in enumerate(vb):
                    stage = FORWARD
                    out = call(model, _to(b.inputs, device))
                    stage = LOSS
                    value = float(loss_fn(out, _to(b.target, device)))
                    if not math.isfinite(value):  # a missing value is refused, not averaged
                        refuse_missing_in(b, uc.batch_name(0, k, validation=True))
                    loss_total += value * b.n
                    n += b.n
                    outs.append(_primary(out).float().cpu().numpy())
                    ys.append(b.target.cpu().numpy())
                    stage = DATA
        except Exception as exc:
            error = uc.translate(stage, exc, uc.batch_name(0, k, validation=True),
                                 user_loss=callable(self.config.loss))  # fmt: skip
            if error is exc:
                raise
            raise error from exc
        record: dict[str, Any] = {"val_loss": loss_total / max(n, 1)}
        if self.config.metric is not None or task == "classification":
            metric = resolve(self.config.metric, task)
            value = evaluate(metric, [np.concatenate(outs)], np.concatenate(ys), None, task)
            record.update(val_metric=value, metric=metric.name,
                          higher_is_better=metric.higher_is_better)  # fmt: skip
        return record

    def _after_epoch(self, record: dict[str, Any], scheduler: Any, stepping: str,
                     optimizer: Any, state: State, model: Any, scaler: Any,
                     out_dir: Path | None, dist: Distributed) -> None:  # fmt: skip
        cfg = self.config
        score, higher = judged_on(record)
        if scheduler is not None and stepping == "epoch":
            scheduler.step()
        elif scheduler is not None and stepping == "metric" and math.isfinite(score):
            scheduler.step(score if not higher else -score)
        better = state.judge(score, higher)  # a NaN score is never the best
        record["best"] = better
        state.history.append(record)
        state.epoch = record["epoch"]
        if cfg.early_stopping is not None and state.since_best >= cfg.early_stopping:
            state.stop = True
            record["stopped_early"] = True
        if self._tell("epoch_end", record) == "stop":  # a callback ends training here
            state.stop = True
            record["stopped_by_callback"] = True
        state.stop = bool(dist.share(state.stop))  # rank 0's say, or the processes part ways
        snapshot = dist.snapshot(model, optimizer) if out_dir is not None else None  # FSDP
        if out_dir is not None and dist.main:  # the checkpoint, best.pt, history.jsonl
            ckpt.save(state_dict(model, optimizer, scaler, scheduler, state, snapshot), out_dir,
                      record["epoch"], cfg.keep_last, better)  # fmt: skip

    def _tell(self, event: str, info: dict[str, Any]) -> Any:
        """Each callback called with ``event`` (a copy of ``info``): "stop" if one said so.
        What a callback raises is the user's error, naming the callback."""
        said = None
        for callback in self.config.callbacks:
            try:
                if callback(event, dict(info)) == "stop":
                    said = "stop"
            except Exception as exc:
                where = f"at {event}" + (f" of epoch {info['epoch']}" if "epoch" in info else "")
                error = uc.translate(CALLBACK, exc, where, callback=callback)
                if error is exc:
                    raise
                raise error from exc
        return said

    def _step_fn(self, loss_fn: Any, device: str) -> Any:
        """One training step in a given precision (to time it against fp32)."""

        def step(m: Any, b: Batch, p: Precision) -> None:
            with p.autocast():
                loss = loss_fn(call(m, _to(b.inputs, device)), _to(b.target, device))
            loss.backward()

        return step


def train(model: Any, train_data: Any, val_data: Any = None, **options: Any) -> TrainResult:
    """Train ``model`` on ``train_data`` ((X, y), a Dataset or a DataLoader); see Trainer."""
    return Trainer(**options).fit(model, train_data, val_data)
