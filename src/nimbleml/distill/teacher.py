"""The teacher's side of distillation: its outputs computed once and cached (in memory, or in
a memory-mapped file for large sets), or the teacher run online on each batch.

A cache is keyed by the teacher's content (a hash of its weights, or of a package's model
file) and the data's (a hash of the arrays, or of a Dataset's type, length and a few items),
so a changed teacher or dataset never reads stale outputs. A Dataset that returns different
inputs for the same index (random augmentation) must not be cached: the cached outputs would
be those of one augmentation while the student sees another (a known trap). ``"auto"``
finds out by reading a few items twice. With many classes only the top-k logits are kept.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._deps import require
from ..errors import ConfigError, DataError

MEMORY_LIMIT = 256 * 2**20  # larger caches go to a memory-mapped file
TOP_K_FROM = 64  # classes above which only the top-k logits are kept by default
TOP_K = 16


def teacher_callable(teacher: Any) -> Any:
    """f(inputs) -> logits tensor, for a torch module (eval, no grad) or a .nimble package
    (run by ONNX Runtime, so a compressed teacher costs less)."""
    torch = require("torch", "nimbleml.distill")
    from ..package import Package, load

    if isinstance(teacher, str | os.PathLike):
        teacher = load(str(teacher))
    if isinstance(teacher, Package):
        package = teacher

        def run(inputs: Any) -> Any:
            feed = (
                {k: v.cpu().numpy() for k, v in inputs.items()}
                if isinstance(inputs, dict)
                else inputs.cpu().numpy()
            )
            device = (
                next(iter(inputs.values())).device if isinstance(inputs, dict) else inputs.device
            )
            return torch.from_numpy(np.asarray(package.predict(feed), np.float32)).to(device)

        return run
    if not isinstance(teacher, torch.nn.Module):
        raise ConfigError(
            f"the teacher must be a torch.nn.Module or a .nimble package, got "
            f"{type(teacher).__name__}"
        )
    teacher.eval()  # its parameters keep requires_grad: it runs under no_grad, and the
    # user's model stays trainable afterwards
    from ..train.loop import call

    def forward(inputs: Any) -> Any:
        with torch.no_grad():
            out = call(teacher, inputs)
        from ..train.losses import _primary

        return _primary(out).float()

    return forward


def content_hash(teacher: Any) -> str:
    """What the teacher computes, as a hash: its weights, or its package's model file."""
    from ..package import Package, load

    if isinstance(teacher, str | os.PathLike):
        teacher = load(str(teacher))
    h = hashlib.sha256(type(teacher).__name__.encode())
    if isinstance(teacher, Package):
        h.update(str(teacher.manifest["model"].get("sha256", teacher.directory)).encode())
        return h.hexdigest()[:24]
    for name, value in teacher.state_dict().items():
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


def data_hash(data: Any) -> str:
    """(X, y) arrays: all their bytes. A Dataset: its type, length and items 0, n/2, n-1."""
    h = hashlib.sha256()
    if isinstance(data, tuple):
        X = data[0]
        for key, value in sorted(X.items()) if isinstance(X, dict) else [("X", X)]:
            h.update(key.encode())
            h.update(np.ascontiguousarray(_numpy(value)).tobytes())
        return h.hexdigest()[:24]
    n = len(data)
    h.update(f"{type(data).__module__}.{type(data).__qualname__}:{n}".encode())
    for i in sorted({0, n // 2, n - 1}):
        for part in _flat(data[i]):
            h.update(np.ascontiguousarray(_numpy(part)).tobytes())
    return h.hexdigest()[:24]


def is_random(data: Any, probes: int = 3) -> bool:
    """True when a Dataset gives different inputs for the same index (random transforms)."""
    if isinstance(data, tuple):
        return False
    n = len(data)
    for i in sorted({0, n // 2, n - 1})[:probes]:
        a, b = _flat(data[i]), _flat(data[i])
        if len(a) != len(b) or any(
            not np.array_equal(_numpy(x), _numpy(y)) for x, y in zip(a, b, strict=True)
        ):
            return True
    return False


def _numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def _flat(item: Any) -> list[Any]:
    if isinstance(item, dict):
        return [item[k] for k in sorted(item)]
    if isinstance(item, tuple | list):
        return [p for part in item for p in _flat(part)]
    return [item]


@dataclass
class TeacherOutputs:
    """The teacher's logits for every training sample, in sample order: ``values`` (n, k) and,
    when only the top-k are kept, their class ``indices`` (n, k); else ``indices`` is None."""

    values: np.ndarray
    indices: np.ndarray | None
    classes: int
    key: str
    path: Path | None  # the memory-mapped file, when on disk
    reused: bool  # read from an earlier run's file

    def packed(self, y: np.ndarray, rows: slice = slice(None)) -> np.ndarray:
        """The training target with the teacher's outputs beside it: [y, values, indices]
        (of the samples ``rows``; class indices are exact in float32 below 2**24)."""
        parts = [
            np.asarray(y, np.float32).reshape(-1, 1),
            np.asarray(self.values[rows], np.float32),
        ]
        if self.indices is not None:
            parts.append(np.asarray(self.indices[rows], np.float32))
        return np.concatenate(parts, axis=1)


def compute(teacher: Any, data: Any, *, batch_size: int = 256, top_k: int | None = None,
            cache_dir: str | Path | None = None, device: str = "cpu") -> TeacherOutputs:  # fmt: skip
    """The teacher's outputs on ``data`` ((X, y) or a deterministic Dataset), cached."""
    torch = require("torch", "nimbleml.distill")
    from ..train.data import batches

    run = teacher_callable(teacher)
    if isinstance(teacher, torch.nn.Module):
        teacher.to(device)
    key = f"{content_hash(teacher)}-{data_hash(data)}-k{top_k or 0}"
    folder = Path(cache_dir) if cache_dir else _cache_root() / "teacher"
    path = folder / f"{key}.npz"
    if path.exists():
        try:
            with np.load(path) as saved:
                values = np.load(folder / f"{key}.values.npy", mmap_mode="r")
                indices = saved["indices"] if saved["indices"].size else None
                return TeacherOutputs(values, indices, int(saved["classes"]), key, path, True)
        except (OSError, KeyError, ValueError):
            pass  # a partial or foreign file: computed again
    chunks, index_chunks = [], []
    classes = 0
    for b in batches(data, batch_size, shuffle=False).epoch(0):
        inputs = _to_device(b.inputs, device)
        logits = run(inputs)
        if logits.dim() == 1:  # a regressor's one value per sample
            logits = logits.unsqueeze(1)
        if logits.dim() != 2:
            raise DataError(
                f"distillation needs the teacher's outputs as (batch, classes) logits or "
                f"(batch,) values; it gives {tuple(logits.shape)}"
            )
        classes = logits.shape[1]
        k = top_k if top_k is not None else (TOP_K if classes > TOP_K_FROM else None)
        if k is not None and k < classes:
            top = logits.topk(k, dim=1)
            chunks.append(top.values.cpu().numpy())
            index_chunks.append(top.indices.cpu().numpy().astype(np.int32))
        else:
            chunks.append(logits.cpu().numpy())
    values = np.concatenate(chunks).astype(np.float32)
    indices = np.concatenate(index_chunks) if index_chunks else None
    if values.nbytes <= MEMORY_LIMIT and cache_dir is None:
        return TeacherOutputs(values, indices, classes, key, None, False)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{key}.{os.getpid()}.values.npy"
    np.save(tmp, values)
    os.replace(tmp, folder / f"{key}.values.npy")
    tmp = folder / f".{key}.{os.getpid()}.npz"
    with open(tmp, "wb") as f:
        np.savez(f, indices=indices if indices is not None else np.zeros(0, np.int32),
                 classes=np.asarray(classes))  # fmt: skip
    os.replace(tmp, path)  # written last: its presence says the values are complete
    values = np.load(folder / f"{key}.values.npy", mmap_mode="r")
    return TeacherOutputs(values, indices, classes, key, path, False)


def _to_device(x: Any, device: str) -> Any:
    if isinstance(x, dict):
        return {k: v.to(device) for k, v in x.items()}
    return x.to(device)


def _cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nimbleml"
