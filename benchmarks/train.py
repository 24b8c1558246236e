"""Figures for the training issue (12), measured side by side in one run on this machine.

    .venv/bin/python benchmarks/train.py [--quick] [--only PART ...] [--json FILE]

1. overhead: nimbleml's Trainer against a hand-written fp32 loop on the same model, data,
   data order (torch.randperm from the generator InMemory seeds), batch 64 and AdamW: whole
   calls of a few epochs, alternating (ABBA) repetitions, the median of the per-pair ratios;
   digits MLP 64-512-512-10 and a small CNN on the digits as 1x8x8 images (goal <= 3%
   slower per epoch, aim <= 1%), with the ratios' interquartile range. The weights both
   reach are compared: the same work.
2. accum: batch 64 against 16 x 4 accumulated, one epoch, AdamW: max |parameter difference|
   (batch 16 without accumulation alongside, for the size of a real difference).
3. checkpointing: a deep MLP (24 Linear+ReLU layers 256 wide in 8 blocks of 3, batch 2048)
   and a deep CNN (8 residual blocks of 32 channels on 16x16, batch 32) trained with and
   without activation checkpointing, each in a fresh process: the peak of a training step's
   memory (resident memory above its level after the first step, when the weights and
   AdamW's state exist; kernel high-water mark), once with glibc's mmap threshold fixed at
   64 KB (resident memory follows the live tensors) and once with glibc's defaults (the
   process's footprint, heap included), and the step time (default allocator).
4. dataloader: a Dataset with per-sample work (digits upscaled to 32x32, shifted, noised):
   num_workers=0, a full grid (workers x prefetch x torch threads) and tune_loader's choice,
   the three re-measured side by side on real epochs (goal: >= 0.95 of the grid's best,
   tuning in <= 30 s). Each grid point is the median of two runs, one pass in each order.
5. ddp: `nimbleml train --nproc 2` against one process, one epoch (and with --grad-accum 2):
   max |parameter difference| of the saved weights.
6. amp: `bench_train` with `compare_amp()`: on a GPU a ResNet-18 (11M parameters) on
   3x64x64 inputs, fp16-mixed / bf16-mixed against fp32 (goal >= 2x samples/s, >= 20% less
   peak memory); on a CPU the digits MLP, where bf16 may be emulated. Its train-bench_*.json /
   .txt / .png go next to --json.
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).parent))

from _harness import table
from nimbleml.bench.machine import machine_info
from nimbleml.demo import digits
from nimbleml.train import Trainer
from nimbleml.train.bench import bench_train, compare_amp

PARTS = ["overhead", "accum", "checkpointing", "dataloader", "ddp", "amp"]
FP32 = {"precision": "fp32", "dataloader": {}, "device": "cpu", "seed": 0}


# -- models --------------------------------------------------------------------------------
def digits_mlp() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Linear(64, 512), torch.nn.ReLU(), torch.nn.Linear(512, 512), torch.nn.ReLU(),
        torch.nn.Linear(512, 10),
    )  # fmt: skip


def small_cnn() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(32 * 64, 10),
    )  # fmt: skip


class _Block(torch.nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        nn = torch.nn
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout),
        )  # fmt: skip
        self.skip = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


def deep_mlp(width: int = 256, blocks: int = 8, per_block: int = 3) -> torch.nn.Module:
    """24 Linear+ReLU layers, 256 wide, in 8 blocks of 3 (the unit checkpointing wraps)."""
    nn = torch.nn
    body = [nn.Sequential(*(m for _ in range(per_block) for m in (nn.Linear(width, width),
                                                                  nn.ReLU())))
            for _ in range(blocks)]  # fmt: skip
    return nn.Sequential(nn.Sequential(*body), nn.Linear(width, 10))


def deep_cnn(channels: int = 32, blocks: int = 8) -> torch.nn.Module:
    """8 residual blocks (conv-BN-ReLU-conv-BN + skip) of 32 channels: ResNet's unit."""
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(3, channels, 3, padding=1),
        nn.Sequential(*(_Block(channels, channels, 1) for _ in range(blocks))),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10),
    )  # fmt: skip


def cnn32() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(32 * 8 * 8, 10),
    )  # fmt: skip


def resnet18(classes: int = 10) -> torch.nn.Module:
    """ResNet-18's layout (torchvision's, 11.2M parameters) without torchvision."""
    nn = torch.nn
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                               nn.ReLU(), nn.MaxPool2d(3, 2, 1)]  # fmt: skip
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [_Block(cin, cout, stride), _Block(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, classes)]
    return nn.Sequential(*layers)


# -- 1. overhead ---------------------------------------------------------------------------
def hand_loop(model: torch.nn.Module, X: np.ndarray, y: np.ndarray, epochs: int,
              batch: int, seed: int = 0) -> torch.nn.Module:  # fmt: skip
    """What one would write by hand: AdamW (the Trainer's lr 1e-3 and weight decay 0), mean
    cross-entropy, InMemory's data order."""
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    n = len(xt)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        for i in range(0, n, batch):
            idx = order[i : i + batch]
            F.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    return model


def max_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    pairs = zip(a.parameters(), b.parameters(), strict=True)
    return max(float((p.detach() - q.detach()).abs().max()) for p, q in pairs)


def overhead(name: str, factory: Any, X: np.ndarray, y: np.ndarray, epochs: int,
             reps: int) -> dict[str, Any]:  # fmt: skip
    torch.manual_seed(0)
    init = factory()
    opts = {**FP32, "epochs": epochs, "batch_size": 64}

    def with_trainer() -> tuple[float, torch.nn.Module]:
        model = copy.deepcopy(init)
        t0 = time.perf_counter()
        Trainer(**opts).fit(model, (X, y))
        return time.perf_counter() - t0, model

    def by_hand() -> tuple[float, torch.nn.Module]:
        model = copy.deepcopy(init)
        t0 = time.perf_counter()
        hand_loop(model, X, y, epochs, 64)
        return time.perf_counter() - t0, model

    with_trainer(), by_hand()  # warm-up
    trainer_s, hand_s, ratios = [], [], []
    for r in range(reps):  # ABBA: neither side always goes first
        first, second = (with_trainer, by_hand) if r % 2 == 0 else (by_hand, with_trainer)
        a, model_a = first()
        b, model_b = second()
        t, h = (a, b) if first is with_trainer else (b, a)
        trainer_s.append(t / epochs)
        hand_s.append(h / epochs)
        ratios.append(t / h)
    return {
        "model": name, "epochs_per_call": epochs, "repetitions": reps,
        "trainer_epoch_ms": 1e3 * statistics.median(trainer_s),
        "hand_epoch_ms": 1e3 * statistics.median(hand_s),
        "ratio": statistics.median(ratios),
        "ratio_of_best": min(trainer_s) / min(hand_s),  # bimodal here: see the docs
        "ratio_iqr": [float(q) for q in np.percentile(ratios, [25, 75])],
        "weights_max_diff": max_diff(model_a, model_b),
    }  # fmt: skip


# -- 2. accumulation -----------------------------------------------------------------------
def accumulation(X: np.ndarray, y: np.ndarray) -> dict[str, float]:
    torch.manual_seed(0)
    init = digits_mlp()

    def fit(**o: Any) -> torch.nn.Module:
        return Trainer(**FP32, epochs=1, **o).fit(copy.deepcopy(init), (X, y)).model

    big = fit(batch_size=64)
    return {
        "max_diff_16x4_vs_64": max_diff(big, fit(batch_size=16, grad_accum=4)),
        "max_diff_16_vs_64": max_diff(big, fit(batch_size=16)),
        "max_change_from_init": max_diff(big, init),
    }


# -- 3. checkpointing (one fresh process per configuration) ----------------------------------
def checkpointing_child(kind: str, on: bool, steps: int, out: Any) -> None:
    """In a fresh process: train ``kind`` for ``steps`` steps; the peak resident memory of
    the steps after the first (weights and AdamW's state exist by then) above the level
    after the first, and the median step time."""
    from nimbleml.bench.memory import reset_high_water, status_bytes, trim_heap
    from nimbleml.train import Trainer

    torch.manual_seed(0)
    if kind == "deep MLP":
        model, batch = deep_mlp(), 2048
        X = torch.randn(batch * steps, 256)
    else:
        model, batch = deep_cnn(), 32
        X = torch.randn(batch * steps, 3, 16, 16)
    y = torch.randint(0, 10, (len(X),))
    opts = {**FP32, "epochs": 1, "batch_size": batch, "checkpointing": on}
    Trainer(**opts).fit(copy.deepcopy(model), (X[: 2 * batch], y[: 2 * batch]))  # warm-up
    mark: dict[str, int] = {}

    def after_first_step(event: str, info: dict[str, Any]) -> None:
        if event == "step_end" and info["step"] == 1:
            trim_heap()
            mark["base"] = status_bytes("VmRSS") or 0
            reset_high_water()  # the high-water mark starts again from here

    result = Trainer(**opts, callbacks=[after_first_step]).fit(model, (X, y))
    out.put({"peak_mb": ((status_bytes("VmHWM") or 0) - mark["base"]) / 2**20,
             "step_ms": 1e3 * statistics.median(result.report.step_times_s[1:]),
             "steps": len(result.report.step_times_s) - 1})  # fmt: skip


def _child(kind: str, on: bool, steps: int, fixed_mmap: bool) -> dict[str, float]:
    """checkpointing_child in a fresh process; ``fixed_mmap``: glibc's mmap threshold fixed at
    64 KB, so that every freed tensor goes back to the OS and resident memory follows the live
    tensors (by default glibc raises the threshold as blocks are freed and keeps them in its
    heap: resident memory then also counts the heap's free blocks)."""
    ctx = multiprocessing.get_context("spawn")
    saved = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    if fixed_mmap:
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"  # read by the child's malloc at start
    try:
        queue = ctx.Queue()
        proc = ctx.Process(target=checkpointing_child, args=(kind, on, steps, queue))
        proc.start()
    finally:
        if saved is None:
            os.environ.pop("MALLOC_MMAP_THRESHOLD_", None)
        else:
            os.environ["MALLOC_MMAP_THRESHOLD_"] = saved
    result = queue.get(timeout=600)
    proc.join()
    return result


def checkpointing(steps: int, rounds: int) -> dict[str, Any]:
    """Per model, rounds of four fresh processes (without / with checkpointing, each with the
    default allocator and with the fixed mmap threshold), alternating the order. Step time
    from the default allocator's runs (the fixed threshold adds page faults to every step)."""
    out: dict[str, Any] = {}
    for kind in ("deep MLP", "deep CNN"):
        runs: dict[tuple[bool, bool], list[dict[str, float]]] = {}
        for r in range(rounds):
            for on in (False, True) if r % 2 == 0 else (True, False):
                for fixed in (False, True):
                    runs.setdefault((on, fixed), []).append(_child(kind, on, steps, fixed))

        def median(on: bool, fixed: bool, key: str, runs: dict = runs) -> float:
            return statistics.median(x[key] for x in runs[(on, fixed)])

        plain = {"peak_mb": median(False, True, "peak_mb"), "step_ms": median(False, False, "step_ms"),
                 "peak_mb_default_malloc": median(False, False, "peak_mb")}  # fmt: skip
        ckpt = {"peak_mb": median(True, True, "peak_mb"), "step_ms": median(True, False, "step_ms"),
                "peak_mb_default_malloc": median(True, False, "peak_mb")}  # fmt: skip
        out[kind] = {"plain": plain, "checkpointing": ckpt, "steps": runs[(False, False)][0]["steps"],
                     "rounds": rounds,
                     "memory_saved": 1 - ckpt["peak_mb"] / plain["peak_mb"],
                     "memory_saved_default_malloc": 1 - ckpt["peak_mb_default_malloc"]
                     / plain["peak_mb_default_malloc"],
                     "time_cost": ckpt["step_ms"] / plain["step_ms"] - 1}  # fmt: skip
    return out


# -- 4. DataLoader -------------------------------------------------------------------------
class AugmentedDigits(torch.utils.data.Dataset):
    """The digits upscaled to 32x32, shifted by up to 2 pixels and noised, per item: per-sample
    CPU work in Python and numpy, as decoding and augmenting images is."""

    def __init__(self, X: np.ndarray, y: np.ndarray, copies: int = 2) -> None:
        self.X, self.y, self.copies = X.reshape(-1, 8, 8), y, copies

    def __len__(self) -> int:
        return len(self.X) * self.copies

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        rng = np.random.default_rng(i)
        j = i % len(self.X)
        img = np.kron(self.X[j], np.ones((4, 4), dtype=np.float32))
        img = np.roll(img, tuple(rng.integers(-2, 3, 2)), axis=(0, 1))
        img = img + rng.normal(0.0, 0.05, img.shape).astype(np.float32)
        return torch.from_numpy(img[None]), int(self.y[j])


def loader_epoch(data: Any, kwargs: dict[str, Any], threads: int) -> float:
    """samples/s of the second of two epochs (workers started in the first: persistent)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    res = Trainer(**{**FP32, "dataloader": kwargs}, epochs=2, batch_size=64).fit(cnn32(), data)
    return float(res.history[-1]["samples_per_s"])


def dataloader(X: np.ndarray, y: np.ndarray, quick: bool, rounds: int) -> dict[str, Any]:
    from nimbleml.train.loader_settings import tune_loader

    data = AugmentedDigits(X, y)
    default_threads = torch.get_num_threads()
    grid: list[tuple[dict[str, Any], int]] = [({}, t) for t in (1, 2)]
    for w in (1, 2) if quick else (1, 2, 3):
        for pf in (2,) if quick else (2, 4):
            for t in (1, 2):
                grid.append(({"num_workers": w, "prefetch_factor": pf,
                              "persistent_workers": True}, t))  # fmt: skip
    runs: list[list[float]] = [[] for _ in grid]
    for r in range(2):  # every point twice, the second pass in reverse order
        for i in range(len(grid))[:: 1 if r == 0 else -1]:
            runs[i].append(loader_epoch(data, *grid[i]))
    measured = [(kw, t, statistics.median(v)) for (kw, t), v in zip(grid, runs, strict=True)]
    best_kw, best_t, _ = max(measured, key=lambda m: m[2])
    torch.set_num_threads(default_threads)
    t0 = time.perf_counter()
    decision = tune_loader(cnn32(), data, 64, device="cpu", precision="fp32", cache=False)
    tuning_s = time.perf_counter() - t0
    contenders = {"num_workers=0": ({}, default_threads), "tuned": (decision.kwargs, decision.threads),
                  "grid best": (best_kw, best_t)}  # fmt: skip
    if (best_kw, best_t) == ({}, default_threads):  # the same setting: measured once, named twice
        del contenders["grid best"]
    again: dict[str, list[float]] = {k: [] for k in contenders}
    for r in range(rounds):  # side by side, alternating order
        for name in list(contenders)[:: 1 if r % 2 == 0 else -1]:
            again[name].append(loader_epoch(data, *contenders[name]))
    torch.set_num_threads(default_threads)
    sps = {k: statistics.median(v) for k, v in again.items()}
    sps.setdefault("grid best", sps["num_workers=0"])
    return {
        "grid": [{"kwargs": kw, "threads": t, "samples_per_s": s} for kw, t, s in measured],
        "tuned": {"kwargs": decision.kwargs, "threads": decision.threads,
                  "reason": decision.reason, "seconds": tuning_s},
        "grid_best": {"kwargs": best_kw, "threads": best_t},
        "samples_per_s": sps, "rounds": rounds,
        "tuned_vs_grid_best": sps["tuned"] / sps["grid best"],
        "tuned_vs_workers0": sps["tuned"] / sps["num_workers=0"],
    }  # fmt: skip


# -- 5. DDP --------------------------------------------------------------------------------
DDP_MODEL = """
import torch

def build():
    return torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
"""


def ddp(X: np.ndarray, y: np.ndarray, quick: bool) -> dict[str, Any]:
    exe = str(Path(sys.executable).with_name("nimbleml"))
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "ddp_model.py").write_text(textwrap.dedent(DDP_MODEL))
        np.savez(d / "train.npz", X=X, y=y)
        for accum in (1,) if quick else (1, 2):
            weights = {}
            for nproc in (1, 2):
                path = d / f"w{nproc}-{accum}.pt"
                cmd = [exe, "train", "--model", f"{d}/ddp_model.py:build", "--data",
                       str(d / "train.npz"), "--epochs", "1", "--batch-size", "64",
                       "--grad-accum", str(accum), "--nproc", str(nproc), "--save-model",
                       str(path), "--quiet"]  # fmt: skip
                t0 = time.perf_counter()
                done = subprocess.run(cmd, capture_output=True, text=True, cwd=d, timeout=600)
                if done.returncode != 0:
                    return {"error": (done.stderr.strip().splitlines() or ["?"])[-1]}
                out[f"nproc{nproc}_accum{accum}_s"] = time.perf_counter() - t0
                weights[nproc] = torch.load(path)
            out[f"max_diff_accum{accum}"] = max(
                float((weights[1][k] - weights[2][k]).abs().max()) for k in weights[1]
            )
    return out


# -- 6. mixed precision --------------------------------------------------------------------
def amp(quick: bool, out_dir: Path) -> dict[str, Any]:
    if torch.cuda.is_available():
        g = torch.Generator().manual_seed(0)
        n = 1024 if quick else 4096
        X = torch.randn(n, 3, 64, 64, generator=g)
        y = torch.randint(0, 10, (n,), generator=g)
        res = bench_train(resnet18, (X, y), compare_amp("cuda"), epochs=2, batch_size=128,
                          repeats=1 if quick else 2, device="cuda")  # fmt: skip
        model = "ResNet-18 (11.2M), 3x64x64, batch 128, CUDA"
    else:
        Xtr, Xte, ytr, yte = digits()
        res = bench_train(digits_mlp, (Xtr, ytr), compare_amp("cpu"), val=(Xte, yte),
                          epochs=2, batch_size=64, repeats=1 if quick else 3)  # fmt: skip
        model = "digits MLP 64-512-512-10, batch 64, CPU"
    print(res.table())
    files = [str(p) for p in res.save(out_dir)]
    fp32 = res.row("fp32")
    rows = {}
    for r in res.rows:
        if r.label != "fp32" and r.ran and fp32.peak_memory_mb:
            rows[r.label] = {"speedup": r.speedup, "memory_ratio": (r.peak_memory_mb or 0)
                             / fp32.peak_memory_mb, "samples_per_s": r.samples_per_s,
                             "peak_memory_mb": r.peak_memory_mb}  # fmt: skip
    return {"model": model, "fp32": {"samples_per_s": fp32.samples_per_s,
                                      "peak_memory_mb": fp32.peak_memory_mb},
            "mixed": rows, "files": files, "memory": res.memory}  # fmt: skip


# -- the run -------------------------------------------------------------------------------
def summary(results: dict[str, Any]) -> list[list[object]]:
    rows: list[list[object]] = []
    for o in results.get("overhead", []):
        rows.append([f"Trainer vs hand loop, {o['model']} (ms/epoch, median)",
                     f"{o['hand_epoch_ms']:.1f}", f"{o['trainer_epoch_ms']:.1f}",
                     f"{100 * (o['ratio'] - 1):+.1f}%", "<= +3% (aim +1%)"])  # fmt: skip
        low, high = o["ratio_iqr"]
        rows.append([f"  the ratio's spread over {o['repetitions']} pairs (IQR)", "", "",
                     f"{100 * (low - 1):+.1f}%..{100 * (high - 1):+.1f}%", "report"])  # fmt: skip
        rows.append([f"  same weights as the hand loop ({o['model']})", "", "",
                     f"{o['weights_max_diff']:.1e}", "~0 (fp32 rounding)"])  # fmt: skip
    if "accum" in results:
        a = results["accum"]
        rows.append(["accumulation 16x4 vs batch 64 (max |param diff|)", "", "",
                      f"{a['max_diff_16x4_vs_64']:.1e}", "<= 5e-6"])  # fmt: skip
        rows.append(["  for scale: batch 16 vs 64, no accumulation", "", "",
                     f"{a['max_diff_16_vs_64']:.1e}", "report"])  # fmt: skip
    for kind, c in results.get("checkpointing", {}).items():
        p, k = c["plain"], c["checkpointing"]
        rows.append([f"checkpointing, {kind}: step peak MB (live tensors)", f"{p['peak_mb']:.0f}",
                     f"{k['peak_mb']:.0f}", f"{100 * c['memory_saved']:.0f}% saved",
                     "report"])  # fmt: skip
        rows.append(["  the same, glibc's default malloc (process RSS)",
                     f"{p['peak_mb_default_malloc']:.0f}", f"{k['peak_mb_default_malloc']:.0f}",
                     f"{100 * c['memory_saved_default_malloc']:.0f}% saved", "report"])  # fmt: skip
        rows.append([f"checkpointing, {kind}: step ms", f"{c['plain']['step_ms']:.0f}",
                     f"{c['checkpointing']['step_ms']:.0f}", f"{100 * c['time_cost']:+.0f}% time",
                     "report"])  # fmt: skip
    if "dataloader" in results:
        d = results["dataloader"]
        s = d["samples_per_s"]
        rows.append(["DataLoader tuned vs num_workers=0 (samples/s)", f"{s['num_workers=0']:.0f}",
                     f"{s['tuned']:.0f}", f"{d['tuned_vs_workers0']:.2f}x", "report"])  # fmt: skip
        rows.append(["DataLoader tuned vs the grid's best (samples/s)", f"{s['grid best']:.0f}",
                     f"{s['tuned']:.0f}", f"{d['tuned_vs_grid_best']:.2f}", ">= 0.95"])  # fmt: skip
        rows.append(["DataLoader tuning time (s)", "", f"{d['tuned']['seconds']:.1f}", "",
                     "<= 30"])  # fmt: skip
    if "ddp" in results:
        d = results["ddp"]
        if "error" in d:
            rows.append(["DDP 2 processes vs 1", "", "", d["error"][:60], "~0"])
        for key in sorted(k for k in d if k.startswith("max_diff")):
            accum = key.rsplit("accum", 1)[1]
            rows.append([f"DDP 2 processes vs 1, grad_accum {accum} (max |param diff|)", "", "",
                         f"{d[key]:.1e}", "~0 (fp32 rounding)"])  # fmt: skip
    if "amp" in results:
        a = results["amp"]
        for label, m in a["mixed"].items():
            gpu = "CUDA" in a["model"]
            rows.append([f"{label} vs fp32, {a['model'].split(',')[0]} (samples/s)",
                         f"{a['fp32']['samples_per_s']:.0f}", f"{m['samples_per_s']:.0f}",
                         f"{m['speedup']:.2f}x", ">= 2x" if gpu else "report (emulated?)"])  # fmt: skip
            rows.append([f"  {label} peak memory vs fp32 (MB)", f"{a['fp32']['peak_memory_mb']:.1f}",
                         f"{m['peak_memory_mb']:.1f}", f"{m['memory_ratio']:.2f}",
                         "<= 0.80" if gpu else "report"])  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, shorter runs")
    parser.add_argument("--only", nargs="+", choices=PARTS, default=PARTS, help="these parts")
    parser.add_argument("--json", type=Path, default=Path("bench-out/train.json"))
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    quick = args.quick
    Xtr, _, ytr, _ = digits()
    load = os.getloadavg()
    results: dict[str, Any] = {"machine": machine_info().to_dict(), "quick": quick,
                               "load_average_at_start": load}  # fmt: skip
    print(f"load average at start: {load[0]:.2f} on {os.cpu_count()} cores", flush=True)
    if "overhead" in args.only:
        epochs, reps = (3, 7) if quick else (5, 31)
        results["overhead"] = [
            overhead("digits MLP", digits_mlp, Xtr, ytr, epochs, reps),
            overhead("small CNN", small_cnn, Xtr.reshape(-1, 1, 8, 8), ytr, epochs, reps),
        ]
        print("overhead: done", flush=True)
    if "accum" in args.only:
        results["accum"] = accumulation(Xtr, ytr)
    if "checkpointing" in args.only:
        results["checkpointing"] = checkpointing(steps=6 if quick else 10, rounds=1 if quick else 2)
        print("checkpointing: done", flush=True)
    if "dataloader" in args.only:
        try:
            results["dataloader"] = dataloader(Xtr, ytr, quick, rounds=2 if quick else 5)
        except ImportError as exc:
            print(f"dataloader: left out, nimbleml.train.loader_settings is not there ({exc})")
        print("dataloader: done", flush=True)
    if "ddp" in args.only:
        results["ddp"] = ddp(Xtr, ytr, quick)
        print("ddp: done", flush=True)
    if "amp" in args.only:
        results["amp"] = amp(quick, args.json.parent)
    results["load_average_at_end"] = os.getloadavg()
    print()
    print(table(summary(results), ["figure", "baseline", "nimbleml", "result", "goal"]))
    print(f"\nload average at start {load[0]:.2f}, at end {os.getloadavg()[0]:.2f} "
          f"({os.cpu_count()} cores): above the core count, other work shared the machine")  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2, default=str))
    print(f"written: {args.json}")


if __name__ == "__main__":
    main()
