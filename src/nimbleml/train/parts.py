"""The pieces a run is built from, as its options ask: the optimizer, the learning-rate
schedule (with its warm-up), and activation checkpointing on the chosen blocks."""

from __future__ import annotations

from typing import Any

from .._deps import require
from ..errors import ConfigError
from .config import TrainConfig


def optimizer(cfg: TrainConfig, model: Any) -> Any:
    torch = require("torch", "nimbleml.train")
    if not isinstance(cfg.optimizer, str):
        return cfg.optimizer  # a torch optimizer of the user's, over this model
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameters (requires_grad=True)")
    kind = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}
    extra = {"momentum": 0.9} if cfg.optimizer == "sgd" else {}
    return kind[cfg.optimizer](params, lr=cfg.lr, weight_decay=cfg.weight_decay, **extra)


def scheduler(cfg: TrainConfig, optimizer: Any, steps_per_epoch: int) -> tuple[Any, str]:
    """(scheduler, when it steps: 'step' after each optimizer step, 'epoch', 'metric')."""
    torch = require("torch", "nimbleml.train")
    lr = torch.optim.lr_scheduler
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


def activation_checkpointing(chosen: Any, model: Any) -> list[tuple[Any, Any]]:
    """Activation checkpointing (use_reentrant=False) on the chosen blocks: True picks
    the children of the largest Sequential/ModuleList. Returns what :func:`undo` undoes."""
    torch = require("torch", "nimbleml.train")
    from torch.utils.checkpoint import checkpoint

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
    done = []
    for block in blocks:
        original = vars(block).get("forward")  # an instance-level forward of the user's

        def forward(*args: Any, _f: Any = block.forward, _b: Any = block, **kwargs: Any) -> Any:
            if _b.training and torch.is_grad_enabled():
                return checkpoint(_f, *args, use_reentrant=False, **kwargs)
            return _f(*args, **kwargs)

        block.forward = forward
        done.append((block, original))
    return done


def undo(done: list[tuple[Any, Any]]) -> None:
    """The blocks' own forward back."""
    for block, original in done:
        if original is None:
            del block.forward  # back to the class's forward
        else:
            block.forward = original
