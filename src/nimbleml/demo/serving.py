"""Serve the signed package with ``nimbleml serve`` on a free 127.0.0.1 port, drive it with a
short burst, send the ground truth, picture the dashboard; the same burst against a server
with batching off gives the batching gain. Every server started here is stopped here."""

from __future__ import annotations

import contextlib
import json
import math
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import ServingError
from . import load
from .browser import screenshot
from .story import Context, Stage, Table, ms, timed

MODEL = "student"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``nimbleml serve ARGS`` in a process of its own (the command a user runs), its output
    in ``log``; ready once /v2/health/ready answers 200 (every model ran one inference)."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.port = free_port()
        self.log = log
        self._out = open(log, "w")  # noqa: SIM115 - closed in stop()
        argv = [sys.executable, "-m", "nimbleml.cli", "serve", *args, "--host", "127.0.0.1",
                "--port", str(self.port)]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdout=self._out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)  # fmt: skip

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(OSError):
                if load.request(self.port, "GET", "/v2/health/ready", timeout=2)[0] == 200:
                    return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = self.log.read_text().strip().splitlines()[-1:] or ["no output"]
                raise ServingError(f"nimbleml serve did not become ready: {tail[0]} "
                                   f"(the whole log: {self.log})")  # fmt: skip
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM (drain, close the monitor store), then SIGKILL after 30 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._out.close()


@contextlib.contextmanager
def serving(args: list[str], log: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(args, log)
    try:
        yield server
    finally:
        server.stop()


def serve_stage(ctx: Context, package: Path, public_key: Path) -> tuple[dict[str, Any], Stage]:
    """Returns the figures later stages use (the capacity for cost and deploy) and the stage."""
    s = ctx.settings
    stage = Stage("serve", "5. Serve it, under load",
                  f"nimbleml serve on a free 127.0.0.1 port, serving only packages signed by the "
                  f"demo's key, dynamic batching on; {s.concurrency} keep-alive HTTP clients send "
                  f"single rows for {s.burst_s:g} s in {s.rounds} rounds, alternating with the "
                  "same server with batching off; the true labels of a share of the answers "
                  "go back through the feedback route so the monitor knows the accuracy.")  # fmt: skip
    out = ctx.folder("serve")
    store = out / "monitor.db"
    common = [f"{MODEL}={package}", "--verify-key", str(public_key), "--cache-mb", "0"]
    with timed(stage), contextlib.ExitStack() as stack:
        on = stack.enter_context(serving([*common, "--max-batch-size", "32", "--monitor-store",
                                          f"sqlite:///{store}"], out / "server.log"))  # fmt: skip
        # the same server with batching off, recording into a store of its own too
        other = ctx.out / "tmp" / "batching-off.db"
        off = stack.enter_context(serving([*common, "--max-batch-size", "1", "--monitor-store",
                                           f"sqlite:///{other}"],
                                          out / "server-batching-off.log"))  # fmt: skip
        on.wait_ready()
        off.wait_ready()
        figures = _drive(ctx, stage, on, off, out)
    figures["monitor_store"] = store
    _describe(ctx, stage, figures, out)
    ctx.echo(f"serve: {figures['on']['rps']:,.0f} req/s, p99 {ms(figures['on']['p99_ms'])}, "
             f"batching gain {figures['gain']:.2f}x")  # fmt: skip
    return figures, stage


def _drive(ctx: Context, stage: Stage, on: ServerProcess, off: ServerProcess,
           out: Path) -> dict[str, Any]:  # fmt: skip
    s = ctx.settings
    _, Xte, _, yte = ctx.data
    meta = json.loads(load.request(on.port, "GET", f"/v2/models/{MODEL}")[1])
    payloads = load.bodies(Xte, meta["inputs"][0]["name"])
    for server in (on, off):  # warm both: connections, threads, the model's arena
        load.burst(server.port, MODEL, payloads[:64], yte, 0.3, s.concurrency)
    # the two servers in alternating rounds, so that other work on the machine weighs on
    # both alike (a ratio of two bursts minutes apart measures the machine's mood)
    parts: dict[int, list[load.Burst]] = {on.port: [], off.port: []}
    taken = 0
    for _ in range(s.rounds):
        for server in (on, off):
            part = load.burst(server.port, MODEL, payloads, yte, s.burst_s / s.rounds,
                              s.concurrency)  # fmt: skip
            parts[server.port].append(part)
            if server is on:  # ground truth for a share of the answers, between the bursts
                share = part.answered[:: max(1, len(part.answered) * s.rounds // s.labels)]
                taken += load.feedback(on.port, MODEL, share, s.concurrency)
    batched, plain = load.merge(parts[on.port]), load.merge(parts[off.port])
    metrics = load.request(on.port, "GET", "/metrics")[1].decode()
    _wait_for_accuracy(on.port)
    why = screenshot(f"http://127.0.0.1:{on.port}/dashboard", out / "dashboard.png",
                     ctx.out / "tmp" / "chromium", size=(1400, 1250), settle_ms=2500)  # fmt: skip
    if why:
        stage.notes.append(f"dashboard picture skipped: {why}")
    size_sum = load.metric_sum(metrics, "nimbleml_batch_size_sum", MODEL)
    size_n = load.metric_sum(metrics, "nimbleml_batch_size_count", MODEL)
    figures = {"on": load.as_dict(batched), "off": load.as_dict(plain), "feedback": taken,
               "answered": len(batched.answered),
               "mean_batch": size_sum / size_n if size_n else None,
               "gain": batched.rps / plain.rps if plain.rps else 0.0,
               "port": on.port, "latencies": (batched.latencies_ms, plain.latencies_ms)}  # fmt: skip
    (out / "load.json").write_text(json.dumps(
        {k: v for k, v in figures.items() if k != "latencies"}, indent=2) + "\n")  # fmt: skip
    return figures


def _wait_for_accuracy(port: int, timeout_s: float = 8.0) -> None:
    """Until the dashboard's history holds an accuracy (it joins the ground truth every 5 s),
    so that its picture shows one; at most ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError, KeyError, IndexError):
            data = json.loads(load.request(port, "GET", "/dashboard/data")[1])
            if any(v is not None for v in data["models"][0]["series"]["quality"]):
                return
        time.sleep(0.25)


def _describe(ctx: Context, stage: Stage, f: dict[str, Any], out: Path) -> None:
    on, off = f["on"], f["off"]
    stage.figure("requests/s (batching on)", f"{on['rps']:,.0f} ({on['answered']:,} answered, "
                                             f"{on['errors']} errors)")  # fmt: skip
    stage.figure("latency p50 / p99", f"{ms(on['p50_ms'])} / {ms(on['p99_ms'])} (n={on['n']:,})")
    if f["mean_batch"]:
        stage.figure("mean batch the server formed", f"{f['mean_batch']:.2f} rows")
    stage.figure("batching gain (req/s on / off, same clients)", f"{f['gain']:.2f}x")
    stage.figure(
        "ground truth sent back",
        f"{f['feedback']:,} labels, for {f['feedback'] / max(f['answered'], 1):.0%} of the answers",
    )
    stage.tables.append(Table("the same clients against two servers, in alternating rounds", ["server", "req/s", "p50",
                              "p99", "n", "errors"],
                              [[name, f"{d['rps']:,.0f}", ms(d["p50_ms"]), ms(d["p99_ms"]),
                                f"{d['n']:,}", str(d["errors"])]
                               for name, d in (("--max-batch-size 32", on),
                                               ("--max-batch-size 1 (batching off)", off))]))  # fmt: skip
    if f["gain"] < 1.2:
        stage.notes.append("the student is so small that HTTP, not the model, takes most of each "
                           "request's time, so batching has little to gain here (on the "
                           "17M-parameter MLP of docs/serve.md it gained 7.6x); the clients "
                           "share the 2 cores with the servers, and short bursts on a busy "
                           "machine move by tens of percent")  # fmt: skip
    _latency_chart(out / "latency.png", *f.pop("latencies"))
    ctx.image(stage, out / "latency.png", "request latency of the burst, batching on and off")
    ctx.image(stage, out / "dashboard.png", "the server's live dashboard (/dashboard) after the burst, "
                                            "taken by headless Chromium")  # fmt: skip
    ctx.link(stage, out / "load.json", "the burst's figures as JSON")
    ctx.link(stage, out / "server.log", "the server's log")
    ctx.link(stage, out / "server-batching-off.log", "the batching-off server's log")
    ctx.link(stage, f["monitor_store"], "the monitor store (SQLite)")


def _latency_chart(path: Path, batched: Any, plain: Any) -> None:
    import numpy as np

    from ..bench.plots import new_figure

    fig = new_figure((8, 3.2))
    ax = fig.subplots()
    for values, label in ((batched, "batching on"), (plain, "batching off")):
        if len(values):
            xs = np.sort(values)
            ax.plot(xs, np.arange(1, len(xs) + 1) / len(xs) * 100, label=f"{label} (n={len(xs):,})")
    ax.set(xscale="log", xlabel="latency, ms (log scale)", ylabel="% of requests at or below",
           title="request latency over HTTP")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=100, bbox_inches="tight")


def capacity(figures: dict[str, Any]) -> dict[str, Any]:
    """The serve report (nimbleml.cost's format) of the batching-on burst."""
    from ..cost.inputs import serve_report

    on = figures["on"]
    # the usual 25 ms p99 target (docs/serve.md); a burst slower than that sets its own
    target = 25.0 if (on["p99_ms"] or 0.0) <= 25.0 else float(math.ceil(on["p99_ms"]))
    return serve_report(
        [{"name": MODEL, "capacity_rps": on["rps"], "p99_ms": on["p99_ms"], "p50_ms": on["p50_ms"],
          "max_batch_size": 32, "requests": on["requests"]}],
        target_p99_ms=target,
        load=f"closed loop, {on['concurrency']} keep-alive connections from the demo's own "
             f"threads on the same cores, {on['seconds']:.1f} s",
    )  # fmt: skip
