"""Compression: recipes registered by name, and the compress() pipeline."""

from .api import CompressConfig, ModelCompressor, PruneMethod, Quantization, Runtime, compress
from .base import RECIPES, Context, Recipe, get_recipe, register

__all__ = [
    "RECIPES",
    "CompressConfig",
    "Context",
    "ModelCompressor",
    "PruneMethod",
    "Quantization",
    "Recipe",
    "Runtime",
    "compress",
    "get_recipe",
    "register",
]
