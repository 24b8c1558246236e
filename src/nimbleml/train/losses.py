"""Losses as means over a micro-batch (torch's default), which the loop weights by the
micro-batch's share of the whole step's samples, so accumulation is exact whatever the
micro-batch sizes; with the checks that turn torch's shape and dtype errors into a sentence."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._deps import require
from ..errors import DataError

MeanLoss = Callable[[Any, Any], Any]  # (outputs, target) -> the loss averaged over the samples


def resolve_loss(loss: str | Callable[..., Any] | None, target: Any) -> tuple[str, MeanLoss]:
    """(name, mean loss). None: cross_entropy for integer targets, mse otherwise. A callable
    of the user's is taken as a mean over the batch, as torch's losses are by default."""
    torch = require("torch", "nimbleml.train")
    F = torch.nn.functional
    if callable(loss):
        return getattr(loss, "__name__", "custom"), loss
    if loss is None:
        loss = "cross_entropy" if not torch.is_floating_point(target) else "mse"
    if loss == "cross_entropy":
        return loss, _cross_entropy
    pointwise = {
        "mse": F.mse_loss,
        "l1": F.l1_loss,
        "smooth_l1": F.smooth_l1_loss,
        "bce_with_logits": F.binary_cross_entropy_with_logits,
    }[loss]

    def values(out: Any, y: Any) -> Any:
        out = _primary(out)
        if not y.numel():  # a process's empty share of a short last batch: zero, not NaN
            return out.float().sum() * 0.0
        if out.numel() != y.numel():
            raise DataError(
                f"loss '{loss}' compares outputs with targets element by element, but the model "
                f"gives {tuple(out.shape)} for targets of shape {tuple(y.shape)}; use "
                "loss='cross_entropy' for class indices, or targets shaped like the outputs"
            )
        # in float32 whatever autocast computed the outputs in: fp16 sums overflow
        return pointwise(out.float(), y.reshape(out.shape).float())

    return loss, values


def _primary(out: Any) -> Any:
    """The tensor a loss reads from a model's outputs (first of a tuple, 'logits' of a dict)."""
    if isinstance(out, dict):
        out = out.get("logits", next(iter(out.values())))
    elif isinstance(out, tuple | list):
        out = out[0]
    return out


def _cross_entropy(out: Any, y: Any) -> Any:
    torch = require("torch", "nimbleml.train")
    out = _primary(out)
    if torch.is_floating_point(y):
        if not bool(torch.all(y == torch.round(y))):
            raise DataError(
                "loss 'cross_entropy' takes class indices, but the targets are fractional "
                "floats; use loss='mse' for values, or give integer class labels"
            )
        y = y.long()
    if y.dim() != 1 or out.dim() != 2 or out.shape[0] != y.shape[0]:
        raise DataError(
            f"loss 'cross_entropy' takes outputs (batch, classes) and targets (batch,); got "
            f"outputs {tuple(out.shape)} and targets {tuple(y.shape)}"
        )
    if not y.shape[0]:  # a process's empty share of a short last batch under DDP: zero, not NaN
        return out.float().sum() * 0.0
    if out.is_cuda:  # a bad class index is a device-side assert there: check before
        _check_classes(out, y)
    try:  # on the CPU torch's own check finds a bad index, at no cost per step
        return torch.nn.functional.cross_entropy(out.float(), y, ignore_index=_NO_IGNORE)
    except (IndexError, RuntimeError):
        _check_classes(out, y)
        raise


_NO_IGNORE = -(2**62)  # every sample counts: torch would skip targets equal to -100


def _check_classes(out: Any, y: Any) -> None:
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= out.shape[1]:
        raise DataError(
            f"targets run from {low} to {high}, but the model gives {out.shape[1]} class scores "
            f"(classes 0..{out.shape[1] - 1}): give the model one output per class"
        )
