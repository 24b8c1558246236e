"""The HTTP app: Open Inference Protocol (KServe v2, JSON and binary tensors), a simple v1
route, feedback, Prometheus metrics, hot reload, a dashboard; a tiered cache with
single-flight and a dynamic batcher in front of each model.

The two inference routes are served by a small ASGI handler in front of FastAPI
(``HotPath``): FastAPI's routing and middleware cost about 0.2 ms a request on this
machine, the handler about 0.05 ms. Everything else goes through FastAPI.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._deps import require
from ..errors import ConfigError, DataError, NimbleError, QueueFull
from ..inputs import Feeds
from ..models.base import Model
from ..models.onnx_model import OnnxModel
from ..models.openvino_model import OpenVinoModel
from ..runtime.cache import TieredCache, make_cache
from ..runtime.codec import KeyMaker
from ..verify import verified_on_missing
from . import protocol
from .batcher import DynamicBatcher

log = logging.getLogger("nimbleml.serve")

try:  # FastAPI reads the handlers' annotations: Request must be a module-level name
    from fastapi import Request
except ImportError:  # pragma: no cover - create_app() says how to install it
    Request = Any  # type: ignore[misc,assignment]


@dataclass
class ServeConfig:
    max_batch_size: int = 32
    max_wait_ms: float = 2.0
    max_queue: int = 1024
    timeout_ms: float = 10_000.0
    cache_mb: float = 256.0
    api_key: str | None = None
    max_body_bytes: int = 16 * 2**20
    redis: str | None = None  # a shared cache tier below memory (several workers share it)
    threads: int | None = None  # ONNX Runtime threads per model; None: leave the loop a core
    # model control (the v2 repository load route), off unless one of these is given, as
    # Triton's explicit mode: packages under ``repository`` only, or any path
    repository: str | None = None
    allow_reload: bool = False
    # an Ed25519 public key (PEM file): every package, also on reload, must be signed by it
    verify_key: str | None = None
    # /metrics, /dashboard and /dashboard/data without the API key (a Prometheus scraper
    # inside the cluster); by default they need it, as inference does, when one is set
    public_metrics: bool = False
    # with several workers, how long the load route waits for all of them to serve a load
    reload_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ConfigError(f"threads must be a positive integer, got {self.threads!r}")
        if self.max_batch_size < 1 or self.max_queue < 1:
            raise ConfigError("max_batch_size and max_queue must be at least 1 sample")
        if self.max_wait_ms < 0 or self.timeout_ms <= 0 or self.cache_mb < 0:
            raise ConfigError("max_wait_ms >= 0, timeout_ms > 0 and cache_mb >= 0 are required")
        if self.reload_timeout_s <= 0:
            raise ConfigError(f"reload_timeout_s must be > 0, got {self.reload_timeout_s!r}")
        if self.redis is not None and self.cache_mb <= 0:
            raise ConfigError("a Redis tier sits below the memory cache: give cache_mb > 0")
        if self.repository is not None and not Path(self.repository).is_dir():
            raise ConfigError(f"repository {self.repository} is not a folder")
        if self.verify_key is not None:  # a bad key is refused at start, not at first load
            from ..signature import public_key

            public_key(self.verify_key)


class _PredictionIds:
    """Prediction ids unique across processes and restarts without a system call each:
    a random 48-bit prefix per process and a counter (uuid4 reads os.urandom for every
    id, about 8 µs here)."""

    def __init__(self) -> None:
        self.renew()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self.renew)

    def renew(self) -> None:
        self.prefix, self.count = secrets.token_hex(6), itertools.count()

    def __call__(self) -> str:
        return f"{self.prefix}-{next(self.count):x}"


new_id = _PredictionIds()


def serving_threads(threads: int | None, tuned: int | None = None, workers: int = 1) -> int:
    """ONNX Runtime intra-op threads for a served model: ``threads`` when given; else the
    cores this process may use, shared by ``workers`` processes, less one for the event
    loop (which parses, admits and answers every request), at most what the package was
    tuned for. On 2 cores that is 1: a second pool thread fights the loop for its core,
    and rejections under overload wait behind it."""
    if threads:
        return threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    auto = max(1, (cores or 1) // workers - 1)
    return min(auto, tuned) if tuned else auto


COOKIE = "nimbleml_dashboard"  # set by /dashboard when the server has an API key


class HttpError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def _expire(future: asyncio.Future[Any], timeout_s: float) -> None:
    if not future.done():
        future.set_exception(
            HttpError(504, f"inference ran over the {timeout_s * 1e3:.0f} ms timeout")
        )


@dataclass
class ModelEntry:
    name: str
    model: Model
    version: str
    content_hash: str
    batcher: DynamicBatcher
    cache: TieredCache | None
    keys: KeyMaker
    missing_ok: bool = False  # verified on missing numbers: NaN / null inputs are accepted
    ready: bool = False
    inflight: dict[bytes, asyncio.Future[list[np.ndarray]]] = field(default_factory=dict)

    async def infer(self, feeds: Feeds, timeout_s: float) -> list[np.ndarray]:
        """Cache, then single-flight, then the batcher; 504 when it runs over."""
        cache = self.cache
        if cache is None:
            return await self._batched(feeds, timeout_s)
        key = self.keys(feeds)
        hit = cache.tiers[0].get(key)
        if hit is not None:
            return hit
        waiting = self.inflight.get(key)
        if waiting is not None:
            return await asyncio.shield(waiting)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[np.ndarray]] = loop.create_future()
        self.inflight[key] = future
        try:
            out = None
            if len(cache.tiers) > 1:  # disk / Redis: blocking I/O, off the event loop
                out = await loop.run_in_executor(None, cache.get, key)
            if out is None:
                out = await self._batched(feeds, timeout_s)
                cache.tiers[0].put(key, out)
                if len(cache.tiers) > 1:
                    loop.run_in_executor(None, cache.put, key, out, 1)
        except BaseException as exc:
            self._settle(key, error=exc)
            raise
        self._settle(key, result=out)
        return out

    async def _batched(self, feeds: Feeds, timeout_s: float) -> list[np.ndarray]:
        # queued synchronously: no reload or drain can slip in between lookup and queue
        future = self.batcher.enqueue(feeds)
        timer = asyncio.get_running_loop().call_later(timeout_s, _expire, future, timeout_s)
        try:
            return await future
        finally:
            timer.cancel()

    def _settle(self, key: bytes, result: Any = None, error: BaseException | None = None) -> None:
        future = self.inflight.pop(key, None)
        if future is None or future.done():
            return
        if error is not None:
            future.set_exception(error)
            future.exception()  # mark retrieved: followers that gave up must not warn
        else:
            future.set_result(result)


class Server:
    """The models being served and what answers for them; the HTTP layers call into it."""

    def __init__(self, models: dict[str, Any], config: ServeConfig, monitor: Any) -> None:
        self.config, self.monitor = config, monitor
        self.sources: dict[str, Any] = dict(models)
        self.entries: dict[str, ModelEntry] = {n: self.build(n, o) for n, o in models.items()}
        self.codes: collections.Counter[int] = collections.Counter()  # responses by status
        self._draining: set[asyncio.Task[None]] = set()
        self.fleet: Any = None  # fleet.Member: the run folder shared with the other workers
        from .metrics import server_collector

        monitor.add_collector("server", server_collector(self))

    def build(self, name: str, obj: Any) -> ModelEntry:
        """Open (and checksum) a package; raises NimbleError for a broken one."""
        from ..package import Package, load

        config = self.config
        if isinstance(obj, Package) and config.verify_key:  # opened unverified: open it again
            obj = obj.directory
        pkg = obj if isinstance(obj, Package) else load(obj, verify=config.verify_key)
        entry_file = (
            pkg.manifest["model"]["path"]
            if pkg.model is not pkg.baseline
            else pkg.manifest["baseline"]["path"]
        )
        digest = next(f["sha256"] for f in pkg.manifest["files"] if f["path"] == entry_file)
        model = pkg.model
        if isinstance(model, OnnxModel | OpenVinoModel):
            # idle workers must not spin on (ONNX Runtime) or be pinned to (OpenVINO) the
            # event loop's core
            model = model.with_threads(serving_threads(config.threads, model.threads), spin=False)
        cache = make_cache(config.cache_mb, redis_url=config.redis) if config.cache_mb > 0 else None
        return ModelEntry(
            name=name, model=model, version=pkg.manifest.get("created_at", "1"), content_hash=digest,
            batcher=DynamicBatcher(model.run, config.max_batch_size, config.max_wait_ms, config.max_queue),
            cache=cache, keys=KeyMaker(digest), missing_ok=verified_on_missing(pkg.manifest),
        )  # fmt: skip

    @staticmethod
    async def start(entry: ModelEntry) -> None:
        """Start its batcher and run one real inference: ready only after that."""
        from ..package import _placeholder

        entry.batcher.start()
        await entry.batcher.submit(_placeholder(entry.model.inputs))
        entry.ready = True

    def entry(self, name: str, version: str | None = None) -> ModelEntry:
        entry = self.entries.get(name)
        if entry is None:
            raise HttpError(
                404, f"unknown model '{name}'; this server has: {', '.join(sorted(self.entries))}"
            )
        if version is not None and version != entry.version:
            raise HttpError(
                404, f"model '{name}' has no version '{version}'; it serves version "
                f"'{entry.version}' (GET /v2/models/{name} lists it)",
            )  # fmt: skip
        return entry

    async def run(
        self, entry: ModelEntry, raw: dict[str, np.ndarray], pid: str
    ) -> list[np.ndarray]:
        try:
            feeds = entry.model.feeds(raw)
        except DataError as exc:
            raise HttpError(422, str(exc)) from exc
        first = next(iter(feeds.values()))
        rows = int(first.shape[0]) if first.ndim else 1
        if rows == 0:
            raise HttpError(422, "the request holds no samples (a batch of 0 rows)")
        if rows > self.config.max_queue:  # no retry could ever fit it: not a 503
            raise HttpError(
                413,
                f"the request holds {rows} samples; this server queues at most "
                f"{self.config.max_queue} (--max-queue): send at most that many per request",
            )
        monitor = self.monitor
        started = time.perf_counter()
        try:
            out = await entry.infer(feeds, self.config.timeout_ms / 1e3)
        except QueueFull as exc:
            raise HttpError(503, str(exc), {"Retry-After": "1"}) from exc
        except HttpError:
            monitor.record((time.perf_counter() - started) * 1e3, pid, entry.name, error=True)
            raise
        except NimbleError as exc:
            monitor.record((time.perf_counter() - started) * 1e3, pid, entry.name, error=True)
            raise HttpError(500, str(exc)) from exc
        first = out[0]
        monitor.record(
            (time.perf_counter() - started) * 1e3, pid, entry.name, first[0] if len(first) == 1 else None
        )  # fmt: skip
        return out

    async def infer_v2(
        self, name: str, raw: bytes, header_length: str | None, version: str | None = None
    ) -> tuple[dict[str, Any], list[bytes], str]:
        """(response JSON, binary chunks, prediction id) for a v2 infer request."""
        first = self.entry(name, version)  # an unknown model is a 404 whatever the body
        body, tail = protocol.split_body(raw, header_length)
        feeds = protocol.input_tensors(body, tail, first.missing_ok)
        entry = self.entry(name)  # again, last: a reload cannot slip in before the queue
        protocol.check_datatypes(feeds, entry.model.inputs, name)
        protocol.requested_outputs(body, entry.model.output_names)  # before the work
        pid = protocol.request_id(body) or new_id()
        out = await self.run(entry, feeds, pid)
        outputs, chunks = protocol.output_tensors(entry.model.output_names, out, body)
        response = {"model_name": name, "model_version": entry.version, "id": pid,
                    "outputs": outputs}  # fmt: skip
        return response, chunks, pid

    async def predict_v1(self, name: str, raw: bytes) -> tuple[dict[str, Any], str]:
        self.entry(name)
        body = protocol.loads(raw)
        if not isinstance(body, dict):
            raise protocol.ProtocolError("the body must be a JSON object")
        instances = body.get("instances")
        if not isinstance(instances, list) or not instances:
            raise HttpError(400, "'instances' must be a non-empty list")
        entry = self.entry(name)
        specs = entry.model.inputs
        names = [s.name for s in specs]
        by_name = all(isinstance(inst, dict) for inst in instances)
        if by_name:  # the dict form, {"input": value} per instance, for any number of inputs
            for i, inst in enumerate(instances):
                if set(inst) != set(names):
                    raise HttpError(
                        400, f"instances[{i}] has keys {sorted(inst)}; the model's inputs are "
                        f"{names}",
                    )  # fmt: skip
        elif len(specs) > 1:
            raise HttpError(
                400, f"the model takes several inputs {names}: send each instance as an "
                "object with those keys",
            )  # fmt: skip
        try:
            fix = protocol.nulls_to_nan if entry.missing_ok else (lambda v: v)
            if by_name:
                feeds = {
                    s.name: _column([inst[s.name] for inst in instances], s.dtype, fix)
                    for s in specs
                }
            else:
                feeds = {specs[0].name: _column(instances, specs[0].dtype, fix)}
        except (TypeError, ValueError, OverflowError, RecursionError) as exc:
            raise HttpError(
                400, f"'instances' do not match the model's inputs {names}: {str(exc)[:200]}"
            ) from exc
        for k, v in feeds.items():
            if v.dtype.kind != "f":
                continue
            if np.isinf(v).any() if entry.missing_ok else not np.isfinite(v).all():
                raise HttpError(400, f"'instances' hold NaN or infinite values for input '{k}'")
        pid = protocol.request_id(body) or new_id()
        out = await self.run(entry, feeds, pid)
        first = np.asarray(out[0])
        if first.dtype.kind in "OUS":  # string labels: orjson serialises numeric arrays only
            first = first.astype(str).tolist()
        return {"predictions": first, "id": pid}, pid

    def check_room(self, name: str) -> None:
        entry = self.entries.get(name)
        if entry is not None and entry.batcher.queued_samples >= self.config.max_queue:
            entry.batcher.stats.shed += 1
            raise HttpError(
                503,
                f"queue full ({entry.batcher.queued_samples} of {self.config.max_queue} "
                "samples waiting)",
                {"Retry-After": "1"},
            )

    def check_key(self, authorization: str | None, browser: bool = False) -> None:
        """401 unless the API key (when one is set) comes as 'Bearer KEY', or, for the pages a
        browser opens (``browser``), as the password of HTTP Basic auth, which makes the
        browser ask for it."""
        key = self.config.api_key
        if key is None or authorization == f"Bearer {key}":
            return
        if browser and authorization and authorization.startswith("Basic "):
            import base64
            import binascii

            with contextlib.suppress(binascii.Error, UnicodeDecodeError):
                _, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
                if secrets.compare_digest(password, key):
                    return
        headers = {"WWW-Authenticate": 'Basic realm="nimbleml"'} if browser else None
        raise HttpError(
            401, "missing or wrong API key: send 'Authorization: Bearer <key>'", headers
        )

    def check_observer(self, authorization: str | None, cookie: str | None = None) -> None:
        """The key for /metrics and the dashboard, unless the server made them public. The
        dashboard's own polling carries the cookie its page was served with (browsers do
        not re-send credentials typed into a URL for a page's fetches)."""
        if self.config.public_metrics:
            return
        token = self.dashboard_token()
        if token is not None and cookie is not None and secrets.compare_digest(cookie, token):
            return
        self.check_key(authorization, browser=True)

    def dashboard_token(self) -> str | None:
        """A cookie value derived from the API key (not the key itself), or None without one."""
        import hashlib
        import hmac

        key = self.config.api_key
        if key is None:
            return None
        return hmac.new(key.encode(), b"nimbleml dashboard", hashlib.sha256).hexdigest()

    def check_size(self, declared: int) -> None:
        if declared > self.config.max_body_bytes:
            raise HttpError(
                413,
                f"request body of {declared} bytes is over the "
                f"{self.config.max_body_bytes}-byte limit",
            )


Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]


class HotPath:
    """ASGI: POST /v2/models/{name}/infer and /v1/models/{name}:predict answered here,
    everything else by FastAPI; responses counted by status code."""

    def __init__(self, app: Any, server: Server) -> None:
        self.app, self.server = app, server
        self.state = app.state

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path.startswith(("/v2/models/", "/v1/models/")):
                route = _inference_route(path)
                if route is not None and scope["method"] != "POST":
                    return await self._refuse(405, f"{path} takes POST", send, {"allow": "POST"})
                if route is not None:
                    name, version, v2 = route
                    return await self._answer(name, v2, scope, receive, send, version)
            codes = self.server.codes

            async def counted(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    codes[message["status"]] += 1
                await send(message)

            return await self.app(scope, receive, counted)
        return await self.app(scope, receive, send)

    async def _refuse(
        self, status: int, message: str, send: Send, extra: dict[str, str] | None = None
    ) -> None:
        body = protocol.dumps({"error": message})
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(body)).encode())]  # fmt: skip
        headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
        self.server.codes[status] += 1
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _answer(
        self,
        name: str,
        v2: bool,
        scope: dict[str, Any],
        receive: Receive,
        send: Send,
        version: str | None = None,
    ) -> None:
        server = self.server
        headers: list[tuple[bytes, bytes]] = [(b"content-type", b"application/json")]
        auth = length = header_length = None
        for key, value in scope["headers"]:
            if key == b"content-length":
                length = value
            elif key == b"authorization":
                auth = value.decode("latin-1")
            elif key == protocol.HEADER_LENGTH:
                header_length = value.decode("latin-1")
        try:
            server.check_key(auth)
            if length is not None:
                server.check_size(int(length))
            server.check_room(name)  # a full queue answers before the body is parsed
            raw = await _read_body(receive, server.config.max_body_bytes)
            chunks: list[bytes] = []
            if v2:
                response, chunks, pid = await server.infer_v2(name, raw, header_length, version)
            else:
                response, pid = await server.predict_v1(name, raw)
            body = protocol.dumps(response)
            headers.append((b"x-prediction-id", pid.encode()))
            if chunks:
                headers[0] = (b"content-type", b"application/octet-stream")
                headers.append((protocol.HEADER_LENGTH, str(len(body)).encode()))
                body = b"".join([body, *chunks])
            status = 200
        except _Disconnected:
            return
        except HttpError as exc:
            status, body = exc.status, protocol.dumps({"error": exc.message})
            headers.extend((k.lower().encode(), v.encode()) for k, v in exc.headers.items())
        except DataError as exc:  # ProtocolError included
            status, body = 400, protocol.dumps({"error": str(exc)})
        except Exception as exc:  # a bug or a broken model: say so, keep serving
            log.exception("request to '%s' failed", name)
            status, body = 500, protocol.dumps({"error": f"{type(exc).__name__}: {exc}"})
        server.codes[status] += 1
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _inference_route(path: str) -> tuple[str, str | None, bool] | None:
    """(model, version, v2) of an inference path: /v2/models/M/infer,
    /v2/models/M/versions/V/infer or /v1/models/M:predict; None for any other path."""
    parts = path.split("/")
    if parts[1] == "v2" and parts[-1] == "infer":
        if len(parts) == 5:
            return parts[3], None, True
        if len(parts) == 7 and parts[4] == "versions":
            return parts[3], parts[5], True
    if parts[1] == "v1" and len(parts) == 4 and parts[3].endswith(":predict"):
        return parts[3][: -len(":predict")], None, False
    return None


class _Disconnected(Exception):
    """The client went away before sending its whole body."""


async def _read_body(receive: Receive, limit: int) -> bytes:
    message = await receive()
    if message["type"] == "http.disconnect":
        raise _Disconnected
    body: bytes = message.get("body", b"")
    if not message.get("more_body"):
        if len(body) > limit:
            raise HttpError(413, f"request body is over the {limit}-byte limit")
        return body
    parts, size = [body], len(body)
    while message.get("more_body"):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise HttpError(413, f"request body is over the {limit}-byte limit")
        parts.append(chunk)
    return b"".join(parts)


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
    from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response

    from ..monitor import ModelMonitor, metrics_text
    from .dashboard import History

    config = config or ServeConfig()
    monitor = monitor or ModelMonitor(store="sqlite:///:memory:", resources_interval_s=None)
    server = Server(models, config, monitor)
    entries = server.entries
    history = History(server)  # the dashboard's last 15 minutes, a row a second

    if run_dir is not None:
        from .fleet import Member

        server.fleet = Member(run_dir)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        from .reload import reloading

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

    app = FastAPI(title="nimbleml serve", lifespan=lifespan)
    app.state.server, app.state.entries, app.state.monitor = server, entries, monitor
    app.state.config, app.state.history = config, history

    @app.exception_handler(HttpError)
    async def http_error(_request: Request, exc: HttpError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)

    # FastAPI's own refusals (no such route, wrong method, a bad query value) in the same
    # {"error": ...} shape as every other answer, naming what was wrong
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

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

    async def body_of(request: Request) -> dict[str, Any]:
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

    @app.get("/v2/health/live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready() -> JSONResponse:
        ok = all(e.ready for e in entries.values())
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.get("/v2")
    async def server_metadata() -> dict[str, Any]:
        from .._version import __version__

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

    @app.post("/v2/models/{name}/feedback")
    async def feedback(name: str, request: Request) -> dict[str, Any]:
        body = await body_of(request)
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
        body = await body_of(request) if int(request.headers.get("content-length") or 0) else {}
        from .reload import load

        return await load(server, name, body)

    @app.get("/dashboard")
    async def dashboard(request: Request) -> HTMLResponse:
        server.check_observer(request.headers.get("authorization"), request.cookies.get(COOKIE))
        from .dashboard_page import PAGE

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

    return HotPath(app, server)


def _column(values: list[Any], dtype: str, fix: Any) -> np.ndarray:
    """v1 instances of one input as an array; nulls become NaN in number columns of models
    verified on missing values (``fix``)."""
    return np.asarray(fix(values) if dtype.startswith("float") else values, dtype=dtype)
