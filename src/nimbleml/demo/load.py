"""The demo's HTTP client: a short closed-loop burst of single-row requests from real
keep-alive connections (Python's http.client, one per thread), then the ground truth of what
was answered, sent back through the feedback route."""

from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Burst:
    seconds: float
    concurrency: int
    latencies_ms: np.ndarray
    errors: int
    answered: list[tuple[str, int]] = field(default_factory=list)  # (prediction id, true label)

    @property
    def requests(self) -> int:
        return int(self.latencies_ms.size) + self.errors

    @property
    def rps(self) -> float:
        return self.latencies_ms.size / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, q: float) -> float | None:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms.size else None


def merge(parts: list[Burst]) -> Burst:
    """Bursts of one server taken in rounds, as one."""
    return Burst(sum(b.seconds for b in parts), parts[0].concurrency,
                 np.concatenate([b.latencies_ms for b in parts]), sum(b.errors for b in parts),
                 [a for b in parts for a in b.answered])  # fmt: skip


def request(port: int, method: str, path: str, body: bytes | None = None,
            timeout: float = 10.0) -> tuple[int, bytes]:  # fmt: skip
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def bodies(X: np.ndarray, input_name: str) -> list[bytes]:
    """One v2 inference body per row, encoded before the clock starts."""
    return [json.dumps({"inputs": [{"name": input_name, "shape": [1, X.shape[1]],
                                    "datatype": "FP32", "data": row.tolist()}]}).encode()
            for row in X]  # fmt: skip


def burst(port: int, model: str, payloads: list[bytes], labels: np.ndarray, seconds: float,
          concurrency: int) -> Burst:  # fmt: skip
    """``concurrency`` clients, each sending one request after the other for ``seconds``."""
    path = f"/v2/models/{model}/infer"
    results: list[tuple[list[float], list[tuple[str, int]], int]] = []
    lock = threading.Lock()
    start = threading.Barrier(concurrency + 1)
    deadline = [0.0]

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        latencies: list[float] = []
        answered: list[tuple[str, int]] = []
        errors, i = 0, k
        start.wait()
        try:
            while time.perf_counter() < deadline[0]:
                row = i % len(payloads)
                sent = time.perf_counter()
                conn.request("POST", path, body=payloads[row],
                             headers={"Content-Type": "application/json"})  # fmt: skip
                response = conn.getresponse()
                response.read()
                if response.status == 200:
                    latencies.append((time.perf_counter() - sent) * 1e3)
                    answered.append((response.getheader("X-Prediction-Id") or "", int(labels[row])))
                else:
                    errors += 1
                i += concurrency
        finally:
            conn.close()
            with lock:
                results.append((latencies, answered, errors))

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(concurrency)]
    for t in threads:
        t.start()
    began = time.perf_counter()
    deadline[0] = began + seconds
    start.wait()
    for t in threads:
        t.join(timeout=seconds + 60)
    took = time.perf_counter() - began
    lat = np.array([x for r in results for x in r[0]], dtype=np.float64)
    return Burst(took, concurrency, lat, sum(r[2] for r in results),
                 [a for r in results for a in r[1]])  # fmt: skip


def feedback(port: int, model: str, answered: list[tuple[str, int]], concurrency: int) -> int:
    """POST each prediction's true label to the feedback route; returns how many were taken."""
    path = f"/v2/models/{model}/feedback"
    taken = [0] * concurrency

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            for pid, label in answered[k::concurrency]:
                conn.request("POST", path, body=json.dumps({"id": pid, "label": label}).encode(),
                             headers={"Content-Type": "application/json"})  # fmt: skip
                response = conn.getresponse()
                response.read()
                taken[k] += response.status == 200
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return sum(taken)


def metric_sum(text: str, name: str, model: str) -> float:
    """The value of ``name{model="..."}`` in a Prometheus exposition (0 when absent)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and f'model="{model}"' in line:
            head = line.split("{", 1)[0] if "{" in line else line.split(" ", 1)[0]
            if head == name:
                total += float(line.rsplit(" ", 1)[1])
    return total


def as_dict(b: Burst) -> dict[str, Any]:
    return {"seconds": round(b.seconds, 3), "concurrency": b.concurrency, "requests": b.requests,
            "answered": int(b.latencies_ms.size), "errors": b.errors, "rps": round(b.rps, 1),
            "p50_ms": b.percentile(50), "p99_ms": b.percentile(99), "n": int(b.latencies_ms.size)}  # fmt: skip
