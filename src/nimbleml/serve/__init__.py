"""The model server: HTTP app, dynamic batcher, admission control."""

from ..errors import QueueFull
from .app import create_app
from .batcher import DynamicBatcher
from .config import ServeConfig

__all__ = ["DynamicBatcher", "QueueFull", "ServeConfig", "create_app"]
