"""Intermediate features for distillation: the (student_module, teacher_module) pairs, given or
found, checked before any training (a module that does not exist, or outputs that a learned
projection cannot align), and the projections that map the student's widths to the teacher's.

``students.shrink`` records the pairs on the student it builds (the attribute named by
``PAIRS_ATTR``): the hidden states of the kept layers of an MLP (each kept hidden layer's
output, after its activation), the output of every stage of a CNN (what reaches a pooling
layer or the head; a ResNet's stage Sequentials), the outputs of the kept layers of an encoder
(student layer k against the teacher layer it was copied from). ``features="auto"`` uses
them when the teacher has those modules; other students get no feature term. Not the
default: on the digits (64-32-10 student, mixup views) the feature term cost accuracy.
"""

from __future__ import annotations

from typing import Any

from .._deps import require
from ..errors import ConfigError

PAIRS_ATTR = "nimbleml_feature_pairs"  # set by students.shrink: [(student_name, teacher_name)]


def resolve(features: Any, student: Any, teacher: Any) -> tuple[list[tuple[str, str]], str]:
    """(the pairs to match, a note for the report)."""
    torch = require("torch", "nimbleml.distill")
    if features is None or features == [] or features is False:
        return [], ""
    if features == "auto":
        pairs = [tuple(p) for p in getattr(student, PAIRS_ATTR, None) or []]
        if not pairs:
            return [], ""
        if not isinstance(teacher, torch.nn.Module):
            return [], "features: the pairs shrink recorded not used (the teacher is a package)"
        if any(not _has(student, s) or not _has(teacher, t) for s, t in pairs):
            return [], ("features: the pairs shrink recorded not used (the teacher is not the "
                        "model the student was shrunk from)")  # fmt: skip
        return pairs, (f"features: {len(pairs)} pair(s) shrink recorded matched "
                       f"({', '.join(f'{s}~{t}' for s, t in pairs)})")  # fmt: skip
    if (
        isinstance(features, str)
        or not isinstance(features, list | tuple)
        or not all(
            isinstance(p, list | tuple) and len(p) == 2 and all(isinstance(n, str) for n in p)
            for p in features
        )
    ):
        raise ConfigError(
            f"features must be 'auto', None or a list of (student_module, teacher_module) "
            f"name pairs, got {features!r}"
        )
    if not isinstance(teacher, torch.nn.Module):
        raise ConfigError(
            "features: feature distillation needs a torch teacher (its hidden states), not a "
            "package; give the torch module, or features=None"
        )
    pairs = [(str(s), str(t)) for s, t in features]
    for s, t in pairs:
        for who, model, name in (("student", student, s), ("teacher", teacher, t)):
            if not _has(model, name):
                names = [n for n, _ in model.named_modules() if n][:12]
                raise ConfigError(
                    f"features ({s!r}, {t!r}): the {who} has no module {name!r}; give names "
                    f"from {who}.named_modules(), e.g. {', '.join(names)}"
                )
    return pairs, f"features: {len(pairs)} pair(s) matched"


def _has(model: Any, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True


def first_tensor(output: Any) -> Any:
    """A module's output as one dense tensor (the first of a tuple; a nested tensor padded)."""
    torch = require("torch", "nimbleml.distill")
    out = output[0] if isinstance(output, tuple | list) else output
    if isinstance(out, dict):
        out = next(iter(out.values()))
    if torch.is_tensor(out) and getattr(out, "is_nested", False):
        out = torch.nested.to_padded_tensor(out, 0.0)
    return out


def width(t: Any) -> int:
    return int(t.shape[1]) if t.dim() == 4 else int(t.shape[-1])


def probe(student: Any, teacher: Any, pairs: list[tuple[str, str]], sample: Any) -> list[Any]:
    """Runs both nets on ``sample`` and checks that each pair's outputs can be aligned (the
    same shape but for the width, which a projection maps); returns the projections."""
    torch = require("torch", "nimbleml.distill")
    from ..train.loop import call

    seen: dict[str, Any] = {}
    handles = []
    for s, t in pairs:
        for key, model, name in ((f"s:{s}", student, s), (f"t:{t}", teacher, t)):
            handles.append(model.get_submodule(name).register_forward_hook(_keeper(seen, key)))
    modes = (student.training, teacher.training)
    try:
        student.eval()
        teacher.eval()
        with torch.no_grad():
            call(student, sample)
            call(teacher, sample)
    finally:
        for h in handles:
            h.remove()
        student.train(modes[0])
        teacher.train(modes[1])
    projections = []
    for s, t in pairs:
        a, b = first_tensor(seen.get(f"s:{s}")), first_tensor(seen.get(f"t:{t}"))
        if not (torch.is_tensor(a) and torch.is_tensor(b)):
            raise ConfigError(
                f"features ({s!r}, {t!r}): the module gives no tensor (or did not run on a "
                "batch); pick modules whose output is a tensor the forward computes"
            )
        ws, wt = width(a), width(b)
        other_a = [d for i, d in enumerate(a.shape) if i != (1 if a.dim() == 4 else a.dim() - 1)]
        other_b = [d for i, d in enumerate(b.shape) if i != (1 if b.dim() == 4 else b.dim() - 1)]
        if a.dim() != b.dim() or other_a != other_b or a.dim() < 2:
            raise ConfigError(
                f"features ({s!r}, {t!r}): outputs of shapes {tuple(a.shape)} (student) and "
                f"{tuple(b.shape)} (teacher) cannot be aligned: a learned projection maps only "
                "the width (features, or channels of a feature map); pick modules whose outputs "
                "differ at most in width (the same batch, sequence and spatial sizes)"
            )
        if ws == wt:
            projections.append(torch.nn.Identity())
        elif a.dim() == 4:
            projections.append(torch.nn.Conv2d(ws, wt, 1))
        else:
            projections.append(torch.nn.Linear(ws, wt))
    return projections


def _keeper(seen: dict[str, Any], key: str) -> Any:
    def keep(_module: Any, _inputs: Any, output: Any) -> None:
        seen[key] = output

    return keep
