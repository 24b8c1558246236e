"""EnsemblePredictor: several models on the same input, fused, with per-sample uncertainty.

Members run concurrently in threads (ONNX Runtime releases the GIL); each ONNX member then
gets cores / members intra-op threads, so running in parallel does not oversubscribe the CPU.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..models.base import Model
from ..models.onnx_model import OnnxModel
from .predictor import OptimizedPredictor, _resolve

FUSIONS = ("mean", "vote", "weighted", "uncertainty_weighted")


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
        if np.issubdtype(np.asarray(out).dtype, np.floating):
            return np.asarray(out, dtype=np.float64)
    return np.asarray(outputs[0], dtype=np.float64).reshape(len(outputs[0]), -1)


def _entropy(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-12, 1.0)
    return -(q * np.log(q)).sum(axis=-1)


class EnsemblePredictor:
    """Fuse ``members`` (models, packages, predictors or files) by ``fusion``."""

    def __init__(
        self,
        members: Sequence[Any],
        fusion: str = "mean",
        weights: Sequence[float] | None = None,
        parallel: bool = True,
        mc_samples: int = 0,
        example_inputs: Any = None,
    ) -> None:
        if len(members) < 2:
            raise ConfigError(f"an ensemble needs at least 2 members, got {len(members)}")
        if fusion not in FUSIONS:
            raise ConfigError(f"unknown fusion '{fusion}'; choose one of: {', '.join(FUSIONS)}")
        if fusion == "weighted":
            if weights is None or len(weights) != len(members):
                raise ConfigError(f"fusion='weighted' needs one weight per member ({len(members)})")
            w = np.asarray(weights, dtype=np.float64)
            if np.any(w < 0) or w.sum() <= 0:
                raise ConfigError(f"weights must be >= 0 with a positive sum, got {list(weights)}")
            self.weights: np.ndarray | None = w / w.sum()
        elif weights is not None:
            raise ConfigError(f"weights apply to fusion='weighted' only (fusion is '{fusion}')")
        else:
            self.weights = None
        if not isinstance(mc_samples, int) or mc_samples < 0:
            raise ConfigError(f"mc_samples must be an integer >= 0, got {mc_samples!r}")
        self.fusion, self.parallel, self.mc_samples = fusion, parallel, mc_samples
        models = [
            m.model if isinstance(m, OptimizedPredictor) else _resolve(m, example_inputs)[0]
            for m in members
        ]
        if mc_samples and not all(_has_dropout(m) for m in models):
            raise ConfigError(
                "mc_samples needs PyTorch members with dropout layers (Monte Carlo dropout)"
            )
        # parallel: the cores shared among members; sequential: every core for each member.
        # Either way a fixed count, which also turns ONNX Runtime's spin-waiting off, so
        # idle member sessions do not steal the CPU from the running ones.
        cores = os.cpu_count() or 1
        workers = min(len(models), cores)
        self._sequential = [
            m.with_threads(cores) if isinstance(m, OnnxModel) else m for m in models
        ]
        self._concurrent = [
            m.with_threads(max(1, cores // workers)) if isinstance(m, OnnxModel) else m
            for m in models
        ]
        self._pool = (
            ThreadPoolExecutor(workers, thread_name_prefix="nimble-ensemble") if parallel else None
        )
        # with parallel=True the first call times both ways and keeps the faster one here
        self.mode: str = "undecided" if parallel else "sequential"
        self.timings_ms: dict[str, float] = {}

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

    def _run_all(self, feeds: list[dict[str, np.ndarray]], parallel: bool) -> list[Any]:
        if parallel:
            assert self._pool is not None
            futures = [
                self._pool.submit(self._member, m, f)
                for m, f in zip(self._concurrent, feeds, strict=True)
            ]
            return [f.result() for f in futures]
        return [self._member(m, f) for m, f in zip(self._sequential, feeds, strict=True)]

    def _decide(self, feeds: list[dict[str, np.ndarray]]) -> None:
        """Time both ways on this input, interleaved, and keep the faster."""
        import time

        times: dict[str, list[float]] = {"parallel": [], "sequential": []}
        for mode in times:  # warm both sets of sessions first
            self._run_all(feeds, mode == "parallel")
            self._run_all(feeds, mode == "parallel")
        for _ in range(15):
            for mode in times:
                t0 = time.perf_counter()
                self._run_all(feeds, mode == "parallel")
                times[mode].append(time.perf_counter() - t0)
        self.timings_ms = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
        # threads only when they clearly pay: a tie goes to the simpler sequential way
        faster = self.timings_ms["parallel"] < 0.97 * self.timings_ms["sequential"]
        self.mode = "parallel" if faster else "sequential"

    def predict(self, x: Any) -> EnsembleOutput:
        feeds_per_member = [m.feeds(x) for m in self._sequential]
        if self.mode == "undecided":
            self._decide(feeds_per_member)
        results = self._run_all(feeds_per_member, self.mode == "parallel")
        stacked = np.stack([r[0] for r in results])  # (members, batch, classes)
        mc_var = np.stack([r[1] for r in results]) if self.mc_samples else None
        return self._fuse(stacked, mc_var)

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
        else:
            fused = stacked.mean(axis=0)
        spread = stacked.std(axis=0)
        uncertainty = spread.reshape(spread.shape[0], -1).mean(axis=-1)
        if mc_var is not None:
            uncertainty = uncertainty + np.sqrt(
                mc_var.mean(axis=0).reshape(spread.shape[0], -1).mean(axis=-1)
            )
        labels = fused.argmax(axis=-1) if classification else None
        return EnsembleOutput(fused, labels, uncertainty, stacked)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> EnsemblePredictor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _has_dropout(model: Model) -> bool:
    module = getattr(model, "module", None)
    if module is None:
        return False
    return any("Dropout" in type(m).__name__ for m in module.modules())


def _mc_runs(model: Model, feeds: dict[str, np.ndarray], n: int) -> list[list[np.ndarray]]:
    """``n`` forward passes with dropout active (Monte Carlo dropout); eval mode restored."""
    module = model.module  # type: ignore[attr-defined]
    dropouts = [m for m in module.modules() if "Dropout" in type(m).__name__]
    for m in dropouts:
        m.train()
    try:
        return [model.run(feeds) for _ in range(n)]
    finally:
        for m in dropouts:
            m.eval()
