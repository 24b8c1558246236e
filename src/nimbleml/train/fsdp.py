"""Fully sharded data parallelism (``strategy="fsdp"``) through torch's own FSDP2
(``torch.distributed.fsdp.fully_shard``): each process keeps a 1/N shard of every parameter,
gradient and optimizer state, gathering a block's parameters for its forward and backward
only.

- **What is sharded**: each block of the model's largest ``Sequential`` / ``ModuleList`` (a
  transformer's layers, an MLP's layers), or the submodules named by ``fsdp_blocks``, one
  ``fully_shard`` each (the deepest first), then the model itself (the parameters outside
  the blocks: embeddings, heads). A model with no such block is refused (nothing to shard
  block by block); name the blocks, or train it with DDP.
- **Precision**: on GPUs the run's mixed precision goes through FSDP's own
  ``MixedPrecisionPolicy`` (parameters gathered in bf16/fp16, gradients reduced in fp32; the
  loop's autocast stays for the ops autocast keeps in fp32, and fp16 takes
  ``ShardedGradScaler``, which agrees across the processes on a skipped step). On a CPU
  (gloo) FSDP trains in fp32, and the report says so.
- **Accumulation**: the micro-steps that do not end a step run with
  ``set_requires_gradient_sync(False)`` (no reduce-scatter; FSDP2's ``no_sync``).
- **Checkpoints** hold full, unsharded state dicts (``get_model_state_dict`` /
  ``get_optimizer_state_dict`` with ``full_state_dict=True, cpu_offload=True``: gathered to
  rank 0, on the CPU), the same keys a plain model has: ``torch.load(path)["model"]`` loads
  into the model built in one process. Resuming reads the file on rank 0 and sends it to the
  others (``broadcast_from_rank0``).
- **The result** is a plain model: a copy of the model made before sharding, its parameters
  on the ``meta`` device (no memory), given the gathered weights at the end. The model
  passed in stays sharded (FSDP changes it in place).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

from .._deps import require
from ..errors import ConfigError
from .precision import Precision

CPU_REASON = "FSDP on a CPU trains in fp32 (its mixed precision policy is for GPUs)"


def blocks(model: Any, names: Sequence[str] | None) -> list[tuple[str, Any]]:
    """(name, module) of each block to shard: those ``names`` gives, else the children that
    hold parameters of the largest Sequential / ModuleList. A ConfigError naming the value
    and the fix when there is none, or a name is not a submodule."""
    torch = require("torch", "nimbleml.train")
    named = dict(model.named_modules())
    if names is not None:
        missing = [n for n in names if n not in named or n == ""]
        if missing:
            some = ", ".join(n for n in list(named)[1:9])
            raise ConfigError(
                f"fsdp_blocks: {type(model).__name__} has no submodule "
                f"{', '.join(repr(n) for n in missing)}; name submodules that exist (some: "
                f"{some})"
            )
        return [(n, named[n]) for n in names]
    lists = [
        (name, [(f"{name}.{c}" if name else c, m) for c, m in module.named_children()
                if any(True for _ in m.parameters())])
        for name, module in named.items()
        if isinstance(module, torch.nn.Sequential | torch.nn.ModuleList)
    ]  # fmt: skip
    lists = [(name, found) for name, found in lists if found]
    if not lists:
        raise ConfigError(
            f"strategy='fsdp' shards each block of the model's largest Sequential or "
            f"ModuleList, and {type(model).__name__} has none holding parameters: name the "
            "submodules to shard with fsdp_blocks=[...] (--fsdp-blocks a,b), or train it with "
            "strategy='ddp'"
        )
    return max(lists, key=lambda item: len(item[1]))[1]


def skeleton(model: Any) -> Any:
    """A copy of ``model`` whose parameters live on the ``meta`` device (no memory): the
    plain model the result is made from once the weights are gathered (buffers are copied:
    a non-persistent one is in no state dict)."""
    torch = require("torch", "nimbleml.train")
    memo: dict[int, Any] = {
        id(p): torch.nn.Parameter(p.detach().to("meta"), requires_grad=p.requires_grad)
        for p in model.parameters()
    }
    return copy.deepcopy(model, memo)


def policy(precision: Precision, device: str) -> Any:
    """FSDP's MixedPrecisionPolicy for the run's precision: gather in bf16/fp16 and reduce in
    fp32 on a GPU; the default (fp32 throughout) otherwise."""
    torch = require("torch", "nimbleml.train")
    from torch.distributed.fsdp import MixedPrecisionPolicy

    dtype = precision.autocast_dtype
    if dtype is None or not str(device).startswith("cuda"):
        return MixedPrecisionPolicy()
    return MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)


def precision_for(precision: Precision, device: str) -> Precision:
    """The precision FSDP trains in, with its reason: fp32 on a CPU, the run's own on a GPU
    (the reason adds how FSDP carries it)."""
    if not str(device).startswith("cuda"):
        if precision.autocast_dtype is None:
            return dataclasses.replace(precision, reason=f"{precision.reason}; {CPU_REASON}")
        return Precision("fp32", f"{CPU_REASON}; {precision.name} otherwise: {precision.reason}",
                         "cpu")  # fmt: skip
    if precision.autocast_dtype is None:
        return precision
    how = "FSDP's MixedPrecisionPolicy gathers parameters in that precision and reduces "
    return dataclasses.replace(precision, reason=f"{precision.reason}; {how}gradients in fp32")


def shard(model: Any, chosen: list[tuple[str, Any]], precision: Precision, device: str) -> None:
    """``fully_shard`` on each chosen block, the deepest first, then on the model."""
    from torch.distributed.fsdp import fully_shard

    mp = policy(precision, device)
    for _, block in sorted(chosen, key=lambda item: -item[0].count(".")):
        fully_shard(block, mp_policy=mp)
    fully_shard(model, mp_policy=mp)


def grad_scaler(precision: Precision) -> Any:
    """fp16 under FSDP: ShardedGradScaler (each process sees only its shard's gradients, so
    the processes must agree on an inf before skipping a step)."""
    from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

    return ShardedGradScaler(precision.device_type, enabled=precision.scaled)


@contextlib.contextmanager
def no_gradient_sync(model: Any) -> Iterator[None]:
    """A micro-step that does not end the step: gradients accumulate unsharded, no
    reduce-scatter (FSDP2's ``set_requires_gradient_sync(False)``)."""
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def _options(**kw: Any) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def full_state(model: Any, optimizer: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The model's and the optimizer's full state dicts, gathered to rank 0 on the CPU (a
    collective: every process calls it; the others get empty dicts)."""
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = _options(cpu_offload=True)
    return (get_model_state_dict(model, options=options),
            get_optimizer_state_dict(model, optimizer, options=options))  # fmt: skip


def load_full(model: Any, optimizer: Any, weights: dict[str, Any],
              optim: dict[str, Any]) -> None:  # fmt: skip
    """Full state dicts held by rank 0 (the others pass empty ones) sent to every process
    and sharded into the model and the optimizer."""
    from torch.distributed.checkpoint.state_dict import (
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = _options(broadcast_from_rank0=True)
    set_model_state_dict(model, weights, options=options)
    set_optimizer_state_dict(model, optimizer, optim, options=options)


def load_optimizer(model: Any, optimizer: Any, saved: dict[str, Any]) -> None:
    """An optimizer state saved by an FSDP run (keyed by parameter names) into the optimizer
    of a plain or DDP model."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, saved, options=_options())


def by_name(model: Any, saved: dict[str, Any]) -> dict[str, Any]:
    """A plain optimizer state (keyed by parameter index, in the order nimbleml's optimizer
    takes the trainable parameters) keyed by parameter names, as FSDP loads it."""
    if not is_by_index(saved):
        return saved
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    groups = [{**g, "params": [names[i] for i in g["params"]]} for g in saved["param_groups"]]
    return {"state": {names[i]: s for i, s in saved["state"].items()}, "param_groups": groups}


def is_by_index(saved: dict[str, Any]) -> bool:
    """Whether an optimizer state is torch's own (parameters by index), not by name."""
    params = [p for g in saved.get("param_groups", []) for p in g.get("params", [])]
    return not params or isinstance(params[0], int)


def plain(model: Any, template: Any) -> Any:
    """The trained weights gathered (every process) into ``template`` (:func:`skeleton`):
    a plain module the caller can save, export and run in one process."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    template.load_state_dict(get_model_state_dict(model, options=_options()), assign=True)
    return template
