"""nimbleml.train when things go wrong (issue 22): the user's model, loss, data and callbacks
named when they raise; a full or read-only disk named; a corrupt latest checkpoint skipped;
missing values refused with row and column; non-finite losses said; bad dataloader keys."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import nimbleml
from nimbleml.errors import ConfigError, DataError, StorageError, TrainingError, UserCodeError
from tests._disk import tmpfs


@pytest.fixture(scope="module")
def data():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return (X / 16).astype(np.float32), y


def mlp(hidden: int = 32) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10)
    )


FAST = {"epochs": 1, "batch_size": 64, "precision": "fp32"}


# -------------------------------------------------------------------- the user's code


def test_data_that_does_not_fit_the_model_names_the_stage_and_both_numbers(data):
    X, y = data
    with pytest.raises(UserCodeError) as err:
        nimbleml.train(mlp(), (X[:200, :30], y[:200]), **FAST)
    text = str(err.value)
    assert text.startswith("the model's forward pass on the first training batch raised "
                           "RuntimeError: mat1 and mat2 shapes cannot be multiplied"), text  # fmt: skip
    assert "the data has 30 features per row, the model's first layer (0: Linear) takes 64" in text


def test_the_users_loss_dataset_and_callback_are_named(data):
    X, y = data[0][:256], data[1][:256]

    def my_loss(out, target):
        if out.shape[0] < 64:
            raise ValueError("cannot take a short batch")
        return torch.nn.functional.cross_entropy(out, target)

    with pytest.raises(UserCodeError, match=r"^the loss on training batch 4 of epoch 1 raised "
                       r"ValueError: cannot take a short batch; check the loss function"):  # fmt: skip
        nimbleml.train(mlp(), (X[:250], y[:250]), loss=my_loss, **FAST)

    class Flaky(torch.utils.data.Dataset):
        def __len__(self):
            return 256

        def __getitem__(self, i):
            if i == 100:
                raise KeyError(f"no sample {i}")
            return torch.from_numpy(X[i]), int(y[i])

    loader = torch.utils.data.DataLoader(Flaky(), batch_size=32)  # in order: 100 is in batch 4
    with pytest.raises(UserCodeError, match=r"^reading training batch 4 of epoch 1 from the "
                       r"data raised KeyError: 'no sample 100'; check the Dataset"):  # fmt: skip
        nimbleml.train(mlp(), loader, **FAST)

    def on_epoch(event, info):
        if event == "epoch_end":
            return info["val_loss"]  # there is no validation data: a KeyError of the user's
        return None

    with pytest.raises(UserCodeError, match=r"^the callback .*on_epoch \(at epoch_end of epoch 1\) "
                       r"raised KeyError: 'val_loss'; check the callback"):  # fmt: skip
        nimbleml.train(mlp(), (X, y), callbacks=[on_epoch], **FAST)


def test_a_bad_dataloader_key_names_it_and_the_allowed_ones(data):
    with pytest.raises(ConfigError, match=r"dataloader key 'nmu_workers' is not a DataLoader "
                       r"argument; the keys you may give: shuffle, num_workers, "):  # fmt: skip
        nimbleml.train(mlp(), data, dataloader={"nmu_workers": 2}, **FAST)
    with pytest.raises(ConfigError, match=r"'batch_size' is set by nimbleml"):
        nimbleml.train(mlp(), data, dataloader={"batch_size": 2}, **FAST)


# -------------------------------------------------------------------- missing values


def test_missing_values_are_refused_with_row_and_column(data):
    X, y = data[0][:256].copy(), data[1][:256]
    X[37, 5] = np.nan
    with pytest.raises(DataError, match=r"^the training data X: row 37, column 5 holds a "
                       r"missing value \(NaN\); fill or drop"):  # fmt: skip
        nimbleml.train(mlp(), (X, y), **FAST)
    with pytest.raises(DataError, match=r"^the validation data X: row 37, column 5 holds"):
        nimbleml.train(mlp(), data, (X, y), **FAST)
    # a DataLoader cannot be scanned up front: the first batch holding one, its row within it
    dataset = torch.utils.data.TensorDataset(torch.from_numpy(X), torch.from_numpy(y))
    loader = torch.utils.data.DataLoader(dataset, batch_size=32)
    with pytest.raises(DataError, match=r"^training batch 2 of epoch 1, inputs: row 5, column 5 "
                       r"holds a missing value"):  # fmt: skip
        nimbleml.train(mlp(), loader, **FAST)


def test_nonfinite_losses_from_finite_data_are_skipped_said_then_refused(data):
    X, y = data[0][:256].copy(), data[1][:256]
    X[:32] = 3e38  # finite, but the first layer's sums overflow: a NaN loss for that batch
    with pytest.warns(RuntimeWarning, match=r"^1 training step\(s\) were skipped because the loss "
                      r"was NaN or infinite \(epoch 1; nonfinite_steps"):  # fmt: skip
        res = nimbleml.train(mlp(), (X, y), epochs=1, batch_size=256, precision="fp32")
    assert res.history[0]["nonfinite_steps"] == 1 and res.history[0]["skipped_steps"] == 1
    assert torch.isfinite(torch.cat([p.flatten() for p in res.model.parameters()])).all()
    X[:] = 3e38
    with pytest.raises(TrainingError, match="NaN or infinite 3 steps in a row.*lower lr"):
        nimbleml.train(mlp(), (X, y), epochs=1, batch_size=32, max_nonfinite=3, precision="fp32")


def test_an_epoch_whose_val_loss_is_nan_is_never_the_best(data, tmp_path):
    X, y = data
    huge = X[:100] * 3e38  # finite validation data whose outputs overflow
    res = nimbleml.train(mlp(), (X, y), (huge, y[:100]), epochs=2, batch_size=256,
                         precision="fp32", checkpoint_dir=str(tmp_path))  # fmt: skip
    assert all(not np.isfinite(r["val_loss"]) for r in res.history)
    assert [r["best"] for r in res.history] == [False, False]
    assert res.best_checkpoint is None and not (tmp_path / "best.pt").exists()


# -------------------------------------------------------------------- checkpoints


def test_a_truncated_latest_checkpoint_falls_back_to_the_one_before(data, tmp_path):
    X, y = data
    opts = dict(batch_size=256, precision="fp32", checkpoint_dir=str(tmp_path), keep_last=3)
    nimbleml.train(mlp(), (X, y), epochs=3, **opts)
    whole = nimbleml.train(
        mlp(), (X, y), epochs=4, **{**opts, "checkpoint_dir": str(tmp_path / "w")}
    )
    latest = tmp_path / "epoch-0003.pt"
    latest.write_bytes(latest.read_bytes()[:5000])  # cut short, as a full disk leaves it
    with pytest.warns(RuntimeWarning) as caught:
        res = nimbleml.train(mlp(), (X, y), epochs=4, resume=True, **opts)
    (message,) = [str(w.message) for w in caught]
    assert message == (
        f"checkpoint {latest} cannot be read (the file is cut short at 5,000 bytes, its end "
        "missing: not a complete checkpoint, probably from a process killed while writing it, "
        "or a disk that filled up), so training resumes from epoch-0002.pt (epoch 2) and trains "
        "the epochs after it again"
    )  # not torch's '[Errno 22] Invalid argument'
    assert [r["epoch"] for r in res.history] == [1, 2, 3, 4]
    for a, b in zip(res.model.parameters(), whole.model.parameters(), strict=True):
        assert torch.equal(a, b)  # epoch 3 again, then 4: the uninterrupted run's weights
    for p in tmp_path.glob("epoch-*.pt"):
        p.write_bytes(b"not a checkpoint")
    (tmp_path / "epoch-0002.pt").write_bytes(b"")
    with pytest.raises(ConfigError) as err:
        nimbleml.train(mlp(), (X, y), epochs=5, resume=True, **opts)
    text = str(err.value)
    assert text.startswith(f"no readable checkpoint in {tmp_path} to resume from: epoch-0004.pt (")
    assert "epoch-0002.pt (the file is empty: not a complete checkpoint, probably from a " in text
    assert "\n" not in text and text.endswith("or give another checkpoint_dir")


def test_a_fresh_run_in_a_used_folder_replaces_the_old_checkpoints(data, tmp_path):
    X, y = data
    opts = dict(batch_size=256, precision="fp32", checkpoint_dir=str(tmp_path))
    nimbleml.train(mlp(), (X, y), epochs=3, **opts)
    with pytest.warns(UserWarning, match="held checkpoints of an earlier run .*epoch-0003.pt"):
        nimbleml.train(mlp(), (X, y), epochs=1, **opts)
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["best.pt", "epoch-0001.pt"]
    assert len((tmp_path / "history.jsonl").read_text().splitlines()) == 1


# -------------------------------------------------------------------- a real small disk


def test_a_full_disk_while_checkpointing_names_the_disk_and_the_file(data, tmp_path):
    X, y = data
    with tmpfs(tmp_path / "small", "size=300k") as small:
        with pytest.raises(StorageError) as err:  # the first checkpoint (> 300 KB) fills it
            nimbleml.train(mlp(hidden=1024), (X, y), checkpoint_dir=str(small / "run"), **FAST)
        text = str(err.value)
        assert text.startswith(f"the disk is full: writing {small / 'run' / 'epoch-0001.pt'} "
                               "failed ("), text  # fmt: skip
        assert f" MiB free in {small / 'run'})" in text  # what is free after the file went
        assert text.endswith("run the same command to resume")
        assert not [p.name for p in (small / "run").iterdir()]  # no partial file left


def test_a_read_only_folder_is_refused_before_training(data, tmp_path):
    X, y = data
    steps = []
    ro = tmp_path / "ro"
    with tmpfs(ro, "ro,size=4m"), pytest.raises(StorageError) as err:
        nimbleml.train(mlp(), (X, y), checkpoint_dir=str(ro / "run"),
                       callbacks=[lambda e, i: steps.append(e)], **FAST)  # fmt: skip
    assert str(err.value) == (
        f"cannot write {ro / 'run' / 'epoch-0001.pt'}: {ro} is on a read-only file system"
    )
    assert steps == []  # refused before the first step


def test_history_is_json_lines_of_the_whole_run(data, tmp_path):
    X, y = data
    res = nimbleml.train(mlp(), (X, y), epochs=2, batch_size=256, precision="fp32",
                         checkpoint_dir=str(tmp_path))  # fmt: skip
    lines = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert lines == res.history
    assert oct((tmp_path / "history.jsonl").stat().st_mode & 0o777) == "0o644"


def test_the_emulated_precision_warning_only_when_measured_slower():
    from nimbleml.train.precision import emulated_warning

    assert emulated_warning("bf16-mixed", "no AVX512-BF16", 0.6) is None  # measured faster
    assert emulated_warning("bf16-mixed", "no AVX512-BF16", 1.0) is None
    text = emulated_warning("bf16-mixed", "no AVX512-BF16", 2.345)
    assert text == ("bf16-mixed on this CPU is emulated (no AVX512-BF16): a training step "
                    "measured 2.35x the time of fp32; precision='auto' would train in fp32")  # fmt: skip
