"""The distillation loss (see kd.py for the formula): the teacher's soft targets at temperature
T with the T^2 factor, the task loss on the labels, and the feature term.

Two kinds of rows change the task term. A row of ``unlabeled=`` carries the label -1: it has
no task term, only the teacher's. A mixed view (views.py) of rows i and j with weight lam has
the task term ``lam * CE(y_i) + (1 - lam) * CE(y_j)`` (mixup's), and the soft term on the view
as it is: the teacher saw that same view.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._deps import require


@dataclass
class KDOutput:
    student: Any
    teacher: Any
    features: Any
    mix: Any = None  # views.Mix of the step, or None


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
        student, teacher, feature_term, mix = out, None, None, None
        if isinstance(out, KDOutput):
            student, teacher, feature_term, mix = out.student, out.teacher, out.features, out.mix
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
            task = self._values(student, y, mix)
            soft = None if teacher is None else F.mse_loss(student, teacher.reshape(student.shape))
        else:
            task = self._classes(student, y, mix) if self.alpha < 1 or teacher is None else None
            soft = None if teacher is None else self._soft(student, teacher, indices)
        if soft is None:
            loss = task
        elif task is None:
            loss = soft
        else:
            loss = self.alpha * soft + (1 - self.alpha) * task
        if feature_term is not None and self.feature_weight:
            loss = loss + self.feature_weight * feature_term
        return loss

    def _classes(self, student: Any, y: Any, mix: Any) -> Any:
        """Cross-entropy on the labelled rows (label >= 0), mixup's for a mixed view."""
        torch = require("torch", "nimbleml.distill")
        from ..train.losses import _cross_entropy

        labelled = y >= 0
        if mix is None and bool(labelled.all()):
            return _cross_entropy(student, y.long())  # the plain path, its checks and errors
        y = y.long().clamp(min=0)
        if not y.shape[0]:
            return student.sum() * 0.0
        ce = torch.nn.functional.cross_entropy(student, y, reduction="none")
        weight = labelled.float()
        if mix is None:
            return (ce * weight).sum() / weight.sum().clamp(min=1.0)
        lam = mix.lam.float()
        w_a, w_b = lam * weight, (1 - lam) * weight[mix.perm]
        ce_b = torch.nn.functional.cross_entropy(student, y[mix.perm], reduction="none")
        return (w_a * ce + w_b * ce_b).sum() / (w_a + w_b).sum().clamp(min=1e-6)

    def _values(self, student: Any, y: Any, mix: Any) -> Any:
        F = require("torch", "nimbleml.distill").nn.functional
        n = y.shape[0]
        y = y.reshape(n, -1).float()
        if mix is not None:
            lam = mix.lam.float().reshape(-1, 1)
            y = lam * y + (1 - lam) * y[mix.perm]
        return F.mse_loss(student.reshape(n, -1), y)

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
