"""The user's code inside a training run, named when it fails: the model's forward pass, the
loss, the data (a Dataset, a DataLoader), the callbacks. What they raise is the user's error
(UserCodeError, exit 2 on the command line) saying which stage and what to check, never
"a bug in nimbleml" (issue 22).

The cost per step is nil: the loop holds one try block around its epoch and notes the stage
it is in (a local name, set as it goes); :func:`translate` turns what escapes into the error.
The first training batch goes through the model once before anything else (eval mode, no
gradient), so a model that does not fit the data says so at once, with both numbers (the
data's features per row, the model's first layer's inputs), before a batch-size search or a
DataLoader tuning runs it."""

from __future__ import annotations

from typing import Any

from .._deps import require
from ..errors import NimbleError, UserCodeError, running_user_code

DATA, FORWARD, LOSS, BACKWARD = "data", "forward", "loss", "backward"
STEP, OPTIMIZER, CALLBACK = "step", "optimizer", "callback"  # STEP: nimbleml's own

PEER_LOST = "lost contact with the other training processes"  # the line the launcher drops
# what a process of a torchrun group sees when another process of it is gone (gloo, nccl)
_PEER_LOST = ("gloo", "nccl", "connection reset by peer", "connection closed by peer",
              "broken pipe", "socket timeout")  # fmt: skip


def is_peer_lost(exc: BaseException) -> bool:
    """True for the error torch.distributed raises when another process of the group is gone."""
    if type(exc).__name__ in ("DistBackendError", "DistNetworkError", "DistStoreError"):
        return True
    text = str(exc).lower()
    return any(word in text for word in _PEER_LOST)


def batch_name(epoch: int, index: int, validation: bool = False) -> str:
    """'the first training batch', 'training batch 7 of epoch 2' (batches count from 1)."""
    kind = "validation" if validation else "training"
    if index == 0 and (epoch == 0 or validation):
        return f"the first {kind} batch"
    return f"{kind} batch {index + 1}" + ("" if validation else f" of epoch {epoch + 1}")


def translate(stage: str, exc: Exception, where: str, *, user_loss: bool = False,
              callback: Any = None) -> Exception:  # fmt: skip
    """The error to raise for ``exc``, raised at ``stage`` on batch ``where``: a
    UserCodeError for the user's code, ``exc`` itself for nimbleml's own (and for a lost
    process of the group, which the launcher names)."""
    if isinstance(exc, NimbleError) or is_peer_lost(exc):
        return exc
    if stage not in _STAGES:
        return exc  # the optimizer step of nimbleml's own optimizer: ours
    template, check = _STAGES[stage]
    if stage == CALLBACK:
        name = getattr(callback, "__qualname__", type(callback).__name__)
        stage_text = f"the callback {name} ({where})"
    else:
        stage_text = template.format(where=where)
    if stage == LOSS and not user_loss:
        check = "that the targets fit the loss and the model's outputs (shape, dtype, range)"
    try:
        with running_user_code(stage_text, check):
            raise exc
    except UserCodeError as err:
        return err
    except BaseException as other:  # pragma: no cover - running_user_code re-raised it
        return other if isinstance(other, Exception) else exc


_STAGES = {
    DATA: ("reading {where} from the data",
           "the Dataset's __getitem__ / __len__ and the DataLoader's collate_fn"),
    FORWARD: ("the model's forward pass on {where}",
              "that the batch's inputs fit the model (shapes, dtypes, device)"),
    LOSS: ("the loss on {where}", "the loss function: it takes (outputs, targets) and "
           "returns the batch's mean loss"),
    BACKWARD: ("the backward pass on {where}",
               "the model's custom autograd functions and in-place operations"),
    OPTIMIZER: ("the optimizer's step after {where}", "the optimizer you passed"),
    CALLBACK: ("", "the callback: it is called cb(event, info) with event "
               "'step_end', 'epoch_end' or 'resume'"),
}  # fmt: skip


def first_forward(model: Any, inputs: Any, call: Any) -> None:
    """The model once on the first training batch (eval mode, no gradient, then back): a
    UserCodeError naming the stage and, for features that do not match, both numbers."""
    torch = require("torch", "nimbleml.train")
    was_training = model.training
    model.eval()
    try:
        with (
            torch.no_grad(),
            running_user_code(
                "the model's forward pass on the first training batch", fit_check(model, inputs)
            ),
        ):
            call(model, inputs)
    finally:
        model.train(was_training)


def fit_check(model: Any, inputs: Any) -> str:
    """What to check when the model does not take the data: the data's features per row
    and the model's first layer's inputs, when both are known."""
    torch = require("torch", "nimbleml.train")
    if not torch.is_tensor(inputs) or inputs.dim() < 2:
        return "that the data's inputs fit the model (shapes, dtypes, names)"
    first = next((m for m in model.modules()
                  if isinstance(m, torch.nn.Linear | torch.nn.modules.conv._ConvNd)), None)  # fmt: skip
    name = next((n for n, m in model.named_modules() if m is first), "")
    if isinstance(first, torch.nn.Linear):
        data = f"the data has {inputs.shape[-1]} features per row"
        takes = f"the model's first layer ({name or 'Linear'}: Linear) takes {first.in_features}"
        return f"that the data's feature count matches the model's input: {data}, {takes}"
    if first is not None:
        data = (
            f"the data has {inputs.shape[1]} channels (per-sample shape {tuple(inputs.shape[1:])})"
        )
        kind = type(first).__name__
        takes = f"the model's first layer ({name or kind}: {kind}) takes {first.in_channels}"
        return f"that the data's channels match the model's input: {data}, {takes}"
    return (f"that the data's inputs fit the model (the data gives per-sample shape "
            f"{tuple(inputs.shape[1:])})")  # fmt: skip
