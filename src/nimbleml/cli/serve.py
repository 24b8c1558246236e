"""The serve verb: packages over HTTP."""

from __future__ import annotations

from pathlib import Path

import typer

from ._common import _guard, _show


def serve(
    packages: list[str] = typer.Argument(
        None, help=".nimble packages; NAME=PATH to choose the model name"
    ),
    config: Path | None = typer.Option(
        None, "--config", help="YAML file with these settings (and 'models'); flags win"
    ),
    host: str | None = typer.Option(None, help="address to listen on [127.0.0.1]"),
    port: int | None = typer.Option(None, help="port to listen on [8000]"),
    max_batch_size: int | None = typer.Option(None, help="samples per batch [32]"),
    max_wait_ms: float | None = typer.Option(
        None, help="batching window, anchored on the first queued request [2]"
    ),
    max_queue: int | None = typer.Option(
        None, help="samples that may wait; beyond that 503 + Retry-After [1024]"
    ),
    timeout_ms: float | None = typer.Option(None, help="a request that runs over gets 504 [10000]"),
    cache_mb: float | None = typer.Option(
        None, help="memory cache in front of the batcher, 0 for none [256]"
    ),
    redis: str | None = typer.Option(
        None, help="redis:// URL of a cache tier shared by workers and servers"
    ),
    monitor_store: str | None = typer.Option(
        None, help="monitor store URL (sqlite:///file.db, postgresql://...) [in memory]"
    ),
    api_key: str | None = typer.Option(
        None, help="require 'Authorization: Bearer KEY' (on /metrics and /dashboard too)"
    ),
    public_metrics: bool | None = typer.Option(
        None,
        "--public-metrics/--no-public-metrics",
        help="serve /metrics and /dashboard without the API key [off]",
    ),
    workers: int | None = typer.Option(None, help="worker processes sharing the port [1]"),
    threads: int | None = typer.Option(
        None, help="ONNX Runtime threads per model [the cores per worker, less one]"
    ),
    watch: bool | None = typer.Option(
        None, "--watch/--no-watch", help="reload a model when its package folder changes"
    ),
    repository: str | None = typer.Option(
        None, help="folder the v2 repository load route may load packages from [off]"
    ),
    allow_reload: bool | None = typer.Option(
        None,
        "--allow-reload/--no-allow-reload",
        help="let the load route load a package from any path (prefer --repository) [off]",
    ),
    verify_key: str | None = typer.Option(
        None, help="serve only packages signed by this Ed25519 public key (PEM), also on reload"
    ),
    reload_timeout_s: float | None = typer.Option(
        None, help="with --workers, how long a load waits for every worker to serve it [60]"
    ),
) -> None:
    """Serve packages over HTTP (Open Inference Protocol v2, /v1 predict, /metrics)."""
    from ..serve.launch import check_bind, make_spec, run

    def go() -> None:
        given = {"models": packages or None, "host": host, "port": port,
                 "max_batch_size": max_batch_size, "max_wait_ms": max_wait_ms,
                 "max_queue": max_queue, "timeout_ms": timeout_ms, "cache_mb": cache_mb,
                 "redis": redis, "monitor_store": monitor_store, "api_key": api_key,
                 "public_metrics": public_metrics,
                 "workers": workers, "threads": threads, "watch": watch,
                 "repository": repository, "allow_reload": allow_reload,
                 "verify_key": verify_key, "reload_timeout_s": reload_timeout_s}  # fmt: skip
        spec = make_spec(given, config)
        check_bind(spec["host"], spec["port"])
        _show(
            f"serving {', '.join(spec['models'])} on http://{spec['host']}:{spec['port']}"
            + (f" with {spec['workers']} workers" if spec["workers"] > 1 else "")
        )
        run(spec)

    _guard(go)
