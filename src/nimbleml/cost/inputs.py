"""The measured figures a cost estimate starts from, read from the reports nimbleml writes:

- ``nimbleml bench --json/--report`` (:class:`~nimbleml.bench.BenchmarkReport`): samples/s and
  p99 per model and batch size, timed in process (no HTTP, no queueing);
- ``benchmarks/serve.py --json``: the serving capacity per model, the highest request rate
  whose p99 stayed within a target over HTTP (format: :func:`serve_report`);
- ``nimbleml train --checkpoint-dir DIR`` (``DIR/report.json``): the epochs' wall time and
  the device they ran on.

Each figure keeps the machine it was measured on, since every estimate for another instance
is scaled from that machine and says so.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError
from .catalog import gpu_class

SERVE_SCHEMA = 1
SERVE_KIND = "nimbleml-serve-capacity"
IN_MEMORY = "(in memory)"  # a report given as a dict: no file to name


@dataclass(frozen=True)
class Machine:
    """Where figures were measured: its cores, CPU, architecture, and the GPU they ran on
    (None when they ran on the CPU)."""

    cpu: str
    logical_cores: int
    physical_cores: int
    arch: str  # x86_64, arm64 or unknown
    gpu: str | None = None
    gpus: int = 0

    @property
    def gpu_class(self) -> str | None:
        return gpu_class(self.gpu) if self.gpu else None

    def describe(self) -> str:
        cores = f"{self.logical_cores} logical / {self.physical_cores} physical cores"
        where = f"on {self.gpus}x {self.gpu}" if self.gpu else "on the CPU"
        return f"{self.cpu} ({self.arch}), {cores}, figures {where}"

    def to_dict(self) -> dict[str, Any]:
        return {"cpu": self.cpu, "logical_cores": self.logical_cores,
                "physical_cores": self.physical_cores, "arch": self.arch, "gpu": self.gpu,
                "gpus": self.gpus}  # fmt: skip


@dataclass(frozen=True)
class Capacity:
    """Predictions per second one machine sustains for ``model`` at p99 ``p99_ms``."""

    model: str
    rps: float
    p99_ms: float | None
    n: int | None  # requests (serve) or timed calls (bench) behind the p99
    source: str  # "serve" or "bench"
    detail: str  # how it was measured, in words
    machine: Machine
    path: str
    target_p99_ms: float | None = None  # serve: the p99 target the capacity was searched at
    batch_size: int | None = None  # bench: the batch size timed
    p99_reliable: bool = True  # False: too few samples for the p99 to mean anything

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "source": self.source, "path": self.path,
                "capacity_rps": self.rps, "p99_ms": self.p99_ms, "n": self.n,
                "p99_reliable": self.p99_reliable, "target_p99_ms": self.target_p99_ms,
                "batch_size": self.batch_size, "detail": self.detail,
                "machine": self.machine.to_dict()}  # fmt: skip


@dataclass(frozen=True)
class TrainingRun:
    """A training run's measured wall time (the epochs'), on ``machine``."""

    seconds: float
    epochs: int
    samples: float
    device: str
    machine: Machine
    path: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "seconds": self.seconds, "epochs": self.epochs,
                "samples": self.samples, "device": self.device,
                "machine": self.machine.to_dict()}  # fmt: skip


# ---------------------------------------------------------------------------- reading


def read_json(source: str | Path | dict[str, Any], flag: str) -> tuple[dict[str, Any], str]:
    """A report as a dict, and its name for messages: a dict as is, a path to a JSON file, or
    a folder holding ``report.json`` (what ``--report DIR`` and ``--checkpoint-dir`` write)."""
    if isinstance(source, dict):
        return source, IN_MEMORY
    path = Path(source)
    if path.is_dir():
        path = path / "report.json"
    if not path.is_file():
        raise DataError(f"{flag} {source}: file not found")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{flag} {path}: not a JSON report ({exc})") from None
    if not isinstance(data, dict):
        raise DataError(f"{flag} {path}: not a report (a JSON object is expected)")
    return data, str(path)


def kind(data: dict[str, Any]) -> str:
    """'bench', 'serve', 'train' or 'unknown', by the keys each report has."""
    if data.get("kind") == SERVE_KIND:
        return "serve"
    if "results" in data and "machine" in data:
        return "bench"
    if "history" in data and "device" in data:
        return "train"
    return "unknown"


_FLAG_OF = {"bench": "--report", "serve": "--serve-report", "train": "--train-report"}
_WRITER = {"bench": "nimbleml bench --json FILE", "serve": "benchmarks/serve.py --json FILE",
           "train": "nimbleml train --checkpoint-dir DIR"}  # fmt: skip


def _expect(data: dict[str, Any], want: str, flag: str, where: str) -> None:
    found = kind(data)
    if found == want:
        return
    if found != "unknown":
        raise DataError(f"{flag} {where} is a {found} report: pass it as {_FLAG_OF[found]}")
    raise DataError(f"{flag} {where} is not a {want} report (one written by {_WRITER[want]})")


def machine_of(data: dict[str, Any], where: str, on_gpu: bool) -> Machine:
    m = data.get("machine")
    if not isinstance(m, dict) or not isinstance(m.get("logical_cores"), int):
        raise DataError(f"{where}: its machine (logical_cores, cpu) is missing")
    flags = m.get("cpu_flags") or []
    cpu = str(m.get("cpu", "unknown CPU"))
    if "asimd" in flags or any(w in cpu for w in ("Graviton", "Neoverse", "aarch64", "ARM")):
        arch = "arm64"
    elif flags or any(w in cpu for w in ("Intel", "AMD", "Xeon", "EPYC")):
        arch = "x86_64"
    else:
        arch = "unknown"
    gpus = [g for g in m.get("gpus") or [] if isinstance(g, dict)]
    gpu = str(gpus[0].get("name", "unknown GPU")) if on_gpu and gpus else None
    return Machine(cpu=cpu, logical_cores=m["logical_cores"],
                   physical_cores=int(m.get("physical_cores") or m["logical_cores"]),
                   arch=arch, gpu=gpu, gpus=len(gpus) if gpu else 0)  # fmt: skip


def _number(value: Any, what: str, where: str, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise DataError(f"{where}: {what} must be a number >= 0, got {value!r}")
    return float(value)


def bench_capacities(source: str | Path | dict[str, Any]) -> list[Capacity]:
    """One Capacity per model and batch size of a ``nimbleml bench`` report.

    The figures were timed in process, one call at a time: no HTTP, no queueing, so the
    capacity is an upper bound for serving, and a batch size above 1 assumes requests come
    (or are batched) that many at a time. The report says it ran on a GPU when the machine
    lists one and ONNX Runtime's GPU build was installed (packages then run on CUDA)."""
    data, where = read_json(source, "--report")
    _expect(data, "bench", "--report", where)
    libraries = (data.get("machine") or {}).get("libraries") or {}
    on_gpu = bool((data.get("machine") or {}).get("gpus")) and "onnxruntime-gpu" in libraries
    machine = machine_of(data, where, on_gpu)
    results = data.get("results")
    if not isinstance(results, list) or not results:
        raise DataError(f"--report {where}: it holds no results")
    out = []
    for r in results:
        try:
            name, batch = str(r["name"]), int(r["batch_size"])
            latency, rate = r["latency_ms"], r["performance"]["samples_per_second"]
            p99 = _number(latency["p99_ms"], "p99_ms", where)
        except (KeyError, TypeError, ValueError):
            raise DataError(f"--report {where}: a result lacks name, batch_size, latency_ms."
                            "p99_ms or performance.samples_per_second") from None  # fmt: skip
        out.append(Capacity(
            model=name, rps=_number(rate, "samples_per_second", where) or 0.0, p99_ms=p99,
            n=latency.get("n"), source="bench", path=where, machine=machine, batch_size=batch,
            detail=f"in process, batch {batch}: no HTTP, no queueing",
            p99_reliable="p99" not in (latency.get("unreliable") or []),
        ))  # fmt: skip
    return out


def serve_capacities(source: str | Path | dict[str, Any]) -> list[Capacity]:
    """The models of a serve report (:func:`serve_report`'s format)."""
    data, where = read_json(source, "--serve-report")
    _expect(data, "serve", "--serve-report", where)
    if data.get("schema") != SERVE_SCHEMA:
        raise DataError(f"--serve-report {where}: schema {data.get('schema')!r} is not "
                        f"{SERVE_SCHEMA}, the one this nimbleml reads")  # fmt: skip
    machine = machine_of(data, where, on_gpu=data.get("device") == "cuda")
    target = _number(data.get("target_p99_ms"), "target_p99_ms", where)
    models = data.get("models")
    if not isinstance(models, list) or not models:
        raise DataError(f"--serve-report {where}: it holds no models")
    names = [m.get("name") for m in models if isinstance(m, dict)]
    out = []
    for m in models:
        if not isinstance(m, dict) or not isinstance(m.get("name"), str):
            raise DataError(f"--serve-report {where}: each model needs a name")
        batch = int(m.get("max_batch_size") or 1)
        label = m["name"] if names.count(m["name"]) == 1 else (
            f"{m['name']} (batching {'on' if batch > 1 else 'off'})")  # fmt: skip
        out.append(Capacity(
            model=label, rps=_number(m.get("capacity_rps"), "capacity_rps", where) or 0.0,
            p99_ms=_number(m.get("p99_ms"), "p99_ms", where, allow_none=True),
            n=m.get("requests"), source="serve", path=where, machine=machine,
            target_p99_ms=target, detail=f"HTTP, {data.get('load', 'open-loop load')}, max batch {batch}",
        ))  # fmt: skip
    return out


def training_run(source: str | Path | dict[str, Any]) -> TrainingRun:
    """A ``nimbleml train`` report: the epochs' seconds summed (validation, start-up and
    checkpoint writes are not in them), the samples they saw, the device."""
    data, where = read_json(source, "--train-report")
    _expect(data, "train", "--train-report", where)
    history = data.get("history")
    if not isinstance(history, list) or not history:
        raise DataError(f"--train-report {where}: its history holds no epochs")
    try:
        seconds = sum(float(r["seconds"]) for r in history)
        samples = sum(float(r["seconds"]) * float(r.get("samples_per_s", 0)) for r in history)
    except (KeyError, TypeError, ValueError):
        raise DataError(f"--train-report {where}: an epoch lacks its seconds") from None
    device = str(data.get("device"))
    machine = machine_of(data, where, on_gpu=device.startswith("cuda"))
    return TrainingRun(seconds=seconds, epochs=len(history), samples=samples, device=device,
                       machine=machine, path="" if where == IN_MEMORY else where)  # fmt: skip


# ---------------------------------------------------------------------------- writing


def serve_report(models: list[dict[str, Any]], target_p99_ms: float, load: str,
                 device: str = "cpu", machine: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """The serve report ``benchmarks/serve.py --json`` writes and ``--serve-report`` reads.

    ``models``: one dict per measured server: ``name``, ``capacity_rps`` (the highest
    request rate whose p99 stayed <= ``target_p99_ms`` with every request answered 200; 0
    when none did), ``p99_ms`` and ``p50_ms`` at that rate (None when none did),
    ``max_batch_size`` (1: dynamic batching off), ``requests`` (sent in that run).
    ``device``: "cpu", or "cuda" when the server ran its models on a GPU."""
    from ..bench.machine import machine_info

    for m in models:
        missing = {"name", "capacity_rps", "p99_ms", "max_batch_size"} - set(m)
        if missing:
            raise DataError(f"serve report model {m.get('name')!r} lacks {sorted(missing)}")
    return {
        "schema": SERVE_SCHEMA,
        "kind": SERVE_KIND,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "target_p99_ms": target_p99_ms,
        "device": device,
        "load": load,
        "machine": machine if machine is not None else machine_info().to_dict(),
        "models": [
            {"name": m["name"], "capacity_rps": m["capacity_rps"], "p99_ms": m["p99_ms"],
             "p50_ms": m.get("p50_ms"), "max_batch_size": m["max_batch_size"],
             "batching": m["max_batch_size"] > 1, "requests": m.get("requests")}
            for m in models
        ],
    }  # fmt: skip
