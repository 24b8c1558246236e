"""The FastAPI routes: every path but the two inference routes (hotpath.py answers those).
Health and metadata (Open Inference Protocol), feedback, the repository load route (hot
reload, reload.py), the dashboard and /metrics; and the error handlers that give FastAPI's
own refusals the same ``{"error": ...}`` shape as every other answer."""

from __future__ import annotations

from typing import Any

from .._version import __version__
from . import protocol
from .http import HttpError
from .reload import load
from .server import Server

try:  # FastAPI reads the handlers' annotations: Request must be a module-level name
    from fastapi import Request
except ImportError:  # pragma: no cover - create_app() says how to install it
    Request = Any  # type: ignore[misc,assignment]

COOKIE = "nimbleml_dashboard"  # set by /dashboard when the server has an API key


async def body_of(server: Server, request: Request) -> dict[str, Any]:
    """A JSON object body, after the API key and size checks; 400 for anything else."""
    server.check_key(request.headers.get("authorization"))
    server.check_size(int(request.headers.get("content-length") or 0))
    raw = await request.body()
    server.check_size(len(raw))
    try:
        body = protocol.loads(raw)
    except protocol.ProtocolError as exc:
        raise HttpError(400, str(exc)) from exc
    if not isinstance(body, dict):
        raise HttpError(400, "the body must be a JSON object")
    return body


def add_error_handlers(app: Any) -> None:
    """HttpError, and FastAPI's own refusals (no such route, wrong method, a bad query
    value), as ``{"error": ...}`` naming what was wrong."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(HttpError)
    async def http_error(_request: Request, exc: HttpError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def starlette_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = {404: f"no route {request.method} {request.url.path}; see GET /v2 and "
                        "docs/serve.md for the routes",
                   405: f"{request.url.path} does not take {request.method}"}.get(
            exc.status_code, str(exc.detail))  # fmt: skip
        return JSONResponse({"error": message}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))  # fmt: skip

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}"
            for e in exc.errors()
        )
        return JSONResponse({"error": problems or "invalid request"}, status_code=422)


def add_health_routes(app: Any, server: Server) -> None:
    """Liveness, readiness and metadata of the server and of each model."""
    from fastapi.responses import JSONResponse

    entries = server.entries

    @app.get("/v2/health/live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready() -> JSONResponse:
        ok = all(e.ready for e in entries.values())
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.get("/v2")
    async def server_metadata() -> dict[str, Any]:
        return {"name": "nimbleml", "version": __version__, "extensions": ["binary_tensor_data"]}

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def metadata(name: str, version: str | None = None) -> dict[str, Any]:
        entry = server.entry(name, version)

        def spec(s: Any) -> dict[str, Any]:
            return {"name": s.name, "datatype": protocol.NP_TO_V2.get(s.dtype, "BYTES"),
                    "shape": [d if isinstance(d, int) else -1 for d in s.shape]}  # fmt: skip

        return {
            "name": name, "versions": [entry.version], "platform": f"nimbleml-{entry.model.framework}",
            "inputs": [spec(s) for s in entry.model.inputs], "outputs": [spec(s) for s in entry.model.outputs],
        }  # fmt: skip

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, version: str | None = None) -> JSONResponse:
        ok = server.entry(name, version).ready
        return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 503)


def add_control_routes(app: Any, server: Server) -> None:
    """Ground truth for a prediction (feedback) and the repository load route (hot reload)."""
    config, monitor = server.config, server.monitor

    @app.post("/v2/models/{name}/feedback")
    async def feedback(name: str, request: Request) -> dict[str, Any]:
        body = await body_of(server, request)
        server.entry(name)
        try:
            pid, label = protocol.feedback(body)
        except protocol.ProtocolError as exc:
            raise HttpError(400, str(exc)) from exc
        monitor.record_ground_truth(pid, label)
        return {"accepted": True}

    @app.post("/v2/repository/models/{name}/load")
    async def load_model(name: str, request: Request) -> dict[str, Any]:
        """Hot reload (serve/reload.py); parameters.path names a new package."""
        server.check_key(request.headers.get("authorization"))
        if not (config.repository or config.allow_reload):
            raise HttpError(
                403, "model control is off: start the server with --repository DIR (packages "
                "under DIR may be loaded) or --allow-reload",
            )  # fmt: skip
        length = int(request.headers.get("content-length") or 0)
        body = await body_of(server, request) if length else {}
        return await load(server, name, body)


def add_observer_routes(app: Any, server: Server, history: Any) -> None:
    """The dashboard (its page and its data) and /metrics: the API key, or the dashboard's
    cookie, unless the server made them public (``ServeConfig.public_metrics``)."""
    from fastapi.responses import HTMLResponse, PlainTextResponse, Response

    from ..monitor import metrics_text
    from .dashboard_page import PAGE

    monitor = server.monitor

    @app.get("/dashboard")
    async def dashboard(request: Request) -> HTMLResponse:
        server.check_observer(request.headers.get("authorization"), request.cookies.get(COOKIE))
        page = HTMLResponse(PAGE)
        token = server.dashboard_token()
        if token is not None:
            page.set_cookie(COOKIE, token, path="/dashboard", httponly=True, samesite="strict")
        return page

    @app.get("/dashboard/data")
    async def dashboard_json(request: Request, since: float | None = None) -> Response:
        """The last 15 minutes of series (only rows after ``since`` when given)."""
        server.check_observer(request.headers.get("authorization"), request.cookies.get(COOKIE))
        return Response(protocol.dumps(history.data(since)), media_type="application/json")

    @app.get("/metrics")
    async def metrics(request: Request) -> PlainTextResponse:
        server.check_observer(request.headers.get("authorization"))
        monitor.flush()
        return PlainTextResponse(metrics_text(monitor), media_type="text/plain; version=0.0.4")
