"""The one interface every framework adapter implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..inputs import Feeds, TensorSpec, as_feeds, cast_to_specs, check_shapes

if TYPE_CHECKING:
    from .onnx_model import OnnxModel


class Model(ABC):
    """A runnable model: named inputs in, a list of output arrays out.

    ``task`` is "classification", "regression" or None (unknown: torch/ONNX models whose
    outputs are logits or embeddings).
    """

    framework: str = "unknown"
    task: str | None = None

    @property
    @abstractmethod
    def inputs(self) -> list[TensorSpec]: ...

    @property
    @abstractmethod
    def outputs(self) -> list[TensorSpec]: ...

    @abstractmethod
    def run(self, feeds: Feeds) -> list[np.ndarray]:
        """Run on feeds already cast to the input specs."""

    @abstractmethod
    def to_onnx(self, example: Feeds, path: str | Path | None = None) -> OnnxModel:
        """Convert to ONNX (dynamic batch and sequence axes); the caller verifies."""

    @abstractmethod
    def size_bytes(self) -> int: ...

    @abstractmethod
    def num_parameters(self) -> int: ...

    @abstractmethod
    def save(self, directory: Path, stem: str) -> str:
        """Write the model into ``directory``; return the file name used."""

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]

    def feeds(self, x: Any) -> Feeds:
        """Normalise user input (array, tuple, dict, tensors) to feeds for this model."""
        fast = self.__dict__.get("_fast") or self._fast_path()
        if fast[0] is not None:  # the common cases, checked cheaply
            name, dtype, tail = fast
            arr = x if isinstance(x, np.ndarray) else None
            if arr is None and type(x) is dict and len(x) == 1:
                arr = x.get(name)
            if (
                isinstance(arr, np.ndarray)
                and arr.dtype == dtype
                and arr.shape[1:] == tail
                and arr.flags.c_contiguous
            ):
                return {name: arr}
        specs = self.inputs
        feeds = as_feeds(x, [s.name for s in specs])
        check_shapes(feeds, specs)
        return cast_to_specs(feeds, specs)

    def _fast_path(self) -> tuple[Any, ...]:
        """(name, dtype, dims after the batch) of a single-input model whose dims after the
        batch are all fixed, else (None,); computed once."""
        specs = self.inputs
        fast: tuple[Any, ...] = (None,)
        if len(specs) == 1 and specs[0].dtype not in ("object", "bfloat16"):
            tail = specs[0].shape[1:]
            if all(isinstance(d, int) and d > 0 for d in tail):
                fast = (specs[0].name, np.dtype(specs[0].dtype), tuple(tail))
        self.__dict__["_fast"] = fast
        return fast

    def __call__(self, x: Any) -> list[np.ndarray]:
        return self.run(self.feeds(x))

    def verification_cases(self, feeds: Feeds, every: bool = False) -> list[tuple[str, Feeds]]:
        """Inputs, beyond the generic ones (verify.variants, verify.hard_cases), on which a
        conversion of this kind of model must agree with it: its adapter knows where a port
        goes wrong first. ``every``: ``feeds`` are the validation rows, all to be checked."""
        return []

    def describe(self) -> dict[str, Any]:
        return {
            "framework": self.framework,
            "class": type(self).__name__,
            "task": self.task,
            "inputs": [s.to_dict() for s in self.inputs],
            "outputs": [s.to_dict() for s in self.outputs],
        }
