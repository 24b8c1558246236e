"""Figures for the predictor, its cache and ensembles, side by side in one run.

    .venv/bin/python benchmarks/runtime.py [--quick] [--only predictor cache ensemble]

- predictor overhead over calling the ONNX Runtime session directly, one row:
  cache miss (every call a new input, the cache full and evicting) and memory-cache hit
  (goals: <= 10 µs and <= 5 µs);
- cache hit latency per tier (memory, disk, Redis on a local redis-server);
- single-flight: N concurrent identical misses -> model calls;
- ensembles of 3 small scikit-learn members (digits) at batch 1 and 128: sequential vs
  threaded vs fused (one ONNX graph, one session), and the mode chosen (goal: fused >= 1.5x
  faster than sequential at batch 1);
- ensembles of 2-4 wider MLPs at batch 64: threaded and fused vs sequential.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))  # for tests._net
sys.path.insert(0, str(Path(__file__).parents[1] / "tests" / "runtime"))

import nimbleml
from _harness import quick_args, side_by_side, table
from conftest import RedisServer, free_port
from nimbleml.demo import digits, train_pipeline
from nimbleml.runtime import DiskTier, MemoryTier, OptimizedPredictor, RedisTier, TieredCache


def fresh_inputs(X: np.ndarray, n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [(X[i % len(X)][None] + rng.random((1, X.shape[1]), dtype=np.float32)) for i in range(n)]


def miss_overhead(pkg, X, n: int) -> dict[str, float]:
    """Interleaved blocks: bare session vs predictor misses, each call a new input, in steady
    state: the cache (0.25 MB) is full after the warm-up blocks, so every miss evicts an
    entry, as in a long-running server."""
    session = pkg.model.session
    name = session.get_inputs()[0].name
    pred = OptimizedPredictor(pkg, cache_size_mb=0.25)
    inputs = fresh_inputs(X, n * 10)
    bare_t, miss_t = [], []
    for block in range(-2, 10):  # two blocks of warm-up, not counted
        chunk = inputs[(block % 10) * n : (block % 10 + 1) * n]
        t0 = time.perf_counter_ns()
        for x in chunk:
            session.run(None, {name: x})
        bare = (time.perf_counter_ns() - t0) / n
        other = [x + 1 + block for x in chunk]  # new values: misses
        t0 = time.perf_counter_ns()
        for x in other:
            pred.predict(x)
        if block >= 0:
            bare_t.append(bare)
            miss_t.append((time.perf_counter_ns() - t0) / n)
    assert pred.cache is not None and pred.cache.computed >= n * 10
    return {"bare_us": float(np.median(bare_t)) / 1e3, "miss_us": float(np.median(miss_t)) / 1e3}


PARTS = ["predictor", "cache", "ensemble"]


def main() -> None:
    args = quick_args(__doc__, PARTS)
    Xtr, Xte, ytr, yte = digits()
    rounds = 5 if args.quick else 11
    rows: list[list[str]] = []
    if "predictor" in args.only or "cache" in args.only:
        pkg = nimbleml.compress(
            train_pipeline(Xtr, ytr), quantize=None, val=(Xte, yte), benchmark_time_s=0.01
        )
    if "predictor" in args.only:
        rows += predictor_rows(pkg, Xte, rounds, args.quick)
    if "cache" in args.only:
        rows += cache_rows(rounds)
    if "ensemble" in args.only:
        rows += small_ensemble_rows(Xtr, ytr, Xte, yte, rounds)
        rows += ensemble_rows(Xtr, ytr, Xte, yte, rounds)
    print(table(rows, ["figure", "value", "note"]))


def predictor_rows(pkg, Xte, rounds: int, quick: bool) -> list[list[str]]:
    rows = []
    m = miss_overhead(pkg, Xte, 500 if quick else 2000)
    rows.append(["miss: bare session, new input (µs)", f"{m['bare_us']:.2f}", ""])
    rows.append(["miss: predictor, new input (µs)", f"{m['miss_us']:.2f}",
                 f"+{m['miss_us'] - m['bare_us']:.2f} µs (goal <= 10)"])  # fmt: skip

    x = Xte[:1]
    session = pkg.model.session
    hit = OptimizedPredictor(pkg)
    hit.predict(x)
    t = side_by_side(
        {"bare": partial(session.run, None, {"X": x}), "hit": partial(hit.predict, x)},
        rounds=rounds,
    )
    rows.append(["hit: memory tier, predictor.predict (µs)", f"{t['hit']['p50_ms'] * 1e3:.2f}",
                 f"{t['hit']['p50_ms'] * 1e3:.2f} µs in all (goal <= 5); bare run {t['bare']['p50_ms'] * 1e3:.2f}"])  # fmt: skip

    return rows


def cache_rows(rounds: int) -> list[list[str]]:
    rows = []
    server = RedisServer(free_port())
    server.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            key, value = b"k" * 16, [np.array([1]), np.zeros((1, 10), np.float32)]
            tiers = {
                "memory": MemoryTier(2**20),
                "disk": DiskTier(tmp, 2**20),
                "redis": RedisTier(server.url),
            }
            for tier in tiers.values():
                tier.put(key, value)
            t = side_by_side(
                {n: partial(tier.get, key) for n, tier in tiers.items()}, rounds=rounds, calls=100
            )
            tiers["redis"].close()
            for n in tiers:
                rows.append(
                    [
                        f"hit latency, {n} tier get (µs)",
                        f"{t[n]['p50_ms'] * 1e3:.1f}",
                        f"p99 {t[n]['p99_ms'] * 1e3:.1f} µs",
                    ]
                )

            cache = TieredCache([MemoryTier(2**20), RedisTier(server.url)])
            calls = []

            def model_call():
                calls.append(1)
                time.sleep(0.05)
                return value

            n_threads = 32
            barrier = threading.Barrier(n_threads)

            def worker():
                barrier.wait()
                cache.get_or_compute(b"same-input-key!!", model_call)

            threads = [threading.Thread(target=worker) for _ in range(n_threads)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            rows.append([f"single-flight: {n_threads} concurrent identical misses", f"{len(calls)} model call(s)",
                         f"{cache.coalesced} waited for it"])  # fmt: skip
            cache.close()
    finally:
        server.stop()
    return rows


def small_ensemble_rows(Xtr, ytr, Xte, yte, rounds: int) -> list[list[str]]:
    """Three small scikit-learn classifiers: per call the members' own work is a few µs, so
    what an ensemble pays per member call (feeds, session entry, outputs) dominates, and
    one fused graph pays it once."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    from nimbleml.runtime import EnsemblePredictor

    fitted = [
        train_pipeline(Xtr, ytr),
        LogisticRegression(C=0.05, max_iter=300).fit(Xtr, ytr),
        MLPClassifier((32,), max_iter=200, random_state=0).fit(Xtr, ytr),
    ]
    members = [nimbleml.compress(m, quantize=None, val=(Xte, yte), benchmark_time_s=0.01)
               for m in fitted]  # fmt: skip
    ways = {w: EnsemblePredictor(members, mode=w) for w in ("sequential", "threaded", "fused")}
    rows = []
    for batch in (1, 128):
        x = Xte[:batch]
        auto = EnsemblePredictor(members, mode="auto")
        auto.predict(x)
        t = side_by_side({w: partial(e.predict, x) for w, e in ways.items()}, rounds=rounds,
                         calls=200 if batch == 1 else 50)  # fmt: skip
        seq = t["sequential"]["p50_ms"]
        rows.append([f"3 sklearn members, batch {batch}: sequential / threaded / fused (ms)",
                     " / ".join(f"{t[w]['p50_ms']:.4f}" for w in ways),
                     f"fused {seq / t['fused']['p50_ms']:.2f}x, threaded {seq / t['threaded']['p50_ms']:.2f}x "
                     f"faster than sequential; auto chose '{auto.mode}' (n={t['fused']['n']})"])  # fmt: skip
        auto.close()
    for e in ways.values():
        e.close()
    return rows


def ensemble_rows(Xtr, ytr, Xte, yte, rounds: int) -> list[list[str]]:
    from nimbleml.demo import train_mlp
    from nimbleml.runtime import EnsemblePredictor

    members = [
        nimbleml.compress(train_mlp(Xtr, ytr, hidden=512, epochs=2, seed=s), quantize=None,
                          val=(Xte, yte), benchmark_time_s=0.01)
        for s in range(4)
    ]  # fmt: skip
    x = Xte[:64]
    rows = []
    for n in (2, 3, 4):
        ways = {
            w: EnsemblePredictor(members[:n], mode=w) for w in ("sequential", "threaded", "fused")
        }
        auto = EnsemblePredictor(members[:n], mode="auto")
        auto.predict(x)
        t = side_by_side({w: partial(e.predict, x) for w, e in ways.items()}, rounds=rounds,
                         calls=50)  # fmt: skip
        seq = t["sequential"]["p50_ms"]
        rows.append([f"{n} MLPs (512 wide), batch 64: sequential / threaded / fused (ms)",
                     " / ".join(f"{t[w]['p50_ms']:.3f}" for w in ways),
                     f"threaded {seq / t['threaded']['p50_ms']:.2f}x, fused {seq / t['fused']['p50_ms']:.2f}x; "
                     f"auto chose '{auto.mode}'"])  # fmt: skip
        for e in (*ways.values(), auto):
            e.close()
    return rows


if __name__ == "__main__":
    main()
