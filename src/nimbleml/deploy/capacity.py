"""A measured server capacity: ``--capacity-rps N``, or read from a serve report.

A report is JSON; it is read loosely, since ``benchmarks/serve.py --json`` is young: it holds
per model a capacity in requests per second at the p99 target, under one of the keys
``capacity_rps``, ``rps_at_p99``, ``req_per_s`` or ``capacity``, optionally with ``p50_ms`` and
``p99_ms`` measured at that rate. Any of these shapes works:

    {"models": {"digits": {"capacity_rps": 1350, "p99_ms": 17.9}}}
    {"models": [{"name": "digits", "capacity_rps": 1350, "max_batch_size": 16}]}
    {"digits": {"capacity_rps": 1350}}
    {"capacity_rps": 1350}                         (one figure for the server)

The list form is what ``benchmarks/serve.py --json`` writes; a model listed more than once
(measured with batching on and off) counts with batching on, as deploy serves it. With
several models deployed together the smallest capacity among them is used (the
traffic split is unknown; the slowest model's figure is the safe one).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .plan import Setting

KEYS = ("capacity_rps", "rps_at_p99", "req_per_s", "capacity")


@dataclass
class Capacity:
    rps: float
    p50_ms: float | None
    p99_ms: float | None
    source: str

    @property
    def setting(self) -> Setting:
        at = f" (p99 {self.p99_ms:g} ms)" if self.p99_ms else ""
        return Setting(self.rps, f"measured{at}, from {self.source}")


def _figure(entry: Any) -> tuple[float, float | None, float | None] | None:
    if not isinstance(entry, dict):
        return None
    for key in KEYS:
        value = entry.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:

            def ms(k: str) -> float | None:
                v = entry.get(k)
                return float(v) if isinstance(v, int | float) and v > 0 else None

            return float(value), ms("p50_ms"), ms("p99_ms")
    return None


def _per_model(data: Any) -> dict[str, tuple[float, float | None, float | None]]:
    found: dict[str, tuple[float, float | None, float | None]] = {}
    models = data.get("models", data) if isinstance(data, dict) else data
    if isinstance(models, dict):
        for name, entry in models.items():
            figure = _figure(entry)
            if figure:
                found[str(name)] = figure
    elif isinstance(models, list):  # a model measured several ways: batching on, then the best
        ranked: dict[str, tuple[int, float]] = {}
        for entry in models:
            figure = _figure(entry)
            if figure and isinstance(entry, dict) and ("name" in entry or "model" in entry):
                name = str(entry.get("name", entry.get("model")))
                batch = entry.get("max_batch_size")
                rank = (int(not isinstance(batch, int) or batch > 1), figure[0])
                if name not in ranked or rank > ranked[name]:
                    ranked[name], found[name] = rank, figure
    return found


def read_report(path: str | Path, names: list[str]) -> Capacity:
    """The capacity of the deployed models from a serve report (see the module docstring)."""
    from ..cost.inputs import read_json

    path = Path(path)
    data, _ = read_json(path, "--serve-report")
    per_model = _per_model(data)
    chosen = [per_model[n] for n in names if n in per_model]
    if not chosen:
        whole = _figure(data)
        if whole is None and isinstance(data, dict) and isinstance(data.get("results"), list):
            benched = sorted({str(r.get("name")) for r in data["results"] if isinstance(r, dict)})
            raise ConfigError(
                f"--serve-report {path} is a `nimbleml bench` report (in-process latency of "
                f"{', '.join(benched) or 'no model'}), not a serve report: give what "
                "benchmarks/serve.py --json writes (requests/s measured over HTTP), or "
                "--capacity-rps N"
            )
        if whole is None:
            raise ConfigError(
                f"--serve-report {path} holds no capacity for {', '.join(names)}: expected "
                f"per model one of {', '.join(KEYS)} (models in it: "
                f"{', '.join(sorted(per_model)) or 'none'})"
            )
        chosen = [whole]
    rps, p50, p99 = min(chosen, key=lambda f: f[0])
    return Capacity(rps, p50, p99, f"--serve-report {path.name}")


def given(rps: float) -> Capacity:
    if not rps > 0:
        raise ConfigError(f"--capacity-rps must be > 0 requests per second, got {rps}")
    return Capacity(float(rps), None, None, "--capacity-rps")
