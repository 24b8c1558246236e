"""Training data as batches: (X, y) arrays or tensors sliced in memory (no per-sample
Python calls), a torch Dataset or DataLoader, dict inputs (HF-style encoders). Every epoch's
order comes from (seed, epoch), so a resumed run sees the same batches."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._deps import require
from ..errors import ConfigError, DataError, warn

TARGET_KEYS = ("labels", "label", "y", "target", "targets")


@dataclass
class Batch:
    inputs: Any  # a tensor, a tuple of tensors, or a dict name -> tensor
    target: Any  # a tensor
    n: int  # samples in this batch


def _tensor(x: Any, name: str) -> Any:
    torch = require("torch", "nimbleml.train")
    if torch.is_tensor(x):
        return x
    arr = np.asarray(x)
    if arr.dtype == object or arr.dtype.kind in "USO":
        raise DataError(f"{name} holds non-numbers ({arr.dtype}); give numeric arrays")
    if arr.dtype == np.float64:
        arr = arr.astype(np.float32)  # numpy's default; models train in float32
    return torch.from_numpy(np.ascontiguousarray(arr))


MISSING_FIX = (
    "fill or drop those rows first (a Dataset can impute them in __getitem__); nimbleml does "
    "not train on missing values"
)


def _refuse_nan(t: Any, where: str) -> None:
    """The missing-value policy on a tensor, once (one vectorised scan): a DataError naming
    the row and column of the first NaN."""
    torch = require("torch", "nimbleml.train")
    if torch.is_tensor(t) and t.is_floating_point() and bool(torch.isnan(t).any()):
        from ..inputs import refuse_missing

        refuse_missing(t.detach().float().cpu().numpy(), where, fix=MISSING_FIX)


def refuse_missing_in(batch: Batch, where: str) -> None:
    """A batch whose loss came out NaN or infinite: a DataError when it holds a missing value
    (a DataLoader's batches cannot be scanned up front; scanning every one would cost each
    step), naming the batch, the row within it and the column."""
    inputs = batch.inputs
    parts = (
        [(f"{where}, input '{k}'", v) for k, v in inputs.items()]
        if isinstance(inputs, dict)
        else [(f"{where}, input {i}", v) for i, v in enumerate(inputs)]
        if isinstance(inputs, tuple | list)
        else [(f"{where}, inputs", inputs)]
    )
    for name, t in [*parts, (f"{where}, target", batch.target)]:
        _refuse_nan(t, name)


def _rows(x: Any) -> int:
    first = next(iter(x.values())) if isinstance(x, dict) else x
    return int(first.shape[0])


def _take(x: Any, index: Any) -> Any:
    """Rows ``index`` (a tensor) of x: index_select costs a quarter of x[index] per batch."""
    if isinstance(x, dict):
        return {k: v.index_select(0, index) for k, v in x.items()}
    return x.index_select(0, index)


class InMemory:
    """(X, y) held as tensors; batches are index slices of a per-epoch permutation. Under
    data parallelism each process takes its share (every ``world``-th row) of each global
    batch, so a global batch is the same samples whatever the number of processes."""

    def __init__(self, X: Any, y: Any, batch_size: int, shuffle: bool = True,
                 seed: int = 0, rank: int = 0, world: int = 1,
                 where: str = "the training data") -> None:  # fmt: skip
        self.X = (
            {k: _tensor(v, f"X['{k}']") for k, v in X.items()}
            if isinstance(X, dict)
            else _tensor(X, "X")
        )
        self.y = _tensor(y, "y")
        for name, t in self.X.items() if isinstance(self.X, dict) else [("X", self.X)]:
            _refuse_nan(t, f"{where} ({name})" if isinstance(self.X, dict) else f"{where} X")
        _refuse_nan(self.y, f"{where} y")
        n = _rows(self.X)
        if n == 0:
            raise DataError("the training data holds no rows: give at least one sample")
        if len(self.y) != n:
            raise DataError(f"X has {n} rows but y has {len(self.y)}")
        self.n_samples, self.batch_size, self.shuffle = n, batch_size, shuffle
        self.seed, self.rank, self.world = seed, rank, world

    def __len__(self) -> int:
        return -(-self.n_samples // self.batch_size)

    def epoch(self, epoch: int) -> Generator[Batch, None, None]:
        torch = require("torch", "nimbleml.train")
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            order = torch.randperm(self.n_samples, generator=g)
        else:
            order = torch.arange(self.n_samples)
        for start in range(0, self.n_samples, self.batch_size):
            index = order[start : start + self.batch_size]
            if self.world > 1:
                index = index[self.rank :: self.world]
            yield Batch(_take(self.X, index), self.y.index_select(0, index), index.shape[0])

    def sample(self, n: int = 8) -> Batch:
        torch = require("torch", "nimbleml.train")
        index = torch.arange(min(n, self.n_samples))
        return Batch(_take(self.X, index), self.y[index], len(index))


class FromLoader:
    """A torch Dataset (batched by a DataLoader made here) or a DataLoader of the user's.
    Under data parallelism a Dataset is sharded by a DistributedSampler (each process takes
    ``batch_size / world`` samples of every global batch); a DataLoader brings its own."""

    def __init__(self, data: Any, batch_size: int, loader_args: dict[str, Any] | None = None,
                 seed: int = 0, shuffle: bool = True, rank: int = 0,
                 world: int = 1) -> None:  # fmt: skip
        torch = require("torch", "nimbleml.train")
        from torch.utils.data import DataLoader, DistributedSampler

        self.seed = seed
        if isinstance(data, DataLoader):
            self.loader, self.generator = data, None
            sampler = getattr(data.batch_sampler, "sampler", data.sampler)
            if world > 1 and not isinstance(sampler, DistributedSampler):
                warn(  # a sampler of the user's may shard in its own way: said, not refused
                    f"under {world} processes your DataLoader is used as it is and, without a "
                    "DistributedSampler, gives every process all the data: build it with "
                    "sampler=DistributedSampler(dataset), or give the Dataset itself and "
                    "nimbleml shards it"
                )
        elif world > 1:
            _length(data)
            if batch_size % world:
                raise ConfigError(
                    f"batch_size {batch_size} is the global batch of {world} processes and "
                    f"must divide among them: give a multiple of {world}"
                )
            args = dict(loader_args or {})
            args.pop("shuffle", None)
            sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=shuffle,
                                         seed=seed)  # fmt: skip
            self.generator = None
            self.loader = DataLoader(data, batch_size=batch_size // world, sampler=sampler, **args)
        else:
            _length(data)
            self.generator = torch.Generator()
            args = {"shuffle": shuffle, **(loader_args or {})}
            self.loader = DataLoader(data, batch_size=batch_size, generator=self.generator, **args)
        self.batch_size = getattr(self.loader, "batch_size", None) or batch_size
        try:
            self.n_samples = len(self.loader.dataset)  # type: ignore[arg-type]
        except TypeError:
            self.n_samples = 0

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self, epoch: int) -> Generator[Batch, None, None]:
        if self.generator is not None:
            self.generator.manual_seed(self.seed * 100_003 + epoch)
        sampler: Any = getattr(self.loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)  # DistributedSampler: a new order each epoch
        iterator = iter(self.loader)
        try:
            for item in iterator:
                yield split(item)
        finally:
            # an epoch left early (an error, the first-batch probe): its worker processes
            # end now, not whenever the iterator is collected. Left registered, torch's
            # SIGCHLD handler raised "DataLoader worker exited unexpectedly" into whatever
            # ran later in this process when any child process ended
            shutdown = getattr(iterator, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
                if getattr(self.loader, "_iterator", None) is iterator:
                    self.loader._iterator = None  # persistent workers: new ones next time

    def sample(self, n: int = 8) -> Batch:
        batches = self.epoch(0)
        try:
            return next(batches)
        finally:
            batches.close()


def _length(data: Any) -> int:
    try:
        size = len(data)
    except TypeError:
        raise DataError(
            "the training data is an iterable without a length; give a Dataset, a DataLoader "
            "or (X, y)"
        ) from None
    if size == 0:
        raise DataError("the training dataset is empty: give at least one sample")
    return size


def split(item: Any) -> Batch:
    """(inputs, target) from what a DataLoader yields: a pair, or a dict with a label key."""
    if isinstance(item, dict):
        key = next((k for k in TARGET_KEYS if k in item), None)
        if key is None:
            raise DataError(
                f"a batch is a dict without a target: name it one of {', '.join(TARGET_KEYS)} "
                f"(it has {', '.join(map(str, item))})"
            )
        inputs = {k: v for k, v in item.items() if k != key}
        target = item[key]
    elif isinstance(item, tuple | list) and len(item) == 2:
        inputs, target = item
    else:
        raise DataError(
            "each batch must be (inputs, target) or a dict with a 'labels' key, got "
            f"{type(item).__name__}"
        )
    return Batch(inputs, _tensor(target, "the target"), len(target))


def batches(data: Any, batch_size: int, loader_args: dict[str, Any] | None = None,
            seed: int = 0, shuffle: bool = True, rank: int = 0, world: int = 1,
            where: str = "the training data") -> Any:  # fmt: skip
    """InMemory for (X, y), FromLoader for a Dataset / DataLoader. ``where`` names the data
    in errors ("the validation data")."""
    if isinstance(data, tuple | list) and len(data) == 2 and not _is_dataset(data):
        X, y = data
        if X is None or y is None:
            raise DataError("training data (X, y) needs both X and y")
        return InMemory(X, y, batch_size, shuffle, seed, rank, world, where)
    if _is_dataset(data):
        return FromLoader(data, batch_size, loader_args, seed, shuffle, rank, world)
    raise DataError(
        f"training data of type {type(data).__name__}: give (X, y) arrays or tensors, a torch "
        "Dataset, or a DataLoader"
    )


def _is_dataset(data: Any) -> bool:
    try:
        from torch.utils.data import DataLoader, Dataset
    except ImportError:  # pragma: no cover
        return False
    return isinstance(data, Dataset | DataLoader)
