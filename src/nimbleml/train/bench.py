"""The same model and data trained under several configurations in one run, side by side, in
the table the Hugging Face performance guide uses: configuration, samples/s, step time
p50/p95 with n, peak memory, final loss and metric, speedup over the fp32 row.

``bench_train(model_factory, data, configs)``: each configuration (a dict of Trainer options
with a ``label``) trains a fresh copy of the model, built with the same seed, so that the rows
differ only in what their options say. ``compare_amp()`` and ``full_suite(data)`` are the
usual sets of rows. Measured here:

- samples/s: the samples of every epoch over the training time of every epoch, as the loop
  times it (evaluation and the set-up before the first step, such as DataLoader tuning, are
  outside it and are reported in the row's note);
- step time: per optimizer step (``grad_accum`` micro-batches), p50 and p95 with their ``n``;
  the first step is left out (allocations, lazy initialisation); a p95 behind fewer than 200
  steps is marked ``*``;
- peak memory: on a GPU ``torch.cuda.max_memory_allocated`` after a reset (the weights
  included); on a CPU the growth of this process's resident memory during ``fit``, from the
  kernel's high-water mark reset per configuration (nimbleml.bench.memory: exact, nothing
  added to the timed steps; DataLoader workers hold their own memory, not counted). Resident
  memory includes what glibc's heap keeps after a free: a saving in live tensors (activation
  checkpointing) shows up smaller there; benchmarks/train.py measures both.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import gc
import json
import statistics
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from .._deps import require
from ..bench.memory import PeakMemory
from ..errors import ConfigError, NimbleError
from .bench_report import P95_MIN_STEPS, SCHEMA, BenchRow, TrainBenchResult

# the result types live in bench_report.py; they stay importable from here
__all__ = [
    "P95_MIN_STEPS",
    "SCHEMA",
    "BenchRow",
    "TrainBenchResult",
    "bench_train",
    "compare_amp",
    "full_suite",
]

SPECIAL = ("label", "note", "skip")  # config keys that are not Trainer options
SHORT_S = 2.0  # a row timed for less than this per run gets a note: its ratios are noisy


# -- presets -------------------------------------------------------------------------------
def _resolve_device(device: str) -> str:
    torch = require("torch", "nimbleml.train")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"device {device!r}: torch {torch.__version__} sees no CUDA GPU here; train on "
            "the CPU (device cpu, or auto)"
        )
    return device


def compare_amp(device: str = "auto") -> list[dict[str, Any]]:
    """fp32, then the mixed precision this hardware supports: on an NVIDIA GPU fp16-mixed
    (tensor cores from compute 7.0) and bf16-mixed (native from 8.0); on a CPU bf16-mixed,
    also where it is emulated (the honest figure of autocast on that CPU, with a note)."""
    torch = require("torch", "nimbleml.train")
    device = _resolve_device(device)
    rows: list[dict[str, Any]] = [{"label": "fp32", "precision": "fp32"}]
    if device.startswith("cuda"):
        major, minor = torch.cuda.get_device_capability(torch.device(device))
        fp16 = {"label": "fp16-mixed", "precision": "fp16-mixed"}
        if major < 7:
            fp16["note"] = f"compute {major}.{minor} has no fp16 tensor cores"
        rows.append(fp16)
        if major >= 8:
            rows.append({"label": "bf16-mixed", "precision": "bf16-mixed"})
        return rows
    from ..bench.machine import cpu_caps

    caps = cpu_caps()
    bf16: dict[str, Any] = {"label": "bf16-mixed", "precision": "bf16-mixed"}
    if not caps.bf16:
        bf16["note"] = (
            "emulated: this CPU has no AVX512-BF16 or AMX, so bf16 autocast converts in "
            "software; precision='auto' trains in fp32 here"
        )
    return [*rows, bf16]


def full_suite(data: Any, batch_size: int = 64, device: str = "auto") -> list[dict[str, Any]]:
    """compare_amp's rows, then (in fp32) gradient accumulation (grad_accum=4 at batch / 4:
    the same optimizer step), activation checkpointing, the tuned DataLoader (a Dataset only:
    against the fp32 row's num_workers=0) and the batch size the finder picks."""
    from .measure import is_plain_dataset

    b = int(batch_size)
    rows = compare_amp(device)
    micro = max(1, b // 4)
    rows.append({"label": f"grad_accum=4 ({micro} x 4)", "batch_size": micro, "grad_accum": 4})
    rows.append({"label": "checkpointing", "checkpointing": True})
    tuning = _tuning_missing()
    loader: dict[str, Any] = {"label": "DataLoader tuned", "dataloader": "auto"}
    if tuning:
        loader["skip"] = tuning
    elif not is_plain_dataset(data):
        loader["skip"] = ("the data is in memory ((X, y) or your DataLoader): batches are tensor "
                          "slices, there is no DataLoader of nimbleml's to tune")  # fmt: skip
    rows.append(loader)
    found: dict[str, Any] = {"label": "batch size found", "batch_size": "auto"}
    if tuning:
        found["skip"] = tuning
    rows.append(found)
    return rows


def _tuning_missing() -> str:
    """'' when nimbleml.train.loader_settings offers tune_loader and find_batch_size, else why not."""
    try:
        from .loader_settings import find_batch_size, tune_loader  # noqa: F401
    except ImportError as exc:
        return f"nimbleml.train.loader_settings is not available here ({exc})"
    return ""


# -- the run -------------------------------------------------------------------------------
def bench_train(model_factory: Any, data: Any, configs: Sequence[dict[str, Any]], *,
                val: Any = None, epochs: int = 1, repeats: int = 1, baseline: str | None = None,
                device: str = "auto", seed: int = 0,
                **options: Any) -> TrainBenchResult:  # fmt: skip
    """Train a fresh copy of the model under each configuration and measure it.

    ``model_factory``: a function returning a torch.nn.Module (called after
    ``torch.manual_seed(seed)`` for each row) or a Module (deep-copied for each row).
    ``configs``: dicts of Trainer options with a ``label`` (and optionally ``note``, or
    ``skip``: a reason to leave the row out, shown in the table). ``options``: Trainer options
    every row starts from (a row's own win); rows train in fp32 with ``num_workers=0`` unless
    they say otherwise. ``repeats``: rounds over all rows, interleaved (each round runs every
    row once, so that all rows see the same machine noise); samples/s is the median.
    ``baseline``: the label speedups are taken over (default: the first row in fp32)."""
    torch = require("torch", "nimbleml.train")
    from ..bench.machine import machine_info

    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ConfigError(f"repeats must be an integer >= 1, got {repeats!r}")
    planned = _plan(configs, baseline, device, epochs, seed, options)
    device = str(planned[0][1]["device"])
    rows = {label: BenchRow(label, _jsonable(opts), note=str(c.get("note", "")),
                            skipped=str(c.get("skip", ""))) for label, opts, c in planned}  # fmt: skip
    memory = PeakMemory(device)
    times: dict[str, list[float]] = {label: [] for label in rows}
    names: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _label, opts, c in planned:  # lazy initialisation paid here, not by the first row
            if not c.get("skip"):
                _warm_up(model_factory, data, val, opts, seed)
        # what exists now (torch's modules: millions of objects) out of the collector's scans:
        # a full collection before each row took 0.5 s instead of milliseconds
        gc.collect()
        gc.freeze()
        try:
            for _ in range(repeats):
                for label, opts, _c in planned:
                    if rows[label].ran:
                        names.append(_run(rows[label], times[label], model_factory, data, val,
                                          opts, seed, memory))  # fmt: skip
        finally:
            gc.unfreeze()
    said = dict.fromkeys(
        str(w.message).split(";")[0][:200] for w in caught if "is emulated" not in str(w.message)
    )  # the emulated precision's cost is in the table
    ran = [r for r in rows.values() if r.ran]
    for r in ran:
        r.samples_per_s = statistics.median(r.runs)
    ref = baseline or next((r.label for r in ran if r.precision == "fp32"), None)
    ref = ref or (ran[0].label if ran else planned[0][0])
    base_sps = rows[ref].samples_per_s if rows[ref].ran else 0.0
    for r in ran:
        r.speedup = r.samples_per_s / base_sps if base_sps > 0 else None
    notes = [f"torch {torch.__version__}, {torch.get_num_threads()} threads; each row warmed up "
             "untimed on two batches first", *(f"warning: {w}" for w in said)]  # fmt: skip
    short = min((r.seconds / len(r.runs) for r in ran), default=SHORT_S)
    if short < SHORT_S:
        notes.append(f"rows timed for as little as {short:.2f} s a run: differences of 10-20% "
                     "can be noise here; give more epochs or repeats")  # fmt: skip
    return TrainBenchResult(
        rows=list(rows.values()), baseline=ref, device=device, epochs=epochs, repeats=repeats,
        memory=_describe(memory), samples=_samples(data), model=(names or ["?"])[0],
        machine=machine_info().to_dict(), notes=notes,
        created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )  # fmt: skip


def _plan(configs: Sequence[dict[str, Any]], baseline: str | None, device: str, epochs: int,
          seed: int, options: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:  # fmt: skip
    """(label, Trainer options, the config) per row, every value checked before any training."""
    from .loop import Trainer

    labels = [c.get("label") if isinstance(c, dict) else None for c in configs]
    if not configs or not all(isinstance(x, str) and x for x in labels):
        raise ConfigError("each configuration needs a 'label' (a non-empty string)")
    if len(set(labels)) != len(labels):
        raise ConfigError(f"configuration labels must differ, got {labels}")
    if baseline is not None and baseline not in labels:
        raise ConfigError(f"baseline {baseline!r} is not one of the labels: {labels}")
    base = {"precision": "fp32", "dataloader": {}, **options, "epochs": epochs, "seed": seed,
            "device": _resolve_device(device)}  # fmt: skip
    planned = []
    for c in configs:
        opts = {**base, **{k: v for k, v in c.items() if k not in SPECIAL}}
        if not c.get("skip"):
            Trainer(**opts)  # an unknown option or a bad value: ConfigError now
        planned.append((str(c["label"]), opts, c))
    return planned


def _build(factory: Any, seed: int) -> Any:
    torch = require("torch", "nimbleml.train")
    if isinstance(factory, torch.nn.Module):
        return copy.deepcopy(factory)
    torch.manual_seed(seed)
    model = factory()
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"model_factory returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def _run(row: BenchRow, times: list[float], factory: Any, data: Any, val: Any,
         opts: dict[str, Any], seed: int, memory: PeakMemory) -> str:  # fmt: skip
    """One training run of one row: its figures into ``row``, its step times into ``times``.
    Returns the model's class name."""
    torch = require("torch", "nimbleml.train")
    from .loop import Trainer

    threads = torch.get_num_threads()
    model = _build(factory, seed)
    name = type(model).__name__
    memory.start()
    try:
        result = Trainer(**opts).fit(model, data, val)
    except NimbleError as exc:
        row.skipped = f"failed: {exc}"
        return name
    except RuntimeError as exc:
        if "out of memory" not in str(exc).lower():
            raise
        row.skipped = "out of memory"
        return name
    finally:
        peak = memory.stop()
        torch.set_num_threads(threads)  # a tuned DataLoader sets the process's threads
    first = not row.runs
    _fill(row, times, result.report, peak, first)
    if first:
        row.note = "; ".join(filter(None, [row.note, _tuned(result.report.config)]))
    del result, model
    return name


def _fill(row: BenchRow, times: list[float], report: Any, peak: float | None,
          first: bool) -> None:  # fmt: skip
    history = report.history
    seconds = sum(r["seconds"] for r in history)
    samples = sum(r["samples_per_s"] * r["seconds"] for r in history)
    row.runs.append(samples / seconds if seconds > 0 else 0.0)
    row.seconds += seconds
    if peak is not None:
        row.peak_memory_mb = max(row.peak_memory_mb or 0.0, peak)
    times += [t * 1e3 for t in (report.step_times_s[1:] or report.step_times_s)]
    if times:  # the steps of every repeat, pooled
        row.steps = len(times)
        row.step_p50_ms = float(np.percentile(times, 50))
        row.step_p95_ms = float(np.percentile(times, 95))
    if not first:
        return
    last = history[-1]
    row.train_loss = float(last["train_loss"])
    row.val_loss = float(last["val_loss"]) if "val_loss" in last else None
    row.metric = float(last["val_metric"]) if "val_metric" in last else None
    row.metric_name = last.get("metric")
    row.batch_size = int(report.config["batch_size"]) * int(report.config["grad_accum"])
    row.precision = report.precision


def _warm_up(factory: Any, data: Any, val: Any, opts: dict[str, Any], seed: int) -> None:
    """One epoch of two batches in the row's settings, untimed: imports, kernel selection,
    the allocator's first requests. A search option ('auto') warms up as its default (the
    search itself is part of the row's set-up, reported in its note)."""
    from .loop import Trainer

    warm = dict(opts, epochs=1, checkpoint_dir=None, resume=False)
    if warm.get("batch_size") == "auto":
        warm["batch_size"] = 64
    if warm.get("dataloader") == "auto":
        warm["dataloader"] = {}
    n = 2 * int(warm.get("batch_size", 64)) * int(warm.get("grad_accum", 1))
    small = _head(data, n)
    if small is None:
        return  # a DataLoader of the user's: no cheap slice of it
    with contextlib.suppress(NimbleError):  # the timed run says what is wrong, in its row
        Trainer(**warm).fit(
            _build(factory, seed), small, _head(val, n) if val is not None else None
        )


def _head(data: Any, n: int) -> Any:
    """The first ``n`` samples of (X, y) or of a Dataset; None for a DataLoader."""
    from .measure import is_plain_dataset

    if is_plain_dataset(data):
        from torch.utils.data import Subset

        return Subset(data, range(min(n, len(data))))
    if isinstance(data, tuple | list) and len(data) == 2:
        X, y = data
        X = {k: v[:n] for k, v in X.items()} if isinstance(X, dict) else X[:n]
        return X, y[:n]
    return None


def _tuned(config: dict[str, Any]) -> str:
    parts = []
    if "dataloader" in config:
        parts.append(f"DataLoader: {config['dataloader']['summary']}")
    if "batch_size_search" in config:
        parts.append(
            f"batch {config['batch_size']} found: {config['batch_size_search']['summary']}"
        )
    return "; ".join(parts)


def _jsonable(opts: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps({k: v for k, v in opts.items() if k != "callbacks"},
                                 default=lambda v: type(v).__name__))  # fmt: skip


def _samples(data: Any) -> int | None:
    from .sources import rows

    try:
        return rows(tuple(data) if isinstance(data, list) else data)
    except Exception:  # a Dataset without a length, an iterable: the count is not shown
        return None


def _describe(memory: PeakMemory) -> str:
    if memory.cuda:
        return "torch.cuda.max_memory_allocated during fit, reset per configuration"
    how = memory.how.replace("reset at the start", "reset per configuration") or "VmHWM"
    return (f"growth of this process's resident memory during fit ({how}; DataLoader workers "
            "not counted)")  # fmt: skip
