"""DataLoader settings and batch size chosen by measurement: the choice, the cache, no worker
left behind, the memory budget, and the 'within 5% of the peak' rule on a given table."""

from __future__ import annotations

import json
import time

import psutil
import pytest

torch = pytest.importorskip("torch")

from torch.utils.data import DataLoader, Dataset, TensorDataset  # noqa: E402

from nimbleml.train.loader_settings import (  # noqa: E402
    LoaderRow,
    cache_path,
    choose,
    find_batch_size,
    pick_batch,
    tune_loader,
)
from nimbleml.train.measure import cores  # noqa: E402


class SlowSamples(Dataset):
    """Each sample waits 2 ms (a disk, a decoder): a worker process can hide it behind the step."""

    def __len__(self) -> int:
        return 256

    def __getitem__(self, i: int):
        time.sleep(0.002)
        return torch.full((32,), float(i % 7)), i % 10


class Busy(torch.nn.Module):
    """A step that takes 12 ms without using the CPU (as a GPU step does): sleeping, not
    computing, so the race between data and step does not depend on the machine's load."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(32, 10)

    def forward(self, x):
        time.sleep(0.012)
        return self.fc(x)


@pytest.fixture(autouse=True)
def cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def one_thread():
    """One torch thread: on a loaded 2-core machine a second thread makes small steps erratic."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits_tensors():
    from nimbleml.demo import digits

    Xtr, _, ytr, _ = digits()
    return torch.from_numpy(Xtr), torch.from_numpy(ytr)


def mlp(hidden: int = 32) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10)
    )


def children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


# -- DataLoader ----------------------------------------------------------------------------
@pytest.mark.skipif(cores() < 2, reason="a worker needs a core of its own")
@pytest.mark.own_process
def test_a_worker_wins_on_a_slow_dataset_and_none_outlives_the_tuning():
    model, before = Busy(), children()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    decision = tune_loader(model, SlowSamples(), 8, budget_s=3.0)
    rows = decision.rows
    base = rows[0]
    assert (base.workers, base.threads) == (0, decision.rows[0].threads)
    chosen = next(r for r in rows if r.kwargs() == decision.kwargs)
    # 16 ms of data + 12 ms of step in turn, against the larger of the two side by side
    assert decision.kwargs["num_workers"] >= 1 and decision.kwargs["persistent_workers"]
    assert chosen.samples_per_s >= base.samples_per_s
    assert decision.kwargs["num_workers"] + decision.threads <= cores()
    assert all(r.workers + r.threads <= cores() for r in rows)
    assert children() <= before  # every worker process ended with its loader
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())
    table = decision.table()
    assert "num_workers=1" in table and "* = chosen" in table and not decision.cached


@pytest.mark.own_process  # forks DataLoader workers: it crashed an xdist worker
def test_the_second_time_the_decision_comes_from_the_cache(digits_tensors, cache_home):
    data, model = TensorDataset(*digits_tensors), mlp()
    first = tune_loader(model, data, 64, budget_s=1.0)
    assert not first.cached and cache_path() == cache_home / "nimbleml" / "loader.json"
    stored = json.loads(cache_path().read_text())
    (entry,) = stored["entries"].values()
    assert entry["signature"]["dataset"]["length"] == len(data)
    assert entry["signature"]["model"]["parameters"] == sum(p.numel() for p in model.parameters())
    assert entry["signature"]["machine"]["cores"] == cores()
    started = time.perf_counter()
    second = tune_loader(model, data, 64, budget_s=1.0)
    assert second.cached and time.perf_counter() - started < 0.5  # nothing measured
    assert (second.kwargs, second.threads) == (first.kwargs, first.threads)
    assert "cached" in second.summary
    other = tune_loader(mlp(hidden=48), data, 64, budget_s=1.0)  # another model: measured
    assert not other.cached and len(json.loads(cache_path().read_text())["entries"]) == 2


def test_in_memory_data_has_no_loader_to_tune_and_a_dataloader_is_kept(digits_tensors):
    decision = tune_loader(mlp(), digits_tensors, 64, budget_s=0.5, cache=False)
    assert decision.kind == "in-memory" and decision.kwargs == {}
    assert all(r.workers == 0 for r in decision.rows)
    assert "no DataLoader to tune" in decision.table()
    loader = DataLoader(TensorDataset(*digits_tensors), batch_size=32)
    kept = tune_loader(mlp(), loader, 32)
    assert kept.kind == "dataloader" and kept.kwargs == {} and kept.rows == []


def test_the_choice_is_the_cheapest_within_noise_and_never_below_no_workers():
    def row(workers: int, threads: int, sps: float, prefetch: int | None = None) -> LoaderRow:
        return LoaderRow(workers, threads, prefetch or (2 if workers else None), samples_per_s=sps)

    base = row(0, 2, 100.0)
    assert choose([base, row(0, 1, 101.0), row(1, 1, 102.0)], 2)[0] is base
    one, two = row(1, 1, 150.0), row(2, 1, 152.0)
    assert choose([base, row(0, 1, 98.0), one, two], 2)[0] is one  # 2 workers: within 3%
    deeper = row(1, 1, 200.0, prefetch=4)
    assert choose([base, one, deeper], 2)[0] is deeper
    # within 3%, even a little slower: a deeper prefetch costs a few batches, not a process
    close = row(1, 1, 148.0, prefetch=4)
    assert choose([base, one, close], 2)[0] is close
    assert choose([base, close, row(2, 1, 150.0)], 2)[0] is close  # not one more worker
    assert choose([base, one, row(1, 1, 140.0, prefetch=4)], 2)[0] is one  # 7% slower: not
    slower = [base, row(0, 1, 60.0), row(1, 1, 90.0)]
    assert choose(slower, 2)[0] is base


# -- batch size ----------------------------------------------------------------------------
def test_pick_batch_is_the_smallest_within_5_percent_of_the_peak():
    table = {2: 100.0, 4: 190.0, 8: 380.0, 16: 700.0, 32: 960.0, 64: 1000.0, 128: 990.0}
    assert pick_batch(table) == 32  # 960 >= 0.95 * 1000; 16 is not
    assert pick_batch({**table, 32: 949.0}) == 64
    assert pick_batch(table, tolerance=0.65) == 8  # 380 >= 0.35 * 1000
    assert pick_batch(table, limit=16) == 16  # none under the limit is close: the fastest
    assert pick_batch(table, limit=100) == 32
    with pytest.raises(ValueError):
        pick_batch({})


def test_find_batch_size_on_cpu(digits_tensors, one_thread):
    model = mlp()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    result = find_batch_size(model, digits_tensors, seconds_per_size=0.02)
    n = len(digits_tensors[1])
    fitting = {r.batch: r.samples_per_s for r in result.rows if r.fits}
    assert result.largest_fits == n == max(fitting) and "samples" in result.limit
    assert [r.batch for r in result.rows] == sorted(r.batch for r in result.rows)
    assert result.smallest_near_peak == pick_batch(fitting)
    assert result.best == pick_batch(fitting, limit=result.max_best)
    assert result.best in fitting and 2 <= result.best <= n // 10  # 10 steps per epoch
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())
    assert f"* = best: {result.best}" in result.table()
    assert json.dumps(result.to_dict())


def test_a_memory_budget_bounds_the_largest_batch(digits_tensors, one_thread):
    wide = mlp(hidden=8192)  # about 100 KB of activations and gradients per sample
    result = find_batch_size(wide, digits_tensors, memory_budget_mb=60, seconds_per_size=0.02)
    assert 2 <= result.largest_fits < len(digits_tensors[1])
    assert all(r.memory_mb <= 60 for r in result.rows if r.fits)
    over = [r for r in result.rows if not r.fits]
    assert over and min(r.batch for r in over) > result.largest_fits
    assert "budget" in result.limit and "memory budget 60 MB" in result.table()


def test_out_of_memory_is_caught_bisected_and_backed_off(digits_tensors, one_thread, monkeypatch):
    from nimbleml.train import measure

    real = measure.Stepper.__call__

    def small_device(self, batch):  # a device that holds batches of up to 100 samples
        if batch.n > 100:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, batch)

    monkeypatch.setattr(measure.Stepper, "__call__", small_device)
    result = find_batch_size(mlp(), digits_tensors, margin=0.1, seconds_per_size=0.02)
    # 64 fits, 128 does not; bisection: 96 fits, 112 does not; then 10% below 96
    assert [r.batch for r in result.rows if r.note == "out of memory"] == [112, 128]
    assert (result.largest_fits, result.max_safe) == (96, 86)
    assert result.best <= 86 and result.limit == "out of memory at 112"


@pytest.mark.own_process  # forks DataLoader workers: it crashed an xdist worker
def test_batch_size_auto_trains_digits_end_to_end(digits_tensors, one_thread):
    from nimbleml.train import train

    X, y = digits_tensors
    out = train(mlp(), TensorDataset(X, y), (X[:200], y[:200]), batch_size="auto", epochs=2,
                lr=1e-2)  # fmt: skip
    config = out.report.config
    assert config["batch_size"] == config["batch_size_search"]["best"]
    assert config["dataloader"]["kwargs"]["num_workers"] >= 0
    assert "batch size search:" in out.report.table() and "dataloader:" in out.report.table()
    assert out.history[-1]["val_metric"] > 0.5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_out_of_memory_is_caught_and_backed_off(digits_tensors):
    model = mlp(hidden=4096).cuda()
    free, _ = torch.cuda.mem_get_info()
    # a budget well under the free memory also stops it; OOM itself needs a huge batch
    result = find_batch_size(model, digits_tensors, device="cuda", seconds_per_size=0.02)
    assert result.largest_fits == len(digits_tensors[1])  # digits fit easily
    assert result.max_safe <= result.largest_fits and result.best <= result.max_safe
    big = torch.nn.Sequential(torch.nn.Linear(64, 1 << 16), torch.nn.Linear(1 << 16, 10)).cuda()
    n = int(free // ((1 << 16) * 4 * 3)) * 4  # more samples than the activations can hold
    X = torch.randn(n, 64)
    y = torch.randint(0, 10, (n,))
    result = find_batch_size(big, (X, y), device="cuda", start=1024, seconds_per_size=0.01)
    assert any(r.note == "out of memory" for r in result.rows)
    assert result.max_safe < result.largest_fits < n
    assert next(big.parameters()).grad is None  # restored: the model is as it was
