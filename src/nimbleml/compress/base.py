"""Recipes: small classes, one ``apply`` each, registered by name for the API and the CLI.

A recipe acts at one stage of the path:
  "source"  on the framework model before conversion (pruning),
  "onnx"    on the verified ONNX model (quantization, graph optimisation, sparse storage),
  "torch"   on a PyTorch model that stays in PyTorch (torch-native int8, bf16).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..bench.machine import CpuCaps, cpu_caps
from ..errors import ConfigError, UnsupportedError
from ..inputs import Feeds
from ..models.base import Model

STAGES = ("source", "onnx", "torch")


@dataclass
class Context:
    """What a recipe may use besides the model: example and calibration inputs, the CPU,
    training data for the recipes that fine-tune (qat), and ``score``: the validation metric
    of a candidate model, higher is better (the optimizer sets it; openvino-int8's
    accuracy control needs it)."""

    example: Feeds
    calib: Feeds | None = None
    caps: CpuCaps = field(default_factory=cpu_caps)
    train: Any = None
    score: Callable[[Model], float] | None = None


class Recipe:
    """One compression step. Subclasses set ``name``, ``stage``, ``frameworks`` and
    implement ``apply``; parameters are keyword arguments validated in ``__init__``."""

    name: ClassVar[str]
    stage: ClassVar[str]
    frameworks: ClassVar[tuple[str, ...]]
    lossy: ClassVar[bool] = True

    def __init__(self, **params: Any) -> None:
        self._params = dict(params)

    def params(self) -> dict[str, Any]:
        """Every parameter that shaped the result (recorded in the package's manifest)."""
        return dict(self._params)

    def check(self, model: Model, ctx: Context) -> None:
        """Raise UnsupportedError when this recipe cannot apply to ``model`` here."""
        if model.framework not in self.frameworks:
            raise UnsupportedError(
                f"recipe '{self.name}' works on {' / '.join(self.frameworks)} models, not "
                f"{model.framework}"
            )

    def apply(self, model: Model, ctx: Context) -> Model:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"step": self.name, "stage": self.stage, "params": self.params()}


RECIPES: dict[str, type[Recipe]] = {}


def register(cls: type[Recipe]) -> type[Recipe]:
    """Class decorator: make a recipe available by its ``name``."""
    if cls.stage not in STAGES:
        raise ValueError(f"recipe {cls.__name__}: stage must be one of {STAGES}")
    RECIPES[cls.name] = cls
    return cls


ENTRY_POINTS = "nimbleml.recipes"  # recipes registered from above (pyproject.toml)


def _entry_points() -> dict[str, Any]:
    """Recipes that live in a higher layer or another package, by name: importing the module
    an entry point names registers its recipe. QAT trains, so it lives above train
    (nimbleml.distill.qat) and comes in this way; a plugin package can add its own."""
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINTS)}


def get_recipe(name: str, **params: Any) -> Recipe:
    """The registered recipe ``name`` configured with ``params``."""
    from . import (  # noqa: F401  (registers the built-in recipes)
        openvino,
        prune,
        quantize,
        torch_native,
    )

    if name not in RECIPES:
        found = _entry_points()
        if name in found:
            found[name].load()
        if name not in RECIPES:
            known = sorted({*RECIPES, *found})
            raise ConfigError(f"unknown recipe '{name}'; choose one of: {', '.join(known)}")
    return RECIPES[name](**params)


def fraction(value: Any, what: str) -> float:
    """A float in (0, 1), or ConfigError naming ``what``."""
    try:
        amount = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number between 0 and 1, got {value!r}") from None
    if not 0.0 < amount < 1.0:
        raise ConfigError(f"{what} must be between 0 and 1 (exclusive), got {amount}")
    return amount
