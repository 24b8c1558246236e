"""An open-loop HTTP/1.1 load generator, run in its own process by benchmarks/serve.py.

httpx spends about a millisecond of CPU a request, which on a 2-core machine takes the
server's core; this sends pre-encoded requests over keep-alive connections with asyncio
protocols on uvloop and parses only the status line and Content-Length (about 20 µs a
request), so the figures measure the server, not the client.

    python benchmarks/_loadgen.py open --port P --path /v2/models/m/infer --bodies F.json \
        --rate 1000 --duration 4 --connections 64
    python benchmarks/_loadgen.py closed --port P --path ... --bodies F.json --requests 2000

``open``: Poisson arrivals at ``rate``/s for ``duration`` s; a request is sent at its
scheduled time on a free connection (at most ``connections``), else it waits for one;
latency counts from the scheduled time, so a slow server cannot hide its queue (no
coordinated omission). Stops by itself: what is unanswered ``--grace`` s after the last send
counts as lost. ``closed``: one connection, one request at a time (latency of each).
Prints one JSON object: statuses and latencies (ms) of every request, in send order; for
``open`` also how late the generator itself sent each one (``send_lag_ms``, its own share
of the latency) and the CPU seconds it used while sending and waiting (``cpu_s``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import gc
import json
import sys
import time
from typing import Any

import numpy as np


def encode_requests(path: str, bodies: list[bytes], headers: dict[str, str]) -> list[bytes]:
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return [
        (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"{extra}Content-Length: {len(b)}\r\n\r\n"
        ).encode()
        + b
        for b in bodies
    ]


class Connection(asyncio.Protocol):
    """One keep-alive connection; answers one request at a time."""

    def __init__(self, done: Any) -> None:
        self.done = done  # done(conn, status) when a response is complete
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.index = -1
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def send(self, index: int, request: bytes) -> None:
        self.index = index
        assert self.transport is not None
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            at = head.find(b"content-length:")
            if at < 0:
                raise RuntimeError("response without Content-Length")
            stop = head.find(b"\r\n", at)
            length = int(head[at + 15 : stop if stop >= 0 else len(head)])
            total = end + 4 + length
            if len(self.buf) < total:
                return
            status = int(self.buf[9:12])
            self.buf = self.buf[total:]
            self.done(self, status)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        if self.index >= 0:
            self.done(self, 0)  # the request in flight is lost


async def open_loop(
    port: int, requests: list[bytes], rate: float, duration: float, connections: int, grace: float
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    rng = np.random.default_rng(0)
    n = max(1, int(rate * duration))
    offsets = np.cumsum(rng.exponential(1 / rate, n)).tolist()
    status = [-1] * n
    latency = [float("nan")] * n
    idle: list[Connection] = []
    waiting: collections.deque[int] = collections.deque()
    answered = 0
    all_done = loop.create_future()
    start = 0.0

    lag = [float("nan")] * n  # how late the generator itself sent each request

    def send(conn: Connection, i: int) -> None:
        lag[i] = (time.perf_counter() - start - offsets[i]) * 1e3
        conn.send(i, requests[i % len(requests)])

    def done(conn: Connection, code: int) -> None:
        nonlocal answered
        i, conn.index = conn.index, -1
        if i < 0:
            return
        status[i] = code
        latency[i] = (time.perf_counter() - start - offsets[i]) * 1e3
        answered += 1
        if answered == n and not all_done.done():
            all_done.set_result(None)
        if code == 0:
            return  # the connection is gone
        if waiting:
            send(conn, waiting.popleft())
        else:
            idle.append(conn)

    async def connect() -> Connection:
        _, conn = await loop.create_connection(lambda: Connection(done), "127.0.0.1", port)
        return conn

    # all connections open before the clock starts, as a client's pool would be
    for first in range(0, connections, 64):
        idle.extend(
            await asyncio.gather(*(connect() for _ in range(first, min(connections, first + 64))))
        )
    opened, busiest = len(idle), 0
    start, cpu0 = time.perf_counter(), time.process_time()
    for i, offset in enumerate(offsets):
        delay = start + offset - time.perf_counter()
        if delay > 0.0005:
            await asyncio.sleep(delay)
        if idle:
            send(idle.pop(), i)
            busiest = max(busiest, opened - len(idle))
        else:
            waiting.append(i)
    sent_s = time.perf_counter() - start
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(all_done), grace)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    return {"status": status, "latency_ms": latency, "send_lag_ms": lag, "elapsed_s": elapsed,
            "sending_s": sent_s, "connections": opened, "busiest": busiest, "cpu_s": cpu}  # fmt: skip


async def closed_loop(port: int, requests: list[bytes], count: int) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    result: asyncio.Future[int] | None = None

    def done(_conn: Connection, code: int) -> None:
        if result is not None and not result.done():
            result.set_result(code)

    _, conn = await loop.create_connection(lambda: Connection(done), "127.0.0.1", port)
    status, latency = [], []
    for i in range(count):
        result = loop.create_future()
        t0 = time.perf_counter()
        conn.send(i, requests[i % len(requests)])
        status.append(await result)
        latency.append((time.perf_counter() - t0) * 1e3)
    assert conn.transport is not None
    conn.transport.close()
    return {"status": status, "latency_ms": latency}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["open", "closed"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--bodies", required=True, help="a JSON list of request bodies")
    parser.add_argument("--header", action="append", default=[], help="NAME:VALUE")
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--grace", type=float, default=15.0)
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()
    with open(args.bodies, "rb") as f:
        bodies = [json.dumps(b).encode() for b in json.load(f)]
    headers = dict(h.split(":", 1) for h in args.header)
    requests = encode_requests(args.path, bodies, headers)
    gc.disable()  # a collection's pause would count as the server's latency
    if args.mode == "open":
        job = open_loop(args.port, requests, args.rate, args.duration, args.connections, args.grace)
    else:
        job = closed_loop(args.port, requests, args.requests)
    try:
        import uvloop

        out = uvloop.run(job)
    except ImportError:  # pragma: no cover - plain asyncio works, only slower
        out = asyncio.run(job)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
