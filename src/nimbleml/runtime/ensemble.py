"""EnsemblePredictor: several models on the same input, fused, with per-sample uncertainty.

Three ways to run the members, with identical results: one after another ("sequential"),
concurrently in threads ("parallel": ONNX Runtime releases the GIL; each ONNX member then gets
cores / members intra-op threads, so the CPU is not oversubscribed), or, when every member is
ONNX and they take the same inputs, merged into one graph run by one session ("fused", see
fused.py). ``mode="auto"`` (``parallel=True``) times them on the first call and keeps the fastest.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from ..bench.stats import LatencyStats, is_stable, summarize
from ..errors import ConfigError, ConversionError, PerformanceWarning, warn
from ..inputs import refuse_missing
from ..models.base import Model
from ..models.onnx_model import OnnxModel
from ..models.openvino_model import OpenVinoModel
from .fused import FusedEnsemble, probe_feeds
from .predictor import OptimizedPredictor, _resolve

FUSIONS = ("mean", "vote", "weighted", "uncertainty_weighted")
MODES = ("auto", "sequential", "parallel", "threaded", "fused")  # threaded = parallel


@dataclass(frozen=True)
class EnsembleOutput:
    """``scores``: fused scores (class probabilities or values; vote shares for 'vote');
    ``labels``: argmax of the scores for classification; ``uncertainty``: per sample, the
    spread across members (std, plus Monte Carlo variance when mc_samples > 0; 1 - share of
    the winning vote for 'vote'); ``members``: every member's scores, stacked."""

    scores: np.ndarray
    labels: np.ndarray | None
    uncertainty: np.ndarray
    members: np.ndarray


def _scores(model: Model, outputs: list[np.ndarray]) -> np.ndarray:
    """The output to fuse: 'probabilities' when the model has it, else the first float."""
    names = model.output_names
    if "probabilities" in names:
        return np.asarray(outputs[names.index("probabilities")], dtype=np.float64)
    for out in outputs:
        if np.asarray(out).dtype.kind == "f":
            return np.asarray(out, dtype=np.float64)
    return np.asarray(outputs[0], dtype=np.float64).reshape(len(outputs[0]), -1)


def _entropy(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-12, 1.0)
    return -(q * np.log(q)).sum(axis=-1)


def _weights(fusion: str, weights: Sequence[float] | None, n: int) -> np.ndarray | None:
    if fusion == "weighted":
        if weights is None or len(weights) != n:
            raise ConfigError(f"fusion='weighted' needs one weight per member ({n})")
        w = np.asarray(weights, dtype=np.float64)
        if np.any(w < 0) or w.sum() <= 0:
            raise ConfigError(f"weights must be >= 0 with a positive sum, got {list(weights)}")
        return w / w.sum()
    if weights is not None:
        raise ConfigError(f"weights apply to fusion='weighted' only (fusion is '{fusion}')")
    return None


class EnsemblePredictor:
    """Fuse ``members`` (models, packages, predictors or files) by ``fusion``.

    ``mode``: "sequential", "parallel" (alias "threaded"), "fused" (every member ONNX with
    the same inputs; else ConfigError), or "auto": the first call times each available way
    on its input and keeps the fastest (``ensemble.mode``, ``ensemble.timings_ms``). By
    default "auto" with ``parallel=True``, "sequential" with ``parallel=False``. Every way
    gives the same results; ``fused_unavailable`` says why "fused" was not a candidate.
    """

    def __init__(
        self,
        members: Sequence[Any],
        fusion: str = "mean",
        weights: Sequence[float] | None = None,
        parallel: bool = True,
        mc_samples: int = 0,
        example_inputs: Any = None,
        mode: str | None = None,
    ) -> None:
        if len(members) < 2:
            raise ConfigError(f"an ensemble needs at least 2 members, got {len(members)}")
        if fusion not in FUSIONS:
            raise ConfigError(f"unknown fusion '{fusion}'; choose one of: {', '.join(FUSIONS)}")
        self.weights = _weights(fusion, weights, len(members))
        if not isinstance(mc_samples, int) or mc_samples < 0:
            raise ConfigError(f"mc_samples must be an integer >= 0, got {mc_samples!r}")
        if mode is None:
            mode = "auto" if parallel else "sequential"
        if mode not in MODES:
            raise ConfigError(f"unknown mode '{mode}'; choose one of: {', '.join(MODES)}")
        mode = "parallel" if mode == "threaded" else mode
        self.fusion, self.parallel, self.mc_samples = fusion, parallel, mc_samples
        models: list[Model] = []
        self.names: list[str] = []  # package folder or class names, for tables
        verified: list[bool] = []
        for m in members:
            m = _package_of(m)
            verified.append(_verified_on_missing(m))
            model, _, name = (
                (m.model, "", m.name)
                if isinstance(m, OptimizedPredictor)
                else _resolve(m, example_inputs)
            )
            models.append(model)
            self.names.append(name)
        # the one missing-value policy: NaN inputs only where every member is a package
        # verified on missing values
        self.missing_ok = all(verified)
        if mc_samples:
            for i, m in enumerate(models):
                reason = _mc_blocker(m)
                if reason:
                    raise ConfigError(
                        f"mc_samples needs PyTorch members with dropout layers (Monte Carlo "
                        f"dropout); member {i} ({self.names[i]}) {reason}"
                    )
        # parallel: the cores shared among members; sequential: every core for each member.
        # Either way a fixed count, which also turns ONNX Runtime's spin-waiting off, so
        # idle member sessions do not steal the CPU from the running ones.
        cores = os.cpu_count() or 1
        workers = min(len(models), cores)
        threaded = (OnnxModel, OpenVinoModel)  # the runtimes whose thread count is set here
        self._sequential = [m.with_threads(cores) if isinstance(m, threaded) else m for m in models]
        self._concurrent = [
            m.with_threads(max(1, cores // workers)) if isinstance(m, threaded) else m
            for m in models
        ]
        self._workers = workers
        self._pool: ThreadPoolExecutor | None = None  # made when the threaded way first runs
        # fused: one graph for all members (None, with the reason, where that cannot be)
        self.fused: FusedEnsemble | None = None
        self.fused_unavailable: str | None = None
        if mode in ("auto", "fused"):
            self._make_fused(forced=mode == "fused")
        self._verified = mode != "fused"  # a forced fused graph is checked on the first call
        # "auto": the first call times every way and keeps the fastest
        self.mode: str = "undecided" if mode == "auto" else mode
        self.timings_ms: dict[str, float] = {}

    def _make_fused(self, forced: bool) -> None:
        try:
            if self.mc_samples:
                raise ConfigError("mc_samples runs PyTorch members, which cannot be fused")
            self.fused = FusedEnsemble(self._sequential, threads=os.cpu_count())
        except (ConfigError, ConversionError) as exc:
            if forced:
                raise ConfigError(f"mode='fused' is not possible here: {exc}") from exc
            self.fused_unavailable = str(exc)

    def _member(
        self, model: Model, feeds: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray | None]:
        if not self.mc_samples:
            return _scores(model, model.run(feeds)), None
        runs = np.stack([_scores(model, r) for r in _mc_runs(model, feeds, self.mc_samples)])
        return runs.mean(axis=0), runs.var(axis=0)

    @property
    def members(self) -> list[Model]:
        return self._concurrent if self.mode == "parallel" else self._sequential

    def _run_all(
        self, feeds: list[dict[str, np.ndarray]], mode: str
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Every member's scores stacked (members, batch, ...) as float64, and their Monte
        Carlo variances (None without mc_samples), run the ``mode`` way."""
        if mode == "fused":
            assert self.fused is not None
            outs = self.fused.run(feeds[0])
            if self.fused.float_outputs:  # one copy into float64 (np.stack + astype: two)
                return np.array(outs, dtype=np.float64), None
            return np.stack([_scores_only(o) for o in outs]), None
        if mode == "parallel":
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="nimble-ensemble")
            futures = [
                self._pool.submit(self._member, m, f)
                for m, f in zip(self._concurrent, feeds, strict=True)
            ]
            results = [f.result() for f in futures]
        else:
            results = [self._member(m, f) for m, f in zip(self._sequential, feeds, strict=True)]
        stacked = np.stack([r[0] for r in results])
        variances = [v for _, v in results if v is not None]
        return stacked, (np.stack(variances) if self.mc_samples else None)

    def _decide(self, feeds: list[dict[str, np.ndarray]]) -> None:
        """Time every way on this input, interleaved, and keep the fastest; the fused graph
        only once its members' outputs equal the members' own on this input."""
        modes = ["parallel", "sequential"]
        if self.fused is not None:
            self.fused.decide(feeds[0])  # ONNX Runtime's sequential or parallel executor
            if self._fused_agrees(feeds):
                modes.append("fused")
        times: dict[str, list[float]] = {m: [] for m in modes}
        for mode in modes:  # warm every set of sessions first
            self._run_all(feeds, mode)
            self._run_all(feeds, mode)
        for _ in range(15):
            for mode in modes:
                t0 = time.perf_counter()
                self._run_all(feeds, mode)
                times[mode].append(time.perf_counter() - t0)
        self.timings_ms = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
        # another way only when it clearly pays: a tie goes to the simpler sequential way
        best = min(self.timings_ms, key=self.timings_ms.__getitem__)
        faster = self.timings_ms[best] < 0.97 * self.timings_ms["sequential"]
        self.mode = best if faster else "sequential"

    def _fused_agrees(self, feeds: list[dict[str, np.ndarray]]) -> bool:
        assert self.fused is not None
        expected = [m.run(f) for m, f in zip(self._sequential, feeds, strict=True)]
        try:
            self.fused.verify(feeds[0], expected)
        except ConversionError as exc:
            if self.mode == "fused":
                raise
            warn(f"{exc}; the members run unfused", PerformanceWarning)
            self.fused, self.fused_unavailable = None, str(exc)
            return False
        return True

    def check_missing(self, x: Any, where: str = "the ensemble's input") -> None:
        """Refuse a missing value (NaN) in ``x``, naming its row and column, unless every
        member is a package verified on missing values (``missing_ok``)."""
        if self.missing_ok:
            return
        positional = isinstance(x, tuple | list) and x and hasattr(x[0], "shape")
        parts = list(x) if positional else [x]
        for i, part in enumerate(parts):
            refuse_missing(part, where if len(parts) == 1 else f"{where} (input {i})")

    def predict(self, x: Any) -> EnsembleOutput:
        self.check_missing(x)
        return self._predict_any(x)

    def _predict_any(self, x: Any) -> EnsembleOutput:
        if self.mode == "undecided":
            self._decide([m.feeds(x) for m in self._sequential])
        return self._predict(x, self.mode)

    def _predict(self, x: Any, mode: str) -> EnsembleOutput:
        if mode == "fused":
            feeds = [self._sequential[0].feeds(x)]  # every member takes the same inputs
            if not self._verified:
                self._fused_agrees(feeds * len(self._sequential))
                self._verified = True
        else:
            feeds = [m.feeds(x) for m in self._sequential]
        return self._fuse(*self._run_all(feeds, mode))

    def predict_batch(self, x: Any, batch_size: int = 128) -> EnsembleOutput:
        """``predict`` over many rows, ``batch_size`` rows a call, joined."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.check_missing(x)  # once, with rows counted over the whole input
        n = _count(x)
        parts = [self._predict_any(_rows(x, i + batch_size, i)) for i in range(0, n, batch_size)]
        if not parts:
            raise ConfigError("no rows to predict")
        labels = [p.labels for p in parts]
        return EnsembleOutput(
            np.concatenate([p.scores for p in parts]),
            None if labels[0] is None else np.concatenate(labels),  # type: ignore[arg-type]
            np.concatenate([p.uncertainty for p in parts]),
            np.concatenate([p.members for p in parts], axis=1),
        )

    def compare(
        self, x: Any, batch_sizes: Sequence[int] = (1, 32), time_budget_s: float = 1.0
    ) -> dict[int, dict[str, LatencyStats]]:
        """Latency of each member alone and of ``predict`` run each way ("sequential",
        "threaded", "fused" where possible), measured side by side: for each batch size
        (rows of ``x``), interleaved rounds until ``time_budget_s`` is spent."""
        self.check_missing(x)
        if self.fused is None and self.fused_unavailable is None:
            self._make_fused(forced=False)
        out: dict[int, dict[str, LatencyStats]] = {}
        for b in batch_sizes:
            xb = _rows(x, b)
            ways: dict[str, Any] = {
                f"member {i}: {name}": partial(_alone, m, xb)
                for i, (m, name) in enumerate(zip(self._sequential, self.names, strict=True))
            }
            ways["sequential"] = partial(self._predict, xb, "sequential")
            ways["threaded"] = partial(self._predict, xb, "parallel")
            if self.fused is not None and self._fused_agrees(
                [m.feeds(xb) for m in self._sequential]
            ):
                self.fused.decide(self._sequential[0].feeds(xb))
                ways["fused"] = partial(self._predict, xb, "fused")
            out[b] = _side_by_side(ways, time_budget_s)
        return out

    def _fuse(self, stacked: np.ndarray, mc_var: np.ndarray | None) -> EnsembleOutput:
        classification = stacked.ndim == 3 and stacked.shape[-1] > 1
        if self.fusion == "vote":
            if not classification:
                raise ConfigError("fusion='vote' needs class scores from every member")
            votes = stacked.argmax(axis=-1)  # (members, batch)
            shares = np.stack(
                [(votes == c).mean(axis=0) for c in range(stacked.shape[-1])], axis=-1
            )
            return EnsembleOutput(
                shares, shares.argmax(axis=-1), 1.0 - shares.max(axis=-1), stacked
            )
        # mean and std as np.mean / np.std compute them (the same ufuncs in the same order,
        # so the same bits) without their dispatch: about 15 µs less per call at batch 1
        n = stacked.shape[0]
        fused = np.add.reduce(stacked, axis=0) / n
        dev = stacked - fused
        spread = np.sqrt(np.add.reduce(np.multiply(dev, dev, out=dev), axis=0) / n)
        if self.fusion == "weighted":
            assert self.weights is not None
            fused = np.tensordot(self.weights, stacked, axes=1)
        elif self.fusion == "uncertainty_weighted":
            if classification:
                confidence = 1.0 / (_entropy(stacked) + 1e-6)  # (members, batch)
            elif mc_var is not None:
                confidence = 1.0 / (
                    mc_var.reshape(mc_var.shape[0], mc_var.shape[1], -1).mean(axis=-1) + 1e-9
                )
            else:
                raise ConfigError(
                    "uncertainty_weighted regression needs mc_samples > 0 (member variances)"
                )
            w = confidence / confidence.sum(axis=0, keepdims=True)
            fused = (w.reshape(*w.shape, *([1] * (stacked.ndim - 2))) * stacked).sum(axis=0)
        flat = spread.reshape(spread.shape[0], -1)
        uncertainty = np.add.reduce(flat, axis=-1) / flat.shape[-1]  # .mean(axis=-1)
        if mc_var is not None:
            uncertainty = uncertainty + np.sqrt(
                mc_var.mean(axis=0).reshape(spread.shape[0], -1).mean(axis=-1)
            )
        labels = fused.argmax(axis=-1) if classification else None
        return EnsembleOutput(fused, labels, uncertainty, stacked)

    def close(self) -> None:
        self.fused = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> EnsemblePredictor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _package_of(member: Any) -> Any:
    """A package folder loaded (its manifest says whether it was verified on missing
    values); anything else as it is."""
    from pathlib import Path

    from ..package import load

    if isinstance(member, str | Path) and (Path(member) / "manifest.json").is_file():
        return load(member)
    return member


def _verified_on_missing(member: Any) -> bool:
    from ..package import Package
    from ..verify import verified_on_missing

    return isinstance(member, Package) and verified_on_missing(member.manifest)


def _rows(x: Any, stop: int, start: int = 0) -> Any:
    """Rows start:stop of an array, or of each array in a dict / tuple of them."""
    if isinstance(x, dict):
        return {k: v[start:stop] for k, v in x.items()}
    if isinstance(x, tuple | list) and x and hasattr(x[0], "shape"):
        return type(x)(v[start:stop] for v in x)
    return x[start:stop]


def _count(x: Any) -> int:
    first = next(iter(x.values())) if isinstance(x, dict) else x
    if isinstance(first, tuple | list) and first and hasattr(first[0], "shape"):
        first = first[0]
    return len(first)


def _alone(model: Model, x: Any) -> Any:
    return model.run(model.feeds(x))


def _side_by_side(ways: dict[str, Any], budget_s: float) -> dict[str, LatencyStats]:
    """Interleaved rounds of timed calls (each way sees the same machine noise), at least
    three, until ``budget_s`` is spent; per way, its latency statistics with n."""
    for fn in ways.values():  # warm up, and size a round at about a tenth of the budget
        fn()
    t0 = time.perf_counter()
    for fn in ways.values():
        fn()
    once = max(time.perf_counter() - t0, 1e-6)
    calls = int(min(200, max(1, budget_s / 10 / once)))
    samples: dict[str, list[int]] = {k: [] for k in ways}
    deadline, rounds = time.perf_counter() + budget_s, 0
    clock = time.perf_counter_ns
    while rounds < 3 or time.perf_counter() < deadline:
        for name, fn in ways.items():
            for _ in range(calls):
                t = clock()
                fn()
                samples[name].append(clock() - t)
        rounds += 1
    out = {}
    for name, ns in samples.items():
        arr = np.asarray(ns, dtype=np.int64)
        out[name] = summarize(arr, is_stable(arr, 0.10))
    return out


def _scores_only(out: np.ndarray) -> np.ndarray:
    """A member's chosen output as ``_scores`` gives it: float64, labels as a column."""
    if out.dtype.kind == "f":
        return np.asarray(out, dtype=np.float64)
    return np.asarray(out, dtype=np.float64).reshape(len(out), -1)


def _dropouts(module: Any) -> list[Any]:
    """Dropout layers, also inside TorchScript (whose modules keep ``original_name``)."""
    return [
        m for m in module.modules()
        if "Dropout" in str(getattr(m, "original_name", type(m).__name__))
    ]  # fmt: skip


def _mc_blocker(model: Model) -> str | None:
    """Why Monte Carlo dropout cannot run on ``model``, or None when it can. TorchScript
    that was traced (as .nimble packages save PyTorch models) fixed dropout off at trace
    time: switching its layers to training mode changes nothing, so that is checked by
    running it twice on random inputs."""
    module = getattr(model, "module", None)
    if module is None or not hasattr(module, "modules"):
        return f"is a {model.framework} model (packages hold ONNX: pass the PyTorch model)"
    if not _dropouts(module):
        return "has no dropout layers"
    if hasattr(module, "graph"):  # TorchScript
        feeds = model.feeds(probe_feeds(model.inputs))
        a, b = _mc_runs(model, feeds, 2)
        if all(np.array_equal(x, y) for x, y in zip(a, b, strict=True)):
            return (
                "is TorchScript traced in eval mode, so its dropout cannot be switched on; "
                "pass the PyTorch model or a torch.jit.script one"
            )
    return None


def _mc_runs(model: Model, feeds: dict[str, np.ndarray], n: int) -> list[list[np.ndarray]]:
    """``n`` forward passes with dropout active (Monte Carlo dropout); eval mode restored."""
    dropouts = _dropouts(model.module)  # type: ignore[attr-defined]
    for m in dropouts:
        m.train()
    try:
        return [model.run(feeds) for _ in range(n)]
    finally:
        for m in dropouts:
            m.eval()
