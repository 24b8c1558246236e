"""What the loop decides between epochs and says at the end, kept out of the loop's module:
the score an epoch is judged on, the warning for skipped non-finite steps, the options the
report lists."""

from __future__ import annotations

import math
from typing import Any

from ..errors import TrainingWarning, warn
from .config import TrainConfig


def score(record: dict[str, Any]) -> tuple[float, bool]:
    """What 'best' is judged on: the val metric, else the val loss, else the train loss; NaN
    (never the best) when the val loss is not finite, whatever the metric says."""
    if not math.isfinite(float(record.get("val_loss", 0.0))):
        return math.nan, False
    if "val_metric" in record:
        return float(record["val_metric"]), bool(record["higher_is_better"])
    if "val_loss" in record:
        return float(record["val_loss"]), False
    return float(record["train_loss"]), False


def say_nonfinite(history: list[dict[str, Any]], lr: float) -> None:
    """Steps skipped for a NaN or infinite loss are said, not only counted in the history."""
    counts = {r["epoch"]: r.get("nonfinite_steps", 0) for r in history}
    total = sum(counts.values())
    if total:
        epochs = ", ".join(str(e) for e, c in counts.items() if c)
        warn(
            f"{total} training step(s) were skipped because the loss was NaN or infinite "
            f"(epoch {epochs}; nonfinite_steps in the history) though the data holds no "
            f"missing values: the model overflowed or diverged; lower lr (now {lr:g}), set "
            "grad_clip=1.0, or train in precision='fp32'",
            TrainingWarning,
        )


def summary(cfg: TrainConfig, batch_size: int) -> dict[str, Any]:
    keep = ("optimizer", "lr", "weight_decay", "epochs", "grad_accum", "grad_clip",
            "scheduler", "warmup_steps", "early_stopping", "seed")  # fmt: skip
    out = {k: getattr(cfg, k) for k in keep}
    out = {k: (v if isinstance(v, int | float | str | type(None)) else type(v).__name__)
           for k, v in out.items()}  # fmt: skip
    out["batch_size"] = batch_size
    out["strategy"] = cfg.strategy
    if cfg.fsdp_blocks is not None:
        out["fsdp_blocks"] = list(cfg.fsdp_blocks)
    out["checkpointing"] = (
        cfg.checkpointing if isinstance(cfg.checkpointing, bool) else list(cfg.checkpointing)
    )
    return out
