"""The batch size, measured: the largest that fits and the smallest within 5% of the peak
samples/s.

``find_batch_size`` doubles the batch until it no longer fits (GPU: out-of-memory caught, then
a 10% safety margin; CPU: a budget on the process's resident memory, half the available memory
unless given), bisects the boundary, measures samples/s at every size on real training steps,
and trains with the smallest batch within 5% of the peak: a bigger batch buys almost no speed
and costs optimizer steps per epoch.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from .._deps import require
from ..errors import ConfigError, DataError
from .data import Batch, InMemory, _is_dataset, split
from .measure import Stepper, timed_steps

log = logging.getLogger("nimbleml.train")

NEAR_PEAK = 0.05  # the smallest batch within 5% of the peak samples/s
GPU_MARGIN = 0.10  # back off 10% from the largest batch that fitted on a GPU
POOL = 256  # samples collated once from a Dataset and tiled into batches of any size


@dataclass
class BatchRow:
    batch: int
    fits: bool
    samples_per_s: float = 0.0
    step_ms: float = 0.0
    memory_mb: float = 0.0  # CPU: peak resident memory above the start; GPU: peak allocated
    steps: int = 0
    note: str = ""


@dataclass
class BatchSizeResult:
    """``best``: the batch to train with, the smallest within 5% of the peak samples/s among
    those that fit, at most ``max_best`` (the GPU margin, and enough steps per epoch).
    ``largest_fits``: the largest measured to fit; ``smallest_near_peak``: the smallest within
    5% of the peak, unbounded; ``rows``: the measured table; ``why``: the reason for ``best``."""

    best: int
    largest_fits: int
    smallest_near_peak: int
    max_safe: int  # largest_fits after the safety margin (GPU)
    max_best: int  # the most best may be: max_safe, and n // steps_per_epoch
    peak_samples_per_s: float
    rows: list[BatchRow]
    device: str
    limit: str  # why the search stopped
    why: str
    memory_budget_mb: float | None
    seconds: float
    note: str = ""

    @property
    def summary(self) -> str:
        return (f"{self.best} ({self.why}); largest that fits {self.largest_fits} ({self.limit}); "
                f"searched in {self.seconds:.1f} s")  # fmt: skip

    def table(self) -> str:
        budget = f", memory budget {self.memory_budget_mb:.0f} MB" if self.memory_budget_mb else ""
        head = f"{'batch':>6} {'fits':>4} {'samples/s':>10} {'step ms':>8} {'memory MB':>9} {'steps':>5}"
        lines = [f"batch size search on {self.device}{budget}", head, "-" * len(head)]
        for r in self.rows:
            mark = " *" if r.batch == self.best else ""
            note = f"  {r.note}" if r.note else ""
            lines.append(f"{r.batch:>6} {'yes' if r.fits else 'no':>4} {r.samples_per_s:>10.0f} "
                         f"{r.step_ms:>8.2f} {r.memory_mb:>9.1f} {r.steps:>5}{mark}{note}")  # fmt: skip
        lines.append(f"largest that fits: {self.largest_fits} ({self.limit})")
        lines.append(f"smallest within {NEAR_PEAK:.0%} of the peak ({self.peak_samples_per_s:.0f} "
                     f"samples/s): {self.smallest_near_peak}")  # fmt: skip
        lines.append(f"* = best: {self.best} ({self.why})")
        if self.note:
            lines.append(self.note)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["summary"] = self.summary
        return out


def pick_batch(throughput: Mapping[int, float], tolerance: float = NEAR_PEAK,
               limit: int | None = None) -> int:  # fmt: skip
    """The smallest batch whose samples/s is within ``tolerance`` of the peak of the table;
    ``limit`` bounds the batches it may pick (the peak is still that of the whole table).
    When none under ``limit`` comes close, the fastest under it."""
    if not throughput:
        raise ValueError("no measured batch sizes to pick from")
    peak = max(throughput.values())
    allowed = {b: s for b, s in throughput.items() if limit is None or b <= limit}
    if not allowed:
        return min(throughput)
    near = [b for b, s in allowed.items() if s >= peak * (1 - tolerance)]
    return min(near) if near else max(allowed, key=lambda b: allowed[b])


def find_batch_size(model: Any, data: Any, device: str = "cpu", *, loss: Any = None,
                    precision: str = "auto", memory_budget_mb: float | None = None,
                    start: int = 2, max_batch: int | None = None, margin: float | None = None,
                    tolerance: float = NEAR_PEAK, steps_per_epoch: int = 10, refine: int = 2,
                    seconds_per_size: float = 0.25, budget_s: float = 30.0,
                    verbose: bool = False) -> BatchSizeResult:  # fmt: skip
    """The largest batch that fits and the smallest within ``tolerance`` of the peak
    samples/s, measured on real training steps (the model is not changed). ``data``: (X, y),
    a Dataset or a DataLoader; batches larger than the dataset are not tried (``max_batch``
    bounds them further). CPU: a batch fits when the step's peak resident memory stays within
    ``memory_budget_mb`` (default: half the memory available now). GPU: until CUDA runs out of
    memory (and within ``memory_budget_mb`` of peak allocation when given), then ``margin``
    (10%) below. ``best`` also leaves an epoch ``steps_per_epoch`` optimizer steps: on a small
    model samples/s can climb up to the whole dataset, and one step per epoch does not train."""
    import psutil

    device, started = str(device), time.perf_counter()
    cuda = device.startswith("cuda")
    if start < 1 or steps_per_epoch < 1:
        raise ConfigError(f"start and steps_per_epoch must be >= 1, got {start}, {steps_per_epoch}")
    pool, n = _pool(data)
    cap = min(n, max_batch) if max_batch else n
    budget = memory_budget_mb
    if budget is None and not cuda:
        budget = psutil.virtual_memory().available / 2**20 / 2
    margin = (GPU_MARGIN if cuda else 0.0) if margin is None else margin
    stepper = Stepper(model, device, loss, precision, copy_model=not cuda)
    try:
        attempt = _Attempt(stepper, pool, budget, seconds_per_size)
        rows, limit = _search_sizes(attempt, start, cap, n, refine, started, budget_s)
    finally:
        stepper.close()
    fitting = {r.batch: r.samples_per_s for r in rows if r.fits}
    if not fitting:
        raise ConfigError(
            f"a batch of {start} does not fit ({rows[0].note}); give a larger memory_budget_mb "
            f"(now {budget}), a smaller model, or train on another device"
        )
    largest = max(fitting)
    max_safe = max(min(fitting), int(largest * (1 - margin)))
    max_best = max(min(fitting), min(max_safe, n // steps_per_epoch))
    best, near = pick_batch(fitting, tolerance, limit=max_best), pick_batch(fitting, tolerance)
    why = f"the smallest within {tolerance:.0%} of the peak samples/s"
    if best != near:
        bounds = ([f"{margin:.0%} below the largest that fits"] if max_best == max_safe else
                  [f"{steps_per_epoch} steps per epoch of {n} samples"])  # fmt: skip
        why = f"{near} is {why}, above {max_best} ({bounds[0]}): {best} is the fastest up to it"
    result = BatchSizeResult(
        best=best, largest_fits=largest, smallest_near_peak=near, max_safe=max_safe,
        max_best=max_best, peak_samples_per_s=max(fitting.values()), rows=rows, device=device,
        limit=limit, why=why, memory_budget_mb=budget, seconds=time.perf_counter() - started,
        note=stepper.loss_note,
    )  # fmt: skip
    if verbose:
        print(result.table())
    log.info("%s", result.table())
    return result


class _Attempt:
    """One batch size: memory through one probed step (resident memory above the start on a
    CPU, peak allocation on a GPU), then samples/s over timed steps; out-of-memory caught."""

    def __init__(self, stepper: Stepper, pool: Batch, budget: float | None,
                 seconds: float) -> None:  # fmt: skip
        import psutil

        self.stepper, self.pool, self.budget, self.seconds = stepper, pool, budget, seconds
        self.process = psutil.Process()
        _trim()
        self.base = self.process.memory_info().rss  # the model, its copy and the data
        self.peak = 0.0

    def probe(self) -> None:
        self.peak = max(self.peak, (self.process.memory_info().rss - self.base) / 2**20)

    def __call__(self, b: int, rows: list[BatchRow]) -> BatchRow:
        torch = require("torch", "nimbleml.train")
        stepper, cuda = self.stepper, self.stepper.cuda
        predicted = _predict(rows, b)
        if self.budget is not None and predicted > self.budget:
            return BatchRow(
                b, False, memory_mb=predicted, note="predicted over the budget: not run"
            )
        _trim()  # memory freed by the last size goes back: each size's growth is its own
        batch, self.peak, oom = _tile(self.pool, b), 0.0, False
        if cuda:
            torch.cuda.reset_peak_memory_stats(stepper.device)
        try:
            stepper.probe = None if cuda else self.probe
            stepper(batch)  # memory read through one step; a probed step is not timed
            stepper.probe = None
            _, times = timed_steps(stepper, lambda: iter((batch,)), self.seconds)
        except (torch.cuda.OutOfMemoryError, RuntimeError) as exc:
            if not _is_oom(exc):
                raise
            oom = True
        if oom:  # outside the except block: the traceback no longer holds the step's tensors
            stepper.probe = None
            stepper.optimizer.zero_grad(set_to_none=True)
            del batch
            if cuda:
                torch.cuda.empty_cache()
            return BatchRow(b, False, note="out of memory")
        memory = torch.cuda.max_memory_allocated(stepper.device) / 2**20 if cuda else self.peak
        row = _fill_batch(BatchRow(b, True, memory_mb=memory), times)
        if self.budget is not None and memory > self.budget:
            row.fits, row.note = False, "over the memory budget"
        return row


def _search_sizes(attempt: Callable[[int, list[BatchRow]], BatchRow], start: int, cap: int,
                  n: int, refine: int, started: float,
                  budget_s: float) -> tuple[list[BatchRow], str]:  # fmt: skip
    """Double from ``start`` until a batch does not fit or ``cap`` is reached, then bisect
    the boundary ``refine`` times. Returns the rows by batch size and why it stopped."""
    rows: list[BatchRow] = []
    fits, fails, limit = 0, 0, ""
    b = min(start, cap)
    while True:
        row = attempt(b, rows)
        rows.append(row)
        if not row.fits:
            fails, limit = b, f"{row.note} at {b}"
            break
        fits = b
        if b >= cap:
            limit = f"the dataset's {n} samples" if cap == n else f"max_batch={cap}"
            break
        if time.perf_counter() - started > budget_s:
            limit = f"time budget of {budget_s:g} s spent"
            break
        b = min(2 * b, cap)
    for _ in range(refine):
        mid = _between(fits, fails)
        if mid is None or time.perf_counter() - started > budget_s:
            break
        row = attempt(mid, rows)
        rows.append(row)
        if row.fits:
            fits = mid
        else:
            fails, limit = mid, f"{row.note} at {mid}"
    return sorted(rows, key=lambda r: r.batch), limit


def _between(fits: int, fails: int) -> int | None:
    """A batch half way between one that fits and one that does not (a multiple of 8 when
    that large), or None when there is none."""
    if not fits or not fails or fails - fits < 2:
        return None
    mid = (fits + fails) // 2
    if mid >= 16:
        mid -= mid % 8
    return mid if fits < mid < fails else None


def _predict(rows: list[BatchRow], b: int) -> float:
    """Memory a batch of ``b`` would take, by a line through the two largest that fitted. One
    point says nothing of the fixed part (weights, optimizer state): no prediction then, and a
    doubling overshoots the budget at most twice over."""
    known = sorted((r.batch, r.memory_mb) for r in rows if r.fits and r.batch < b)
    if len(known) < 2:
        return 0.0
    (b1, m1), (b2, m2) = known[-2:]
    return m2 + max(0.0, (m2 - m1) / (b2 - b1)) * (b - b2)


def _trim() -> None:
    """Hand the heap's free pages back to the OS (glibc), so that resident memory counts what
    is live: otherwise a step can reuse memory freed earlier and seem to need none."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to hand back
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _is_oom(exc: BaseException) -> bool:
    torch = require("torch", "nimbleml.train")
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc)
    return "can't allocate memory" in text or "out of memory" in text.lower()


def _fill_batch(row: BatchRow, times: list[float]) -> BatchRow:
    step = statistics.median(times)
    row.samples_per_s, row.step_ms, row.steps = row.batch / step, step * 1e3, len(times)
    return row


def _pool(data: Any) -> tuple[Batch, int]:
    """Real samples to tile into batches of any size, and the dataset's number of samples."""
    require("torch", "nimbleml.train")
    from torch.utils.data import DataLoader, default_collate

    if not _is_dataset(data):
        if not (isinstance(data, tuple | list) and len(data) == 2):
            raise DataError(
                f"training data of type {type(data).__name__}: give (X, y) arrays or tensors, "
                "a torch Dataset, or a DataLoader"
            )
        memory = InMemory(data[0], data[1], batch_size=1, shuffle=False)
        return Batch(memory.X, memory.y, memory.n_samples), memory.n_samples
    dataset, collate = data, default_collate
    if isinstance(data, DataLoader):
        dataset, collate = data.dataset, data.collate_fn
    try:
        n = len(dataset)
    except TypeError:
        raise DataError(
            "find_batch_size needs a dataset with a length (a map-style Dataset, or (X, y))"
        ) from None
    if n == 0:
        raise DataError("the training dataset is empty: give at least one sample")
    return split(collate([dataset[i] for i in range(min(n, POOL))])), n


def _tile(pool: Batch, b: int) -> Batch:
    """A batch of ``b`` samples from the pool (repeated when the pool is smaller)."""
    torch = require("torch", "nimbleml.train")
    index = torch.arange(b) % pool.n

    def take(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: take(v) for k, v in x.items()}
        if isinstance(x, tuple | list):
            return type(x)(take(v) for v in x)
        return x[index] if torch.is_tensor(x) else x

    return Batch(take(pool.inputs), take(pool.target), b)
