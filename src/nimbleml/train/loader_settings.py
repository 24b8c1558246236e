"""DataLoader settings chosen by measuring real training steps on this machine (and, from
batch_size.py, the batch size).

``tune_loader``: for a torch Dataset, real steps (fetch a batch, forward, loss, backward,
optimizer step, on a copy of the model) under a few settings of ``num_workers``,
``prefetch_factor``, ``pin_memory`` (CUDA only) and torch threads in the main process, never
more workers + threads than the cores this process may use. Of the settings within 3% of the
fastest (3%: the spread of repeated measurements on a shared 2-core machine), the one with
the fewest workers is kept, and it is never slower than ``num_workers=0`` measured in the
same run. Workers are persistent:
their start-up (the "first s" column) is then paid once, not every epoch. The decision is
cached per (dataset, model, machine) in ``$XDG_CACHE_HOME/nimbleml/loader.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .._deps import require
from .batch_size import BatchRow, BatchSizeResult, find_batch_size, pick_batch
from .data import InMemory, _is_dataset, split
from .measure import Stepper, cores, is_plain_dataset, timed_steps

__all__ = [
    "BatchRow",
    "BatchSizeResult",
    "LoaderDecision",
    "LoaderRow",
    "cache_path",
    "find_batch_size",
    "is_plain_dataset",
    "pick_batch",
    "tune_loader",
]

log = logging.getLogger("nimbleml.train")

NOISE = 0.03  # settings within 3% of the fastest count as equal: the fewest workers is kept
CACHE_SCHEMA = 1
CACHE_ENTRIES = 200


@dataclass
class LoaderRow:
    workers: int
    threads: int  # torch threads of the main process (each worker runs 1: DataLoader sets it)
    prefetch: int | None = None
    pin_memory: bool = False
    samples_per_s: float = 0.0  # batch size / median step time
    step_ms: float = 0.0
    first_batch_s: float = 0.0  # worker start-up included: paid once (persistent workers)
    steps: int = 0

    def kwargs(self) -> dict[str, Any]:
        out: dict[str, Any] = {"num_workers": self.workers, "pin_memory": self.pin_memory}
        if self.workers:
            out.update(persistent_workers=True, prefetch_factor=self.prefetch)
        return out

    def label(self) -> str:
        extra = f", prefetch_factor={self.prefetch}" if self.workers else ""
        pin = ", pin_memory=True" if self.pin_memory else ""
        return f"num_workers={self.workers}{extra}{pin}, torch threads {self.threads}"


@dataclass
class LoaderDecision:
    """DataLoader arguments (``kwargs``) and torch threads for the main process (``threads``),
    with the measured table and why."""

    kwargs: dict[str, Any]
    threads: int
    rows: list[LoaderRow]
    reason: str
    kind: str  # dataset | in-memory | dataloader
    seconds: float  # spent measuring (by the run that measured, when cached)
    cores: int
    cached: bool = False
    signature: dict[str, Any] = field(default_factory=dict)

    @property
    def summary(self) -> str:
        head = {"dataset": "", "in-memory": "in-memory (X, y), ", "dataloader": "your DataLoader, "}
        args = ", ".join(f"{k}={v}" for k, v in self.kwargs.items())
        where = "cached" if self.cached else f"measured in {self.seconds:.1f} s"
        return (
            f"{head[self.kind]}{args + ', ' if args else ''}torch threads {self.threads} ({where})"
        )

    def apply_threads(self) -> None:
        """Set torch's thread count of this process to the chosen one (the workers' own is 1)."""
        torch = require("torch", "nimbleml.train")
        if self.threads != torch.get_num_threads():
            torch.set_num_threads(self.threads)

    def table(self) -> str:
        head = (f"{'workers':>7} {'threads':>7} {'prefetch':>8} {'pin':>4} {'samples/s':>10} "
                f"{'step ms':>8} {'first s':>8} {'steps':>5} {'vs w=0':>7}")  # fmt: skip
        lines = [f"DataLoader tuning ({self.kind}, {self.cores} cores): {self.summary}", head,
                 "-" * len(head)]  # fmt: skip
        base = self.rows[0].samples_per_s if self.rows else 0.0
        for r in self.rows:
            chosen = r.threads == self.threads and (
                self.kind != "dataset" or r.kwargs() == self.kwargs
            )
            mark = " *" if chosen else ""
            lines.append(
                f"{r.workers:>7} {r.threads:>7} {r.prefetch or '-':>8} {'yes' if r.pin_memory else 'no':>4} "
                f"{r.samples_per_s:>10.0f} {r.step_ms:>8.2f} {r.first_batch_s:>8.3f} {r.steps:>5} "
                f"{r.samples_per_s / base if base else 0:>6.2f}x{mark}"
            )
        lines.append(f"* = chosen: {self.reason}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["summary"] = self.summary
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoaderDecision:
        rows = [LoaderRow(**r) for r in d["rows"]]
        keep = {k: d[k] for k in ("kwargs", "threads", "reason", "kind", "seconds", "cores",
                                  "signature")}  # fmt: skip
        return cls(rows=rows, **keep)


def tune_loader(model: Any, data: Any, batch_size: int, *, loss: Any = None,
                device: str = "cpu", precision: str = "auto", budget_s: float = 15.0,
                cache: bool = True, retune: bool = False,
                verbose: bool = False) -> LoaderDecision:  # fmt: skip
    """Measure real training steps under a few DataLoader settings and keep the fastest
    (the fewest workers within 3% of it; never slower than ``num_workers=0``). ``data``: a torch
    Dataset (what is tuned), (X, y) (batches are tensor slices in this process, there is no
    DataLoader: only torch threads are measured) or a DataLoader (its settings are kept).
    The model is not changed (a copy is trained); worker processes end before this returns.
    A decision is reused from the cache unless ``retune``; ``verbose`` prints the table."""
    torch = require("torch", "nimbleml.train")
    from torch.utils.data import DataLoader

    batch_size = int(batch_size)
    threads = max(1, min(torch.get_num_threads(), cores()))
    if isinstance(data, DataLoader):
        decision = LoaderDecision({}, threads, [], "a DataLoader of yours: its settings are kept",
                                  "dataloader", 0.0, cores())  # fmt: skip
        return _show(decision, verbose)
    kind = "dataset" if _is_dataset(data) else "in-memory"
    signature = _signature(model, data, batch_size, device, precision)
    key = hashlib.sha256(json.dumps(signature, sort_keys=True).encode()).hexdigest()[:20]
    if cache and not retune:
        hit = _cache_entries(cache_path()).get(key)
        if hit is not None:
            try:
                decision = LoaderDecision.from_dict(hit)
            except (KeyError, TypeError):
                pass  # an entry of another layout: measure again
            else:
                decision.cached = True
                return _show(decision, verbose)
    started = time.perf_counter()
    stepper = Stepper(model, device, loss, precision)
    try:
        if kind == "dataset":
            rows = _search_loader(stepper, data, batch_size, threads, budget_s)
        else:
            rows = _search_threads(stepper, data, batch_size, threads, budget_s)
    finally:
        torch.set_num_threads(threads)
        stepper.close()
    chosen, reason = choose(rows, threads)
    if kind == "in-memory":
        reason = ("in-memory (X, y): batches are tensor slices in this process and there is no "
                  f"DataLoader to tune (workers would only add copies); {reason}")  # fmt: skip
    decision = LoaderDecision(chosen.kwargs() if kind == "dataset" else {}, chosen.threads, rows,
                              reason, kind, time.perf_counter() - started, cores(),
                              signature=signature)  # fmt: skip
    if cache:
        _cache_write(cache_path(), key, decision.to_dict())
    return _show(decision, verbose)


def _show(decision: LoaderDecision, verbose: bool) -> LoaderDecision:
    if verbose:
        print(decision.table())
    log.info("%s", decision.table())
    return decision


def _search_loader(stepper: Stepper, data: Any, batch_size: int, threads: int,
                   budget_s: float) -> list[LoaderRow]:  # fmt: skip
    """num_workers=0 first (the baseline), fewer threads, then 1, 2, 4 ... workers while each
    step up pays; then a deeper prefetch for the best, and pinned memory on a GPU."""
    n = cores()
    started = time.perf_counter()
    per = min(1.0, max(0.4, budget_s / 8))  # per setting; steady after ~0.3 s
    rows: list[LoaderRow] = []

    def run(row: LoaderRow) -> LoaderRow | None:
        if rows and time.perf_counter() - started > budget_s:
            return None
        rows.append(_measure_loader(row, stepper, data, batch_size, per))
        return row

    run(LoaderRow(0, threads))
    if threads > 1:
        run(LoaderRow(0, 1))
    previous = max(rows, key=lambda r: r.samples_per_s)
    for w in _worker_counts(n):
        row = run(LoaderRow(w, max(1, min(threads, n - w)), prefetch=2))
        if row is None or row.samples_per_s <= previous.samples_per_s * (1 + NOISE):
            break  # one more worker stopped paying: more will not either
        previous = row
    best = max(rows, key=lambda r: r.samples_per_s)
    if best.workers:
        run(_fresh(best, prefetch=4))
    if stepper.cuda:
        run(_fresh(max(rows, key=lambda r: r.samples_per_s), pin_memory=True))
    return rows


def _worker_counts(n: int) -> list[int]:
    """1, 2, 4 ... and n - 1: one core always stays with the main process."""
    counts = [w for w in (1, 2, 4, 8, 16, 32, 64) if w < n]
    if n > 1 and n - 1 not in counts:
        counts.append(n - 1)
    return counts


def _fresh(row: LoaderRow, **change: Any) -> LoaderRow:
    return replace(row, samples_per_s=0.0, step_ms=0.0, first_batch_s=0.0, steps=0, **change)


def _measure_loader(row: LoaderRow, stepper: Stepper, data: Any, batch_size: int,
                    seconds: float) -> LoaderRow:  # fmt: skip
    torch = require("torch", "nimbleml.train")
    from torch.utils.data import DataLoader

    torch.set_num_threads(row.threads)
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, **row.kwargs())
    try:
        first, times = timed_steps(stepper, lambda: map(split, loader), seconds)
    finally:
        _shutdown(loader)
    return _fill(row, first, times, batch_size)


def _shutdown(loader: Any) -> None:
    """End a loader's worker processes now (persistent workers otherwise live on with it)."""
    shutdown = getattr(getattr(loader, "_iterator", None), "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
    loader._iterator = None


def _fill(row: LoaderRow, first: float, times: list[float], batch_size: int) -> LoaderRow:
    # the mean, not the median: a starved loader's stalls (an epoch's start, a slow sample)
    # are what a deeper prefetch or one more worker removes, and what an epoch pays for
    step = sum(times) / len(times)
    row.samples_per_s, row.step_ms = batch_size / step, step * 1e3
    row.first_batch_s, row.steps = first, len(times)
    return row


def _search_threads(stepper: Stepper, data: Any, batch_size: int, threads: int,
                    budget_s: float) -> list[LoaderRow]:  # fmt: skip
    torch = require("torch", "nimbleml.train")
    memory = InMemory(data[0], data[1], batch_size)
    per = min(1.0, max(0.3, budget_s / 4))
    rows = []
    for t in dict.fromkeys((threads, max(1, threads // 2), 1)):
        torch.set_num_threads(t)
        first, times = timed_steps(stepper, lambda: memory.epoch(0), per)
        rows.append(_fill(LoaderRow(0, t), first, times, batch_size))
    return rows


def choose(rows: list[LoaderRow], threads: int) -> tuple[LoaderRow, str]:
    """Among the rows within 3% of the fastest, those with the fewest worker processes (what
    costs: memory, start-up, cores), unpinned, at the default threads, then the deepest
    prefetch (a few more batches of memory; it absorbs the jitter of per-sample work, which
    whole epochs showed paying where a 1-second measurement could not tell), then the
    fastest. rows[0] is the num_workers=0 baseline at the default threads, never beaten by a
    slower choice: it is the cheapest of all, so it wins whenever it is within 3%."""
    fastest = max(r.samples_per_s for r in rows)
    near = [r for r in rows if r.samples_per_s >= fastest * (1 - NOISE)]
    chosen = min(near, key=lambda r: (r.workers, r.pin_memory, r.threads != threads,
                                      -(r.prefetch or 0), -r.samples_per_s))  # fmt: skip
    base = rows[0]
    if chosen.samples_per_s < base.samples_per_s:  # pragma: no cover - excluded by the order
        chosen = base
    if chosen is base:
        return chosen, f"{base.label()}: no other setting was more than {NOISE:.0%} faster"
    gain = chosen.samples_per_s / base.samples_per_s if base.samples_per_s else float("inf")
    return chosen, (f"{chosen.label()}: {gain:.2f}x the samples/s of {base.label()} "
                    f"(the fewest workers within {NOISE:.0%} of the fastest)")  # fmt: skip


# -- the cache -----------------------------------------------------------------------------
def cache_path() -> Path:
    """``$XDG_CACHE_HOME/nimbleml/loader.json`` (``~/.cache`` when unset or not absolute)."""
    root = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(root) if root and os.path.isabs(root) else Path.home() / ".cache"
    return base / "nimbleml" / "loader.json"


def _cache_entries(path: Path) -> dict[str, Any]:
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(stored, dict) or stored.get("schema") != CACHE_SCHEMA:
        return {}
    entries = stored.get("entries")
    return entries if isinstance(entries, dict) else {}


def _cache_write(path: Path, key: str, value: dict[str, Any]) -> None:
    """Read, add, write to a temporary file and rename: a reader never sees half a file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        entries = _cache_entries(path)
        entries.pop(key, None)
        entries[key] = value
        while len(entries) > CACHE_ENTRIES:
            entries.pop(next(iter(entries)))  # the oldest
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"schema": CACHE_SCHEMA, "entries": entries}, indent=1))
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("could not write the DataLoader decision to %s: %s", path, exc)


def _signature(model: Any, data: Any, batch_size: int, device: str,
               precision: str) -> dict[str, Any]:  # fmt: skip
    """What a decision depends on: the dataset (type, length, first item's shapes and dtypes),
    the model (class, parameter count), the machine (CPU, cores, torch) and the step."""
    torch = require("torch", "nimbleml.train")
    from ..bench.machine import cpu_model

    if is_plain_dataset(data):
        dataset = {"type": f"{type(data).__module__}.{type(data).__qualname__}",
                   "length": len(data), "item": _describe(data[0])}  # fmt: skip
    else:
        dataset = {"type": "arrays", "length": len(data[1]), "item": _describe(list(data))}
    machine = {"cpu": cpu_model(), "cores": cores(), "torch": torch.__version__}
    if str(device).startswith("cuda"):
        machine["gpu"] = torch.cuda.get_device_name(torch.device(device))
    params = sum(p.numel() for p in model.parameters())
    return {"dataset": dataset, "model": {"class": type(model).__qualname__, "parameters": params},
            "machine": machine, "batch_size": batch_size, "device": str(device),
            "precision": precision}  # fmt: skip


def _describe(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _describe(v) for k, v in x.items()}
    if isinstance(x, tuple | list):
        return [_describe(v) for v in x]
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return {"shape": list(x.shape), "dtype": str(x.dtype)}
    return type(x).__name__
