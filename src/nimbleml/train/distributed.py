"""Data parallelism through PyTorch's own pieces: a process group from the environment
torchrun sets (gloo on CPU, nccl on GPU), DistributedDataParallel or FSDP2 (``strategy``,
fsdp.py), ``no_sync`` for the micro-steps that do not end an accumulation, sums across
processes for exact averages, and the restarts torchrun's elastic agent made
(TORCHELASTIC_RESTART_COUNT)."""

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
    strategy: str = "ddp"  # ddp | fsdp (fsdp shards only with more than one process)
    blocks: Any = None  # fsdp: the (name, module) blocks to shard
    template: Any = None  # fsdp: the plain model the result is made from (fsdp.skeleton)

    @property
    def sharded(self) -> bool:
        """FSDP over several processes: every process runs every forward (the evaluation
        too), and the state is gathered and scattered for checkpoints."""
        return self.strategy == "fsdp" and self.world > 1

    @property
    def restarts(self) -> int:
        """How many times torchrun's elastic agent restarted the group (--max-restarts)."""
        return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) if self.world > 1 else 0

    @property
    def main(self) -> bool:
        """Only rank 0 logs, evaluates and writes checkpoints."""
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str, strategy: str = "ddp") -> Distributed:
        """One process, or the group torchrun describes in WORLD_SIZE / RANK / LOCAL_RANK."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls(strategy=strategy)
        torch = require("torch", "nimbleml.train")
        import torch.distributed as dist

        started = False
        if not dist.is_initialized():
            _init_group("nccl" if str(device).startswith("cuda") else "gloo")
            started = True
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if str(device).startswith("cuda"):
            torch.cuda.set_device(local)
        return cls(dist.get_rank(), dist.get_world_size(), local, started, strategy)

    def wrap(self, model: Any, device: str, precision: Any = None) -> Any:
        """DDP around the model, or FSDP2 in place (the blocks, then the root)."""
        if self.world == 1:
            return model
        if self.sharded:
            from . import fsdp

            self.template = fsdp.skeleton(model)  # before sharding: the plain model's shape
            fsdp.shard(model, self.blocks, precision, device)
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.local_rank] if str(device).startswith("cuda") else None
        return DistributedDataParallel(model, device_ids=ids)

    def no_sync(self, model: Any, final: bool) -> Any:
        """Skip the gradient all-reduce on micro-steps that do not end an accumulation."""
        if self.world == 1 or final:
            return _NO_CONTEXT
        if self.sharded:
            from .fsdp import no_gradient_sync

            return no_gradient_sync(model)
        return model.no_sync()

    def snapshot(self, model: Any, optimizer: Any) -> Any:
        """FSDP: the full model and optimizer state, gathered to rank 0 (every process must
        call it); None otherwise (rank 0 reads its own model's)."""
        if not self.sharded:
            return None
        from .fsdp import full_state

        return full_state(model, optimizer)

    def unwrap(self, model: Any) -> Any:
        """The trained model as a plain module (FSDP: gathered into the copy made before
        sharding, in every process)."""
        if not self.sharded:
            return model
        from .fsdp import plain

        return plain(model, self.template)

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


def _init_group(backend: str) -> None:
    """The process group from torchrun's environment. After a restart (--max-restarts) its
    keys go under a prefix of their own: torchrun's agent keeps one store for every attempt,
    and the processes of a restarted group read the addresses the killed attempt left there
    (gloo: 'connectFullMesh failed ... Connection refused', seen here; pytorch/pytorch#135712)."""
    import datetime

    import torch.distributed as dist

    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if restart == "0" or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        dist.init_process_group(backend=backend)
        return
    timeout = datetime.timedelta(minutes=30)  # torch's default for a process group
    store = dist.TCPStore(host_name=os.environ["MASTER_ADDR"], port=int(os.environ["MASTER_PORT"]),
                          world_size=int(os.environ["WORLD_SIZE"]), is_master=False,
                          timeout=timeout)  # fmt: skip
    dist.init_process_group(backend=backend, timeout=timeout, rank=int(os.environ["RANK"]),
                            world_size=int(os.environ["WORLD_SIZE"]),
                            store=dist.PrefixStore(f"nimbleml/attempt-{restart}/", store))  # fmt: skip
