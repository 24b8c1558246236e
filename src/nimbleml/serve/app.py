"""The HTTP app: Open Inference Protocol (KServe v2, JSON and binary tensors), a simple v1
route, feedback, Prometheus metrics, hot reload, a dashboard; a tiered cache with
single-flight and a dynamic batcher in front of each model.

``create_app`` wires the parts: config.py (``ServeConfig``), server.py (the models served,
auth, start and stop), hotpath.py (the two inference routes, answered by a small ASGI
handler in front of FastAPI: FastAPI's routing and middleware cost about 0.2 ms a request on
this machine, the handler about 0.05 ms), routes.py (everything else, through FastAPI),
reload.py (hot reload) and fleet.py (the run folder shared by several workers).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from .._deps import require
from . import routes
from .config import ServeConfig, serving_threads
from .hotpath import HotPath
from .http import HttpError
from .reload import reloading
from .server import ModelEntry, Server, new_id

# the names this module held before it was split stay importable from it
__all__ = [
    "HotPath",
    "HttpError",
    "ModelEntry",
    "ServeConfig",
    "Server",
    "create_app",
    "new_id",
    "serving_threads",
]


def create_app(
    models: dict[str, Any],
    config: ServeConfig | None = None,
    monitor: Any = None,
    watch: bool = False,
    run_dir: str | None = None,
    close_monitor: bool = False,
) -> Any:
    """An ASGI app serving ``models`` (name -> Package or package path). ``watch``: reload
    a model when its package folder changes (warmed, swapped; a broken one is refused).
    ``run_dir``: the run folder this worker shares with the server's other workers (loads
    reach them all, serve/fleet.py). ``close_monitor``: close ``monitor`` when the app stops."""
    require("fastapi", "nimbleml serve")
    require("orjson", "nimbleml serve")
    from fastapi import FastAPI

    from ..monitor import ModelMonitor
    from .dashboard import History

    config = config or ServeConfig()
    monitor = monitor or ModelMonitor(store="sqlite:///:memory:", resources_interval_s=None)
    server = Server(models, config, monitor)
    history = History(server)  # the dashboard's last 15 minutes, a row a second

    if run_dir is not None:
        from .fleet import Member

        server.fleet = Member(run_dir)

    lifespan = _lifespan(server, history, watch, close_monitor)
    app = FastAPI(title="nimbleml serve", lifespan=lifespan)
    app.state.server, app.state.entries, app.state.monitor = server, server.entries, monitor
    app.state.config, app.state.history = config, history
    routes.add_error_handlers(app)
    routes.add_health_routes(app, server)
    routes.add_control_routes(app, server)
    routes.add_observer_routes(app, server, history)
    return HotPath(app, server)


def _lifespan(
    server: Server, history: Any, watch: bool, close_monitor: bool
) -> Callable[[Any], contextlib.AbstractAsyncContextManager[None]]:
    """Start every model (ready after one real inference), reload while serving, then
    drain: every request accepted is answered before the app stops."""
    entries, monitor = server.entries, server.monitor

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        for entry in list(entries.values()):
            await server.start(entry)
        async with reloading(server, watch):
            history.start()
            yield
            await history.stop()
        for entry in list(entries.values()):
            entry.ready = False
            await entry.batcher.drain()
        if close_monitor:  # its SQLite file checkpointed: no -wal / -shm left behind
            await asyncio.get_running_loop().run_in_executor(None, monitor.close)

    return lifespan
