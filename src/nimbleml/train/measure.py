"""One real training step (fetch, forward, the loss, backward, optimizer step) on a
copy of the model, timed: what the DataLoader tuner and the batch-size finder both measure."""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from .._deps import require
from ..errors import ConfigError, DataError
from .data import Batch, _is_dataset
from .losses import _primary, resolve_loss
from .precision import decide

MIN_STEPS, MAX_STEPS = 3, 200


def cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def is_plain_dataset(data: Any) -> bool:
    """A torch Dataset that nimbleml batches itself (not a DataLoader, not (X, y))."""
    try:
        from torch.utils.data import DataLoader
    except ImportError:  # pragma: no cover
        return False
    return _is_dataset(data) and not isinstance(data, DataLoader)


class Stepper:
    """Forward, the training loss, backward, AdamW step: what a training step costs.
    On a deep copy of the model; with ``copy_model=False`` (a GPU, where a second copy of the
    weights would take the memory being measured) on the model itself, restored afterwards."""

    def __init__(self, model: Any, device: str, loss: Any, precision: str,
                 copy_model: bool = True) -> None:  # fmt: skip
        torch = require("torch", "nimbleml.train")
        self.torch, self.device = torch, str(device)
        self.cuda = self.device.startswith("cuda")
        self.snapshot: tuple[dict[str, Any], bool] | None = None
        if copy_model:
            self.model = copy.deepcopy(model)
        else:
            state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            self.model, self.snapshot = model, (state, bool(model.training))
        self.model.to(self.device).train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ConfigError("the model has no trainable parameters (requires_grad=True)")
        self.optimizer = torch.optim.AdamW(params, lr=1e-6)  # training's default optimizer
        self.precision = decide(precision, self.device)
        self.loss_spec, self.loss_note = loss, ""
        self.loss_fn: Callable[[Any, Any], Any] | None = None
        self.probe: Callable[[], None] | None = None  # reads memory through one step

    def __call__(self, batch: Batch) -> None:
        from .loop import _to, call

        inputs, target = _to(batch.inputs, self.device), _to(batch.target, self.device)
        with self.precision.autocast():
            loss = self._loss(call(self.model, inputs), target)
        if self.probe is not None:
            self.probe()  # every activation the backward pass needs is held here
            _hook_backward(loss, self.probe)
        loss.backward()
        self.optimizer.step()
        if self.probe is not None:
            self.probe()  # optimizer state, allocated on the first step
        self.optimizer.zero_grad(set_to_none=True)
        if self.cuda:
            self.torch.cuda.synchronize(self.device)

    def _loss(self, out: Any, target: Any) -> Any:
        if self.loss_fn is not None:
            return self.loss_fn(out, target)
        name, fn = resolve_loss(self.loss_spec, target)
        try:
            value = fn(out, target)
        except DataError as exc:  # the step's cost does not depend on which loss: time a sum

            def fn(o: Any, _y: Any) -> Any:
                return _primary(o).float().sum()

            value = fn(out, target)
            self.loss_note = f"loss {name!r} does not fit these outputs ({exc}); timed with a sum"
        self.loss_fn = fn
        return value

    def close(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.snapshot is not None:
            state, training = self.snapshot
            self.model.load_state_dict(state)
            self.model.train(training)
        del self.optimizer
        if self.cuda:
            self.torch.cuda.empty_cache()


def _hook_backward(loss: Any, probe: Callable[[], None]) -> None:
    """Call ``probe`` after each backward node: the gradients of a layer's input and output
    live together there, the peak that a probe after the whole backward pass misses."""
    seen: set[Any] = set()
    todo = [loss.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        node.register_hook(lambda _gi, _go: probe())
        todo.extend(n for n, _ in node.next_functions)


def timed_steps(stepper: Stepper, batches: Callable[[], Iterator[Batch]],
                 seconds: float) -> tuple[float, list[float]]:  # fmt: skip
    """(seconds to the first batch, per-step seconds after one warm-up step). An exhausted
    epoch starts the next, as training does. Each step is timed from asking for its batch."""
    started = time.perf_counter()
    it = batches()
    stepper(next(it))
    first = time.perf_counter() - started
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < MAX_STEPS and (time.perf_counter() < deadline or len(times) < MIN_STEPS):
        t = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            it = batches()
            batch = next(it)
        stepper(batch)
        times.append(time.perf_counter() - t)
    return first, times
