"""The torch modules distillation trains (imported when it runs, so ``import nimbleml``
loads no torch): the data with the teacher's outputs packed beside each row, and the student
run beside an online teacher."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from .._deps import require
from . import features
from . import teacher as teachers
from .loss import KDOutput


def _dataset_base() -> Any:
    return require("torch", "nimbleml.distill").utils.data.Dataset


class PackedDataset(_dataset_base()):  # type: ignore[misc]
    """A deterministic Dataset whose targets carry the teacher's cached outputs."""

    def __init__(self, data: Any, outputs: teachers.TeacherOutputs) -> None:
        self.data, self.outputs = data, outputs

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> Any:
        torch = require("torch", "nimbleml.distill")
        x, y = self.data[i]
        row = self.outputs.packed(np.asarray([float(y)]), rows=slice(i, i + 1))[0]
        return x, torch.from_numpy(row)


def _module_base() -> Any:
    return require("torch", "nimbleml.distill").nn.Module


class Online(_module_base()):  # type: ignore[misc]
    """The student trained beside a teacher that runs on every batch: in training it returns
    the student's and the teacher's outputs on the same view of the batch (views.py), with the
    view's mixup and the feature term; in eval the student's outputs. The teacher is held
    outside the module's parameters (frozen, never in the optimizer or the checkpoints); the
    projections for features of different widths are trained with it. ``close()`` removes
    every hook it put on the student and the teacher."""

    def __init__(self, student: Any, teacher: Any, pairs: list[tuple[str, str]],
                 feature_loss: str, sample_inputs: Any, views: str | None = None) -> None:  # fmt: skip
        torch = require("torch", "nimbleml.distill")
        super().__init__()
        self.student = student
        self._teacher = [teacher]  # a list: not a submodule
        self._run_teacher = teachers.teacher_callable(teacher)
        self.pairs, self.feature_loss = list(pairs), feature_loss
        self._seen: dict[str, Any] = {}
        self._handles: list[Any] = []
        self.projections = torch.nn.ModuleList()
        if self.pairs:
            self.projections.extend(features.probe(student, teacher, self.pairs, sample_inputs))
            for s, t in self.pairs:
                for key, model, name in ((f"s:{s}", student, s), (f"t:{t}", teacher, t)):
                    module = model.get_submodule(name)
                    self._handles.append(module.register_forward_hook(self._keeper(key)))
        self.views = None
        if views is not None:
            from .views import Views

            self.views = Views(views, student, teacher, sample_inputs)

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if self.views is not None:
            self.views.close()
        self._seen.clear()

    def _keeper(self, key: str) -> Any:
        def keep(_module: Any, _inputs: Any, output: Any) -> None:
            if self.training:
                self._seen[key] = features.first_tensor(output)

        return keep

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        from ..train.loop import call

        inputs: Any = kwargs if kwargs else (args[0] if len(args) == 1 else args)
        if not self.training:
            return call(self.student, inputs)
        teacher = self._teacher[0]
        if hasattr(teacher, "to"):
            first = next(self.student.parameters())
            if next(teacher.parameters()).device != first.device:
                teacher.to(first.device)
        mix = None
        if self.views is not None:
            inputs, mix = self.views.make(inputs)
        with self.views.mixing(mix) if self.views is not None else _NOTHING:
            out = call(self.student, inputs)
            soft = self._run_teacher(inputs)
        feature_term = None
        if self.pairs:
            feature_term = sum(
                self._match(proj(self._seen[f"s:{s}"]), self._seen[f"t:{t}"].detach())
                for proj, (s, t) in zip(self.projections, self.pairs, strict=True)
            ) / len(self.pairs)
            self._seen.clear()
        return KDOutput(out, soft, feature_term, mix)

    def _match(self, s: Any, t: Any) -> Any:
        torch = require("torch", "nimbleml.distill")
        F = torch.nn.functional
        if s.dim() == 3 and t.dim() == 3 and t.shape[1] < s.shape[1]:
            # an eval-mode torch encoder returns nested tensors, padded here to the batch's
            # longest row; the student (training) keeps every position: zeros past the end
            t = F.pad(t, (0, 0, 0, s.shape[1] - t.shape[1]))
        if self.feature_loss == "cosine":
            return (1 - F.cosine_similarity(s.flatten(1), t.flatten(1), dim=1)).mean()
        return F.mse_loss(s.float(), t.float())


_NOTHING = contextlib.nullcontext()
