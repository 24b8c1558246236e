"""The HTTP app: Open Inference Protocol (KServe v2) JSON, a simple v1 route, feedback,
Prometheus metrics; a tiered cache and a dynamic batcher in front of each model."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._deps import require
from ..errors import DataError, NimbleError
from ..inputs import Feeds
from ..models.base import Model
from ..runtime.cache import TieredCache, make_cache
from ..runtime.codec import KeyMaker
from .batcher import DynamicBatcher, QueueFull

try:  # FastAPI reads the handlers' annotations: Request must be a module-level name
    from fastapi import Request
except ImportError:  # pragma: no cover - create_app() says how to install it
    Request = Any  # type: ignore[misc,assignment]

V2_TYPES = {
    "BOOL": "bool", "UINT8": "uint8", "INT8": "int8", "INT16": "int16", "INT32": "int32",
    "INT64": "int64", "FP16": "float16", "FP32": "float32", "FP64": "float64", "BYTES": "object",
}  # fmt: skip
NP_TO_V2 = {v: k for k, v in V2_TYPES.items()}


@dataclass
class ServeConfig:
    max_batch_size: int = 32
    max_wait_ms: float = 2.0
    max_queue: int = 1024
    timeout_ms: float = 10_000.0
    cache_mb: float = 256.0
    api_key: str | None = None
    max_body_bytes: int = 16 * 2**20

    def __post_init__(self) -> None:
        from ..errors import ConfigError

        if self.max_batch_size < 1 or self.max_queue < 1:
            raise ConfigError("max_batch_size and max_queue must be at least 1 sample")
        if self.max_wait_ms < 0 or self.timeout_ms <= 0 or self.cache_mb < 0:
            raise ConfigError("max_wait_ms >= 0, timeout_ms > 0 and cache_mb >= 0 are required")


class HttpError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


@dataclass
class ModelEntry:
    name: str
    model: Model
    version: str
    content_hash: str
    batcher: DynamicBatcher
    cache: TieredCache | None
    keys: KeyMaker
    ready: bool = False
    inflight: dict[bytes, asyncio.Future[list[np.ndarray]]] = field(default_factory=dict)

    async def infer(self, feeds: Feeds, timeout_s: float) -> list[np.ndarray]:
        """Cache, then single-flight, then the batcher; 504 when it runs over."""
        key = self.keys(feeds) if self.cache is not None else None
        if key is not None and self.cache is not None:
            hit = self.cache.tiers[0].get(key)
            if hit is not None:
                return hit
            waiting = self.inflight.get(key)
            if waiting is not None:
                return await asyncio.shield(waiting)
            future: asyncio.Future[list[np.ndarray]] = asyncio.get_running_loop().create_future()
            self.inflight[key] = future
        try:
            # queued synchronously: no reload or drain can slip in between lookup and queue
            out = await asyncio.wait_for(self.batcher.enqueue(feeds), timeout_s)
        except TimeoutError:
            err = HttpError(504, f"inference ran over the {timeout_s * 1e3:.0f} ms timeout")
            if key is not None:
                self._settle(key, error=err)
            raise err from None
        except BaseException as exc:
            if key is not None:
                self._settle(key, error=exc)
            raise
        if key is not None and self.cache is not None:
            self.cache.put(key, out)
            self._settle(key, result=out)
        return out

    def _settle(self, key: bytes, result: Any = None, error: BaseException | None = None) -> None:
        future = self.inflight.pop(key, None)
        if future is None or future.done():
            return
        if error is not None:
            future.set_exception(error)
            future.exception()  # mark retrieved: followers that gave up must not warn
        else:
            future.set_result(result)


def _to_array(item: dict[str, Any], index: int) -> tuple[str, np.ndarray]:
    where = f"inputs[{index}]"
    if not isinstance(item, dict):
        raise HttpError(400, f"{where} must be an object with name, shape, datatype and data")
    name = item.get("name")
    if not isinstance(name, str):
        raise HttpError(400, f"{where}.name is missing or not a string")
    datatype = item.get("datatype")
    if datatype not in V2_TYPES:
        raise HttpError(400, f"{where}.datatype {datatype!r} is not one of {', '.join(V2_TYPES)}")
    shape = item.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise HttpError(
            400, f"{where}.shape must be a list of non-negative integers, got {shape!r}"
        )
    if "data" not in item:
        raise HttpError(400, f"{where}.data is missing")
    try:
        arr = np.asarray(item["data"], dtype=V2_TYPES[datatype])
        arr = arr.reshape(shape)
    except (ValueError, TypeError) as exc:
        raise HttpError(
            400, f"{where} ('{name}'): data does not fit shape {shape} as {datatype} ({exc})"
        ) from exc
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise HttpError(400, f"{where} ('{name}') holds NaN or infinite values")
    return name, arr


def _output(name: str, arr: np.ndarray) -> dict[str, Any]:
    arr = np.asarray(arr)
    kind = NP_TO_V2.get(str(arr.dtype), "BYTES" if arr.dtype.kind in "OUS" else "FP32")
    data = arr.astype(str).reshape(-1).tolist() if kind == "BYTES" else arr.reshape(-1).tolist()
    return {"name": name, "datatype": kind, "shape": list(arr.shape), "data": data}


def create_app(
    models: dict[str, Any], config: ServeConfig | None = None, monitor: Any = None
) -> Any:
    """A FastAPI app serving ``models`` (name -> Package or package path)."""
    require("fastapi", "nimbleml serve")
    from fastapi import FastAPI
    from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse

    from ..monitor import ModelMonitor, metrics_text
    from ..package import Package, _placeholder, load

    config = config or ServeConfig()
    monitor = monitor or ModelMonitor(store="sqlite:///:memory:", resources_interval_s=None)
    sources: dict[str, Any] = dict(models)
    draining: set[asyncio.Task[None]] = set()

    def build_entry(name: str, obj: Any) -> ModelEntry:
        """Open (and checksum) a package; raises NimbleError for a broken one."""
        pkg = obj if isinstance(obj, Package) else load(obj)
        entry_file = (
            pkg.manifest["model"]["path"]
            if pkg.model is not pkg.baseline
            else pkg.manifest["baseline"]["path"]
        )
        digest = next(f["sha256"] for f in pkg.manifest["files"] if f["path"] == entry_file)
        model = pkg.model
        return ModelEntry(
            name=name, model=model, version=pkg.manifest.get("created_at", "1"), content_hash=digest,
            batcher=DynamicBatcher(model.run, config.max_batch_size, config.max_wait_ms, config.max_queue),
            cache=make_cache(config.cache_mb) if config.cache_mb > 0 else None, keys=KeyMaker(digest),
        )  # fmt: skip

    async def start_entry(entry: ModelEntry) -> None:
        """Start its batcher and run one real inference: ready only after that."""
        entry.batcher.start()
        await entry.batcher.submit(_placeholder(entry.model.inputs))
        entry.ready = True

    entries: dict[str, ModelEntry] = {name: build_entry(name, obj) for name, obj in models.items()}
    for name, entry in entries.items():
        monitor.add_gauges(f"server_{name}", _gauges(entry))

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        for entry in entries.values():
            await start_entry(entry)
        yield
        for entry in entries.values():
            entry.ready = False
            await entry.batcher.drain()

    app = FastAPI(title="nimbleml serve", lifespan=lifespan)
    app.state.entries, app.state.monitor, app.state.config = entries, monitor, config

    @app.exception_handler(HttpError)
    async def http_error(_request: Request, exc: HttpError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)

    def entry_for(name: str) -> ModelEntry:
        entry = entries.get(name)
        if entry is None:
            raise HttpError(
                404, f"unknown model '{name}'; this server has: {', '.join(sorted(entries))}"
            )
        return entry

    async def body_of(request: Request) -> dict[str, Any]:
        if (
            config.api_key is not None
            and request.headers.get("authorization") != f"Bearer {config.api_key}"
        ):
            raise HttpError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'")
        size = int(request.headers.get("content-length") or 0)
        if size > config.max_body_bytes:
            raise HttpError(
                413, f"request body of {size} bytes is over the {config.max_body_bytes}-byte limit"
            )
        raw = await request.body()
        if len(raw) > config.max_body_bytes:
            raise HttpError(413, f"request body is over the {config.max_body_bytes}-byte limit")
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise HttpError(400, f"the body is not valid JSON ({exc})") from exc
        if not isinstance(body, dict):
            raise HttpError(400, "the body must be a JSON object")
        return body

    async def run(
        entry: ModelEntry, raw_feeds: dict[str, np.ndarray], pid: str
    ) -> list[np.ndarray]:
        try:
            feeds = entry.model.feeds(raw_feeds)
        except DataError as exc:
            raise HttpError(422, str(exc)) from exc
        started = time.perf_counter()
        try:
            out = await entry.infer(feeds, config.timeout_ms / 1e3)
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
            (time.perf_counter() - started) * 1e3,
            pid,
            entry.name,
            first[0] if len(first) == 1 else None,
        )
        return out

    @app.get("/v2/health/live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready() -> JSONResponse:
        ok = all(e.ready for e in entries.values())
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.get("/v2/models/{name}")
    async def metadata(name: str) -> dict[str, Any]:
        entry = entry_for(name)

        def spec(s: Any) -> dict[str, Any]:
            return {"name": s.name, "datatype": NP_TO_V2.get(s.dtype, "BYTES"),
                    "shape": [d if isinstance(d, int) else -1 for d in s.shape]}  # fmt: skip

        return {
            "name": name, "versions": [entry.version], "platform": f"nimbleml-{entry.model.framework}",
            "inputs": [spec(s) for s in entry.model.inputs], "outputs": [spec(s) for s in entry.model.outputs],
        }  # fmt: skip

    @app.get("/v2/models/{name}/ready")
    async def model_ready(name: str) -> JSONResponse:
        ok = entry_for(name).ready
        return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 503)

    @app.post("/v2/models/{name}/infer")
    async def infer(name: str, request: Request) -> JSONResponse:
        body = await body_of(request)
        entry = entry_for(name)  # after the last await before submit: a reload cannot slip between
        inputs = body.get("inputs")
        if not isinstance(inputs, list) or not inputs:
            raise HttpError(400, "'inputs' must be a non-empty list of tensors")
        feeds = dict(_to_array(item, i) for i, item in enumerate(inputs))
        pid = str(body.get("id") or uuid.uuid4())
        out = await run(entry, feeds, pid)
        wanted = {o.get("name") for o in body.get("outputs") or [] if isinstance(o, dict)}
        names = entry.model.output_names
        outputs = [
            _output(n, a) for n, a in zip(names, out, strict=True) if not wanted or n in wanted
        ]
        return JSONResponse(
            {"model_name": name, "model_version": entry.version, "id": pid, "outputs": outputs},
            headers={"X-Prediction-Id": pid},
        )

    @app.post("/v1/models/{name}:predict")
    async def predict_v1(name: str, request: Request) -> JSONResponse:
        body = await body_of(request)
        entry = entry_for(name)
        instances = body.get("instances")
        if not isinstance(instances, list) or not instances:
            raise HttpError(400, "'instances' must be a non-empty list")
        specs = entry.model.inputs
        try:
            if len(specs) == 1:
                feeds = {specs[0].name: np.asarray(instances, dtype=specs[0].dtype)}
            else:
                feeds = {
                    s.name: np.asarray([inst[s.name] for inst in instances], dtype=s.dtype)
                    for s in specs
                }
        except (KeyError, TypeError, ValueError) as exc:
            raise HttpError(
                400, f"'instances' do not match the model's inputs {[s.name for s in specs]}: {exc}"
            ) from exc
        for k, v in feeds.items():
            if v.dtype.kind == "f" and not np.all(np.isfinite(v)):
                raise HttpError(400, f"'instances' hold NaN or infinite values for input '{k}'")
        pid = str(body.get("id") or uuid.uuid4())
        out = await run(entry, feeds, pid)
        return JSONResponse(
            {"predictions": np.asarray(out[0]).tolist(), "id": pid},
            headers={"X-Prediction-Id": pid},
        )

    @app.post("/v2/models/{name}/feedback")
    async def feedback(name: str, request: Request) -> dict[str, Any]:
        body = await body_of(request)
        entry_for(name)
        if "id" not in body or "label" not in body:
            raise HttpError(400, "feedback needs 'id' (the prediction id) and 'label'")
        monitor.record_ground_truth(str(body["id"]), body["label"])
        return {"accepted": True}

    @app.post("/v2/repository/models/{name}/load")
    async def load_model(name: str, request: Request) -> dict[str, Any]:
        """Hot reload: open the new version, warm it up, then swap it in atomically; the
        old version answers what it already accepted. A broken version is refused."""
        body = await body_of(request) if int(request.headers.get("content-length") or 0) else {}
        params = body.get("parameters") or {}
        source = params.get("path") or sources.get(name)
        if source is None:
            raise HttpError(400, f"model '{name}' is new here: give parameters.path to its package")
        loop = asyncio.get_running_loop()
        try:
            new = await loop.run_in_executor(None, build_entry, name, source)
            await start_entry(new)
        except Exception as exc:
            detail = str(exc).splitlines()[0][:300]
            raise HttpError(
                409, f"new version of '{name}' refused, the old one keeps serving: {detail}"
            ) from exc
        old = entries.get(name)
        entries[name] = new  # one assignment on the event loop: requests see old or new
        sources[name] = source
        monitor.add_gauges(f"server_{name}", _gauges(new))
        if old is not None:
            old.ready = False
            task = loop.create_task(old.batcher.drain())
            draining.add(task)  # keep a reference until it is done
            task.add_done_callback(draining.discard)
        return {"name": name, "version": new.version, "loaded": True}

    @app.get("/dashboard")
    async def dashboard() -> HTMLResponse:
        from .dashboard import PAGE

        return HTMLResponse(PAGE)

    @app.get("/dashboard/data")
    async def dashboard_json() -> dict[str, Any]:
        from .dashboard import dashboard_data

        return dashboard_data(entries, monitor)

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        monitor.flush()
        return PlainTextResponse(metrics_text(monitor), media_type="text/plain; version=0.0.4")

    return app


def _gauges(entry: ModelEntry) -> Any:
    def read() -> dict[str, float]:
        s = entry.batcher.stats
        values: dict[str, float] = {
            "queue_samples": entry.batcher.queued_samples,
            "shed_total": s.shed,
            "batches_idle": s.batches["idle"],
            "batches_full": s.batches["full"],
            "batches_window": s.batches["window"],
            "samples_total": s.samples,
            "queue_wait_seconds_total": s.queue_wait_s,
            "compute_seconds_total": s.compute_s,
        }
        for size, count in sorted(s.batch_sizes.items()):
            values[f"batch_size_{size}"] = count
        if entry.cache is not None:
            for tier, info in entry.cache.info()["tiers"].items():
                values[f"cache_{tier}_hits"] = info["hits"]
                values[f"cache_{tier}_misses"] = info["misses"]
        return values

    return read
