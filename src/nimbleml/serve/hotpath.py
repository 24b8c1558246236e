"""The two inference routes, POST /v2/models/{name}/infer (and its versions/{v} form) and
POST /v1/models/{name}:predict, answered by a small ASGI handler in front of FastAPI
(``HotPath``): FastAPI's routing and middleware cost about 0.2 ms a request on this machine,
the handler about 0.05 ms. Every other path goes through to FastAPI (routes.py); responses
of both are counted by status code for /metrics."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ..errors import DataError
from . import protocol
from .http import HttpError
from .server import Server

log = logging.getLogger("nimbleml.serve")


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
