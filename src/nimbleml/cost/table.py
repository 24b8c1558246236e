"""A cost estimate as text: the prices' age, what was measured where, a right-sizing table
per model (cheapest per 1M predictions first), the training cost, what was left out and
why, and the assumptions behind every estimate."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .estimate import HOURS_PER_MONTH

if TYPE_CHECKING:
    from .estimate import CostEstimate, Measured, ServingRow

LEFT = {"instance", "cloud", "GPU", "basis", "assumption"}


def grid(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Columns padded to their widest cell; text left, numbers right."""
    cells = [list(header), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for r in cells:
        parts = [c.ljust(w) if h in LEFT else c.rjust(w)
                 for c, w, h in zip(r, widths, header, strict=True)]  # fmt: skip
        lines.append("  ".join(parts).rstrip())
    lines.insert(1, "-" * len(lines[0]))
    return lines


def _money(value: float | None, digits: int = 4) -> str:
    """USD: 4 decimals; below a tenth of a cent in two significant figures (2.4e-05), not 0."""
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if value >= 0.001 or value == 0 else f"{value:.1e}"


def _p99(ms: float | None) -> str:
    """One decimal; two below 1 ms (an in-process p99 of 0.04 ms is not 0.0)."""
    return "-" if ms is None else f"{ms:.{1 if ms >= 1 else 2}f}"


def _duration(hours: float) -> str:
    seconds = hours * 3600
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{hours:.2f} h"


def _gpu(accelerator: str) -> str:
    return accelerator.replace("NVIDIA ", "") if accelerator else "-"


def render(est: CostEstimate, warnings: bool = True) -> str:
    o, c = est.options, est.catalog
    lines = [f"warning: {w}" for w in est.warnings] if warnings else []
    regions = ", ".join(f"{cloud} {'/'.join(r)}" for cloud, r in c.regions().items()
                        if not o.clouds or cloud in o.clouds)  # fmt: skip
    lines.append(f"prices: {c.source}, dated {c.date} ({c.age_days(est.today)} days old); "
                 f"on-demand Linux, {regions}" + ("; spot: a typical recent price" if o.spot else ""))  # fmt: skip
    machines = {m.capacity.machine.describe() for m in est.measured}
    if est.run:
        machines.add(est.run.machine.describe())
    lines += [f"measured on: {m}" + (f" (the {o.measured_on} rows)" if o.measured_on else "")
              for m in sorted(machines)]  # fmt: skip
    for m in est.measured:
        lines += ["", *_serving(est, m)]
    if est.run:
        lines += ["", *_training(est)]
    lines += _excluded(est)
    lines += ["", *_legend(est)]
    return "\n".join(lines)


def _serving(est: CostEstimate, m: Measured) -> list[str]:
    o, c = est.options, m.capacity
    rows = [r for r in est.serving if (r.model, r.source) == (c.model, c.source)]
    head = [f"serving {m.note}"]
    if not rows:
        return head
    header = ["instance", "cloud", "vCPU", "GPU", "$/h", "req/s", "p99 ms", "$/1M"]
    if o.spot:
        header += ["spot $/h", "spot $/1M", "saving"]
    if o.rps:
        header += [f"n for {o.rps:,.0f}/s", "fleet $/h"] + (["spot fleet $/h"] if o.spot else [])
    header += ["basis", "assumption"]
    body = []
    for r in rows:
        i = r.instance
        cells = [i.name, i.cloud, str(i.vcpus), _gpu(i.accelerator), _money(i.on_demand),
                 f"{r.capacity_rps:,.0f}", _p99(r.p99_ms),
                 _money(r.usd_per_million)]  # fmt: skip
        if o.spot:
            saving = i.spot_saving
            cells += [_money(i.spot), _money(r.spot_usd_per_million),
                      "-" if saving is None else f"{saving:.0%}"]  # fmt: skip
        if o.rps:
            cells += [f"{r.instances_needed:,}", _money(r.fleet_usd_hour, 3)]
            cells += [_money(r.fleet_spot_usd_hour, 3)] if o.spot else []
        body.append([*cells, r.basis, r.assumption])
    return head + grid(header, body) + [_cheapest(est, rows)]


def _cheapest(est: CostEstimate, rows: list[ServingRow]) -> str:
    """The cheapest row, and when it is of another architecture than measured, the cheapest
    of the measured one beside it (nothing was measured on the first)."""
    text = _best(est, rows)
    other = [r for r in rows if OTHER_ARCH not in r.assumption]
    if OTHER_ARCH in _pick(est, rows).assumption and other:
        text += f"; of the measured architecture: {_best(est, other, short=True)}"
    return text


OTHER_ARCH = "other architecture"


def _pick(est: CostEstimate, rows: list[ServingRow]) -> ServingRow:
    spot = est.options.spot and all(r.instance.spot is not None for r in rows)
    if est.options.rps:
        return min(rows, key=lambda r: (r.fleet_spot_usd_hour if spot else r.fleet_usd_hour) or 0)
    return min(rows, key=lambda r: (r.spot_usd_per_million if spot else r.usd_per_million) or 0)


def _best(est: CostEstimate, rows: list[ServingRow], short: bool = False) -> str:
    o = est.options
    spot = o.spot and all(r.instance.spot is not None for r in rows)
    best = _pick(est, rows)
    if o.rps:
        hourly = (best.fleet_spot_usd_hour if spot else best.fleet_usd_hour) or 0.0
        text = (f"{best.instances_needed}x {best.instance.name} ({best.basis}), ${hourly:.3f}/h"
                f" = ${hourly * HOURS_PER_MONTH:,.0f}/month{' on spot' if spot else ''}")  # fmt: skip
        if spot and best.fleet_usd_hour and not short:
            saved = (best.fleet_usd_hour - hourly) * HOURS_PER_MONTH
            text += f" (on-demand ${best.fleet_usd_hour * HOURS_PER_MONTH:,.0f}/month: spot saves ${saved:,.0f})"
        return text if short else f"cheapest for {o.rps:,.0f} req/s: {text}"
    per = best.spot_usd_per_million if spot else best.usd_per_million
    text = f"{best.instance.name} ({best.basis}), ${_money(per)}{' on spot' if spot else ''}"
    return text if short else f"cheapest per 1M predictions: {text}"


def _training(est: CostEstimate) -> list[str]:
    run = est.run
    assert run is not None
    where = f"{run.path}; " if run.path else ""
    head = [f"training: {run.epochs} epoch(s), {_duration(run.seconds / 3600)} measured on "
            f"{run.device} ({where}the epochs' time: validation and start-up not counted)"]  # fmt: skip
    if not est.training:
        return head
    header = ["instance", "cloud", "vCPU", "GPU", "$/h", "time", "$/run"]
    header += ["spot $/run"] if est.options.spot else []
    body = []
    for r in est.training:
        i = r.instance
        cells = [i.name, i.cloud, str(i.vcpus), _gpu(i.accelerator), _money(i.on_demand),
                 _duration(r.hours), _money(r.usd_per_run)]  # fmt: skip
        cells += [_money(r.spot_usd_per_run)] if est.options.spot else []
        body.append([*cells, r.basis, r.assumption])
    return head + grid([*header, "basis", "assumption"], body)


def _excluded(est: CostEstimate) -> list[str]:
    groups: dict[tuple[str, str], list[str]] = {}
    for e in est.excluded:
        if e.instance is None:  # a whole model: its note is already under "serving"
            continue
        groups.setdefault((e.what, e.reason), [])
        if e.instance not in groups[(e.what, e.reason)]:
            groups[(e.what, e.reason)].append(e.instance)
    if not groups:
        return []
    return ["", "not estimated:"] + [f"  {what}, {reason}: {', '.join(names)}"
                                     for (what, reason), names in groups.items()]  # fmt: skip


def _legend(est: CostEstimate) -> list[str]:
    o = est.options
    machines = {m.capacity.machine for m in est.measured} | (
        {est.run.machine} if est.run else set()
    )
    cores = ", ".join(sorted({f"{m.logical_cores} ({m.cpu})" for m in machines}))
    serving = bool(est.serving)
    lines = [
        "measured: figures from the instance itself (--measured-on); estimate: scaled from the "
        "measured machine, the assumption beside it. Measure on the instance before buying."
    ]
    assumptions = [r.assumption for r in est.serving] + [r.assumption for r in est.training]
    if any("vCPU-scaled" in a for a in assumptions):
        what = ("throughput x b/a" if serving else "") + (
            "; " if serving and est.training else "") + ("time x a/b" if est.training else "")  # fmt: skip
        lines.append(
            f"vCPU-scaled a->b: {what}, from the measured logical cores ({cores}): linear in "
            "vCPUs, each vCPU as fast as a measured core (a vCPU is a hyper-thread on x86, a "
            "whole core on Graviton)" + ("; p99 as measured." if serving else ".")
        )
    if serving:
        lines.append("$/1M = $/h / (req/s x 3600) x 1e6: one instance kept busy at its "
                     "capacity at the SLA.")  # fmt: skip
    if o.rps and serving:
        lines.append(f"n = ceil({o.rps:g} / (req/s x (1 - headroom))), headroom {o.headroom:.0%}"
                     + ("" if o.headroom else ": each instance run at its measured capacity; "
                        "--headroom 0.2 keeps 20% spare"))  # fmt: skip
    if any(m.capacity.source == "bench" for m in est.measured):
        lines.append("bench figures are timed in process (no HTTP, no queueing): an upper "
                     "bound; benchmarks/serve.py --json measures capacity over HTTP.")  # fmt: skip
    return lines
