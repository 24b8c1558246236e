"""The models being served and what answers for them: a ``ModelEntry`` per model (its cache,
single-flight and dynamic batcher) and the ``Server`` that holds them, opens and starts them,
checks each request (API key, body size, queue room) and turns a request into feeds, a
result and a prediction id. The HTTP layers (hotpath.py, routes.py) call into it."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import os
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import DataError, NimbleError, QueueFull
from ..inputs import Feeds
from ..models.base import Model
from ..models.onnx_model import OnnxModel
from ..models.openvino_model import OpenVinoModel
from ..runtime.cache import TieredCache, make_cache
from ..runtime.codec import KeyMaker
from ..verify import verified_on_missing
from . import protocol
from .batcher import DynamicBatcher
from .config import ServeConfig, serving_threads
from .http import HttpError
from .metrics import server_collector


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


def _column(values: list[Any], dtype: str, fix: Any) -> np.ndarray:
    """v1 instances of one input as an array; nulls become NaN in number columns of models
    verified on missing values (``fix``)."""
    return np.asarray(fix(values) if dtype.startswith("float") else values, dtype=dtype)
