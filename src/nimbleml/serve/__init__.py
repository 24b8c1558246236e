"""The model server: HTTP app, dynamic batcher, admission control."""

from .app import ServeConfig, create_app
from .batcher import DynamicBatcher, QueueFull

__all__ = ["DynamicBatcher", "QueueFull", "ServeConfig", "create_app"]
