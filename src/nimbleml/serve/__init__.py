"""The model server: HTTP app, dynamic batcher, admission control."""

from ..errors import QueueFull
from .app import ServeConfig, create_app
from .batcher import DynamicBatcher

__all__ = ["DynamicBatcher", "QueueFull", "ServeConfig", "create_app"]
