"""Knowledge distillation: ``nimbleml.distill(teacher, student, train_data, val_data, ...)``.

The loss, for classification, is Hinton et al.'s:

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))
           + (1 - alpha) * cross_entropy(student, labels)
           [+ feature_weight * mean over pairs of MSE(projection(student_h), teacher_h)]

The T^2 factor keeps the soft term's gradients on the scale of the hard term's whatever the
temperature (the soft gradients shrink as 1/T^2); implementations disagree on it (NNCF fixes
T=1, some omit it), nimbleml applies it. For regression (float targets) the soft term is the
MSE to the teacher's outputs and T is not used.

Training is ``nimbleml.train`` (every option of it applies). The teacher's outputs are
computed once and cached when the data allows it (see teacher.py); the cached logits travel
as extra columns of the training target, so batching, shuffling, accumulation and DDP
sharding carry them with their samples. Otherwise, and with ``features``, the teacher runs on
each batch beside the student. The same student is also trained without the teacher on the
same budget (``baseline=True``), and the report puts teacher, student without distillation
and distilled student side by side, measured in one run.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._deps import require
from ..errors import ConfigError
from ..inputs import refuse_missing_pair
from . import teacher as teachers
from .report import DistillReport, compare

CACHE_CHOICES = ("auto", True, False)


@dataclass
class DistillResult:
    student: Any  # the distilled student (torch module, eval mode)
    baseline: Any | None  # the same student trained without the teacher (baseline=True)
    teacher: Any
    report: DistillReport
    history: list[dict[str, Any]]
    baseline_history: list[dict[str, Any]] | None
    cache: str  # how the teacher ran: "cached in memory", "cached on disk ...", "online: why"
    val: tuple[Any, Any] | None = field(default=None, repr=False)

    def optimize(self, val: Any = None, max_drop: float = 0.01, **options: Any) -> Any:
        """The distilled student into :func:`nimbleml.optimize`; the report gains its package,
        timed again side by side with the teacher and both students."""
        from ..optimizer import optimize

        val = val if val is not None else self.val
        if val is None:
            raise ConfigError("optimize needs val=(X, y): distill was given no val_data")
        found = optimize(self.student, val=val, max_drop=max_drop, **options)
        self.report = compare(self.teacher, self.baseline, self.student, val,
                              package=found.best, temperature=self.report.temperature,
                              alpha=self.report.alpha, cache=self.cache)  # fmt: skip
        return found


def distill(teacher: Any, student: Any, train_data: Any, val_data: Any = None, *,
            temperature: float = 2.0, alpha: float = 0.5,
            features: list[tuple[str, str]] | None = None, feature_loss: str = "mse",
            feature_weight: float = 1.0, cache_teacher: Any = "auto", top_k: int | None = None,
            cache_dir: Any = None, baseline: bool = True, compare_models: bool = True,
            **train_options: Any) -> DistillResult:  # fmt: skip
    """Train ``student`` to match ``teacher`` (a torch module or a .nimble package) on
    ``train_data`` ((X, y), a Dataset or a DataLoader), with ``nimbleml.train``'s options.
    ``features``: [(student_module, teacher_module)] names whose outputs are matched too,
    through a learned projection when their widths differ. ``cache_teacher``: "auto" caches
    the teacher's outputs unless the data has random transforms (or ``features`` are given,
    which need the teacher's hidden states); True insists; False runs it on every batch.
    ``top_k``: keep only the k largest teacher logits (default: 16 above 64 classes)."""
    torch = require("torch", "nimbleml.distill")
    from ..train import train
    from ..train.config import TrainConfig
    from ..train.sources import as_arrays
    from .modules import Online

    _check(temperature, alpha, cache_teacher, feature_loss, feature_weight, student)
    if "loss" in train_options:
        raise ConfigError(
            "distill sets the loss (alpha * T^2 * KL + (1 - alpha) * the task loss); drop "
            "loss=, and set temperature= and alpha= instead"
        )
    TrainConfig(**train_options)  # a bad training option fails before the teacher runs
    train_data = tuple(train_data) if isinstance(train_data, list) else train_data
    refuse_missing_pair(train_data, "train_data")  # before the teacher runs on it
    if val_data is not None:
        refuse_missing_pair(val_data, "val_data")
    device = str(train_options.get("device", "cpu"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    start = copy.deepcopy(student)  # the baseline starts where the distilled student starts
    target = _sample_target(train_data)
    regression = torch.is_floating_point(target) and not _integral(target)
    options = {"metric": None if regression else "accuracy", **train_options}
    why_online = _online_reason(train_data, cache_teacher, features)
    if why_online is None:
        outputs = teachers.compute(teacher, train_data, top_k=top_k, cache_dir=cache_dir,
                                   device=device)  # fmt: skip
        data = _packed(train_data, outputs)
        k, indexed = outputs.values.shape[1], outputs.indices is not None
        model = student
        where = f"on disk: {outputs.path}" if outputs.path else "in memory"
        cache = f"cached {where}" + (" (reused)" if outputs.reused else "")
    else:
        data, k, indexed = train_data, 0, False
        model = Online(student, teacher, features or [], feature_loss, train_data)
        cache = f"online: {why_online}"
    loss = KDLoss(temperature, alpha, k, indexed, regression, feature_weight)
    result = train(model, data, val_data, loss=loss, **options)
    trained = model.student if isinstance(model, Online) else model
    base, base_history = None, None
    if baseline:
        plain = train(start, train_data, val_data, **options)
        base, base_history = plain.model, plain.history
    val = _numpy_pair(as_arrays(val_data)) if val_data is not None else None
    report = (
        compare(
            teacher, base, trained.eval(), val, temperature=temperature, alpha=alpha, cache=cache
        )
        if compare_models and val is not None
        else DistillReport(rows=[], temperature=temperature, alpha=alpha, cache=cache)
    )
    return DistillResult(student=trained.eval(), baseline=base, teacher=teacher, report=report,
                         history=result.history, baseline_history=base_history, cache=cache,
                         val=val)  # fmt: skip


def _check(temperature: Any, alpha: Any, cache: Any, feature_loss: str, weight: Any,
           student: Any) -> None:  # fmt: skip
    torch = require("torch", "nimbleml.distill")
    if not isinstance(temperature, int | float) or temperature <= 0:
        raise ConfigError(f"temperature must be a number > 0, got {temperature!r}")
    if not isinstance(alpha, int | float) or not 0 <= alpha <= 1:
        raise ConfigError(f"alpha must be in [0, 1] (the soft term's share), got {alpha!r}")
    if cache not in CACHE_CHOICES or (isinstance(cache, int) and not isinstance(cache, bool)):
        raise ConfigError(f"cache_teacher must be 'auto', True or False, got {cache!r}")
    if feature_loss not in ("mse", "cosine"):
        raise ConfigError(f"feature_loss must be 'mse' or 'cosine', got {feature_loss!r}")
    if not isinstance(weight, int | float) or weight < 0:
        raise ConfigError(f"feature_weight must be a number >= 0, got {weight!r}")
    if not isinstance(student, torch.nn.Module):
        raise ConfigError(f"the student must be a torch.nn.Module, got {type(student).__name__}")


def _numpy_pair(pair: tuple[Any, Any]) -> tuple[Any, Any]:
    def arr(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: arr(v) for k, v in x.items()}
        return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)

    return arr(pair[0]), arr(pair[1])


def _sample_target(data: Any) -> Any:
    from ..train.data import batches

    return batches(data, 8, shuffle=False).sample().target


def _integral(t: Any) -> bool:
    torch = require("torch", "nimbleml.distill")
    return bool(torch.all(t == torch.round(t))) and t.dim() == 1


def _online_reason(data: Any, cache: Any, features: Any) -> str | None:
    """Why the teacher must run on every batch, or None when its outputs can be cached."""
    from torch.utils.data import DataLoader

    if cache is False:
        return "cache_teacher=False"
    if features:
        if cache is True:
            raise ConfigError(
                "cache_teacher=True with features: feature distillation needs the teacher's "
                "hidden states on every batch; give cache_teacher='auto' or False"
            )
        return "feature distillation needs the teacher's hidden states on every batch"
    if isinstance(data, DataLoader):
        if cache is True:
            raise ConfigError(
                "cache_teacher=True with a DataLoader: its samples have no stable index to "
                "cache by; give the Dataset (or (X, y))"
            )
        return "a DataLoader's samples have no stable index to cache by"
    if teachers.is_random(data):
        if cache is True:
            raise ConfigError(
                "cache_teacher=True, but the dataset returns different inputs for the same "
                "index (random augmentation): cached teacher outputs would be stale; give "
                "cache_teacher='auto' (the teacher then runs on every batch) or False"
            )
        return "the data has random transforms (cached outputs would be stale)"
    return None


def _packed(data: Any, outputs: teachers.TeacherOutputs) -> Any:
    if isinstance(data, tuple):
        X, y = data
        y = y.cpu().numpy() if hasattr(y, "cpu") else np.asarray(y)
        return X, outputs.packed(y)
    from .modules import PackedDataset

    return PackedDataset(data, outputs)


class KDLoss:
    """(outputs, target) -> the mean distillation loss of a batch. ``target`` is either the
    labels (validation, or an online teacher whose logits come in the outputs) or the labels
    with the cached teacher logits as extra columns: [y, k values (, k class indices)]."""

    def __init__(self, temperature: float, alpha: float, k: int, indexed: bool,
                 regression: bool, feature_weight: float) -> None:  # fmt: skip
        self.T, self.alpha, self.k, self.indexed = float(temperature), float(alpha), k, indexed
        self.regression, self.feature_weight = regression, float(feature_weight)
        self.__name__ = "distillation"

    def __call__(self, out: Any, target: Any) -> Any:
        torch = require("torch", "nimbleml.distill")
        F = torch.nn.functional
        student, teacher, feature_term = out, None, None
        if isinstance(out, KDOutput):
            student, teacher, feature_term = out.student, out.teacher, out.features
        from ..train.losses import _primary

        student = _primary(student).float()
        indices = None
        if target.dim() == 2 and self.k and target.shape[1] > 1 and not self.regression:
            y = target[:, 0]
            teacher = target[:, 1 : 1 + self.k]
            if self.indexed:
                indices = target[:, 1 + self.k :].long()
        elif target.dim() == 2 and self.k and self.regression:
            y, teacher = target[:, 0], target[:, 1 : 1 + self.k]
        else:
            y = target
        if self.regression:
            task = F.mse_loss(student.reshape(y.shape[0], -1), y.reshape(y.shape[0], -1).float())
            soft = None if teacher is None else F.mse_loss(student, teacher.reshape(student.shape))
        else:
            from ..train.losses import _cross_entropy

            task = _cross_entropy(student, y.long())
            soft = None if teacher is None else self._soft(student, teacher, indices)
        loss = task if soft is None else self.alpha * soft + (1 - self.alpha) * task
        if feature_term is not None and self.feature_weight:
            loss = loss + self.feature_weight * feature_term
        return loss

    def _soft(self, student: Any, teacher: Any, indices: Any) -> Any:
        """T^2 * KL(p_teacher || p_student) at temperature T, averaged over the batch; over
        the teacher's top-k classes (renormalised on both sides) when only those are kept."""
        torch = require("torch", "nimbleml.distill")
        F = torch.nn.functional
        if indices is not None:
            student = student.gather(1, indices)
        log_q = F.log_softmax(student / self.T, dim=1)
        log_p = F.log_softmax(teacher.float() / self.T, dim=1)
        kl = F.kl_div(log_q, log_p, log_target=True, reduction="batchmean")
        return kl * self.T**2


@dataclass
class KDOutput:
    student: Any
    teacher: Any
    features: Any


def _width(t: Any) -> int:
    return int(t.shape[1]) if t.dim() == 4 else int(t.shape[-1])


__all__ = ["DistillResult", "KDLoss", "distill"]
