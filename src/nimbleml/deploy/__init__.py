"""``nimbleml deploy``: the files that run ``nimbleml serve`` (or ``train``) elsewhere, with
the server settings derived from what the packages measured (docs/deploy.md).

    nimbleml.deploy(["model.nimble"], target="k8s", out="deploy/")

One module per target (docker, compose, kube: kserve and k8s, skypilot); what they share
(the settings and their reasons, the serve command, pins) is plan.py, the monitoring files
observability.py, the writing files.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from ..errors import ConfigError


class Target(str, Enum):
    DOCKER = "docker"
    COMPOSE = "compose"
    KSERVE = "kserve"
    K8S = "k8s"
    SKYPILOT = "skypilot"

    @classmethod
    def parse(cls, value: str | Target) -> Target:
        try:
            return cls(value)
        except ValueError:
            raise ConfigError(
                f"unknown target {value!r}: choose one of: {', '.join(t.value for t in cls)}"
            ) from None


@dataclass
class DeployResult:
    """What was written: the folder, its files, and each derived setting with why."""

    target: str
    out: Path
    files: list[Path]
    settings: dict[str, tuple[object, str]]


def deploy(
    packages: Sequence[str | Path] | None = None,
    target: str = "docker",
    out: str | Path = "deploy",
    *,
    force: bool = False,
    image: str | None = None,
    capacity_rps: float | None = None,
    serve_report: str | Path | None = None,
    threads: int | None = None,
    max_batch_size: int | None = None,
    workers: int | None = None,
    cache_mb: float = 64.0,
    min_replicas: int = 1,
    max_replicas: int = 8,
    train: str | Path | None = None,
    bucket: str | None = None,
    accelerators: str | None = None,
) -> DeployResult:
    """Write the deployment files for ``packages`` (paths, or NAME=PATH) to ``out``.

    ``target``: docker, compose, kserve, k8s or skypilot. Settings not given are derived
    from the manifests (docs/deploy.md says how); ``capacity_rps`` or ``serve_report`` (a
    JSON of measured capacity per model, see nimbleml.deploy.capacity) set the autoscalers'
    targets. ``out`` must be empty or new unless ``force``. skypilot with ``train`` (a
    ``nimbleml train`` YAML) writes a training job instead of a service."""
    from . import capacity as cap
    from . import compose, docker, files, kube, skypilot
    from .plan import derive, read_packages

    kind = Target.parse(target)
    out = Path(out)
    _check_ints(threads=threads, max_batch_size=max_batch_size, workers=workers,
                min_replicas=min_replicas, max_replicas=max_replicas)  # fmt: skip
    if max_replicas < max(min_replicas, 1):
        raise ConfigError(f"max_replicas (--max-replicas {max_replicas}) must be >= min_replicas "
                          f"(--min-replicas {min_replicas})")  # fmt: skip
    if cache_mb <= 0:
        raise ConfigError(
            f"cache_mb (--cache-mb) must be > 0 (the Redis tier sits below it), got {cache_mb:g}"
        )
    if train is not None:
        return _train(kind, Path(train), out, force, bucket, accelerators, packages)
    served = read_packages(list(packages or []))
    if capacity_rps is not None and serve_report is not None:
        raise ConfigError("give --capacity-rps or --serve-report, not both")
    measured = (
        cap.given(capacity_rps) if capacity_rps is not None
        else cap.read_report(serve_report, [p.name for p in served]) if serve_report is not None
        else None
    )  # fmt: skip
    if workers is None:
        workers = 2 if kind is Target.COMPOSE else 1
    plan = derive(served, threads=threads, max_batch_size=max_batch_size, capacity=measured,
                  workers=workers, cache_mb=cache_mb)  # fmt: skip
    from .._version import __version__

    plan.image = image or f"{plan.name}:{__version__}"
    files.check_output(out, force)
    written = {
        Target.DOCKER: lambda: docker.files(plan),
        Target.COMPOSE: lambda: compose.files(plan),
        Target.KSERVE: lambda: kube.kserve_files(plan, min_replicas, max_replicas),
        Target.K8S: lambda: kube.k8s_files(plan, min_replicas, max_replicas),
        Target.SKYPILOT: lambda: skypilot.serve_files(plan, min_replicas, max_replicas),
    }[kind]()
    paths = files.write(out, written, plan, copy_packages=True)
    from .plan import KEYS

    return DeployResult(kind.value, out, paths,
                        {k: (plan[k], plan.settings[k].why) for k in KEYS[kind.value]})  # fmt: skip


def _check_ints(**values: int | None) -> None:
    for name, value in values.items():
        if value is not None and (
            not isinstance(value, int) or value < (0 if name == "min_replicas" else 1)
        ):
            least = "an integer >= 0" if name == "min_replicas" else "a positive integer"
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{name} ({flag}) must be {least}, got {value!r}")


def _train(kind: Target, config: Path, out: Path, force: bool, bucket: str | None,
           accelerators: str | None, packages: Sequence[str | Path] | None) -> DeployResult:  # fmt: skip
    from . import files, skypilot
    from .plan import Plan

    if kind is not Target.SKYPILOT:
        raise ConfigError(f"--train runs on --target skypilot only, not {kind.value}")
    if packages:
        raise ConfigError("--train writes a training job: give no packages with it")
    if not config.is_file():
        raise ConfigError(f"--train {config} does not exist: give a nimbleml train YAML")
    from ..train.config import read_config

    read_config(config)  # a config train would refuse is refused here
    bucket = bucket or f"nimbleml-checkpoints-{config.stem.lower().replace('_', '-')}"
    files.check_output(out, force)
    paths = files.write(out, skypilot.train_files(config, bucket, accelerators), Plan([]),
                        copy_packages=False)  # fmt: skip
    return DeployResult(kind.value, out, paths, {"bucket": (bucket, "checkpoints, for resume")})


__all__ = ["DeployResult", "Target", "deploy"]
