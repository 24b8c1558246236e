"""nimbleml against the runtimes a user would pick instead, on this machine, timed side by side.

    .venv/bin/python benchmarks/peers.py [--quick] [--only mlp128,mlp512,cnn,encoder] [--json FILE]

The same models (digits MLPs 64-128-128-10 and 64-512-512-10, a conv net with BatchNorm for
3x32x32 images, a 22.7M-parameter BERT-layout encoder on padded 64-token sentences) through
each contender, each called its fastest honest way, at batch 1 and batch 32:

- torch: eager fp32 under ``torch.inference_mode()``, the input tensors built beforehand.
- onnxruntime: ``torch.onnx.export`` (legacy exporter, dynamic batch/sequence axes; the dynamo
  exporter where the legacy one fails), ``InferenceSession`` with default options,
  ``sess.run(None, feeds)``.
- openvino fp32: ``ov.convert_model`` of that ONNX file, reshaped to static shapes and compiled
  per batch size with ``PERFORMANCE_HINT=LATENCY`` and ``INFERENCE_PRECISION_HINT=f32``; one
  reused InferRequest; the input copied into its tensor, ``req.infer()``, the output copied
  out (the quickest public call: 30 us against 48 us for ``req.infer(feeds,
  share_inputs=True)`` on the MLP). On a CPU with AVX512_BF16 or AMX OpenVINO computes in
  bf16 unless told f32: there ``openvino bf16`` (the default hint) is timed as well.
- nncf int8: ``nncf.quantize`` of the fp32 OpenVINO model (300 calibration samples; the
  transformer scheme for the encoder), called the same way.
- nimbleml: ``nimbleml.optimize(model, val, max_drop=0.01, batch_sizes=[1, 32])``, timed
  through ``result.best.predict(x)``, the call a user makes; its pick, engine, search seconds
  and metric drop are recorded.

Each model and batch size: a warm-up (at least 20 calls), then interleaved rounds (the order rotating) of a fixed
number of calls per contender, sized to ~0.15 s; p50 is the median of the per-round medians,
spread the IQR of all calls over p50, n the calls timed. "x torch" is torch's p50 over the
contender's. "cosine" is the mean per-row cosine of the contender's outputs to torch's on the
validation inputs. Goal: nimbleml / best OpenVINO >= 1.0 (p50 of the best OpenVINO contender
over nimbleml's). --json writes machine info, load averages and every figure. Run it alone:
torch's OpenMP threads slow down many times over when another process holds a core.
--quick (3 rounds of ~0.05 s, 32 calibration samples, a 20 s search) is a smoke run only.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

from _harness import table
from _models import bert_layout_encoder, bn_convnet, sentences

PARTS = ("mlp128", "mlp512", "cnn", "encoder")
BATCHES = (1, 32)
Feeds = dict[str, np.ndarray]
Bind = Callable[[Feeds], Callable[[], Any]]  # inputs -> a call with everything prebuilt


@dataclass
class Case:
    model: torch.nn.Module
    val: Feeds  # validation inputs, by input name
    labels: np.ndarray | None
    metric: str
    calib: list[Feeds]  # one sample each, for NNCF
    transformer: bool = False
    info: dict[str, Any] = field(default_factory=dict)

    def user_input(self, feeds: Feeds) -> Any:
        """What a user passes to ``Package.predict``: the array, or the dict of arrays."""
        return feeds if self.transformer else feeds["x"]


def rows(feeds: Feeds, sl: slice) -> Feeds:
    return {k: np.ascontiguousarray(v[sl]) for k, v in feeds.items()}


def build_case(part: str, quick: bool) -> Case:
    n_calib = 32 if quick else 300
    rng = np.random.default_rng(0)
    if part.startswith("mlp"):
        from nimbleml.demo import digits, train_mlp

        Xtr, Xte, ytr, yte = digits()
        model = train_mlp(Xtr, ytr, hidden=int(part[3:]), epochs=5 if quick else 30)
        calib = [{"x": Xtr[i : i + 1]} for i in range(n_calib)]
        return Case(model, {"x": Xte}, yte, "accuracy", calib)
    if part == "cnn":
        images = rng.standard_normal((64 if quick else 256, 3, 32, 32)).astype(np.float32)
        more = rng.standard_normal((n_calib, 3, 32, 32)).astype(np.float32)
        calib = [{"x": more[i : i + 1]} for i in range(n_calib)]
        return Case(bn_convnet(), {"x": images}, None, "cosine", calib)
    tokens = sentences(32 if quick else 64, length=64, seed=2)
    more = sentences(n_calib, length=64, seed=3)
    calib = [rows(more, slice(i, i + 1)) for i in range(n_calib)]
    return Case(bert_layout_encoder(), tokens, None, "cosine", calib, transformer=True)


# -- contenders: each returns a Bind ----------------------------------------------------------
def torch_eager(case: Case) -> Bind:
    model = case.model

    def bind(feeds: Feeds) -> Callable[[], Any]:
        t = {k: torch.from_numpy(v) for k, v in feeds.items()}
        args = () if case.transformer else tuple(t.values())
        kwargs = t if case.transformer else {}

        def call() -> Any:
            with torch.inference_mode():
                return model(*args, **kwargs)

        return call

    return bind


def export_onnx(case: Case, path: Path) -> str:
    """The legacy exporter with dynamic batch (and sequence) axes, else the dynamo one."""
    names = list(case.val)
    example = tuple(torch.from_numpy(v[:2]) for v in case.val.values())
    axes = {n: {0: "batch", 1: "seq"} if case.transformer else {0: "batch"} for n in names}
    common = {"input_names": names, "output_names": ["out"]}
    try:
        torch.onnx.export(case.model, example, str(path), dynamic_axes={**axes, "out": {0: "batch"}},
                          opset_version=17, dynamo=False, **common)  # fmt: skip
        return "legacy"
    except Exception as exc:
        case.info["legacy_export_error"] = str(exc).splitlines()[0][:300]
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    shapes = tuple({0: batch, 1: seq} if case.transformer else {0: batch} for _ in names)
    with contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(case.model, example, str(path), dynamic_shapes=shapes, dynamo=True,
                          **common)  # fmt: skip
    return "dynamo"


def onnxruntime_alone(path: Path) -> Bind:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path))
    return lambda feeds: lambda: sess.run(None, feeds)


def openvino_bind(ov_model: Any, config: dict[str, str], info: dict[str, Any]) -> Bind:
    """Static shapes compiled per batch size; one reused request; input copied in, output out."""
    import openvino as ov

    core, compiled = ov.Core(), {}

    def bind(feeds: Feeds) -> Callable[[], Any]:
        key = tuple(v.shape for v in feeds.values())
        if key not in compiled:
            m = ov_model.clone()
            m.reshape({p.get_any_name(): list(feeds[p.get_any_name()].shape) for p in m.inputs})
            compiled[key] = core.compile_model(m, "CPU", config)
            info["precision"] = str(compiled[key].get_property("INFERENCE_PRECISION_HINT"))
            info["threads"] = int(compiled[key].get_property("INFERENCE_NUM_THREADS"))
        cm = compiled[key]
        req = cm.create_infer_request()
        pairs = [(req.get_tensor(p).data, feeds[p.get_any_name()]) for p in cm.inputs]
        out = req.get_output_tensor(0).data

        def call() -> np.ndarray:
            for dst, src in pairs:
                np.copyto(dst, src)
            req.infer()
            return out.copy()

        return call

    return bind


def nncf_int8(onnx_path: Path, case: Case) -> Any:
    import nncf

    import openvino as ov

    extra = {"model_type": nncf.ModelType.TRANSFORMER} if case.transformer else {}
    with contextlib.redirect_stdout(io.StringIO()):  # its progress bars
        return nncf.quantize(ov.convert_model(str(onnx_path)), nncf.Dataset(case.calib),
                             subset_size=len(case.calib), **extra)  # fmt: skip


def nimbleml_pick(case: Case, budget: float, info: dict[str, Any]) -> Bind:
    from nimbleml import optimize

    val = (case.user_input(case.val), case.labels)
    kw = {"metric": case.metric, "max_drop": 0.01, "time_budget_s": budget}
    t0 = time.perf_counter()
    try:
        result = optimize(case.model, val, batch_sizes=list(BATCHES), **kw)
    except TypeError:  # TODO(issue 21): drop once optimize(batch_sizes=...) has landed
        info["note"] = "optimize() took no batch_sizes: searched at batch 1 only"
        result = optimize(case.model, val, **kw)
    best = next(c for c in result.candidates if c.name == result.best_name)
    pkg = result.best
    engine = (pkg.manifest.get("runtime") or {}).get("engine")
    info.update(pick=result.best_name, engine=engine, search_s=time.perf_counter() - t0,
                drop=best.drop, metric=case.metric)  # fmt: skip
    return lambda feeds: lambda: pkg.predict(case.user_input(feeds))


def why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}"


def contenders(case: Case, workdir: Path, budget: float) -> dict[str, Any]:
    """name -> Bind, or the error (a string) that stopped it."""
    import openvino as ov

    out: dict[str, Any] = {"torch": torch_eager(case)}
    onnx_path, setup = workdir / "model.onnx", case.info.setdefault("setup_s", {})

    def attempt(name: str, make: Callable[[], Bind]) -> None:
        t0 = time.perf_counter()
        try:
            out[name] = make()
        except Exception as exc:
            out[name] = why(exc)
        setup[name] = round(time.perf_counter() - t0, 2)

    t0 = time.perf_counter()
    try:
        case.info["exporter"] = export_onnx(case, onnx_path)
        setup["onnx export"] = round(time.perf_counter() - t0, 2)
    except Exception as exc:
        stopped = f"no ONNX file: {why(exc)}"
        out.update(dict.fromkeys(["onnxruntime", "openvino fp32", "nncf int8"], stopped))
    if onnx_path.exists():
        attempt("onnxruntime", lambda: onnxruntime_alone(onnx_path))
        fp32, ovinfo = ov.convert_model(str(onnx_path)), case.info.setdefault("openvino", {})
        latency = {"PERFORMANCE_HINT": "LATENCY"}
        configs = {"openvino fp32": {**latency, "INFERENCE_PRECISION_HINT": "f32"}}
        if ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT") != ov.Type.f32:
            configs["openvino bf16"] = latency  # what OpenVINO computes in by default here
        for name, conf in configs.items():
            ovinfo[name] = {}
            attempt(name, lambda c=conf, i=ovinfo[name]: openvino_bind(fp32, c, i))
        ovinfo["nncf int8"] = {}
        attempt("nncf int8", lambda: openvino_bind(nncf_int8(onnx_path, case),
                                                   configs["openvino fp32"], ovinfo["nncf int8"]))  # fmt: skip
    case.info["nimbleml"] = {}
    attempt("nimbleml", lambda: nimbleml_pick(case, budget, case.info["nimbleml"]))
    return out


# -- timing and accuracy ---------------------------------------------------------------------
WARM_CALLS = 20  # nimbleml's OpenVINO model compiles a shape of its own after 16 calls


def interleaved(fns: dict[str, Callable[[], Any]], rounds: int, target_s: float) -> dict[str, dict]:
    """Warm-up (~target_s and at least WARM_CALLS calls each, so that a runtime that
    specialises on a repeated shape is timed in its steady state, as a server sees it), then
    rounds (order rotating) of a fixed number of calls per contender, sized to ~target_s; up
    to twice the rounds while a spread stays over 10%."""
    clock, calls = time.perf_counter_ns, {}
    for name, fn in fns.items():
        t_end, ts = clock() + target_s * 1e9, []
        while len(ts) < WARM_CALLS or clock() < t_end:
            t0 = clock()
            fn()
            ts.append(clock() - t0)
        calls[name] = int(np.clip(target_s * 1e9 / np.median(ts[len(ts) // 2 :]), 1, 5000))
    per_round: dict[str, list[float]] = {k: [] for k in fns}
    samples: dict[str, list[float]] = {k: [] for k in fns}
    names, out, r = list(fns), {}, 0
    while r < rounds or (r < 2 * rounds and max(t["spread"] for t in out.values()) > 0.1):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            fn, ts = fns[name], np.empty(calls[name])
            for i in range(calls[name]):
                t0 = clock()
                fn()
                ts[i] = clock() - t0
            per_round[name].append(float(np.median(ts)) / 1e6)
            samples[name].extend((ts / 1e6).tolist())
        r += 1
        for name in fns:
            p50, (q1, q3) = (
                float(np.median(per_round[name])),
                np.percentile(samples[name], [25, 75]),
            )
            out[name] = {"p50_ms": p50, "n": len(samples[name]), "rounds": r, "iqr_ms": q3 - q1,
                         "spread": (q3 - q1) / p50, "round_medians_ms": per_round[name]}  # fmt: skip
    return out


def first(out: Any) -> np.ndarray:
    if isinstance(out, list | tuple):
        out = out[0]
    return np.asarray(out, dtype=np.float64).reshape(len(out), -1)


def cosine_to(ref: np.ndarray, got: np.ndarray) -> float:
    num = (ref * got).sum(1)
    den = np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1)
    return float(np.mean(num / np.maximum(den, 1e-12)))


def outputs(bind: Bind, val: Feeds, batch: int) -> np.ndarray:
    n = len(next(iter(val.values()))) // batch * batch
    chunks = [rows(val, slice(i, i + batch)) for i in range(0, n, batch)]
    return np.concatenate([first(bind(chunk)()) for chunk in chunks])


def run_part(part: str, args: argparse.Namespace, workdir: Path) -> tuple[list, list, dict]:
    case = build_case(part, args.quick)
    budget = 20.0 if args.quick else args.budget
    binds = contenders(case, workdir, budget)
    ok = {k: v for k, v in binds.items() if not isinstance(v, str)}
    failed = {k: v for k, v in binds.items() if isinstance(v, str)}
    record: dict[str, Any] = {"info": case.info, "failed": failed, "batches": {}, "cosine": {}}
    ref = outputs(ok["torch"], case.val, max(BATCHES))
    for name, bind in ok.items():
        try:
            record["cosine"][name] = cosine_to(ref, outputs(bind, case.val, max(BATCHES)))
        except Exception as exc:
            failed[name] = why(exc)
    ok = {k: v for k, v in ok.items() if k not in failed}
    pick = case.info.get("nimbleml", {})
    if pick.get("pick"):
        print(f"{part}: nimbleml picked {pick['pick']} ({pick['engine']}), search "
              f"{pick['search_s']:.1f} s, {pick['metric']} drop {pick['drop']:.4f}", flush=True)  # fmt: skip
    table_rows, goals = [], []
    for batch in BATCHES:
        fns = {name: bind(rows(case.val, slice(0, batch))) for name, bind in ok.items()}
        timed = interleaved(fns, 3 if args.quick else args.rounds, 0.05 if args.quick else 0.15)
        record["batches"][batch] = timed
        base = timed["torch"]["p50_ms"]
        for name, t in timed.items():
            t["x_torch"] = base / t["p50_ms"]
            table_rows.append([part, batch, name, f"{t['p50_ms']:.3f}", t["n"], f"{t['spread']:.0%}",
                               f"{t['x_torch']:.2f}x", f"{record['cosine'][name]:.5f}"])  # fmt: skip
        for name, reason in failed.items():
            table_rows.append([part, batch, name, "failed", "", "", "", reason[:60]])
        ovs = {k: t["p50_ms"] for k, t in timed.items() if k.startswith(("openvino", "nncf"))}
        if "nimbleml" in timed and ovs:
            best = min(ovs, key=ovs.__getitem__)
            ratio = ovs[best] / timed["nimbleml"]["p50_ms"]
            record.setdefault("goal", {})[batch] = {"best_openvino": best, "ratio": ratio}
            goals.append(f"{part} batch {batch}: nimbleml / best OpenVINO ({best}) = "
                         f"{ratio:.2f}x (goal >= 1.0)")  # fmt: skip
    return table_rows, goals, record


def main() -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer rounds, all small")
    parser.add_argument("--only", default=",".join(PARTS), help="comma-separated parts")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--budget", type=float, default=180.0, help="optimize time_budget_s")
    parser.add_argument("--json", type=Path, default=Path("bench-out/peers.json"))
    args = parser.parse_args()
    parts = [p for p in args.only.split(",") if p]
    if unknown := set(parts) - set(PARTS):
        parser.error(f"unknown parts {sorted(unknown)}; choose from {','.join(PARTS)}")
    warnings.simplefilter("ignore")
    for noisy in ("nncf", "torch.onnx", "torch._dynamo", "torch.export", "onnxscript"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    from nimbleml.bench.machine import machine_info

    json_path, here, t_all = args.json.resolve(), os.getcwd(), time.perf_counter()
    out: dict[str, Any] = {"machine": machine_info().to_dict(), "quick": args.quick,
                           "torch_threads": torch.get_num_threads(), "load_before": os.getloadavg(),
                           "models": {}}  # fmt: skip
    if out["load_before"][0] > 0.5:  # the timings want the cores to themselves
        print(f"warning: load average {out['load_before'][0]:.1f} on {os.cpu_count()} cores: "
              "something else is running, timings will be noisy", flush=True)  # fmt: skip
    all_rows, all_goals = [], []
    for part in parts:
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as scratch:  # exporters and optimize write files
            os.chdir(scratch)
            try:
                table_rows, goals, record = run_part(part, args, Path(scratch))
            finally:
                os.chdir(here)
        record["seconds"] = time.perf_counter() - t0
        out["models"][part] = record
        all_rows += table_rows
        all_goals += goals
        print(f"{part}: done in {record['seconds']:.0f} s", flush=True)
    print()
    head = ["model", "batch", "contender", "p50 ms", "n", "spread", "x torch", "cosine"]
    print(table(all_rows, head))
    print()
    print("\n".join(all_goals))
    out["seconds"], out["load_after"] = time.perf_counter() - t_all, os.getloadavg()
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(out, indent=2, default=str))
    print(f"\nwritten: {json_path} ({out['seconds']:.0f} s in all)")


if __name__ == "__main__":
    main()
