"""Knowledge distillation: ``nimbleml.distill(teacher, student, train_data, val_data, ...)``.

The loss, for classification, is Hinton et al.'s:

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))
           + (1 - alpha) * cross_entropy(student, labels)
           [+ feature_weight * mean over pairs of MSE(projection(student_h), teacher_h)]

The T^2 factor keeps the soft term's gradients on the scale of the hard term's whatever the
temperature (the soft gradients shrink as 1/T^2); implementations disagree on it (NNCF fixes
T=1, some omit it), nimbleml applies it. For regression (float targets) the soft term is the
MSE to the teacher's outputs and T is not used.

With ``views="auto"`` teacher and student see the same augmented view of each batch (views.py:
mixup, and crops and flips for images; Beyer et al. 2022), the teacher run on the view; by
default (``views=None``, which measured as well or better on the digits) the batches are used
as they are and the teacher's outputs are computed once and cached (teacher.py), travelling as
extra columns of the training target. Rows of
``unlabeled=`` are labelled by the teacher alone (unlabeled.py). When ``temperature`` or
``alpha`` is not given a short search on a held-out part of the training data picks it
(choose.py). Training is ``nimbleml.train`` (every option of it applies). The same student is
also trained without the teacher (``baseline=True``); the better of the two is returned
(``keep="best"``) and the report puts teacher, student alone and distilled student side by
side, measured in one run.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._deps import require
from ..errors import ConfigError
from ..inputs import refuse_missing_pair
from . import features as feats
from . import teacher as teachers
from . import unlabeled as unlabeled_rows
from . import views as view_specs
from .loss import KDLoss, KDOutput
from .report import DistillReport, compare

CACHE_CHOICES = ("auto", True, False)
KEEP_CHOICES = ("best", "distilled")


@dataclass
class DistillResult:
    student: Any  # the student returned: the better of distilled and alone (keep="best")
    baseline: Any | None  # the same student trained without the teacher (baseline=True)
    teacher: Any
    report: DistillReport
    history: list[dict[str, Any]]
    baseline_history: list[dict[str, Any]] | None
    cache: str  # how the teacher ran: "cached in memory", "cached on disk ...", "online: why"
    val: tuple[Any, Any] | None = field(default=None, repr=False)
    distilled: Any = None  # the distilled student, whichever was returned
    returned: str = "distilled"  # "distilled" or "alone": which one ``student`` is

    def optimize(self, val: Any = None, max_drop: float = 0.01, **options: Any) -> Any:
        """The returned student into :func:`nimbleml.optimize`; the report gains its package,
        timed again side by side with the teacher and both students."""
        from ..optimizer import optimize

        val = val if val is not None else self.val
        if val is None:
            raise ConfigError("optimize needs val=(X, y): distill was given no val_data")
        found = optimize(self.student, val=val, max_drop=max_drop, **options)
        old = self.report
        self.report = compare(self.teacher, self.baseline, self.distilled, val,
                              package=found.best, temperature=old.temperature, alpha=old.alpha,
                              cache=self.cache, packaged=self.returned)  # fmt: skip
        self.report.carry(old)
        return found


def distill(teacher: Any, student: Any, train_data: Any, val_data: Any = None, *,
            temperature: float | None = None, alpha: float | None = None, views: Any = None,
            unlabeled: Any = None, features: Any = None, feature_loss: str = "mse",
            feature_weight: float = 1.0, cache_teacher: Any = "auto", top_k: int | None = None,
            cache_dir: Any = None, baseline: bool = True, keep: str = "best",
            compare_models: bool = True, **train_options: Any) -> DistillResult:  # fmt: skip
    """Train ``student`` to match ``teacher`` (a torch module or a .nimble package) on
    ``train_data`` ((X, y), a Dataset or a DataLoader), with ``nimbleml.train``'s options.

    ``views``: None (the batches as they are; the teacher's outputs are cached), "auto"
    (mixup; for images also crops and flips), "mixup", "mixup+crop" or "mixup+crop+flip":
    teacher and student see the same view, the teacher run on it (not the default: on the
    digits it did not measure better, see docs/distill.md). ``unlabeled``: rows without labels (shaped like train_data's inputs) that the
    teacher labels. ``temperature`` / ``alpha``: None picks them by a short search on a
    held-out fifth of the training rows. ``features``: None, "auto" (the pairs
    ``students.shrink`` recorded on the student, if any) or [(student_module, teacher_module)]
    names whose outputs are matched too, through a learned projection when their widths
    differ (not the default: it cost accuracy on the digits' small students).
    ``cache_teacher``: "auto" caches the teacher's outputs when nothing changes between
    epochs (no views, no features, no random transforms); True insists; False never.
    ``keep``: "best" returns the better on val_data of the distilled student and the same
    student trained alone; "distilled" the distilled one. ``top_k``: keep only the k largest
    teacher logits (default: 16 above 64 classes)."""
    torch = require("torch", "nimbleml.distill")
    from ..train.config import TrainConfig
    from ..train.sources import as_arrays

    _check(temperature, alpha, cache_teacher, feature_loss, feature_weight, student, keep)
    spec = view_specs.parse(views)
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
    n_unlabeled = unlabeled_rows.check(unlabeled, train_data)
    pairs, feature_note = feats.resolve(features, student, teacher)
    if pairs:  # a module whose outputs cannot be aligned: said before anything trains
        feats.probe(student, teacher, pairs, _sample(train_data).inputs)
    if spec is not None and cache_teacher is True:
        raise ConfigError(
            "cache_teacher=True with views: each step's view is new, so the teacher runs on "
            "it; give views=None to cache the teacher's outputs, or cache_teacher='auto'"
        )
    device = str(train_options.get("device", "cpu"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    start = copy.deepcopy(student)  # the baseline starts where the distilled student starts
    target = _sample(train_data).target
    regression = torch.is_floating_point(target) and not _integral(target)
    options = {"metric": None if regression else "accuracy", **train_options}
    data = unlabeled_rows.merged(train_data, unlabeled, regression)
    setup = _Setup(teacher, spec, pairs, feature_loss, feature_weight, cache_teacher, top_k,
                   cache_dir, device, regression, options)  # fmt: skip
    search = None
    started = time.perf_counter()
    if temperature is None or alpha is None:
        from .choose import search as choose

        search = choose(setup, start, train_data, unlabeled, temperature, alpha)
        temperature, alpha = search.temperature, search.alpha
    searched_s = time.perf_counter() - started
    started = time.perf_counter()
    trained, history, cache, notes = setup.run(student, data, val_data, temperature, alpha)
    distill_s = time.perf_counter() - started
    base, base_history, alone_s = None, None, 0.0
    if baseline:
        from ..train import train

        started = time.perf_counter()
        plain = train(start, train_data, val_data, **options)
        base, base_history, alone_s = plain.model, plain.history, time.perf_counter() - started
    returned, why = _pick(keep, history, base_history)
    val = _numpy_pair(as_arrays(val_data)) if val_data is not None else None
    if compare_models and val is not None:
        report = compare(teacher, base, trained, val, temperature=temperature, alpha=alpha,
                         cache=cache, packaged=returned)  # fmt: skip
    else:
        report = DistillReport(rows=[], temperature=temperature, alpha=alpha, cache=cache)
    report.views = setup.described or "none"
    report.unlabeled = n_unlabeled
    report.returned, report.returned_why = returned, why
    report.search = search.to_dict() if search is not None else None
    report.seconds = {"search": round(searched_s, 2), "distilled": round(distill_s, 2),
                      "alone": round(alone_s, 2)}  # fmt: skip
    report.notes = [*report.notes, *(n for n in [feature_note, *notes] if n)]
    chosen = base if returned == "alone" else trained
    return DistillResult(student=chosen, baseline=base, teacher=teacher, report=report,
                         history=history, baseline_history=base_history, cache=cache, val=val,
                         distilled=trained, returned=returned)  # fmt: skip


class _Setup:
    """Everything of one distillation run but the data, the student and (T, alpha): the final
    run and the search's short runs are the same code."""

    def __init__(self, teacher: Any, spec: str | None, pairs: list[tuple[str, str]],
                 feature_loss: str, feature_weight: float, cache_teacher: Any,
                 top_k: int | None, cache_dir: Any, device: str, regression: bool,
                 options: dict[str, Any]) -> None:  # fmt: skip
        self.teacher, self.spec, self.pairs = teacher, spec, pairs
        self.feature_loss, self.feature_weight = feature_loss, feature_weight
        self.cache_teacher, self.top_k, self.cache_dir = cache_teacher, top_k, cache_dir
        self.device, self.regression, self.options = device, regression, options
        self.described = ""

    def run(self, student: Any, data: Any, val: Any, temperature: float, alpha: float,
            **override: Any) -> tuple[Any, list[dict[str, Any]], str, list[str]]:  # fmt: skip
        """(the trained student in eval mode, its history, how the teacher ran, notes)."""
        from ..train import train
        from .modules import Online

        why_online = _online_reason(data, self.cache_teacher, self.pairs, self.spec)
        notes: list[str] = []
        if why_online is None:
            outputs = teachers.compute(self.teacher, data, top_k=self.top_k,
                                       cache_dir=self.cache_dir, device=self.device)  # fmt: skip
            model, k, indexed = student, outputs.values.shape[1], outputs.indices is not None
            packed = _packed(data, outputs)
            where = f"on disk: {outputs.path}" if outputs.path else "in memory"
            cache = f"cached {where}" + (" (reused)" if outputs.reused else "")
            loss = KDLoss(temperature, alpha, k, indexed, self.regression, self.feature_weight)
            result = train(model, packed, val, loss=loss, **{**self.options, **override})
            self.described = "none"
            return model.eval(), result.history, cache, notes
        model = Online(student, self.teacher, self.pairs, self.feature_loss,
                       _sample(data).inputs, self.spec)  # fmt: skip
        try:
            if model.views is not None:
                self.described = model.views.describe()
                notes.append(model.views.note)
            loss = KDLoss(temperature, alpha, 0, False, self.regression, self.feature_weight)
            result = train(model, data, val, loss=loss, **{**self.options, **override})
        finally:
            model.close()
        return model.student.eval(), result.history, f"online: {why_online}", notes


def _pick(keep: str, history: list[dict[str, Any]],
          base_history: list[dict[str, Any]] | None) -> tuple[str, str]:  # fmt: skip
    """Which student to return, and why (judged on the last epoch's val figures)."""
    if keep == "distilled":
        return "distilled", "keep='distilled'"
    if not base_history or not history:
        return "distilled", "no student trained alone to compare (baseline=False)"
    kd, alone = history[-1], base_history[-1]
    if "val_metric" in kd and "val_metric" in alone:
        a, b, name = kd["val_metric"], alone["val_metric"], kd.get("metric", "metric")
        better = a >= b if kd.get("higher_is_better", True) else a <= b
    elif "val_loss" in kd and "val_loss" in alone:
        a, b, name = kd["val_loss"], alone["val_loss"], "val loss"
        better = a <= b
    else:
        return "distilled", "no val_data to compare the two students on"
    if better:
        return "distilled", f"val {name} {a:.4f} against {b:.4f} for the student alone"
    return "alone", (f"val {name} {b:.4f} against {a:.4f} for the distilled student; "
                     "keep='distilled' returns the distilled one")  # fmt: skip


def _check(temperature: Any, alpha: Any, cache: Any, feature_loss: str, weight: Any,
           student: Any, keep: Any = "best") -> None:  # fmt: skip
    torch = require("torch", "nimbleml.distill")
    if temperature is not None and (not isinstance(temperature, int | float) or temperature <= 0):
        raise ConfigError(
            f"temperature must be a number > 0 (or None: chosen by a short search), got "
            f"{temperature!r}"
        )
    if alpha is not None and (not isinstance(alpha, int | float) or not 0 <= alpha <= 1):
        raise ConfigError(
            f"alpha must be in [0, 1] (the soft term's share; None: chosen by a short search), "
            f"got {alpha!r}"
        )
    if cache not in CACHE_CHOICES or (isinstance(cache, int) and not isinstance(cache, bool)):
        raise ConfigError(f"cache_teacher must be 'auto', True or False, got {cache!r}")
    if feature_loss not in ("mse", "cosine"):
        raise ConfigError(f"feature_loss must be 'mse' or 'cosine', got {feature_loss!r}")
    if not isinstance(weight, int | float) or weight < 0:
        raise ConfigError(f"feature_weight must be a number >= 0, got {weight!r}")
    if keep not in KEEP_CHOICES:
        raise ConfigError(f"keep must be 'best' or 'distilled', got {keep!r}")
    if not isinstance(student, torch.nn.Module):
        raise ConfigError(f"the student must be a torch.nn.Module, got {type(student).__name__}")


def _numpy_pair(pair: tuple[Any, Any]) -> tuple[Any, Any]:
    def arr(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: arr(v) for k, v in x.items()}
        return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)

    return arr(pair[0]), arr(pair[1])


def _sample(data: Any) -> Any:
    from ..train.data import batches

    return batches(data, 8, shuffle=False).sample()


def _integral(t: Any) -> bool:
    torch = require("torch", "nimbleml.distill")
    return bool(torch.all(t == torch.round(t))) and t.dim() == 1


def _online_reason(data: Any, cache: Any, features: Any, views: Any = None) -> str | None:
    """Why the teacher must run on every batch, or None when its outputs can be cached."""
    from torch.utils.data import DataLoader

    if cache is False:
        return "cache_teacher=False"
    if views is not None:
        return f"views={views!r} (the teacher labels each step's new view)"
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


__all__ = ["DistillResult", "KDLoss", "KDOutput", "distill"]
