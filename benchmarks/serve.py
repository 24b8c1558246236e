"""Load figures for `nimbleml serve` (issue 5), side by side with a plain FastAPI endpoint
calling the same model, on this machine, in one run.

    .venv/bin/python benchmarks/serve.py [--quick] [--only iris mlp overload reload] [--json serve.json]

Servers run in their own processes; the load comes from benchmarks/_loadgen.py in another
(open loop, Poisson arrivals, latency from each request's scheduled send time, 64
connections opened before the clock starts, 900 for the overload, stops by itself).
Everything shares this machine's cores, so the generator's own cost is part of every
figure; under overload the table says how late the generator itself sent and how busy the
cores were.

- overhead: a trivial model (iris logistic regression) over HTTP at concurrency 1 vs the
  same call in process (goal: <= 0.3 ms p50 added), beside a bare ASGI function answering
  a constant (the floor: loopback, uvicorn, the generator);
- capacity: the highest rate whose p99 stays <= 25 ms with nothing refused, for the cheap
  model (goal >= 2,500 req/s) and for a 4096-wide MLP with and without dynamic batching
  (goal >= 4x);
- overload at 4x the MLP's capacity: 200s vs immediate 503s, p99 of the 503s (goal <= 5 ms),
  goodput (goal >= 95% of capacity), nothing lost;
- hot reload under load: failed requests while a new version is swapped in (goal 0);
- idle CPU of a server with batching on (goal <= 1%).

--json PATH writes the capacities measured (iris; the MLP with batching on and off) for
`nimbleml cost --serve-report PATH`, in nimbleml.cost.serve_report's format (docs/cost.md).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))
from tests._net import free_port, v2_body

import nimbleml
from _harness import quick_args, table
from nimbleml.demo import digits, train_mlp

HERE = Path(__file__).parent
EXE = str(Path(sys.executable).with_name("nimbleml"))
TARGET_P99_MS = 25.0
CAPACITIES: list[dict[str, Any]] = []  # for --json: each capacity measured, as it was found
LOAD = "Poisson arrivals, open loop, 64 connections, the load generator on the same cores"


def measured(name: str, cap: float, run: dict[str, Any], max_batch_size: int) -> None:
    """Keep a capacity for --json: the rate, the p99/p50 at it, requests sent."""
    CAPACITIES.append({"name": name, "capacity_rps": cap, "p99_ms": run.get("p99"),
                       "p50_ms": run.get("p50"), "max_batch_size": max_batch_size,
                       "requests": run.get("sent")})  # fmt: skip


def write_json(path: Path, capacities: list[dict[str, Any]], duration_s: float) -> Path:
    """The serve report `nimbleml cost --serve-report` reads (nimbleml.cost.serve_report)."""
    from nimbleml.bench.machine import has_cuda
    from nimbleml.cost import serve_report

    report = serve_report(capacities, TARGET_P99_MS, f"{LOAD}, {duration_s:g} s a rate",
                          device="cuda" if has_cuda() else "cpu")  # fmt: skip
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


class Server:
    """A server in its own process, ready when its health route answers."""

    def __init__(self, args: list[str], ready_path: str = "/v2/health/ready") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [*args, "--port", str(self.port)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(self.url + ready_path, timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.proc.kill()
                raise RuntimeError(f"server {argv} did not start: {self.proc.stderr.read()!r}")
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def loadgen(mode: str, port: int, path: str, bodies: Path, **kw: Any) -> dict[str, Any]:
    argv = [sys.executable, str(HERE / "_loadgen.py"), mode, "--port", str(port),
            "--path", path, "--bodies", str(bodies)]  # fmt: skip
    for k, v in kw.items():
        argv += [f"--{k}", str(v)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=True)
    out = json.loads(done.stdout)
    status, latency = np.array(out["status"]), np.array(out["latency_ms"])
    ok, shed = status == 200, status == 503
    out.update(
        sent=status.size, ok=int(ok.sum()), shed=int(shed.sum()),
        other=int((~ok & ~shed).sum()), lost=int(((status == -1) | (status == 0)).sum()),
        p50=_pct(latency[ok], 50), p99=_pct(latency[ok], 99), p99_shed=_pct(latency[shed], 99),
        p50_shed=_pct(latency[shed], 50), p99_lag=_pct(np.array(out.get("send_lag_ms", [])), 99),
    )  # fmt: skip
    if "elapsed_s" in out:  # 200s per second, until the last answer came
        out["goodput"] = out["ok"] / out["elapsed_s"]
    return out


def _pct(values: np.ndarray, q: float) -> float | None:
    return float(np.percentile(values, q)) if values.size else None


def capacity(
    port: int, path: str, bodies: Path, start: float, duration: float
) -> tuple[float, dict]:
    """The highest Poisson rate whose p99 stays under the target with every request a 200
    (doubling, then bisecting; 8 runs)."""
    loadgen("open", port, path, bodies, rate=start * 4, duration=1.0)  # warm-up, not counted
    best, best_run, rate, high = 0.0, {}, start, None
    for _ in range(8):
        run = loadgen("open", port, path, bodies, rate=rate, duration=duration)
        if run["ok"] == run["sent"] and run["p99"] is not None and run["p99"] <= TARGET_P99_MS:
            best, best_run = rate, run
            rate = rate * 2 if high is None else (rate + high) / 2
        else:
            high = rate
            rate = (best + rate) / 2 if best else rate / 2
    return best, best_run


def write_bodies(path: Path, X: np.ndarray, package: Path) -> Path:
    """One-row v2 requests, the input named as the package's model names it."""
    name = nimbleml.load(package).model.input_names[0]
    bodies = [v2_body(X[i : i + 1]) for i in range(len(X))]
    for b in bodies:
        b["inputs"][0]["name"] = name
    path.write_text(json.dumps(bodies))
    return path


def iris_package(tmp: Path) -> tuple[Path, np.ndarray]:
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = load_iris(return_X_y=True)
    X = X.astype(np.float32)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(X, y)
    pkg = nimbleml.compress(model, quantize=None, val=(X, y), benchmark_time_s=0.01)
    return pkg.save(tmp / "iris.nimble"), X


def in_process(package: Path, X: np.ndarray, n: int) -> np.ndarray:
    pkg = nimbleml.load(package)
    for i in range(200):
        pkg.predict(X[i % len(X)][None])
    times = []
    for i in range(n):
        x = X[i % len(X)][None]
        t0 = time.perf_counter()
        pkg.predict(x)
        times.append((time.perf_counter() - t0) * 1e3)
    return np.array(times)


PARTS = ["iris", "mlp", "overload", "reload"]
INFER = "/v2/models/{}/infer"
PLAIN = [sys.executable, str(HERE / "_plain_server.py")]


def serve_cmd(mlp: Path) -> list[str]:
    """The MLP's server. A batch of 16 rows takes about 11 ms here and one of 32 about 17:
    a request may wait for the batch running and then run in the next, so 16 is the size
    that keeps p99 under the 25 ms target (with 32 the capacity found swung 700-1,400)."""
    return [EXE, "serve", f"mlp={mlp}", "--cache-mb", "0", "--max-batch-size", "16"]


def part_iris(tmp: Path, dur: float, n_seq: int, rows: list[list[str]]) -> None:
    """Overhead at concurrency 1 and the cheap model's capacity; plain FastAPI alongside."""
    iris, Xi = iris_package(tmp)
    bodies = write_bodies(tmp / "iris.json", Xi, iris)
    local = in_process(iris, Xi, n_seq)
    with (
        Server([EXE, "serve", f"iris={iris}", "--cache-mb", "0"]) as srv,
        Server([*PLAIN, str(iris)], "/health") as ref,
    ):
        ours = loadgen("closed", srv.port, INFER.format("iris"), bodies, requests=n_seq)
        theirs = loadgen("closed", ref.port, "/predict", bodies, requests=n_seq)
        bare = loadgen("closed", ref.port, "/floor", bodies, requests=n_seq)
        added = ours["p50"] - float(np.median(local))
        rows.append(["iris, c=1: in process p50 / p99 (ms)",
                     f"{np.median(local):.3f} / {np.percentile(local, 99):.3f}", f"n={local.size}"])  # fmt: skip
        rows.append(["iris, c=1: nimbleml serve p50 / p99 (ms)", f"{ours['p50']:.3f} / {ours['p99']:.3f}",
                     f"+{added:.3f} ms p50 added (goal <= 0.3); n={ours['sent']}"])  # fmt: skip
        rows.append(["iris, c=1: plain FastAPI p50 / p99 (ms)",
                     f"{theirs['p50']:.3f} / {theirs['p99']:.3f}", "side by side"])  # fmt: skip
        rows.append(["c=1 floor: bare ASGI constant, p50 / p99 (ms)",
                     f"{bare['p50']:.3f} / {bare['p99']:.3f}",
                     f"loopback + uvicorn + generator; nimbleml adds {ours['p50'] - bare['p50'] - float(np.median(local)):.3f} ms over it and the model"])  # fmt: skip
        cap_iris, run = capacity(srv.port, INFER.format("iris"), bodies, 500, dur)
        cap_plain, run_plain = capacity(ref.port, "/predict", bodies, 500, dur)
        measured("iris", cap_iris, run, 32)  # nimbleml serve's default --max-batch-size
        rows.append(["iris, 64 conns: req/s at p99 <= 25 ms, nimbleml", f"{cap_iris:.0f}",
                     f"p99 {run.get('p99') or 0:.1f} ms (goal >= 2,500 req/s)"])  # fmt: skip
        rows.append(["iris, 64 conns: req/s at p99 <= 25 ms, plain FastAPI", f"{cap_plain:.0f}",
                     f"p99 {run_plain.get('p99') or 0:.1f} ms; nimbleml {cap_iris / max(cap_plain, 1):.2f}x"])  # fmt: skip


def part_mlp(mlp: Path, bodies: Path, dur: float, rows: list[list[str]]) -> float:
    """Dynamic batching vs none, same p99 target; returns the capacity with batching."""
    serve_mlp = serve_cmd(mlp)
    with Server(serve_mlp) as srv:
        cap, run = capacity(srv.port, INFER.format("mlp"), bodies, 200, dur)
    with Server([*serve_mlp, "--max-batch-size", "1"]) as srv:
        cap1, run1 = capacity(srv.port, INFER.format("mlp"), bodies, 200, dur)
    measured("mlp", cap, run, 16)
    measured("mlp", cap1, run1, 1)
    with Server([*PLAIN, str(mlp)], "/health") as ref:
        cap_plain, _ = capacity(ref.port, "/predict", bodies, 200, dur)
    rows.append(["mlp: req/s at p99 <= 25 ms, batching on", f"{cap:.0f}",
                 f"p99 {run.get('p99') or 0:.1f} ms"])  # fmt: skip
    rows.append(["mlp: req/s at p99 <= 25 ms, batching off", f"{cap1:.0f}",
                 f"batching gain {cap / max(cap1, 1):.2f}x (goal >= 4x)"])  # fmt: skip
    rows.append(["mlp: req/s at p99 <= 25 ms, plain FastAPI", f"{cap_plain:.0f}",
                 f"nimbleml {cap / max(cap_plain, 1):.2f}x"])  # fmt: skip
    return cap


def part_overload(
    mlp: Path, bodies: Path, cap: float, dur: float, idle_s: float, rows: list[list[str]]
) -> None:
    """4x the capacity against a bounded queue, then the idle CPU after it."""
    with Server([*serve_cmd(mlp), "--max-queue", "256"]) as srv:
        # connections well above the queue bound: the server, not the generator, must shed
        proc = psutil.Process(srv.proc.pid)
        before = proc.cpu_times()
        over = loadgen("open", srv.port, INFER.format("mlp"), bodies, rate=4 * cap,
                       duration=dur, connections=900)  # fmt: skip
        after = proc.cpu_times()
        server_cpu = after.user + after.system - before.user - before.system
        rows.append(["overload 4x: 200 / 503 / other / lost", f"{over['ok']} / {over['shed']} / {over['other']} / {over['lost']}",
                     f"of {over['sent']} sent; {over['ok'] / over['sent']:.0%} answered 200"])  # fmt: skip
        rows.append(["overload 4x: p99 of the 503s (ms)", f"{over['p99_shed'] or 0:.2f}",
                     f"goal <= 5; p50 {over['p50_shed'] or 0:.2f}; the generator's own send lag p99 {over['p99_lag']:.2f}"])  # fmt: skip
        cores = len(psutil.Process().cpu_affinity() or [0])
        busy = (server_cpu + over["cpu_s"]) / (cores * over["elapsed_s"])
        rows.append(["overload 4x: CPU busy, server + generator", f"{busy:.0%}",
                     f"server {server_cpu:.1f} s + generator {over['cpu_s']:.1f} s of {cores} cores x {over['elapsed_s']:.1f} s"])  # fmt: skip
        rows.append(["overload 4x: goodput (req/s)", f"{over['goodput']:.0f}",
                     f"{over['goodput'] / max(cap, 1):.0%} of capacity (goal >= 95%)"])  # fmt: skip
        time.sleep(2)  # the monitor's store catches up with the burst first
        proc.cpu_percent(None)
        time.sleep(idle_s)
        rows.append(
            ["idle server CPU, batching on (%)", f"{proc.cpu_percent(None):.2f}", "goal <= 1"]
        )


def part_reload(mlp: Path, bodies: Path, cap: float, dur: float, rows: list[list[str]]) -> None:
    """Two reloads while a load at half the capacity runs: failed requests."""
    with Server([*serve_cmd(mlp), "--repository", str(mlp.parent)]) as srv:
        reload_dur = 3 * dur
        gen = subprocess.Popen(
            [sys.executable, str(HERE / "_loadgen.py"), "open", "--port", str(srv.port),
             "--path", INFER.format("mlp"), "--bodies", str(bodies),
             "--rate", str(cap / 2), "--duration", str(reload_dur)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        reloads = []
        time.sleep(reload_dur / 4)
        for _ in range(2):
            r = httpx.post(srv.url + "/v2/repository/models/mlp/load", timeout=60)
            reloads.append(r.status_code)
            time.sleep(reload_dur / 4)
        out, _ = gen.communicate(timeout=300)
        status = np.array(json.loads(out)["status"])
        failed = int((status != 200).sum())
        rows.append(["hot reload under load: failed requests", f"{failed}",
                     f"{status.size} sent at {cap / 2:.0f} req/s, reloads answered {reloads} (goal 0)"])  # fmt: skip


def main() -> None:
    args = quick_args(__doc__, PARTS, more=lambda p: p.add_argument(
        "--json", type=Path, help="write the capacities measured here (nimbleml cost --serve-report)"))  # fmt: skip
    dur = 1.5 if args.quick else 3.0
    tmp = Path(tempfile.mkdtemp())
    rows: list[list[str]] = []
    if "iris" in args.only:
        part_iris(tmp, dur, 1000 if args.quick else 4000, rows)
    if set(args.only) - {"iris"}:
        Xtr, Xte, ytr, yte = digits()
        # wide enough that one row costs about a millisecond: batching pays where compute does
        mlp = nimbleml.compress(
            train_mlp(Xtr, ytr, hidden=4096, epochs=1), quantize=None, val=(Xte, yte)
        ).save(tmp / "mlp.nimble")
        bodies = write_bodies(tmp / "mlp.json", Xte[:300], mlp)
        if "mlp" in args.only:
            cap = part_mlp(mlp, bodies, dur, rows)
        else:  # the other parts are sized by it
            with Server(serve_cmd(mlp)) as srv:
                cap, _ = capacity(srv.port, INFER.format("mlp"), bodies, 200, dur)
        if "overload" in args.only:
            part_overload(mlp, bodies, cap, dur, 5 if args.quick else 10, rows)
        if "reload" in args.only:
            part_reload(mlp, bodies, cap, dur, rows)
    print(table(rows, ["figure", "value", "note"]))
    if args.json and CAPACITIES:
        print(f"capacities written to {write_json(args.json, CAPACITIES, dur)}")


if __name__ == "__main__":
    main()
