"""The deploy verb: files that run the server elsewhere (docs/deploy.md)."""

from __future__ import annotations

from pathlib import Path

import typer

from ._common import _guard, _show, check_writable


def deploy(
    packages: list[str] = typer.Argument(
        None, help=".nimble packages; NAME=PATH to choose the model name"
    ),
    target: str = typer.Option(
        ..., "--target", "-t", help="docker, compose, kserve, k8s or skypilot"
    ),
    output: Path = typer.Option(Path("deploy"), "--output", "-o", help="folder to write"),
    force: bool = typer.Option(
        False, "--force", help="write into a folder that is not empty (overwrites our files)"
    ),
    image: str | None = typer.Option(
        None, help="image name the manifests run [nimbleml-NAME:VERSION]"
    ),
    capacity_rps: float | None = typer.Option(
        None, help="measured server capacity, requests/s at the p99 target (autoscaling)"
    ),
    serve_report: Path | None = typer.Option(
        None, help="JSON with measured capacity per model (benchmarks/serve.py --json)"
    ),
    threads: int | None = typer.Option(None, help="--threads of the server [from the manifest]"),
    max_batch_size: int | None = typer.Option(
        None, help="--max-batch-size of the server [from the benchmark]"
    ),
    workers: int | None = typer.Option(
        None, help="server processes sharing Redis [2 for compose, else 1]"
    ),
    cache_mb: float = typer.Option(64.0, help="memory cache per worker, counted in the memory"),
    min_replicas: int = typer.Option(1, help="kserve, k8s, skypilot: fewest replicas"),
    max_replicas: int = typer.Option(8, help="kserve, k8s, skypilot: most replicas"),
    train: Path | None = typer.Option(
        None, help="skypilot: a train YAML; writes a training job instead of a service"
    ),
    bucket: str | None = typer.Option(
        None, help="skypilot --train: checkpoint bucket [nimbleml-checkpoints-CONFIG]"
    ),
    accelerators: str | None = typer.Option(
        None, help="skypilot --train: accelerators, as SkyPilot writes them (A10G:1)"
    ),
) -> None:
    """Write a Dockerfile, Compose stack, KServe or Kubernetes manifests, or a SkyPilot task
    that serves the packages, tuned from what they measured."""
    from ..deploy import deploy as write

    def go() -> None:
        check_writable(output, folder=True)
        result = write(
            packages, target, output, force=force, image=image, capacity_rps=capacity_rps,
            serve_report=serve_report, threads=threads, max_batch_size=max_batch_size,
            workers=workers, cache_mb=cache_mb, min_replicas=min_replicas,
            max_replicas=max_replicas, train=train, bucket=bucket, accelerators=accelerators,
        )  # fmt: skip
        _show(f"wrote {result.target} deployment to {result.out}/:")
        for path in result.files:
            _show(f"  {path.relative_to(result.out)}")
        for key, (value, why) in result.settings.items():
            _show(f"  {key} = {value}: {why}")

    _guard(go)
