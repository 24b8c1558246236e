"""Losses as sums over a micro-batch, so that accumulation can divide by the true number of
samples of the whole step (exact whatever the micro-batch sizes), with the checks that turn
torch's shape and dtype errors into a sentence."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._deps import require
from ..errors import DataError

SumLoss = Callable[[Any, Any], Any]  # (outputs, target) -> the loss summed over the samples


def resolve_loss(loss: str | Callable[..., Any] | None, target: Any) -> tuple[str, SumLoss]:
    """(name, summed loss). None: cross_entropy for integer targets, mse otherwise. A callable
    of the user's is taken as a mean over the batch (as torch's losses are by default) and
    multiplied back by the batch's size."""
    torch = require("torch", "nimbleml.train")
    F = torch.nn.functional
    if callable(loss):
        user = loss

        def summed(out: Any, y: Any) -> Any:
            return user(out, y) * len(y)

        return getattr(loss, "__name__", "custom"), summed
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
        if out.numel() != y.numel():
            raise DataError(
                f"loss '{loss}' compares outputs with targets element by element, but the model "
                f"gives {tuple(out.shape)} for targets of shape {tuple(y.shape)}; use "
                "loss='cross_entropy' for class indices, or targets shaped like the outputs"
            )
        # in float32 whatever autocast computed the outputs in: fp16 sums overflow
        return pointwise(out.float(), y.reshape(out.shape).float(), reduction="sum")

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
    if y.dim() != 1 or out.dim() != 2 or len(out) != len(y):
        raise DataError(
            f"loss 'cross_entropy' takes outputs (batch, classes) and targets (batch,); got "
            f"outputs {tuple(out.shape)} and targets {tuple(y.shape)}"
        )
    if not len(y):  # a process's empty share of a short last batch under DDP: a zero sum
        return torch.nn.functional.cross_entropy(out.float(), y, reduction="sum")
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= out.shape[1]:
        raise DataError(
            f"targets run from {low} to {high}, but the model gives {out.shape[1]} class scores "
            f"(classes 0..{out.shape[1] - 1}): give the model one output per class"
        )
    return torch.nn.functional.cross_entropy(out.float(), y, reduction="sum")
