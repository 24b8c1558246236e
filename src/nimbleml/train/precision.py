"""Which precision to train in, decided by the hardware with the reason stated, and the
autocast / loss-scaling pieces for it (torch.amp)."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

from .._deps import require
from ..errors import ConfigError

PRECISIONS = ("auto", "fp32", "fp16-mixed", "bf16-mixed")


@dataclass(frozen=True)
class Precision:
    name: str  # fp32 | fp16-mixed | bf16-mixed
    reason: str
    device_type: str  # cpu | cuda

    @property
    def autocast_dtype(self) -> Any:
        torch = require("torch", "nimbleml.train")
        return {"fp16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}.get(self.name)

    @property
    def scaled(self) -> bool:
        """fp16 needs loss scaling (GradScaler); bf16 has fp32's range and does not."""
        return self.name == "fp16-mixed"

    def autocast(self) -> Any:
        torch = require("torch", "nimbleml.train")
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.autocast_dtype)


def decide(requested: str, device: str) -> Precision:
    """The precision to train in. "auto": fp16-mixed on CUDA GPUs with tensor cores but no
    native bf16 (compute capability 7.x), bf16-mixed where bf16 runs natively (GPUs from 8.0,
    CPUs with AMX / AVX512-BF16), fp32 elsewhere. An explicit choice is kept."""
    if requested not in PRECISIONS:
        raise ConfigError(f"precision {requested!r} is not one of {', '.join(PRECISIONS)}")
    torch = require("torch", "nimbleml.train")
    device_type = "cuda" if str(device).startswith("cuda") else "cpu"
    if requested != "auto":  # kept; on a CPU without native support the loop warns
        return Precision(requested, "chosen explicitly", device_type)
    if device_type == "cuda":
        major, minor = torch.cuda.get_device_capability(torch.device(device))
        name = torch.cuda.get_device_name(torch.device(device))
        if major >= 8:
            return Precision("bf16-mixed", f"{name} (compute {major}.{minor}) runs bf16 natively: "
                             "mixed precision without loss scaling", "cuda")  # fmt: skip
        if major >= 7:
            return Precision("fp16-mixed", f"{name} (compute {major}.{minor}) has fp16 tensor "
                             "cores: fp16 autocast with GradScaler", "cuda")  # fmt: skip
        return Precision("fp32", f"{name} (compute {major}.{minor}) has no tensor cores", "cuda")
    from ..bench.machine import cpu_caps

    caps = cpu_caps()
    if caps.bf16:
        found = "/".join(f for f in caps.flags if "bf16" in f or "amx" in f)
        return Precision("bf16-mixed", f"this CPU runs bf16 natively ({found})", "cpu")
    flags = ", ".join(caps.flags) or "no vector extensions found"
    return Precision(
        "fp32",
        f"this CPU has no native bf16 ({flags}): bf16 autocast would emulate it, many times "
        "slower than fp32",
        "cpu",
    )


def measured_cost(model: Any, batch: Any, run_step: Any, precision: Precision) -> float:
    """How many times slower a training step is in ``precision`` than in fp32 on this
    machine (3 steps each after one warm-up, on a copy: the model is not changed)."""
    import copy

    fp32 = Precision("fp32", "", precision.device_type)

    def seconds(p: Precision) -> float:
        clone = copy.deepcopy(model)
        run_step(clone, batch, p)  # warm-up
        started = time.perf_counter()
        for _ in range(3):
            run_step(clone, batch, p)
        return time.perf_counter() - started

    return seconds(precision) / max(seconds(fp32), 1e-9)


def emulated_warning(name: str, found: str, times: float) -> str | None:
    """The warning for ``name`` (bf16-mixed / fp16-mixed) on a CPU without native support,
    when a step measured ``times`` x fp32's: only when it is slower (an emulated precision
    can still measure faster on a model whose steps are not arithmetic-bound)."""
    if not times > 1.0:
        return None
    return (
        f"{name} on this CPU is emulated ({found}): a training step measured {times:.2f}x the "
        "time of fp32; precision='auto' would train in fp32"
    )


def warn_if_slower(model: Any, sample: Any, step: Any, precision: Precision) -> None:
    """An explicit mixed precision on a CPU: measured against fp32 on the model (3 steps
    each on a copy) unless the CPU runs it natively; a warning when it is slower."""
    from ..compress.torch_native import bf16_support
    from ..errors import PerformanceWarning, warn

    native, found = bf16_support()
    if native and precision.name == "bf16-mixed":
        return
    found = found if precision.name == "bf16-mixed" else "no CPU computes fp16 natively"
    message = emulated_warning(precision.name, found, measured_cost(model, sample, step, precision))
    if message:
        warn(message, PerformanceWarning)
