"""What a training run is asked to do, checked once. :class:`TrainConfig` (the API's options)
and the ``nimbleml train`` YAML file (:func:`read_config`: ``model:``, ``data:``,
``training:`` sections) go through the same per-key :func:`check`, and so does each flag of
the command line: a value is refused in the same words wherever it came from, one ConfigError
naming where (``lr``, ``--lr``, ``config file x.yaml: training.lr``), the value and the
allowed ones.

The YAML file (``--config`` of ``nimbleml train``; ``nimbleml deploy --train`` reads it too)::

    model:
      factory: mypkg.models:build   # module:function returning a torch.nn.Module
      # arch: resnet18              # or a torchvision architecture (needs torchvision)
      num_classes: 10               # passed to the function / the architecture
      kwargs: {hidden: 128}         # more keyword arguments for it
    data:
      train: train.npz              # .npz, .csv (with target), an image folder, module:function
      val: val.npz
      target: null                  # the label column of a .csv file
      image_size: null              # image folders: resize to image_size x image_size
    training:                       # TrainConfig's options, and:
      epochs: 20
      nproc: 1                      # processes (torchrun)
      strategy: ddp                 # or fsdp: the model sharded over the processes
      log: [tensorboard:runs/tb]    # tensorboard[:DIR], mlflow[:URI]
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .._yaml import read_sections
from ..errors import ConfigError
from .precision import PRECISIONS

LOSSES = ("cross_entropy", "mse", "l1", "smooth_l1", "bce_with_logits")
OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULERS = ("cosine", "plateau", "onecycle", "step")
STRATEGIES = ("ddp", "fsdp")  # under torchrun: DistributedDataParallel or FSDP2 (fsdp.py)


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
    strategy: str = "ddp"  # how several processes share the work (one process: no effect)
    fsdp_blocks: Sequence[str] | None = None  # fsdp: the submodules to shard

    def __post_init__(self) -> None:
        for name in self.names():
            if name != "callbacks":
                setattr(self, name, check(name, getattr(self, name), name))
        if isinstance(self.dataloader, dict):
            _loader_keys(self.dataloader)
        if self.resume and not self.checkpoint_dir:
            raise ConfigError("resume=True needs checkpoint_dir= (where the checkpoints are)")
        _check_fsdp(self)

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


# -- the nimbleml train YAML file ------------------------------------------------------------
# the training: section: TrainConfig's options (callbacks are code) and the processes, trackers
TRAINING = (*(n for n in TrainConfig.names() if n != "callbacks"), "nproc", "log")
SECTIONS: dict[str, tuple[str, ...]] = {
    "model": ("factory", "arch", "num_classes", "kwargs"),
    "data": ("train", "val", "target", "image_size"),
    "training": TRAINING,
}


def read_config(path: str | Path) -> dict[str, Any]:
    """The settings in a train YAML file, flat; every key and value checked, an error naming
    ``section.key`` (and the known keys) otherwise."""
    return read_sections(path, SECTIONS, check,
                         lambda section, key: f"config file {path}: {section}.{key}")  # fmt: skip


# -- one check per key: the API, the flags and the YAML file ---------------------------------
_INT = {"epochs": 1, "grad_accum": 1, "keep_last": 1, "max_nonfinite": 1, "nproc": 1,
        "num_classes": 1, "image_size": 1, "early_stopping": 1, "warmup_steps": 0, "seed": 0}  # fmt: skip
_NUMBER = {"lr": ">", "weight_decay": ">=", "grad_clip": ">", "grad_clip_value": ">"}
# metric's names are metrics.METRIC_NAMES, imported when a metric is checked
_CHOICES = {"precision": PRECISIONS, "optimizer": OPTIMIZERS, "scheduler": SCHEDULERS,
            "loss": LOSSES, "metric": (), "strategy": STRATEGIES}  # fmt: skip
# what else a choice takes from Python (never from a flag or a YAML file: no value read there
# is callable or has a step method)
_OBJECTS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "loss": ("a callable (output, target) -> loss", callable),
    "metric": ("a callable (y_true, y_pred) -> float", callable),
    "optimizer": ("a torch optimizer", lambda v: callable(getattr(v, "step", None))),
    "scheduler": ("a torch learning-rate scheduler", lambda v: callable(getattr(v, "step", None))),
}
_TEXT = ("factory", "arch", "train", "val", "target")
_NULLABLE = ("early_stopping", "grad_clip", "grad_clip_value", "num_classes", "image_size",
             "loss", "metric", "scheduler", "checkpoint_dir", "fsdp_blocks", *_TEXT)  # fmt: skip
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def _str_keys(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) for k in value)


def _flag_or_names(value: Any) -> bool:
    names = isinstance(value, list | tuple | set | frozenset)
    return isinstance(value, bool) or (names and all(isinstance(n, str) for n in value))


# key: (does the value fit, what the key takes)
_SHAPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "resume": (lambda v: isinstance(v, bool), "true or false"),
    "checkpointing": (_flag_or_names, "true, false or a list of submodule names"),
    "fsdp_blocks": (
        lambda v: isinstance(v, list | tuple) and bool(v) and all(isinstance(n, str) for n in v),
        "a list of submodule names",
    ),
    "checkpoint_dir": (lambda v: isinstance(v, str | os.PathLike), "a string"),
    "device": (
        lambda v: bool(_DEVICE.match(v)) if isinstance(v, str) else hasattr(v, "type"),
        "auto, cpu, mps, cuda or cuda:N",
    ),
    "kwargs": (_str_keys, "a mapping of keyword arguments"),
    "dataloader": (
        lambda v: v == "auto" or _str_keys(v),
        "'auto' or a mapping of DataLoader arguments",
    ),
    **{key: (lambda v: isinstance(v, str), "a string") for key in _TEXT},
}


def check(key: str, value: Any, where: str) -> Any:
    """``value`` if it is a valid ``key``, else ConfigError naming ``where``, the value and
    what is allowed. Converted: a whole float to an int, a number read as text (PyYAML
    reads 1e-3 as a string) to a float, one ``log`` spec to a list of one."""
    if value is None and key in _NULLABLE:
        return None
    if key in _CHOICES:
        return _choice(key, value, where)
    if key in _INT:
        return _integer(value, where, _INT[key])
    if key == "batch_size":
        return value if value == "auto" else _integer(value, where, 1, also=" or 'auto'")
    if key in _NUMBER:
        return _number(value, where, strict=_NUMBER[key] == ">")
    if key in _SHAPES:
        fits, expected = _SHAPES[key]
        if not fits(value):
            raise ConfigError(f"{where} must be {expected}, got {value!r}")
    if key == "log":
        from .loggers import KINDS, check_spec

        value = [value] if isinstance(value, str) else value
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where} must be a list of {', '.join(KINDS)}, got {value!r}")
        for spec in value:
            check_spec(spec)
    return value


def _choice(key: str, value: Any, where: str) -> Any:
    names = _CHOICES[key]
    if key == "metric":
        from ..metrics import METRIC_NAMES

        names = tuple(METRIC_NAMES)
    if isinstance(value, str):
        if value not in names:
            raise ConfigError(f"{where} {value!r} is not one of {', '.join(names)}")
        return value
    other, fits = _OBJECTS.get(key, ("", None))
    if fits is not None and fits(value):
        return value  # the user's own loss / metric / optimizer / scheduler
    allowed = ", ".join(names) + (f", or {other}" if other else "")
    raise ConfigError(f"{where} must be one of {allowed}, got {value!r}")


def _integer(value: Any, where: str, minimum: int, also: str = "") -> int:
    whole = isinstance(value, float) and value.is_integer()
    if not whole and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{where} must be an integer >= {minimum}{also}, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{where} must be >= {minimum}{also}, got {value!r}")
    return int(value)


def _number(value: Any, where: str, strict: bool) -> float:
    sign = ">" if strict else ">="
    try:
        if isinstance(value, bool):
            raise TypeError
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where} must be a number {sign} 0, got {value!r}") from None
    if not (number > 0 if strict else number >= 0):  # NaN fails both
        raise ConfigError(f"{where} must be {sign} 0, got {value!r}")
    return number


def _check_fsdp(cfg: TrainConfig) -> None:
    """The FSDP options together: blocks only with strategy="fsdp"; under FSDP nimbleml
    builds the optimizer (after sharding, over the shards), so it is named, not passed."""
    if cfg.fsdp_blocks is not None and cfg.strategy != "fsdp":
        raise ConfigError(
            f"fsdp_blocks names the blocks FSDP shards, and strategy is {cfg.strategy!r}: "
            "add strategy='fsdp' (--strategy fsdp), or leave fsdp_blocks out"
        )
    if cfg.strategy != "fsdp":
        return
    for key, value in (("optimizer", cfg.optimizer), ("scheduler", cfg.scheduler)):
        if value is not None and not isinstance(value, str):
            raise ConfigError(
                f"strategy='fsdp' builds the {key} itself, over the sharded parameters, so "
                f"a {type(value).__name__} object made over the whole model cannot be used: "
                f"name it ({', '.join(OPTIMIZERS if key == 'optimizer' else SCHEDULERS)})"
            )


# DataLoader arguments that nimbleml sets itself (the batch, the order, the sharding)
SET_BY_NIMBLEML = ("dataset", "batch_size", "sampler", "batch_sampler", "generator")


def _loader_keys(args: dict[str, Any]) -> None:
    """ConfigError naming a key torch's DataLoader does not take, or one nimbleml sets, with
    the keys that may be given (read from DataLoader's own signature: this torch's). The API
    checks it when the config is made; the YAML file's reader does not (it needs torch)."""
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
