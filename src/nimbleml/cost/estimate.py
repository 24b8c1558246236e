"""What serving and training cost on cloud instances, from figures measured on this machine.

Every figure is one of two kinds, never mixed: **measured** (on the instance it is priced
for: ``measured_on``) or **estimate** (scaled from the measured machine to another instance,
with the assumption written beside it):

- CPU figures scale linearly with vCPUs (the measured machine's logical cores -> the
  instance's vCPUs), each vCPU as fast as one measured core; p99 is taken as measured (more
  cores add parallel capacity, not speed per request). An instance of another architecture
  (arm64 Graviton vs x86) is scaled the same way and flagged: nothing was measured there.
- GPU figures carry over only to an instance with a GPU of the same class (T4 -> T4, scaled
  by the GPU count); a CPU figure gives no GPU estimate, and a GPU figure none for a CPU or
  another GPU class: those instances are listed as not estimated, with why.

Cost per 1M predictions = the hourly price / (capacity x 3600) x 1e6, an instance busy at its
capacity; instances for a target rate = ceil(rate / (capacity x (1 - headroom))).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .catalog import Catalog, Instance, load_catalog
from .inputs import (
    Capacity,
    Machine,
    TrainingRun,
    bench_capacities,
    serve_capacities,
    training_run,
)

DEFAULT_SLA_MS = 25.0  # the serve benchmark's target, and the SLA when none is given
HOURS_PER_MONTH = 730


@dataclass(frozen=True)
class CostOptions:
    """How to estimate: which clouds, spot prices too, the p99 SLA (ms), a target request
    rate, spare capacity kept per instance (0.2 = run at 80%), the catalog instance the
    figures were measured on (its rows are measured, not estimated)."""

    clouds: tuple[str, ...] | None = None
    spot: bool = False
    sla_p99_ms: float | None = None
    rps: float | None = None
    headroom: float = 0.0
    measured_on: str | None = None

    def __post_init__(self) -> None:
        for name, value in (("sla_p99_ms", self.sla_p99_ms), ("rps", self.rps)):
            if value is not None and not (isinstance(value, int | float) and value > 0):
                flag = "--" + name.replace("_", "-")
                shown = f"{value:g}" if isinstance(value, int | float) else repr(value)
                raise ConfigError(f"{name} ({flag}) must be a number > 0, got {shown}")
        if not 0 <= self.headroom < 1:
            raise ConfigError(
                f"headroom (--headroom) is the share of capacity kept spare, from 0 to below "
                f"1 (0.2 = run each instance at 80%), got {self.headroom!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {"clouds": list(self.clouds) if self.clouds else None, "spot": self.spot,
                "sla_p99_ms": self.sla_p99_ms, "rps": self.rps, "headroom": self.headroom,
                "measured_on": self.measured_on}  # fmt: skip


@dataclass(frozen=True)
class Scaling:
    """How a measured figure carries over to an instance: throughput x ``factor``."""

    factor: float
    basis: str  # "measured" or "estimate"
    assumption: str


def scaling(machine: Machine, inst: Instance, measured_on: str | None) -> Scaling | str:
    """The Scaling from ``machine`` to ``inst``, or why there is none."""
    if measured_on is not None and inst.name.lower() == measured_on.lower():
        return Scaling(1.0, "measured", "measured on this instance")
    if machine.gpu:
        cls = machine.gpu_class
        if cls is None:
            return f"measured on {machine.gpu}, a GPU of no known class"
        if not inst.accelerator:
            return f"no CPU figure: measured on a GPU ({cls})"
        if inst.gpu_class != cls:
            return f"no {inst.gpu_class or inst.accelerator} figure: measured on {cls}"
        factor = inst.gpus / max(machine.gpus, 1)
        more = f", {machine.gpus}->{inst.gpus} GPUs" if factor != 1 else ""
        return Scaling(factor, "estimate", f"same GPU class ({cls}){more}; host CPU not scaled")
    if inst.accelerator:
        return "no GPU figure: measured on the CPU"
    text = f"vCPU-scaled {machine.logical_cores}->{inst.vcpus}"
    if machine.arch != inst.arch:
        text += f"; {inst.arch} ({inst.cpu or 'another CPU'}): other architecture, not measured"
    return Scaling(inst.vcpus / machine.logical_cores, "estimate", text)


@dataclass(frozen=True)
class ServingRow:
    model: str
    source: str  # "serve" or "bench": the report the figure came from
    instance: Instance
    capacity_rps: float
    p99_ms: float | None
    basis: str
    assumption: str
    instances_needed: int | None  # for the target rate (None without one)
    headroom: float

    @property
    def usd_per_million(self) -> float:
        return self.instance.on_demand / (self.capacity_rps * 3600) * 1e6

    @property
    def spot_usd_per_million(self) -> float | None:
        spot = self.instance.spot
        return None if spot is None else spot / (self.capacity_rps * 3600) * 1e6

    @property
    def fleet_usd_hour(self) -> float | None:
        n = self.instances_needed
        return None if n is None else n * self.instance.on_demand

    @property
    def fleet_spot_usd_hour(self) -> float | None:
        n, spot = self.instances_needed, self.instance.spot
        return None if n is None or spot is None else n * spot

    def to_dict(self) -> dict[str, Any]:
        i = self.instance
        return {
            "model": self.model, "source": self.source, "instance": i.name, "cloud": i.cloud, "region": i.region,
            "vcpus": i.vcpus, "memory_gib": i.memory_gib, "accelerator": i.accelerator or None,
            "on_demand_usd_hour": i.on_demand, "spot_usd_hour": i.spot,
            "spot_saving": i.spot_saving, "capacity_rps": self.capacity_rps,
            "p99_ms": self.p99_ms, "instances_needed": self.instances_needed,
            "fleet_usd_hour": self.fleet_usd_hour, "fleet_spot_usd_hour": self.fleet_spot_usd_hour,
            "usd_per_million": self.usd_per_million,
            "spot_usd_per_million": self.spot_usd_per_million,
            "basis": self.basis, "assumption": self.assumption,
        }  # fmt: skip


@dataclass(frozen=True)
class TrainingRow:
    instance: Instance
    hours: float
    basis: str
    assumption: str

    @property
    def usd_per_run(self) -> float:
        return self.hours * self.instance.on_demand

    @property
    def spot_usd_per_run(self) -> float | None:
        return None if self.instance.spot is None else self.hours * self.instance.spot

    def to_dict(self) -> dict[str, Any]:
        i = self.instance
        return {"instance": i.name, "cloud": i.cloud, "region": i.region, "vcpus": i.vcpus,
                "accelerator": i.accelerator or None, "on_demand_usd_hour": i.on_demand,
                "spot_usd_hour": i.spot, "hours": self.hours, "usd_per_run": self.usd_per_run,
                "spot_usd_per_run": self.spot_usd_per_run, "basis": self.basis,
                "assumption": self.assumption}  # fmt: skip


@dataclass(frozen=True)
class Excluded:
    """An instance (or, with ``instance`` None, a model on every instance) left out, and why."""

    what: str  # "serving" or "training"
    model: str | None
    instance: str | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"for": self.what, "model": self.model, "instance": self.instance,
                "reason": self.reason}  # fmt: skip


@dataclass(frozen=True)
class Measured:
    """The figure a model's serving rows start from, at the SLA it was judged against."""

    capacity: Capacity
    sla_p99_ms: float
    meets_sla: bool
    note: str


@dataclass
class CostEstimate:
    """Serving and training cost per instance; ``table()`` prints it, ``to_dict()`` and
    ``to_json()`` write it."""

    catalog: Catalog
    options: CostOptions
    today: _dt.date
    measured: list[Measured] = field(default_factory=list)
    serving: list[ServingRow] = field(default_factory=list)
    run: TrainingRun | None = None
    training: list[TrainingRow] = field(default_factory=list)
    excluded: list[Excluded] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def problem(self) -> str | None:
        """Why the estimate holds no row at all (None when it holds some)."""
        if self.serving or self.training:
            return None
        if self.measured and not any(m.meets_sla for m in self.measured):
            figures = "; ".join(m.note for m in self.measured)
            return (
                f"no instance meets the p99 SLA of {self.measured[0].sla_p99_ms:g} ms: {figures}; "
                "give a looser --sla-p99-ms, or measure at this target (a faster package, "
                "a smaller batch)"
            )
        clouds = ", ".join(self.options.clouds or self.catalog.clouds)
        reasons = sorted({e.reason for e in self.excluded})
        return f"no instance in {clouds} could be estimated: {'; '.join(reasons)}"

    def to_dict(self) -> dict[str, Any]:
        c = self.catalog
        return {
            "schema": 1,
            "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "catalog": {"source": c.source, "date": c.date.isoformat(),
                        "age_days": c.age_days(self.today), "regions": c.regions()},
            "options": self.options.to_dict(),
            "measured": [{**m.capacity.to_dict(), "sla_p99_ms": m.sla_p99_ms,
                          "meets_sla": m.meets_sla, "note": m.note} for m in self.measured],
            "serving": [r.to_dict() for r in self.serving],
            "training_run": self.run.to_dict() if self.run else None,
            "training": [r.to_dict() for r in self.training],
            "excluded": [e.to_dict() for e in self.excluded],
            "warnings": self.warnings,
        }  # fmt: skip

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text + "\n")
        return text

    def table(self, warnings: bool = True) -> str:
        """The estimate as text; ``warnings=False`` leaves out the warning lines."""
        from .table import render

        return render(self, warnings)


def estimate_cost(
    report: str | Path | dict[str, Any] | Any | None = None,
    *,
    serve_report: str | Path | dict[str, Any] | None = None,
    train_report: str | Path | dict[str, Any] | None = None,
    clouds: str | Sequence[str] | None = None,
    spot: bool = False,
    sla_p99_ms: float | None = None,
    rps: float | None = None,
    headroom: float = 0.0,
    prices: str | Path | Catalog | None = None,
    measured_on: str | None = None,
    today: _dt.date | None = None,
) -> CostEstimate:
    """Cost per hour, per 1M predictions and per training run on cloud instances, from
    measured throughput and latency.

    ``report``: a ``nimbleml bench`` report (BenchmarkReport, dict, report.json or its
    folder); ``serve_report``: ``benchmarks/serve.py --json``'s file; ``train_report``:
    ``nimbleml train``'s report.json (or its checkpoint folder). ``clouds``: "aws,gcp" or a
    list (all the catalog's by default); ``prices``: a CSV in the catalog's columns in place
    of the built-in one. ``sla_p99_ms``: the p99 the serving rows must meet (the serve
    report's target, else 25 ms). A catalog older than 180 days warns."""
    if report is None and serve_report is None and train_report is None:
        raise ConfigError("nothing to estimate from: give report=, serve_report= or "
                          "train_report= (--report, --serve-report, --train-report)")  # fmt: skip
    catalog = prices if isinstance(prices, Catalog) else load_catalog(prices)
    if isinstance(clouds, str):
        clouds = [c for c in clouds.split(",") if c.strip()]
    chosen = catalog.check_clouds(tuple(c.strip().lower() for c in clouds)) if clouds else None
    if measured_on is not None:
        measured_on = catalog.get(measured_on).name
    opts = CostOptions(clouds=chosen, spot=spot, sla_p99_ms=sla_p99_ms, rps=rps,
                       headroom=headroom, measured_on=measured_on)  # fmt: skip
    est = CostEstimate(catalog=catalog, options=opts, today=today or _dt.date.today())
    stale = catalog.age_warning(est.today)
    if stale:
        from ..errors import warn

        est.warnings.append(stale)
        warn(stale)
    instances = catalog.select(chosen)
    if report is not None:
        if hasattr(report, "to_dict"):  # a BenchmarkReport
            report = report.to_dict()
        _serving(est, _best_per_model(bench_capacities(report), opts, est), instances)
    if serve_report is not None:
        caps = serve_capacities(serve_report)
        _serving(est, [_judge(c, opts.sla_p99_ms or c.target_p99_ms or DEFAULT_SLA_MS)
                       for c in caps], instances)  # fmt: skip
    if train_report is not None:
        _training(est, training_run(train_report), instances)
    _check_measured_on(est)
    key = (lambda r: r.spot_usd_per_million or r.usd_per_million) if spot else (
        lambda r: r.usd_per_million)  # fmt: skip
    est.serving.sort(key=lambda r: (r.source, r.model, key(r)))
    tkey = (lambda r: r.spot_usd_per_run or r.usd_per_run) if spot else (lambda r: r.usd_per_run)
    est.training.sort(key=tkey)
    return est


def _judge(c: Capacity, sla: float) -> Measured:
    """Whether a serve figure meets the SLA, and the note that says so."""
    p99 = "none" if c.p99_ms is None else f"{c.p99_ms:.1f} ms"
    found = (
        f"{c.model}: {c.rps:,.0f} req/s at p99 {p99} (searched at p99 <= {c.target_p99_ms:g} ms)"
    )
    if c.rps <= 0:
        return Measured(c, sla, False, f"{c.model}: no rate met p99 <= {c.target_p99_ms:g} ms "
                                       "in the serve benchmark")  # fmt: skip
    if c.p99_ms is None:
        return Measured(c, sla, False, f"{found}: no p99 recorded, so it cannot be judged "
                                       f"against the {sla:g} ms SLA")  # fmt: skip
    if c.p99_ms > sla:
        return Measured(c, sla, False, f"{found}: over the {sla:g} ms SLA; its capacity at "
                                       f"{sla:g} ms was not measured")  # fmt: skip
    looser = c.target_p99_ms is not None and sla > c.target_p99_ms
    return Measured(c, sla, True, found + (
        f"; the {sla:g} ms SLA may allow more (not measured)" if looser else ""))  # fmt: skip


def _best_per_model(caps: list[Capacity], opts: CostOptions, est: CostEstimate) -> list[Measured]:
    """Per model of a bench report: the batch size with the most samples/s whose p99 meets
    the SLA (the p99 of a whole batch call: every request in it waits that long)."""
    sla = opts.sla_p99_ms or DEFAULT_SLA_MS
    out = []
    for model in dict.fromkeys(c.model for c in caps):
        mine = [c for c in caps if c.model == model]
        ok = [c for c in mine if c.p99_ms is not None and c.p99_ms <= sla and c.rps > 0]
        if not ok:
            best = min(mine, key=lambda c: c.p99_ms or math.inf)
            out.append(Measured(best, sla, False, (
                f"{model}: p99 {best.p99_ms:.2f} ms in process at batch {best.batch_size}, "
                f"its fastest, is over the {sla:g} ms SLA")))  # fmt: skip
            continue
        c = max(ok, key=lambda c: c.rps)
        if not c.p99_reliable:
            est.warnings.append(
                f"{model}'s p99 at batch {c.batch_size} comes from n={c.n} timed calls, too "
                "few for a p99: time longer (nimbleml bench --time-budget)"
            )
        out.append(Measured(c, sla, True, (
            f"{model}: {c.rps:,.0f} samples/s at batch {c.batch_size}, p99 {c.p99_ms:.2f} ms, "
            "in process (no HTTP, no queueing: an upper bound for serving)")))  # fmt: skip
    return out


def _serving(est: CostEstimate, judged: list[Measured], instances: tuple[Instance, ...]) -> None:
    opts = est.options
    for m in judged:
        est.measured.append(m)
        c = m.capacity
        if not m.meets_sla:
            est.excluded.append(Excluded("serving", c.model, None, m.note))
            continue
        for inst in instances:
            s = scaling(c.machine, inst, opts.measured_on)
            if isinstance(s, str):
                est.excluded.append(Excluded("serving", c.model, inst.name, s))
                continue
            cap = c.rps * s.factor
            need = (math.ceil(opts.rps / (cap * (1 - opts.headroom)) - 1e-9)
                    if opts.rps else None)  # fmt: skip
            est.serving.append(ServingRow(c.model, c.source, inst, cap, c.p99_ms, s.basis,
                                          s.assumption, need, opts.headroom))  # fmt: skip


def _training(est: CostEstimate, run: TrainingRun, instances: tuple[Instance, ...]) -> None:
    est.run = run
    for inst in instances:
        s = scaling(run.machine, inst, est.options.measured_on)
        if isinstance(s, str):
            est.excluded.append(Excluded("training", None, inst.name, s))
            continue
        assumption = s.assumption.replace("vCPU-scaled", "time vCPU-scaled")
        est.training.append(TrainingRow(inst, run.seconds / s.factor / 3600, s.basis, assumption))


def _check_measured_on(est: CostEstimate) -> None:
    name = est.options.measured_on
    if name is None:
        return
    inst = est.catalog.get(name)
    machines = [m.capacity.machine for m in est.measured] + ([est.run.machine] if est.run else [])
    for machine in {(m.logical_cores, m.cpu) for m in machines}:
        if machine[0] != inst.vcpus:
            est.warnings.append(
                f"--measured-on {inst.name}: the catalog gives it {inst.vcpus} vCPUs, the "
                f"report's machine had {machine[0]} ({machine[1]}): is it the right instance?"
            )
