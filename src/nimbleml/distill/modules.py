"""The torch modules distillation trains (imported when it runs, so ``import nimbleml``
loads no torch): the data with the teacher's outputs packed beside each row, and the student
run beside an online teacher."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._deps import require
from ..errors import ConfigError
from . import teacher as teachers
from .kd import KDOutput, _width


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
    the student's and the teacher's outputs (and the feature term), in eval the student's. The
    teacher is held outside the module's parameters (frozen, never in the optimizer or the
    checkpoints); the projections for features of different widths are trained with it."""

    def __init__(self, student: Any, teacher: Any, pairs: list[tuple[str, str]],
                 feature_loss: str, sample_data: Any) -> None:  # fmt: skip
        torch = require("torch", "nimbleml.distill")
        super().__init__()
        self.student = student
        self._teacher = [teacher]  # a list: not a submodule
        self._run_teacher = teachers.teacher_callable(teacher)
        self.pairs, self.feature_loss = list(pairs), feature_loss
        self._seen: dict[str, Any] = {}
        self.projections = torch.nn.ModuleList()
        if self.pairs:
            if not isinstance(teacher, torch.nn.Module):
                raise ConfigError("feature distillation needs a torch teacher, not a package")
            self._hook(sample_data)

    def _hook(self, sample_data: Any) -> None:
        torch = require("torch", "nimbleml.distill")
        from ..train.data import batches
        from ..train.loop import call

        teacher = self._teacher[0]
        for s_name, t_name in self.pairs:
            for side, model, name in (("s", self.student, s_name), ("t", teacher, t_name)):
                try:
                    module = model.get_submodule(name)
                except AttributeError:
                    names = [n for n, _ in model.named_modules() if n][:12]
                    who = "student" if side == "s" else "teacher"
                    raise ConfigError(
                        f"features: the {who} has no module {name!r}; some it has: "
                        f"{', '.join(names)}"
                    ) from None
                module.register_forward_hook(self._keeper(f"{side}:{name}"))
        sample = batches(sample_data, 4, shuffle=False).sample(4)
        with torch.no_grad():
            call(self.student, sample.inputs)
            call(teacher, sample.inputs)
        for s_name, t_name in self.pairs:
            s, t = self._seen[f"s:{s_name}"], self._seen[f"t:{t_name}"]
            ws, wt = _width(s), _width(t)
            if s.dim() != t.dim():
                raise ConfigError(
                    f"features ({s_name!r}, {t_name!r}): outputs of shapes {tuple(s.shape)} and "
                    f"{tuple(t.shape)} cannot be matched; pick modules of the same kind"
                )
            if ws == wt:
                self.projections.append(torch.nn.Identity())
            elif s.dim() == 4:
                self.projections.append(torch.nn.Conv2d(ws, wt, 1))
            else:
                self.projections.append(torch.nn.Linear(ws, wt))
        self._seen.clear()

    def _keeper(self, key: str) -> Any:
        def keep(_module: Any, _inputs: Any, output: Any) -> None:
            self._seen[key] = output[0] if isinstance(output, tuple) else output

        return keep

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        from ..train.loop import call

        out = self.student(*args, **kwargs)
        if not self.training:
            return out
        teacher = self._teacher[0]
        inputs: Any = kwargs if kwargs else (args[0] if len(args) == 1 else args)
        if hasattr(teacher, "to"):
            first = next(self.student.parameters())
            if next(teacher.parameters()).device != first.device:
                teacher.to(first.device)
        soft = self._run_teacher(inputs) if not self.pairs else None
        feature_term = None
        if self.pairs:
            torch = require("torch", "nimbleml.distill")
            with torch.no_grad():
                from ..train.losses import _primary

                soft = _primary(call(teacher, inputs)).float()
            feature_term = sum(
                self._match(proj(self._seen[f"s:{s}"]), self._seen[f"t:{t}"].detach())
                for proj, (s, t) in zip(self.projections, self.pairs, strict=True)
            ) / len(self.pairs)
        return KDOutput(out, soft, feature_term)

    def _match(self, s: Any, t: Any) -> Any:
        torch = require("torch", "nimbleml.distill")
        F = torch.nn.functional
        if self.feature_loss == "cosine":
            return (1 - F.cosine_similarity(s.flatten(1), t.flatten(1), dim=1)).mean()
        return F.mse_loss(s, t)
