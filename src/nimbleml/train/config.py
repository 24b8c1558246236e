"""What a training run is asked to do, checked on construction: each bad value is one
ConfigError naming the value and the allowed ones."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from ..errors import ConfigError
from .precision import PRECISIONS

LOSSES = ("cross_entropy", "mse", "l1", "smooth_l1", "bce_with_logits")
OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULERS = ("cosine", "plateau", "onecycle", "step")


@dataclass
class TrainConfig:
    loss: str | Callable[..., Any] | None = None
    metric: str | Callable[..., float] | None = None
    optimizer: str | Any = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    epochs: int = 10
    batch_size: int | str = 64
    precision: str = "auto"
    grad_accum: int = 1
    grad_clip: float | None = None
    grad_clip_value: float | None = None
    checkpointing: bool | Sequence[str] = False
    scheduler: str | Any | None = None
    warmup_steps: int = 0
    early_stopping: int | None = None
    checkpoint_dir: str | None = None
    resume: bool = False
    keep_last: int = 2
    dataloader: str | dict[str, Any] = "auto"
    seed: int = 0
    callbacks: Sequence[Callable[..., Any]] = field(default_factory=tuple)
    device: str = "auto"
    max_nonfinite: int = 5  # consecutive non-finite losses before training stops

    def __post_init__(self) -> None:
        self.lr = _number(self.lr, "lr", minimum=0.0, strict=True)
        self.weight_decay = _number(self.weight_decay, "weight_decay", minimum=0.0)
        self.epochs = _integer(self.epochs, "epochs", 1)
        if self.batch_size != "auto":
            self.batch_size = _integer(self.batch_size, "batch_size", 1, also="or 'auto'")
        self.grad_accum = _integer(self.grad_accum, "grad_accum", 1)
        self.keep_last = _integer(self.keep_last, "keep_last", 1)
        self.warmup_steps = _integer(self.warmup_steps, "warmup_steps", 0)
        self.max_nonfinite = _integer(self.max_nonfinite, "max_nonfinite", 1)
        self.seed = _integer(self.seed, "seed", 0)
        if self.early_stopping is not None:
            self.early_stopping = _integer(self.early_stopping, "early_stopping", 1)
        for name in ("grad_clip", "grad_clip_value"):
            if getattr(self, name) is not None:
                setattr(self, name, _number(getattr(self, name), name, 0.0, strict=True))
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        _choice(self.loss, "loss", LOSSES)
        _choice(self.optimizer, "optimizer", OPTIMIZERS)
        _choice(self.scheduler, "scheduler", SCHEDULERS)
        if isinstance(self.dataloader, str) and self.dataloader != "auto":
            raise ConfigError(
                f"dataloader {self.dataloader!r}: give 'auto' or a dict of DataLoader arguments"
            )
        if isinstance(self.dataloader, dict):
            _loader_keys(self.dataloader)
        if self.metric is not None and not callable(self.metric):
            from ..metrics import METRIC_NAMES

            if self.metric not in METRIC_NAMES:
                raise ConfigError(
                    f"metric {self.metric!r} is not one of {', '.join(METRIC_NAMES)} "
                    "(or pass a callable (y_true, y_pred) -> float)"
                )
        if not isinstance(self.checkpointing, bool) and (
            isinstance(self.checkpointing, str)
            or not all(isinstance(n, str) for n in self.checkpointing)
        ):
            raise ConfigError(
                "checkpointing takes True/False or a list of submodule names, got "
                f"{self.checkpointing!r}"
            )
        if self.resume and not self.checkpoint_dir:
            raise ConfigError("resume=True needs checkpoint_dir= (where the checkpoints are)")

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


# DataLoader arguments that nimbleml sets itself (the batch, the order, the sharding)
SET_BY_NIMBLEML = ("dataset", "batch_size", "sampler", "batch_sampler", "generator")


def _loader_keys(args: dict[str, Any]) -> None:
    """ConfigError naming a key torch's DataLoader does not take, or one nimbleml sets, with
    the keys that may be given (read from DataLoader's own signature: this torch's)."""
    import inspect

    from torch.utils.data import DataLoader

    known = [n for n in inspect.signature(DataLoader.__init__).parameters if n != "self"]
    allowed = [n for n in known if n not in SET_BY_NIMBLEML]
    for key in args:
        if key in SET_BY_NIMBLEML:
            raise ConfigError(
                f"dataloader key {key!r} is set by nimbleml (use batch_size= / seed=); the keys "
                f"you may give: {', '.join(allowed)}"
            )
        if key not in known:
            raise ConfigError(
                f"dataloader key {key!r} is not a DataLoader argument; the keys you may give: "
                f"{', '.join(allowed)}"
            )


def _choice(value: Any, name: str, allowed: Sequence[str]) -> None:
    if value is None or not isinstance(value, str):
        return  # a callable / an object of the user's
    if value not in allowed:
        raise ConfigError(f"{name} {value!r} is not one of {', '.join(allowed)}")


def _integer(value: Any, name: str, minimum: int, also: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise TypeError
        except TypeError:
            raise ConfigError(
                f"{name} must be an integer >= {minimum}{' ' + also if also else ''}, got {value!r}"
            ) from None
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _number(value: Any, name: str, minimum: float, strict: bool = False) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if not (number > minimum if strict else number >= minimum) or number != number:
        raise ConfigError(f"{name} must be {'>' if strict else '>='} {minimum:g}, got {value!r}")
    return number
