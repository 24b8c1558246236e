"""What a training run carries from epoch to epoch and across a restart: the counters, the
best score, the history; how it goes into a checkpoint and comes back out of one."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..errors import NimbleError
from . import checkpoint as ckpt
from .distributed import Distributed


class State:
    def __init__(self) -> None:
        self.epoch = 0
        self.step = 0
        self.best: float | None = None
        self.since_best = 0
        self.nonfinite = 0  # consecutive steps with a non-finite loss
        self.stop = False
        self.history: list[dict[str, Any]] = []
        self.step_times: list[float] = []
        self.resumed_from: Path | None = None

    def judge(self, score: float, higher: bool) -> bool:
        """Whether ``score`` is the best so far (a NaN or infinite score never is), and the
        count of epochs since the best updated."""
        better = math.isfinite(score) and (
            self.best is None or (score > self.best if higher else score < self.best)
        )
        if better:
            self.best, self.since_best = score, 0
        else:
            self.since_best += 1
        return better


def state_dict(model: Any, optimizer: Any, scaler: Any, scheduler: Any, state: State,
               snapshot: tuple[dict[str, Any], dict[str, Any]] | None = None) -> dict[str, Any]:  # fmt: skip
    """What a checkpoint holds; ``snapshot``: the model's and the optimizer's full state
    dicts when FSDP gathered them (Distributed.snapshot), else the model's own."""
    weights, optim = snapshot or (model.state_dict(), optimizer.state_dict())
    return {
        "model": weights,
        "optimizer": optim,
        "scaler": scaler.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "epoch": state.epoch,
        "step": state.step,
        "best": state.best,
        "since_best": state.since_best,
        "history": state.history,
        "rng": ckpt.rng_state(),
    }


def restore(model: Any, optimizer: Any, scaler: Any, scheduler: Any, out_dir: Path,
            dist: Distributed) -> State:  # fmt: skip
    """The state of the newest readable checkpoint in ``out_dir`` loaded into the model,
    optimizer, scaler and scheduler (a fresh State when there is none). Rank 0 reads it and
    sends it to the other processes (their node need not hold the folder: a multi-node run
    may give each node a ``checkpoint_dir`` of its own, rank 0's being the one written); an
    error reading it stops every process. The main process mends what a kill may have
    left: history.jsonl rewritten from the checkpoint's history, best.pt copied again when
    the epoch resumed from was the best."""
    found: Any = None
    if dist.main:
        try:
            found = ckpt.load_latest(out_dir)
            if found is not None:
                ckpt.check_compatible(model, found[1]["model"], found[0])
        except NimbleError as exc:  # every process stops on it, not just rank 0
            found = exc
    mine = found
    if dist.world > 1:  # FSDP sends the weights itself, sharded, below
        found = dist.share(_without_weights(found) if dist.sharded else found)
    if isinstance(found, NimbleError):
        raise found
    state = State()
    if found is None:
        return state  # nothing to resume yet: a fresh run
    path, saved = found
    if dist.sharded:
        from . import fsdp

        full = mine[1] if dist.main else {"model": {}, "optimizer": {}}
        optim = fsdp.by_name(model, full["optimizer"]) if dist.main else {}
        fsdp.load_full(model, optimizer, full["model"], optim)
    else:
        model.load_state_dict(saved["model"])
        _load_optimizer(model, optimizer, saved["optimizer"])
    scaler.load_state_dict(saved["scaler"])
    if scheduler is not None and saved.get("scheduler") is not None:
        scheduler.load_state_dict(saved["scheduler"])
    state.epoch, state.step = saved["epoch"], saved["step"]
    state.best, state.since_best = saved["best"], saved["since_best"]
    state.history = list(saved["history"])
    state.resumed_from = path
    ckpt.set_rng_state(saved["rng"])
    if dist.main:
        ckpt.mend(out_dir, path, state.history)
    return state


def _without_weights(found: Any) -> Any:
    """(path, checkpoint) without the model and optimizer states (FSDP sends those)."""
    if not isinstance(found, tuple):
        return found
    path, saved = found
    return path, {k: v for k, v in saved.items() if k not in ("model", "optimizer")}


def _load_optimizer(model: Any, optimizer: Any, saved: dict[str, Any]) -> None:
    """torch's own optimizer state, or one an FSDP run saved (keyed by parameter names)."""
    from .fsdp import is_by_index, load_optimizer

    if is_by_index(saved):
        optimizer.load_state_dict(saved)
    else:
        load_optimizer(model, optimizer, saved)
