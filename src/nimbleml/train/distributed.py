"""Data parallelism through PyTorch's own pieces: a process group from the environment
torchrun sets (gloo on CPU, nccl on GPU), DistributedDataParallel, ``no_sync`` for the
micro-steps that do not end an accumulation, sums across processes for exact averages."""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from typing import Any

from .._deps import require

_NO_CONTEXT = contextlib.nullcontext()  # reusable: most micro-steps need no context at all


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    started_here: bool = False  # this process group was created by nimbleml (destroy it)

    @property
    def main(self) -> bool:
        """Only rank 0 logs, evaluates and writes checkpoints."""
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str) -> Distributed:
        """One process, or the group torchrun describes in WORLD_SIZE / RANK / LOCAL_RANK."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        torch = require("torch", "nimbleml.train")
        import torch.distributed as dist

        started = False
        if not dist.is_initialized():
            backend = "nccl" if str(device).startswith("cuda") else "gloo"
            dist.init_process_group(backend=backend)
            started = True
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if str(device).startswith("cuda"):
            torch.cuda.set_device(local)
        return cls(dist.get_rank(), dist.get_world_size(), local, started)

    def wrap(self, model: Any, device: str) -> Any:
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.local_rank] if str(device).startswith("cuda") else None
        return DistributedDataParallel(model, device_ids=ids)

    def no_sync(self, model: Any, final: bool) -> Any:
        """Skip the gradient all-reduce on micro-steps that do not end an accumulation."""
        if self.world == 1 or final:
            return _NO_CONTEXT
        return model.no_sync()

    def sum(self, value: float) -> float:
        """``value`` summed over the processes (the samples of a global step)."""
        if self.world == 1:
            return value
        torch = require("torch", "nimbleml.train")
        import torch.distributed as dist

        t = torch.tensor([float(value)], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t.item())

    def all_finite(self, value: float) -> bool:
        """True when ``value`` (a micro-batch's loss) is finite in every process. Under DDP
        the processes must skip a backward together: one that skipped alone would leave the
        others waiting in DDP's all-reduce for good. One small all-reduce per micro-batch."""
        finite = math.isfinite(value)
        if self.world == 1:
            return finite
        return self.sum(0.0 if finite else 1.0) == 0.0

    def share(self, value: Any) -> Any:
        """Rank 0's ``value`` in every process (what only rank 0 computes: the validation
        figures, a callback's "stop"), so that every process decides 'best', early stopping
        and the plateau schedule on the same numbers and they stop at the same epoch."""
        if self.world == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.started_here:
            import torch.distributed as dist

            dist.destroy_process_group()
