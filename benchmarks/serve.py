"""Load figures for `nimbleml serve` (issue 5): an open-loop generator with Poisson arrivals,
latency counted from the scheduled send time, every run bounded in time.

    .venv/bin/python benchmarks/serve.py [--quick]

The server runs in its own process (`nimbleml serve`), the load generator in this one; both
share this machine's cores, so the generator's own cost is part of every figure.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))
from tests._net import free_port, v2_body

import nimbleml
from _harness import quick_args, table
from nimbleml.demo import digits, train_mlp

EXE = str(Path(sys.executable).with_name("nimbleml"))


class Server:
    def __init__(self, args: list[str], ready_path: str = "/v2/health/ready") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([*args, "--port", str(self.port)] if args[0] == EXE else [*args, str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(self.url + ready_path, timeout=1).status_code in (200, 405):
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"server {args} did not start")
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def open_loop(url: str, bodies: list[dict], rate: float, duration_s: float) -> dict:
    """Poisson arrivals at ``rate``/s for ``duration_s``; returns statuses and latencies (ms)
    measured from each request's scheduled time. Stops by itself."""
    rng = np.random.default_rng(0)
    n = int(rate * duration_s)
    offsets = np.cumsum(rng.exponential(1 / rate, n))
    results: list[tuple[int, float]] = []
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        start = time.perf_counter()

        async def one(i: int) -> None:
            scheduled = start + offsets[i]
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                r = await client.post(url, json=bodies[i % len(bodies)])
                status = r.status_code
            except httpx.HTTPError:
                status = 0
            results.append((status, (time.perf_counter() - scheduled) * 1e3))

        await asyncio.gather(*(one(i) for i in range(n)))
        elapsed = time.perf_counter() - start
    statuses = np.array([s for s, _ in results])
    lat = np.array([t for _, t in results])
    ok = statuses == 200
    return {
        "sent": n, "answered": len(results), "ok": int(ok.sum()), "rejected": int((statuses == 503).sum()),
        "other": int((~ok & (statuses != 503)).sum()), "elapsed_s": elapsed,
        "goodput": ok.sum() / elapsed,
        "p50_ok": float(np.percentile(lat[ok], 50)) if ok.any() else None,
        "p99_ok": float(np.percentile(lat[ok], 99)) if ok.any() else None,
        "p99_rejected": float(np.percentile(lat[statuses == 503], 99)) if (statuses == 503).any() else None,
    }  # fmt: skip


def capacity(
    url: str, bodies: list[dict], target_p99_ms: float, duration_s: float, start_rate: float
) -> tuple[float, dict]:
    """The highest Poisson rate (doubling, then bisecting) whose p99 stays under the target
    with nothing rejected."""
    best, best_run, rate, high = 0.0, {}, start_rate, None
    for _ in range(7):
        run = asyncio.run(open_loop(url, bodies, rate, duration_s))
        good = (
            run["other"] == 0
            and run["rejected"] == 0
            and run["p99_ok"] is not None
            and run["p99_ok"] <= target_p99_ms
        )
        if good:
            best, best_run = rate, run
            rate = rate * 2 if high is None else (rate + high) / 2
        else:
            high = rate
            rate = (best + rate) / 2 if best else rate / 2
    return best, best_run


def sequential(url: str, bodies: list[dict], n: int) -> dict:
    lat = []
    with httpx.Client() as c:
        for i in range(n):
            t0 = time.perf_counter()
            c.post(url, json=bodies[i % len(bodies)])
            lat.append((time.perf_counter() - t0) * 1e3)
    return {"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)), "n": n}


def main() -> None:
    args = quick_args(__doc__)
    dur = 2.0 if args.quick else 4.0
    Xtr, Xte, ytr, yte = digits()
    tmp = Path(tempfile.mkdtemp())
    mlp_pkg = nimbleml.compress(
        train_mlp(Xtr, ytr, hidden=512, epochs=5), quantize=None, val=(Xte, yte)
    ).save(tmp / "mlp.nimble")
    bodies = [v2_body(Xte[i : i + 1]) for i in range(200)]
    rows = []

    # 1. overhead at concurrency 1: HTTP + nimbleml vs calling the model in process
    pkg = nimbleml.load(mlp_pkg)
    inproc = []
    for i in range(2000):
        t0 = time.perf_counter()
        pkg.predict(Xte[i % 200 : i % 200 + 1])
        inproc.append((time.perf_counter() - t0) * 1e3)
    srv = Server([EXE, "serve", f"mlp={mlp_pkg}", "--cache-mb", "0"])
    plain = Server(
        [sys.executable, str(Path(__file__).with_name("_plain_server.py")), str(mlp_pkg)], "/docs"
    )
    try:
        seq = sequential(srv.url + "/v2/models/mlp/infer", bodies, 1000 if args.quick else 3000)
        seq_plain = sequential(plain.url + "/predict", bodies, 1000 if args.quick else 3000)
        p50_in = float(np.percentile(inproc, 50))
        rows.append(["concurrency 1: p50 / p99 over HTTP (ms)", f"{seq['p50']:.3f} / {seq['p99']:.3f}",
                     f"in process p50 {p50_in:.3f} ms: +{seq['p50'] - p50_in:.3f} ms added (goal <= 0.3)"])  # fmt: skip
        rows.append(
            [
                "plain FastAPI endpoint, same model, c=1 (ms)",
                f"{seq_plain['p50']:.3f} / {seq_plain['p99']:.3f}",
                "side by side",
            ]
        )

        # 2. capacity at p99 <= 25 ms, and the same for the plain endpoint
        cap, run = capacity(srv.url + "/v2/models/mlp/infer", bodies, 25.0, dur, 200.0)
        cap_plain, _ = capacity(plain.url + "/predict", bodies, 25.0, dur, 200.0)
        rows.append(["MLP capacity at p99 <= 25 ms, batching on (req/s)", f"{cap:.0f}",
                     f"p99 {run.get('p99_ok', 0):.1f} ms; plain FastAPI: {cap_plain:.0f} req/s"])  # fmt: skip
    finally:
        plain.stop()
        srv.stop()

    nobatch = Server([EXE, "serve", f"mlp={mlp_pkg}", "--cache-mb", "0", "--max-batch-size", "1"])
    try:
        cap1, _ = capacity(nobatch.url + "/v2/models/mlp/infer", bodies, 25.0, dur, 200.0)
        rows.append(
            [
                "MLP capacity, no batching (req/s)",
                f"{cap1:.0f}",
                f"batching gain {cap / cap1 if cap1 else float('nan'):.2f}x (goal >= 4)",
            ]
        )
    finally:
        nobatch.stop()

    # 3. overload at 4x capacity with a bounded queue
    over = Server([EXE, "serve", f"mlp={mlp_pkg}", "--cache-mb", "0", "--max-queue", "64"])
    try:
        run = asyncio.run(open_loop(over.url + "/v2/models/mlp/infer", bodies, 4 * cap, dur))
        rows.append(["overload 4x capacity: 200 / 503 / other", f"{run['ok']} / {run['rejected']} / {run['other']}",
                     f"answered {run['answered']} of {run['sent']}"])  # fmt: skip
        rows.append(["overload: p99 of 503s (ms)", f"{run['p99_rejected'] or 0:.2f}", "goal <= 5"])
        rows.append(
            [
                "overload: goodput (req/s)",
                f"{run['goodput']:.0f}",
                f"{run['goodput'] / cap:.0%} of capacity (goal >= 95%)",
            ]
        )
        # idle CPU with batching on
        proc = psutil.Process(over.proc.pid)
        proc.cpu_percent(None)
        time.sleep(3)
        rows.append(
            ["idle server CPU, batching on (%)", f"{proc.cpu_percent(None):.2f}", "goal <= 1"]
        )
    finally:
        over.stop()
    print(table(rows, ["figure", "value", "note"]))


if __name__ == "__main__":
    main()
