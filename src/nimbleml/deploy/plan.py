"""What every deployment target shares: the packages read once, the server settings derived
from what their manifests measured (each with the reason, written into the generated files),
the one ``nimbleml serve`` command line and the pinned requirements.

Derivations (docs/deploy.md):

- ``--threads``: the thread count ``optimize`` measured best (``runtime.intra_op_num_threads``);
  else the server's own rule on the machine the package was timed on: its cores less one
  for the event loop (serve/config.py ``serving_threads``).
- ``--max-batch-size``: the batch size ``optimize`` chose (``runtime.batch_size``); else the
  largest benchmarked batch whose package p99 fits half the 25 ms p99 target, so that two
  batches back to back still fit it (how docs/serve.md sized the MLP's batches); else 32.
- CPU: ``--threads`` plus one core for the event loop, per worker.
- memory: the idle server (105 MiB resident, measured) + twice the model and baseline files
  (each is opened as an ONNX Runtime session, which holds its initialised weights) + the
  memory cache (``--cache-mb``, bounded by bytes), times 1.25 for headroom.
- capacity: measured only (``--capacity-rps`` or ``--serve-report``); without it the
  autoscalers get conservative defaults, and the files say so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, PackageError

PORT = 8000  # inside the container / on the instance
MODELS_DIR = "/models"  # where the packages are copied in the image
P99_TARGET_MS = 25.0  # the latency target docs/serve.md sizes batches for
IDLE_SERVER_MIB = 105  # resident memory of an idle `nimbleml serve` (one small model), measured
HEADROOM = 1.25
DEFAULT_BATCH = 32  # the server's default --max-batch-size
DEFAULT_CONCURRENCY = 8  # KServe target without a measured capacity (Knative's default is 100)
DEFAULT_QUEUE_TARGET_S = 0.005  # HPA queue-time target without a benchmark
KNATIVE_UTILIZATION = 0.7  # Knative scales at 70% of the target by default

# the settings each target's files use (and show, with their reasons)
SERVER = ("threads", "max_batch_size")
RESOURCES = (*SERVER, "cpu", "memory_mib")
KEYS = {
    "docker": SERVER,
    "compose": (*RESOURCES, "workers"),
    "kserve": (*RESOURCES, "capacity_rps", "concurrency_target"),
    "k8s": (*RESOURCES, "queue_target_s"),
    "skypilot": (*RESOURCES, "capacity_rps"),
}


@dataclass
class Served:
    """One package as the server will see it."""

    name: str
    path: Path
    manifest: dict[str, Any]

    @property
    def container_path(self) -> str:
        return f"{MODELS_DIR}/{self.name}.nimble"


@dataclass
class Setting:
    value: Any
    why: str


@dataclass
class Plan:
    """Everything the targets write, derived once. ``settings`` holds each derived value
    with its reason; ``comment()`` is the block written at the top of every file."""

    packages: list[Served]
    settings: dict[str, Setting] = field(default_factory=dict)
    workers: int = 1
    cache_mb: float = 64.0
    max_wait_ms: float = 2.0
    image: str = ""

    def __getitem__(self, key: str) -> Any:
        return self.settings[key].value

    @property
    def name(self) -> str:
        """The deployment's name: the package name, or the names joined (a DNS label)."""
        joined = "-".join(p.name for p in self.packages)
        label = "".join(c if c.isalnum() else "-" for c in joined.lower()).strip("-")
        return f"nimbleml-{label}"[:63].rstrip("-")

    def serve_args(self, port: int = PORT, models_dir: str = MODELS_DIR, **extra: Any) -> list[str]:
        """``nimbleml serve``'s arguments (without the two words), as every target runs it."""
        args = [f"{p.name}={models_dir}/{p.name}.nimble" for p in self.packages]
        args += ["--host", "0.0.0.0", "--port", str(port),
                 "--threads", str(self["threads"]),
                 "--max-batch-size", str(self["max_batch_size"]),
                 "--max-wait-ms", _num(self.max_wait_ms),
                 "--cache-mb", _num(self.cache_mb)]  # fmt: skip
        for flag, value in extra.items():
            if value is not None:
                args += [f"--{flag.replace('_', '-')}", str(value)]
        return args

    def comment(self, what: str, keys: tuple[str, ...]) -> list[str]:
        """The header of a generated file: what it is, and how each of its settings
        (``keys``) was chosen."""
        from .._version import __version__

        names = ", ".join(f"{p.name} ({p.path.name})" for p in self.packages)
        lines = [f"{what}, written by nimbleml deploy {__version__} for {names}.",
                 "How its settings were chosen:"]  # fmt: skip
        for key in keys:
            s = self.settings[key]
            lines.append(f"  {key}: {'none' if s.value is None else s.value} - {s.why}")
        return lines


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def read_packages(paths: list[str | Path]) -> list[Served]:
    """Each path checked as a package (manifest, checksums) and named; NAME=PATH chooses the
    name, as ``nimbleml serve`` takes it. Two packages with one name are refused."""
    from ..package import model_map, read_manifest

    if not paths:
        raise ConfigError("no packages to deploy: give one or more .nimble packages")
    served: list[Served] = []
    for name, path in model_map(paths).items():
        folder = Path(path)
        if not folder.exists():
            raise ConfigError(f"{folder} does not exist: give a .nimble package folder")
        if not (folder / "manifest.json").is_file():
            raise ConfigError(f"{folder} is not a .nimble package (no manifest.json)")
        if not name or not all(c.isalnum() or c in "-_." for c in name):
            raise ConfigError(
                f"model name {name!r} must be letters, digits, '-', '_' or '.'; "
                "use NAME=PATH to choose another"
            )
        try:
            manifest = read_manifest(folder)
        except PackageError as exc:
            raise ConfigError(f"model '{name}': {exc}") from None
        served.append(Served(name, folder, manifest))
    return served


def derive(packages: list[Served], *, threads: int | None = None,
           max_batch_size: int | None = None, capacity: Any = None, workers: int = 1,
           cache_mb: float = 64.0, max_wait_ms: float = 2.0) -> Plan:  # fmt: skip
    """The plan: settings from the manifests (or the given overrides), with reasons."""
    plan = Plan(packages, workers=workers, cache_mb=cache_mb, max_wait_ms=max_wait_ms)
    s = plan.settings
    s["threads"] = Setting(threads, "given") if threads else _threads(packages)
    s["max_batch_size"] = Setting(max_batch_size, "given") if max_batch_size else _batch(packages)
    s["cpu"] = Setting(
        s["threads"].value + 1, f"--threads {s['threads'].value} + 1 core for the event loop"
    )
    s["memory_mib"] = _memory(packages, cache_mb)
    s["workers"] = Setting(workers, "server processes sharing the Redis tier")
    s["capacity_rps"] = (
        capacity.setting
        if capacity is not None
        else Setting(
            None, "not measured: pass --capacity-rps or --serve-report (benchmarks/serve.py --json)"
        )
    )
    compute_ms = _compute_ms(packages, s["max_batch_size"].value)
    s["concurrency_target"] = _concurrency(s["capacity_rps"].value, capacity, compute_ms,
                                           max_wait_ms)  # fmt: skip
    s["queue_target_s"] = _queue_target(compute_ms, max_wait_ms)
    return plan


def _threads(packages: list[Served]) -> Setting:
    tuned = [p.manifest.get("runtime", {}).get("intra_op_num_threads") for p in packages]
    if all(isinstance(t, int) and t > 0 for t in tuned):
        top = max(t for t in tuned if t)
        return Setting(
            top, "the thread count optimize measured best (runtime.intra_op_num_threads)"
        )
    cores = [p.manifest.get("machine", {}).get("physical_cores") or
             p.manifest.get("machine", {}).get("logical_cores") for p in packages]  # fmt: skip
    known = [c for c in cores if isinstance(c, int) and c > 0]
    if not known:
        return Setting(1, "no tuned thread count and no core count in the manifest: 1")
    n = min(known)
    return Setting(
        max(1, n - 1),
        f"no tuned thread count (optimize records one); the {n} cores the package was timed "
        "on, less one for the event loop",
    )


def _timing(entry: dict[str, Any]) -> tuple[float | None, bool]:
    side = entry.get("package") or {}
    unreliable = "p99" in (side.get("unreliable") or [])
    return side.get("p99_ms"), not unreliable


def _batch(packages: list[Served]) -> Setting:
    chosen = [p.manifest.get("runtime", {}).get("batch_size") for p in packages]
    if all(isinstance(b, int) and b > 0 for b in chosen):
        return Setting(
            min(b for b in chosen if b), "the batch size optimize chose (runtime.batch_size)"
        )
    budget = P99_TARGET_MS / 2
    sizes: list[int] = []
    for p in packages:
        measured = []
        for key, entry in (p.manifest.get("benchmark") or {}).items():
            p99, _ = _timing(entry)
            if p99 is not None:
                measured.append((int(key.removeprefix("batch_")), float(p99)))
        if not measured:
            return Setting(DEFAULT_BATCH, f"{p.name} has no benchmark: the server's default")
        fits = [size for size, p99 in measured if p99 <= budget]
        sizes.append(max(fits) if fits else min(size for size, _ in measured))
    return Setting(
        min(sizes),
        f"the largest benchmarked batch whose p99 fits {budget:g} ms (two back to back fit the "
        f"{P99_TARGET_MS:g} ms p99 target)",
    )


def _compute_ms(packages: list[Served], batch: int) -> float | None:
    """The slowest package's p50 at the benchmarked batch nearest ``batch`` (ms)."""
    worst = None
    for p in packages:
        entries = []
        for key, entry in (p.manifest.get("benchmark") or {}).items():
            p50 = (entry.get("package") or {}).get("p50_ms")
            if p50 is not None:
                entries.append((abs(int(key.removeprefix("batch_")) - batch), float(p50)))
        if entries:
            p50 = min(entries)[1]
            worst = p50 if worst is None else max(worst, p50)
    return worst


def _memory(packages: list[Served], cache_mb: float) -> Setting:
    files = sum(
        int(p.manifest["model"]["size_bytes"]) + int(p.manifest["baseline"]["size_bytes"])
        for p in packages
    )
    mib = (IDLE_SERVER_MIB + 2 * files / 2**20 + cache_mb) * HEADROOM
    rounded = int(math.ceil(mib / 32) * 32)
    return Setting(
        rounded,
        f"({IDLE_SERVER_MIB} MiB idle server, measured + 2 x {files / 2**20:.{1 if files >= 2**20 else 3}f} MiB of model "
        f"and baseline files + {_num(cache_mb)} MiB cache) x {HEADROOM}, per worker",
    )


def _concurrency(rps: float | None, capacity: Any, compute_ms: float | None,
                 max_wait_ms: float) -> Setting:  # fmt: skip
    if rps is None:
        return Setting(
            DEFAULT_CONCURRENCY,
            "no measured capacity: a conservative default (Knative's own is 100)",
        )
    latency_ms = capacity.p50_ms if capacity is not None and capacity.p50_ms else None
    how = "its measured p50"
    if latency_ms is None:
        latency_ms = max_wait_ms + (compute_ms or 0.0)
        how = f"one batching window ({_num(max_wait_ms)} ms) + one batch's p50"
    value = max(1, math.ceil(rps * latency_ms / 1000))
    return Setting(
        value,
        f"Little's law: {rps:g} req/s at capacity x {latency_ms:.3g} ms ({how}); Knative "
        f"scales out at {KNATIVE_UTILIZATION:.0%} of it",
    )


def _queue_target(compute_ms: float | None, max_wait_ms: float) -> Setting:
    if compute_ms is None:
        return Setting(DEFAULT_QUEUE_TARGET_S, "no benchmark in the packages: 5 ms")
    value = (max_wait_ms + compute_ms) / 1000
    return Setting(
        round(value, 6),
        f"one batching window ({_num(max_wait_ms)} ms) + one batch's p50 ({compute_ms:.3g} ms): "
        "a request that waits longer is queued behind a backlog",
    )


def quantity_seconds(value: float) -> str:
    """A Kubernetes quantity for seconds, in thousandths ('3m' = 0.003), at least 1m."""
    return f"{max(1, math.ceil(value * 1000))}m"


def requirements(plan: Plan, extras: tuple[str, ...] = ("serve",)) -> tuple[list[str], list[str]]:
    """(pip requirements, extra pip options): nimbleml pinned to this version with the
    runtime extras only, and the runtimes the packages were verified with pinned to the
    versions their manifests record. Torch only for a TorchScript package."""
    from .._version import __version__

    wanted = list(extras)
    pins: dict[str, str] = {}
    options: list[str] = []
    for p in plan.packages:
        libs = p.manifest.get("machine", {}).get("libraries", {})
        files = {p.manifest["model"]["path"], p.manifest["baseline"]["path"]}
        kinds = {Path(f).suffix for f in files}
        runtimes = ["onnxruntime"]
        if ".skops" in kinds:
            runtimes += ["scikit-learn", "skops"]
        if kinds & {".ts", ".pt", ".pt2"}:
            runtimes += ["torch"]
        for lib in runtimes:
            version = str(libs.get(lib) or "")
            if "+" in version:  # torch's local build tag: the wheel index says which build
                version, build = version.split("+", 1)
                if build == "cpu":
                    options = ["--extra-index-url", "https://download.pytorch.org/whl/cpu"]
            pins[lib] = f"{lib}=={version}" if version else lib
    spec = f"nimbleml[{','.join(wanted)}]=={__version__}"
    return [spec, *sorted(pins.values())], options
