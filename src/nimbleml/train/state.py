"""What a training run carries from epoch to epoch and across a restart: the counters, the
best score, the history; how it goes into a checkpoint and comes back out of one."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from . import checkpoint as ckpt


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


def state_dict(model: Any, optimizer: Any, scaler: Any, scheduler: Any,
               state: State) -> dict[str, Any]:  # fmt: skip
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


def restore(model: Any, optimizer: Any, scaler: Any, scheduler: Any, out_dir: Path,
            main: bool) -> State:  # fmt: skip
    """The state of the newest readable checkpoint in ``out_dir`` loaded into the model,
    optimizer, scaler and scheduler (a fresh State when there is none). The main process
    mends what a kill may have left: history.jsonl rewritten from the checkpoint's history,
    best.pt copied again when the epoch resumed from was the best."""
    state = State()
    found = ckpt.load_latest(out_dir)
    if found is None:
        return state  # nothing to resume yet: a fresh run
    path, saved = found
    ckpt.check_compatible(model, saved["model"], path)
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    scaler.load_state_dict(saved["scaler"])
    if scheduler is not None and saved.get("scheduler") is not None:
        scheduler.load_state_dict(saved["scheduler"])
    state.epoch, state.step = saved["epoch"], saved["step"]
    state.best, state.since_best = saved["best"], saved["since_best"]
    state.history = list(saved["history"])
    state.resumed_from = path
    ckpt.set_rng_state(saved["rng"])
    if main:
        ckpt.mend(out_dir, path, state.history)
    return state
