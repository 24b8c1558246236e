"""nimbleml.train.bench and `nimbleml bench-train`: one model under several configurations,
side by side (tiny models, one epoch: what is checked is the table, not the speed)."""

from __future__ import annotations

import json
import re
import textwrap

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from nimbleml.bench.memory import PeakMemory
from nimbleml.cli import app
from nimbleml.errors import ConfigError
from nimbleml.train.bench import bench_train, compare_amp, full_suite

COLUMNS = ["configuration", "samples/s", "step p50 ms", "step p95 ms", "n", "peak MB",
           "final loss", "accuracy", "speedup"]  # fmt: skip
STAMP = re.compile(r"^train-bench_\d{8}_\d{6}\.(json|txt|png)$")


@pytest.fixture(scope="module")
def data():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = (X / 16).astype(np.float32)
    return (X[:256], y[:256]), (X[256:384], y[256:384])


def mlp() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))


@pytest.fixture(scope="module")
def result(data):
    train, val = data
    configs = [
        {"label": "fp32", "precision": "fp32"},
        {"label": "accum 16x4", "batch_size": 16, "grad_accum": 4},
        {"label": "not here", "skip": "a reason"},
    ]
    return bench_train(mlp, train, configs, val=val, epochs=1, batch_size=64)


def test_table_has_the_guides_columns_and_the_fp32_row_is_the_baseline(result):
    table = result.table()
    header = next(line for line in table.splitlines() if line.startswith("configuration"))
    assert re.split(r"\s{2,}", header.strip()) == COLUMNS, header
    fp32 = result.row("fp32")
    assert result.baseline == "fp32" and fp32.speedup == 1.0
    assert fp32.steps == 3 and fp32.step_p50_ms is not None  # 4 steps, the first left out
    assert fp32.peak_memory_mb is not None and fp32.peak_memory_mb >= 0
    assert "p95 of fewer than 200 steps" in table and "*" in table
    assert "give more epochs or repeats" in table  # 4 steps: the ratios are noise
    # exact accumulation: the same optimizer steps, so the same final loss and metric
    accum = result.row("accum 16x4")
    assert accum.batch_size == 64 and accum.train_loss == pytest.approx(fp32.train_loss, rel=1e-5)
    assert accum.metric == fp32.metric and fp32.metric_name == "accuracy"
    assert re.search(r"not here \[1\]\s+skipped", table) and "[1] not here: a reason" in table


def test_json_and_files_named_with_the_time(result, tmp_path):
    written = result.save(tmp_path)
    assert {p.suffix for p in written} == {".json", ".txt", ".png"}
    assert all(STAMP.match(p.name) for p in written), written
    assert len({p.stem for p in written}) == 1
    d = json.loads(written[0].read_text())
    assert {"schema", "kind", "created_at", "device", "epochs", "repeats", "baseline", "memory",
            "rows", "notes", "machine", "model", "samples"} <= set(d)  # fmt: skip
    assert {"cpu", "libraries", "logical_cores"} <= set(d["machine"])
    row = d["rows"][0]
    assert {"label", "options", "samples_per_s", "step_p50_ms", "step_p95_ms", "steps",
            "peak_memory_mb", "train_loss", "metric", "speedup", "note"} <= set(row)  # fmt: skip
    assert row["options"]["precision"] == "fp32" and d["samples"] == 256
    assert written[1].read_text().strip() == result.table()
    again = result.save(tmp_path)  # the same second: a new name, nothing overwritten
    assert again[0] != written[0] and written[0].exists()


def test_chart_bars_start_at_zero(result):
    fig = result.figure()
    for ax in fig.axes:
        assert ax.get_ylim()[0] == 0
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["fp32", "accum 16x4"]


def test_presets_on_this_machine(data):
    from nimbleml.bench.machine import cpu_caps

    amp = compare_amp("cpu")
    assert [c["label"] for c in amp] == ["fp32", "bf16-mixed"]
    if not cpu_caps().bf16:
        assert "emulated" in amp[1]["note"]
    suite = {c["label"]: c for c in full_suite(data[0], batch_size=64, device="cpu")}
    assert suite["grad_accum=4 (16 x 4)"] == {"label": "grad_accum=4 (16 x 4)",
                                              "batch_size": 16, "grad_accum": 4}  # fmt: skip
    assert suite["checkpointing"]["checkpointing"] is True
    assert "in memory" in suite["DataLoader tuned"]["skip"]  # (X, y): nothing to tune
    dataset = torch.utils.data.TensorDataset(torch.from_numpy(data[0][0]),
                                             torch.from_numpy(data[0][1]))  # fmt: skip
    tuned = next(c for c in full_suite(dataset, device="cpu") if c["label"] == "DataLoader tuned")
    assert tuned == {"label": "DataLoader tuned", "dataloader": "auto"}


def test_a_row_that_cannot_run_says_why_and_the_others_stand(data):
    class Plain(torch.nn.Module):  # no Sequential: checkpointing=True has no blocks to pick
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(64, 10)

        def forward(self, x):
            return self.fc(x)

    res = bench_train(Plain, data[0], [{"label": "fp32"}, {"label": "ckpt", "checkpointing": True}])
    assert res.row("fp32").ran and res.row("fp32").speedup == 1.0
    assert "checkpointing=True looks for a Sequential" in res.row("ckpt").skipped
    assert res.row("ckpt").speedup is None


@pytest.mark.parametrize(
    "configs, words",
    [
        ([{"precision": "fp32"}], "needs a 'label'"),
        ([{"label": "a"}, {"label": "a"}], "labels must differ"),
        ([{"label": "a", "precison": "fp32"}], "unknown training option(s) precison"),
        ([{"label": "a", "precision": "fp8"}], "'fp8' is not one of"),
    ],
)
def test_bad_configurations_are_refused_before_training(data, configs, words):
    with pytest.raises(ConfigError, match=re.escape(words)):
        bench_train(mlp, data[0], configs)


def test_a_gpu_asked_for_where_there_is_none_is_a_config_error(data):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    with pytest.raises(ConfigError, match="sees no CUDA GPU"):
        compare_amp("cuda")
    with pytest.raises(ConfigError, match="sees no CUDA GPU"):
        bench_train(mlp, data[0], [{"label": "fp32"}], device="cuda")


def test_peak_memory_counts_what_a_run_allocates():
    peak = PeakMemory("cpu")
    peak.start()
    block = torch.ones(40 * 2**20 // 4)  # 40 MB, written: resident
    del block
    grown = peak.stop()
    assert grown is not None and 38 <= grown < 80, grown
    assert "resident memory" in peak.describe()


@pytest.fixture()
def cli_files(tmp_path, data):
    (tmp_path / "tiny_model.py").write_text(
        textwrap.dedent("""
        import torch

        def build():
            return torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(),
                                       torch.nn.Linear(16, 10))
    """)
    )
    (train, val) = data
    np.savez(tmp_path / "train.npz", X=train[0], y=train[1])
    np.savez(tmp_path / "val.npz", X=val[0], y=val[1])
    return tmp_path


def test_cli_prints_the_table_and_writes_the_files(cli_files):
    d = cli_files
    res = CliRunner().invoke(app, ["bench-train", "--model", f"{d}/tiny_model.py:build",
                                   "--data", f"{d}/train.npz", "--val", f"{d}/val.npz",
                                   "--compare-amp", "-o", f"{d}/out"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "configuration" in res.output and "bf16-mixed" in res.output
    names = sorted(p.name for p in (d / "out").iterdir())
    assert len(names) == 3 and all(STAMP.match(n) for n in names), names


def test_cli_bad_input_is_one_line_exit_2(cli_files):
    d = cli_files
    res = CliRunner().invoke(app, ["bench-train", "--model", f"{d}/tiny_model.py:nope",
                                   "--data", f"{d}/train.npz", "-o", f"{d}/out"])  # fmt: skip
    errors = [line for line in res.output.splitlines() if line.startswith("error: ")]
    assert res.exit_code == 2 and len(errors) == 1, res.output
    assert "has no 'nope'" in errors[0] and "build" in errors[0]
    assert "Traceback" not in res.output and not (d / "out").exists()


@pytest.mark.gpu
def test_compare_amp_on_a_gpu_measures_cuda_memory(data):
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    res = bench_train(mlp, data[0], compare_amp("cuda"), device="cuda")
    assert [r.label for r in res.rows][:2] == ["fp32", "fp16-mixed"]
    assert all(r.ran and r.peak_memory_mb and r.peak_memory_mb > 0 for r in res.rows)
    assert "cuda.max_memory_allocated" in res.memory
