"""Monitoring: hot-path recorder, sketches, SQLite store, ground truth, alerts, exports."""

from .alerts import AlertEvent, AlertRule
from .core import ModelMonitor, parse_duration
from .export import metrics_text, registry
from .sketch import LogSketch

__all__ = [
    "AlertEvent",
    "AlertRule",
    "LogSketch",
    "ModelMonitor",
    "metrics_text",
    "parse_duration",
    "registry",
]
