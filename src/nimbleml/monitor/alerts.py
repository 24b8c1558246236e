"""Alert rules evaluated on windows, with a minimum sample count, hysteresis and cooldown."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import ConfigError

log = logging.getLogger("nimbleml.monitor")
METRICS = (
    "latency_p50",
    "latency_p95",
    "latency_p99",
    "error_rate",
    "throughput",
    "throughput_drop",
    "accuracy",
    "mae",
)
SEVERITIES = ("warning", "critical")


@dataclass(frozen=True)
class AlertRule:
    """Fire when ``metric`` ``op`` ``threshold`` over the last ``window_s`` seconds, in
    ``for_windows`` evaluations in a row, each with at least ``min_samples`` behind it;
    clear after ``clear_windows`` good evaluations; do not fire again within ``cooldown_s``.
    An evaluation counts only when it sees new evidence (another value or sample count than
    the last one): the background thread reading the same records again is not a second breach.

    Metrics: latency_p50/p95/p99 (ms), error_rate (0-1), throughput (requests/s),
    throughput_drop (share below the previous window), accuracy, mae (needs ground truth).
    """

    name: str
    metric: str
    threshold: float
    op: str = ">"
    model: str = "*"
    window_s: float = 60.0
    min_samples: int = 50
    for_windows: int = 2
    clear_windows: int = 2
    cooldown_s: float = 300.0
    severity: str = "warning"

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ConfigError(
                f"alert '{self.name}': unknown metric '{self.metric}'; choose one of: {', '.join(METRICS)}"
            )
        if self.op not in (">", "<"):
            raise ConfigError(f"alert '{self.name}': op must be '>' or '<', got {self.op!r}")
        if self.severity not in SEVERITIES:
            raise ConfigError(f"alert '{self.name}': severity must be warning or critical")
        if (
            self.window_s <= 0
            or self.min_samples < 1
            or self.for_windows < 1
            or self.clear_windows < 1
        ):
            raise ConfigError(
                f"alert '{self.name}': window_s > 0, min_samples, for_windows, clear_windows >= 1"
            )

    def breached(self, value: float) -> bool:
        return value > self.threshold if self.op == ">" else value < self.threshold


@dataclass
class AlertState:
    breaching: int = 0
    ok: int = 0
    active: bool = False
    since: float | None = None
    last_cleared: float = field(default=-1e18)
    value: float | None = None
    seen: tuple[float, int] | None = None  # (value, samples) of the last counted evaluation


@dataclass(frozen=True)
class AlertEvent:
    rule: str
    model: str
    state: str  # "firing" or "resolved"
    value: float
    threshold: float
    severity: str
    at: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class AlertEngine:
    """Holds rule states per model; ``evaluate`` turns window values into events."""

    def __init__(
        self, rules: list[AlertRule], callbacks: list[Callable[[AlertEvent], None]]
    ) -> None:
        names = [r.name for r in rules]
        if len(set(names)) != len(names):
            raise ConfigError(f"alert rule names must be unique, got {names}")
        self.rules = list(rules)
        self.callbacks = list(callbacks)
        self.states: dict[tuple[str, str], AlertState] = {}

    def evaluate(
        self,
        model: str,
        values: Callable[[AlertRule], tuple[float | None, int]],
        now: float | None = None,
    ) -> list[AlertEvent]:
        """``values(rule)`` gives (value, samples) for the rule's window on ``model``."""
        now = time.time() if now is None else now
        events = []
        for rule in self.rules:
            if rule.model not in ("*", model):
                continue
            value, samples = values(rule)
            state = self.states.setdefault((rule.name, model), AlertState())
            if value is None or samples < rule.min_samples:
                continue  # too little evidence either way: keep the state as it is
            if state.seen == (value, samples):
                continue  # the records already judged, read again: not a new observation
            state.seen, state.value = (value, samples), value
            if rule.breached(value):
                state.breaching, state.ok = state.breaching + 1, 0
                cooled = now - state.last_cleared >= rule.cooldown_s
                if not state.active and state.breaching >= rule.for_windows and cooled:
                    state.active, state.since = True, now
                    events.append(
                        AlertEvent(
                            rule.name, model, "firing", value, rule.threshold, rule.severity, now
                        )
                    )
            else:
                state.ok, state.breaching = state.ok + 1, 0
                if state.active and state.ok >= rule.clear_windows:
                    state.active, state.last_cleared = False, now
                    events.append(
                        AlertEvent(
                            rule.name, model, "resolved", value, rule.threshold, rule.severity, now
                        )
                    )
        for event in events:
            log.warning("alert %s %s on model %s: %s=%.4g (threshold %s %g)", event.rule, event.state,
                        event.model, rule_metric(self.rules, event.rule), event.value,
                        next(r.op for r in self.rules if r.name == event.rule), event.threshold)  # fmt: skip
            for callback in self.callbacks:
                try:
                    callback(event)
                except Exception:  # a broken callback must not stop monitoring
                    log.exception("alert callback failed")
        return events

    def active(self, model: str | None = None) -> list[tuple[AlertRule, AlertState, str]]:
        out = []
        for (name, m), state in self.states.items():
            if state.active and (model is None or m == model):
                out.append((next(r for r in self.rules if r.name == name), state, m))
        return out


def rule_metric(rules: list[AlertRule], name: str) -> str:
    return next(r.metric for r in rules if r.name == name)
