"""What this machine is: CPU model and capabilities, cores, memory, GPU, library versions."""

from __future__ import annotations

import functools
import os
import platform
import shutil
import subprocess
from dataclasses import asdict, dataclass
from importlib import metadata
from typing import Any

INTERESTING_FLAGS = (
    "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni",
    "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile", "asimd", "sve",
)  # fmt: skip
LIBRARIES = (
    "nimbleml", "numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "torch", "scikit-learn",
    "skl2onnx", "skops", "onnxscript",
)  # fmt: skip


@dataclass(frozen=True)
class CpuCaps:
    """What the CPU can run fast: int8 dot products (VNNI/AMX), bf16, fp16 conversion."""

    flags: tuple[str, ...]

    @property
    def vnni(self) -> bool:
        return any(f in self.flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))

    @property
    def bf16(self) -> bool:
        return any(f in self.flags for f in ("avx512_bf16", "amx_bf16"))

    @property
    def avx512(self) -> bool:
        return "avx512f" in self.flags


@functools.lru_cache(maxsize=1)
def cpu_flags() -> tuple[str, ...]:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return tuple(sorted(set(line.split(":", 1)[1].split())))
    except OSError:
        pass
    return ()


def cpu_caps() -> CpuCaps:
    return CpuCaps(tuple(f for f in cpu_flags() if f in INTERESTING_FLAGS))


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=1)
def gpus() -> tuple[dict[str, Any], ...]:
    """NVIDIA GPUs as nvidia-smi reports them (none when it is absent or fails)."""
    if not shutil.which("nvidia-smi"):
        return ()
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return ()
    found = []
    for line in out.strip().splitlines():
        name, mem, driver = (p.strip() for p in line.split(","))
        found.append({"name": name, "memory_mb": float(mem), "driver": driver})
    return tuple(found)


def has_cuda() -> bool:
    """True when ONNX Runtime can use CUDA here (an NVIDIA GPU and the GPU build)."""
    if not gpus():
        return False
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


@dataclass(frozen=True)
class MachineInfo:
    cpu: str
    cpu_flags: tuple[str, ...]
    logical_cores: int
    physical_cores: int
    memory_gb: float
    os: str
    gpus: tuple[dict[str, Any], ...]
    libraries: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cpu_flags"] = list(self.cpu_flags)
        d["gpus"] = list(self.gpus)
        return d


def machine_info() -> MachineInfo:
    import psutil

    return MachineInfo(
        cpu=cpu_model(),
        cpu_flags=cpu_caps().flags,
        logical_cores=os.cpu_count() or 1,
        physical_cores=psutil.cpu_count(logical=False) or os.cpu_count() or 1,
        memory_gb=round(psutil.virtual_memory().total / 2**30, 2),
        os=f"{platform.system()} {platform.release()}",
        gpus=gpus(),
        libraries=library_versions(),
    )
