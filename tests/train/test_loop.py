"""nimbleml.train: the points where training loops are known to go wrong, each checked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch

import nimbleml
from nimbleml.errors import ConfigError, DataError, PerformanceWarning
from nimbleml.train import Trainer


@pytest.fixture(scope="module")
def data():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return (X / 16).astype(np.float32), y


def mlp(seed: int = 0, dropout: float = 0.0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Dropout(dropout), torch.nn.Linear(32, 10)
    )


def weights(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


# the bounds docs/train.md states for accumulation against the big batch (one epoch)
ACCUM_FP32, ACCUM_FP64 = 5e-6, 1e-12


def test_accumulation_equals_the_big_batch_within_the_documented_bound(data):
    """batch 16 x 4 micro-steps == batch 64 up to float rounding, also for the last group of
    16 + 13 samples (1,437 rows). The sums differ in order only: in float64 that is ~1e-15
    (8.9e-16 measured), in float32 ~1e-7 relative per step, which a step size as large as
    SGD's lr 0.5 with momentum carries on (6.0e-7 after one epoch here, 2.3e-6 on another
    run; docs/train.md). In fp32 explicitly: "auto" picks bf16 autocast on a CPU with
    AVX512_BF16, whose rounding differs between a batch of 64 and four of 16 (1.8e-4)."""
    for dtype, bound in ((torch.float32, ACCUM_FP32), (torch.float64, ACCUM_FP64)):
        X, y = torch.tensor(data[0][:1437], dtype=dtype), torch.tensor(data[1][:1437])
        opts = dict(epochs=1, optimizer="sgd", lr=0.5, precision="fp32")
        one = nimbleml.train(mlp().to(dtype), (X, y), batch_size=64, **opts)
        acc = nimbleml.train(mlp().to(dtype), (X, y), batch_size=16, grad_accum=4, **opts)
        diff = float((weights(one.model) - weights(acc.model)).abs().max())
        assert diff < bound, (dtype, diff)
        moved = float((weights(one.model) - weights(mlp().to(dtype))).abs().max())
        assert moved > 1e3 * bound  # it did train
        # normalising by the micro-batch count instead would not be exact: a guard on the test
        plain = nimbleml.train(mlp().to(dtype), (X, y), batch_size=16, **opts)
        assert float((weights(one.model) - weights(plain.model)).abs().max()) > 1e-4


def test_auto_precision_on_this_cpu_is_stated(data):
    from nimbleml.bench.machine import cpu_caps, has_cuda

    res = nimbleml.train(mlp(), data, epochs=1, batch_size=256)
    report = res.report.to_dict()["precision"]
    if not has_cuda() and not cpu_caps().bf16:
        assert report["chosen"] == "fp32" and "no native bf16" in report["reason"]
    assert report["reason"]


def test_explicit_bf16_on_a_cpu_without_it_runs_but_warns_with_the_cost(data):
    from nimbleml.bench.machine import cpu_caps

    if cpu_caps().bf16:
        pytest.skip("this CPU runs bf16 natively")
    with pytest.warns(RuntimeWarning, match=r"emulated .* measured [0-9.]+x the time of fp32"):
        res = nimbleml.train(mlp(), data, epochs=1, batch_size=256, precision="bf16-mixed")
    assert res.report.precision == "bf16-mixed" and np.isfinite(res.history[-1]["train_loss"])


def test_loss_scaling_skips_inf_steps_without_advancing_the_schedule(data):
    """fp16 gradients that overflow at the initial scale: the scaler skips those steps and
    halves its scale, the scheduler does not step for them (and no 'scheduler before
    optimizer' warning: warnings are errors here), and clipping sees unscaled gradients."""
    import math

    X = data[0][:256]
    y = (data[1][:256] * 50.0).astype(np.float32)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 1))
    steps: list[dict] = []
    seen_norms: list[float] = []
    original = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *a, **k):
        params = list(params)
        seen_norms.append(float(torch.stack([p.grad.norm() for p in params]).norm()))
        return original(params, max_norm, *a, **k)

    lrs: list[float] = []
    torch.nn.utils.clip_grad_norm_ = spy
    try:
        # fp16 is emulated here; whether the warning that says so fires is a timing (3 steps
        # each): tests/train/test_robust.py tests its rule
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PerformanceWarning)
            res = nimbleml.train(
                model, (X, y), epochs=4, batch_size=32, precision="fp16-mixed", loss="mse",
                scheduler="cosine", grad_clip=1e6, lr=1e-3,
                callbacks=[lambda e, i: e == "step_end" and (steps.append(i) or lrs.append(
                    i["lr"]))],
            )  # fmt: skip
    finally:
        torch.nn.utils.clip_grad_norm_ = original
    skipped = sum(r["skipped_steps"] for r in res.history)
    assert 1 <= skipped < 32
    assert len(steps) == 32 - skipped and steps[-1]["step"] == 32 - skipped
    # the schedule advanced once per step taken: the first taken step saw step 1 of 32
    assert lrs[0] == pytest.approx(1e-3 * (1 + math.cos(math.pi * 1 / 32)) / 2)
    # clipping saw the true gradients: finite ones far below the scaled size (x 2**16)
    finite = [n for n in seen_norms if math.isfinite(n)]
    assert finite and max(finite) < 1e5


RESUME = textwrap.dedent("""
    import os, signal, sys, numpy as np, torch, nimbleml
    from nimbleml.train import checkpoint as ck
    data, out, weights = sys.argv[1:4]
    d = np.load(data)  # digits from the test: importing scikit-learn would cost a second
    X, y = d["X"], d["y"]
    kill_at = int(os.environ.get("KILL_AT", "0"))
    if os.environ.get("KILL_IN_BEST"):  # SIGKILL half-way through the second best.pt copy
        original, seen = ck._atomic, []
        def dying(write, path):
            if path.name == "best.pt":
                seen.append(path)
                if len(seen) == 2:
                    def half(fh):
                        fh.write(b"PK half a checkpoint"); fh.flush()
                        os.kill(os.getpid(), signal.SIGKILL)
                    return original(half, path)
            return original(write, path)
        ck._atomic = dying
    def die(event, info):
        if event == "step_end" and info["step"] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Dropout(0.2),
                                torch.nn.Linear(32, 10))
    res = nimbleml.train(model, (X[:1200], y[:1200]), (X[1200:], y[1200:]), epochs=4,
                         batch_size=64, lr=0.01, scheduler="cosine", checkpoint_dir=out,
                         resume=True, callbacks=[die])
    torch.save(res.model.state_dict(), weights)
""")
STEPS = 19  # 1,200 rows in batches of 64


@pytest.mark.own_process  # its children die by SIGKILL: a fresh interpreter (tests/conftest.py)
def test_killed_in_the_best_copy_then_mid_epoch_resumes_to_the_uninterrupted_run(tmp_path, data):
    """One run killed with SIGKILL half-way through its second best.pt copy, the same
    command again killed mid-epoch, then once more: every RNG state, the scheduler and the
    files are restored, so it ends as the uninterrupted run (started beside the first: a
    run waits on imports more than it trains), weights bit for bit. What each kill left is
    mended at the next start: our temporary file deleted, history.jsonl rewritten whole
    (the kill left it a line short), best.pt copied again from the checkpoint resumed from."""
    script, npz = tmp_path / "run.py", tmp_path / "digits.npz"
    script.write_text(RESUME)
    np.savez(npz, X=data[0], y=data[1])

    def start(name: str, **env: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, str(script), str(npz), str(tmp_path / name),
                                 str(tmp_path / f"{name}.pt")], env={**os.environ, **env},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip

    def finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
        try:
            return proc.wait(timeout=300), proc.communicate()[1]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def lines(name: str) -> list[dict]:
        timing = ("samples_per_s", "seconds")
        text = (tmp_path / name / "history.jsonl").read_text()
        return [{k: v for k, v in json.loads(line).items() if k not in timing}
                for line in text.splitlines()]  # fmt: skip

    b = tmp_path / "b"
    whole, killed = start("a"), start("b", KILL_IN_BEST="1")
    code, err = finish(killed)
    assert code == -signal.SIGKILL, err
    assert [p.name for p in b.glob(".best.pt.*.tmp")]  # what the kill left: a temp file ...
    done = int(sorted(b.glob("epoch-*.pt"))[-1].stem.split("-")[1])
    assert 2 <= done < 4 and len(lines("b")) == done - 1  # ... a history line short
    assert torch.load(b / "best.pt", weights_only=False)["epoch"] == 1  # the first best
    code, err = finish(whole)
    assert code == 0, err
    code, err = finish(start("b", KILL_AT=str(STEPS * done + 7)))  # mid epoch done + 1
    assert code == -signal.SIGKILL and not (tmp_path / "b.pt").exists(), err
    assert not list(b.glob(".*.tmp"))  # mended at its start
    assert lines("b") == lines("a")[:done]
    assert torch.load(b / "best.pt", weights_only=False)["epoch"] == done
    assert sorted(p.name for p in b.glob("epoch-*.pt")) == [
        f"epoch-{done - 1:04d}.pt", f"epoch-{done:04d}.pt"
    ]  # keep_last=2; no half-written file left  # fmt: skip
    code, err = finish(start("b"))
    assert code == 0, err
    assert not list(b.glob(".*.tmp"))
    a, w = torch.load(tmp_path / "a.pt"), torch.load(tmp_path / "b.pt")
    assert all(torch.equal(a[k], w[k]) for k in a)  # bit-identical
    assert lines("b") == lines("a") and len(lines("a")) == 4
    best = [torch.load(d / "best.pt", weights_only=False) for d in (tmp_path / "a", b)]
    assert best[0]["epoch"] == best[1]["epoch"]
    assert all(torch.equal(best[0]["model"][k], best[1]["model"][k]) for k in best[0]["model"])


def test_a_checkpoint_of_another_model_is_refused_naming_keys(tmp_path, data):
    nimbleml.train(mlp(), data, epochs=1, batch_size=256, checkpoint_dir=str(tmp_path))
    other = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    with pytest.raises(ConfigError, match=r"another model: .*0.weight \(32, 64\) vs \(16, 64\)"):
        nimbleml.train(other, data, epochs=2, batch_size=256, checkpoint_dir=str(tmp_path),
                       resume=True)  # fmt: skip


def test_activation_checkpointing_gives_the_same_model_and_is_undone(data):
    X, y = data[0][:256], data[1][:256]
    plain = nimbleml.train(mlp(), (X, y), epochs=1, batch_size=64)
    model = mlp()
    checked = nimbleml.train(model, (X, y), epochs=1, batch_size=64, checkpointing=True)
    assert float((weights(plain.model) - weights(checked.model)).abs().max()) < 1e-6
    assert all("forward" not in vars(m) for m in model.modules())  # wrappers removed
    with pytest.raises(ConfigError, match="no submodule nope"):
        nimbleml.train(mlp(), (X, y), epochs=1, checkpointing=["nope"])


def test_report_history_checkpoints_and_early_stopping(tmp_path, data):
    X, y = data
    res = nimbleml.train(mlp(), (X[:1200], y[:1200]), (X[1200:], y[1200:]), epochs=30,
                         batch_size=128, lr=0.05, early_stopping=2, keep_last=2,
                         scheduler="plateau", checkpoint_dir=str(tmp_path))  # fmt: skip
    assert len(res.history) < 30 and res.history[-1].get("stopped_early")
    assert (
        res.history[-1]["metric"] == "accuracy" and max(r["val_metric"] for r in res.history) > 0.9
    )
    assert res.best_checkpoint == tmp_path / "best.pt"
    assert len(list(tmp_path.glob("epoch-*.pt"))) == 2
    for name in ("report.json", "report.txt", "curves.png", "history.jsonl"):
        assert (tmp_path / name).stat().st_size > 0
    assert len((tmp_path / "history.jsonl").read_text().splitlines()) == len(res.history)
    assert "precision: fp32" in res.report.table() or "precision:" in res.report.table()


@pytest.mark.parametrize("options, message", [
    ({"batch_size": 0}, "batch_size must be >= 1"),
    ({"precision": "fp8"}, "precision 'fp8' is not one of auto, fp32"),
    ({"scheduler": "linear"}, "scheduler 'linear' is not one of cosine"),
    ({"loss": "hinge"}, "loss 'hinge' is not one of cross_entropy"),
    ({"optimizer": "lion"}, "optimizer 'lion' is not one of adamw"),
    ({"metric": "auc"}, "metric 'auc' is not one of"),
    ({"epochs": "ten"}, "epochs must be an integer"),
    ({"lr": -1}, "lr must be > 0"),
    ({"learning_rate": 0.1}, "unknown training option(s) learning_rate"),
    ({"resume": True}, "resume=True needs checkpoint_dir"),
])  # fmt: skip
def test_bad_options_name_the_value_and_the_allowed_ones(options, message):
    with pytest.raises(ConfigError) as err:
        Trainer(**options)
    assert message in str(err.value)


def test_bad_data_names_the_problem(data):
    X, y = data[0][:64], data[1][:64]
    cases = [
        (((X[:0], y[:0]),), {}, "holds no rows"),
        (((X, y[:10]),), {}, "X has 64 rows but y has 10"),
        (((X, y + 0.5),), {"loss": "cross_entropy"}, "fractional floats"),
        (((X, y + 20),), {}, "targets run from 20 to 29, but the model gives 10 class scores"),
        # torch would skip a target of -100 (its ignore_index) without a word: refused here
        (((X, np.where(np.arange(64) == 5, -100, y)),), {}, "targets run from -100 to 9"),
        (((X, np.zeros((64, 3), np.float32)),), {"loss": "mse"}, "element by element"),
        (("train.csv",), {}, "training data of type str"),
        ((["a", "b"],), {}, "X holds non-numbers"),
    ]
    for args, options, message in cases:
        with pytest.raises(DataError, match=message):
            nimbleml.train(mlp(), *args, epochs=1, **options)
