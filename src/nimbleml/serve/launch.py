"""Starting a server: settings from the command line and/or a YAML file, one process or
several worker processes (uvicorn's supervisor; they share the port and the Redis tier).

A YAML file takes the command line's keys (dashes or underscores) and ``models``:

    models: {digits: digits.nimble, iris: iris.nimble}   # or a list of paths / NAME=PATH
    port: 8000
    max-batch-size: 32
    redis: redis://127.0.0.1:6379/0
    workers: 2

A flag given on the command line wins over the file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from ..errors import ConfigError, NimbleError
from ..package import model_map
from .app import create_app
from .config import ServeConfig, serving_threads

SPEC_ENV = "NIMBLEML_SERVE_SPEC"  # how the parent hands the settings to worker processes
SUPERVISOR_ENV = "NIMBLEML_SERVE_SUPERVISOR"  # its pid: a worker dies when it is gone
SERVER_KEYS = {"host": "127.0.0.1", "port": 8000, "workers": 1, "monitor_store": None,
               "watch": False}  # fmt: skip
CONFIG_KEYS = {f.name: f.default for f in dataclasses.fields(ServeConfig)}
log = logging.getLogger("nimbleml.serve")


def read_config(path: str | Path) -> dict[str, Any]:
    """The settings in a YAML file, keys normalised to underscores; unknown keys refused."""
    from .._yaml import read_mapping

    data = read_mapping(path, "of settings")
    out = {str(k).replace("-", "_"): v for k, v in data.items()}
    known = {"models", *SERVER_KEYS, *CONFIG_KEYS}
    unknown = sorted(set(out) - known)
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown setting(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(known))}"
        )
    return out


_KINDS: dict[str, tuple[type, ...]] = {
    "int": (int,), "float": (int, float), "str": (str,), "bool": (bool,),
}  # fmt: skip
_WORDS = {"int": "an integer", "float": "a number", "str": "text", "bool": "true or false"}
SERVER_TYPES = {"host": "str", "port": "int", "workers": "int", "monitor_store": "str",
                "watch": "bool"}  # fmt: skip
CONFIG_TYPES = {f.name: str(f.type).split("|")[0].strip() for f in dataclasses.fields(ServeConfig)}


def check_types(values: dict[str, Any], where: str) -> None:
    """Each setting of the right type, named with where it came from: a bad value says
    'max_batch_size must be an integer, got "lots"', not a TypeError from deep inside."""
    for key, value in values.items():
        kind = SERVER_TYPES.get(key) or CONFIG_TYPES.get(key)
        if value is None or kind not in _KINDS:
            continue
        ok = isinstance(value, _KINDS[kind]) and (kind == "bool" or not isinstance(value, bool))
        if not ok:
            raise ConfigError(f"{where}: {key} must be {_WORDS[kind]}, got {value!r}")


def make_spec(cli: dict[str, Any], config_file: str | Path | None = None) -> dict[str, Any]:
    """Everything a server process needs, as plain JSON-able values: command-line values
    that were given (not None) over the file's, over the defaults; checked here."""
    from_file = read_config(config_file) if config_file else {}
    check_types(from_file, f"config file {config_file}")
    spec: dict[str, Any] = {**SERVER_KEYS, **CONFIG_KEYS}
    for key in spec:
        if cli.get(key) is not None:
            spec[key] = cli[key]
        elif key in from_file:
            spec[key] = from_file[key]
    models = model_map(cli.get("models") or from_file.get("models"))
    if not models:
        raise ConfigError("no packages to serve: give PACKAGE arguments or 'models' in --config")
    from ..errors import PackageError
    from ..package import read_manifest

    if spec["verify_key"] is not None:  # a bad key is named once, not once per package
        from ..signature import public_key

        public_key(spec["verify_key"])
    for name, path in models.items():
        if not (Path(path) / "manifest.json").is_file():
            raise ConfigError(f"model '{name}': {path} is not a .nimble package (no manifest.json)")
        try:  # a damaged (or, with --verify-key, unsigned) package is refused before "serving"
            read_manifest(Path(path), verify=spec["verify_key"])
        except PackageError as exc:
            raise ConfigError(f"model '{name}': {exc}") from None
    spec["models"] = models
    port = spec["port"]
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise ConfigError(f"port must be an integer from 1 to 65535, got {port!r}")
    if not isinstance(spec["workers"], int) or spec["workers"] < 1:
        raise ConfigError(f"workers must be a positive integer, got {spec['workers']!r}")
    if spec["workers"] > 1 and spec["watch"]:
        raise ConfigError("--watch reloads one process; use it with --workers 1")
    if spec["threads"] is None and spec["workers"] > 1:  # the cores are shared by the workers
        spec["threads"] = serving_threads(None, workers=spec["workers"])
    server_config(spec)  # fails here, in the parent, rather than in every worker
    return spec


def check_bind(host: str, port: int) -> None:
    """ConfigError when ``host:port`` cannot be listened on (in use, not an address of this
    machine, no permission), found before the server says it is serving."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen on {host}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            probe.bind(address)
        except OSError as exc:
            hint = "; choose another --port" if exc.errno == 98 else ""
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}{hint}") from None


def server_config(spec: dict[str, Any]) -> ServeConfig:
    try:
        return ServeConfig(**{k: spec[k] for k in CONFIG_KEYS})
    except TypeError as exc:
        raise ConfigError(f"bad server setting: {exc}") from exc


def build_app(spec: dict[str, Any]) -> Any:
    from ..monitor import ModelMonitor

    store = spec.get("monitor_store") or "sqlite:///:memory:"
    monitor = ModelMonitor(store=store)
    try:
        app = create_app(spec["models"], server_config(spec), monitor, watch=bool(spec["watch"]),
                         run_dir=spec.get("run_dir"), close_monitor=True)  # fmt: skip
    except BaseException:
        monitor.close()
        raise
    tune_gc()
    return app


def tune_gc() -> None:
    """In a server process, once its models are open: what exists now (modules, sessions,
    the app) is moved out of the collector's sight, and the youngest generation is
    collected every 5,000 allocations rather than 700. Under overload each collection
    walks hundreds of open connections and queued requests. On the MLP overload benchmark
    (3,200 req/s, one inference thread) the 503s' p99 was 41-61 ms with the default
    collector, 5-8 ms frozen, 3-5 ms frozen with this threshold."""
    import gc

    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(5000, gen1, gen2)


def die_with_parent() -> None:
    """Ask Linux to send this process SIGTERM when its parent dies (prctl PR_SET_PDEATHSIG):
    a worker whose supervisor was killed with -9 kept answering on the port for hours. Then
    check the parent is still there, in case it died before the request took effect."""
    import ctypes
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    # the supervisor's pid as it was when it spawned us: read here, os.getppid() would
    # already be init's if the supervisor died while this worker was still importing
    parent = int(os.environ.get(SUPERVISOR_ENV) or os.getppid())
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def worker_app() -> Any:
    """uvicorn's factory in each worker process: the settings come from the parent, the
    packages as the loads since the start left them (a worker restarted after a crash serves
    what the others serve)."""
    die_with_parent()
    spec = json.loads(os.environ[SPEC_ENV])
    from .fleet import Member

    member = Member(spec["run_dir"])
    member.register()  # before reading the state: a load published from now on waits for us
    models = member.models(spec["models"])
    if models == spec["models"]:
        return build_app(spec)
    try:
        return build_app({**spec, "models": models})
    except NimbleError as exc:  # the loaded package is gone or broken now: start as started
        log.warning("serving the packages the server started with: %s", exc)
        return build_app(spec)  # the first state check names what differs, and why


def run(spec: dict[str, Any]) -> None:
    import uvicorn

    # no access log, no proxy-header rewriting, no server header: each costs every request
    common = {"host": spec["host"], "port": spec["port"], "log_level": "warning",
              "access_log": False, "proxy_headers": False, "server_header": False}  # fmt: skip
    if spec["workers"] == 1:
        uvicorn.run(build_app(spec), **common)
        return
    from .fleet import make_run_dir

    run_dir = make_run_dir(spec["workers"])  # the workers' shared state (fleet.py), ours to remove
    try:
        os.environ[SPEC_ENV] = json.dumps({**spec, "run_dir": str(run_dir)})
        os.environ[SUPERVISOR_ENV] = str(os.getpid())
        uvicorn.run("nimbleml.serve.launch:worker_app", factory=True, workers=spec["workers"],
                    **common)  # fmt: skip
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
        store = spec.get("monitor_store") or ""
        if store.startswith("sqlite:///"):  # every worker closed it; in case two raced
            from ..monitor.store import checkpoint_sqlite

            checkpoint_sqlite(store)
