"""The command line, through the real console script and typer's runner."""

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from nimbleml.cli import app

runner = CliRunner()
NIMBLEML = str(Path(sys.executable).with_name("nimbleml"))


@pytest.fixture(scope="module")
def files(tmp_path_factory, mlp, pipeline, digits):
    d = tmp_path_factory.mktemp("cli")
    _, Xte, _, yte = digits
    np.savez(d / "val.npz", X=Xte, y=yte)
    np.save(d / "calib.npy", Xte[:64])
    header = ",".join([f"f{i}" for i in range(64)] + ["label"])
    np.savetxt(
        d / "val.csv", np.column_stack([Xte, yte]), delimiter=",", header=header, comments=""
    )
    torch.jit.save(torch.jit.trace(mlp, torch.from_numpy(Xte[:2])), str(d / "mlp.ts"))
    with open(d / "pipe.pkl", "wb") as fh:
        pickle.dump(pipeline, fh)
    return d


def test_compress_inspect_and_bench(files, tmp_path):
    out = tmp_path / "mlp.nimble"
    res = runner.invoke(app, [
        "compress", str(files / "mlp.ts"), "--quantize", "int8", "--calib", str(files / "calib.npy"),
        "--val", str(files / "val.npz"), "--metric", "accuracy", "--max-drop", "0.02", "-o", str(out),
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "recipe: int8 + graph-opt" in res.output and "x smaller" in res.output
    assert (out / "manifest.json").is_file()

    res = runner.invoke(app, ["inspect", str(out)])
    assert res.exit_code == 0, res.output
    assert "step int8 (onnx)" in res.output and "reduce_range" in res.output

    res = runner.invoke(app, [
        "bench", str(files / "mlp.ts"), str(out), "--data", str(files / "val.npz"),
        "--batch-size", "1,4", "--time-budget", "0.2", "--json", str(tmp_path / "r.json"),
        "--report", str(tmp_path / "rep"),
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "mlp.nimble" in res.output and "speedup" in res.output
    data = json.loads((tmp_path / "r.json").read_text())
    assert len(data["results"]) == 4 and data["results"][0]["metric"]["name"] == "accuracy"
    assert (tmp_path / "rep" / "latency.png").is_file()


def test_csv_with_target_and_trusted_pickle(files, tmp_path):
    out = tmp_path / "p.nimble"
    args = ["compress", str(files / "pipe.pkl"), "--quantize", "none", "--val", str(files / "val.csv"),
            "--target", "label", "-o", str(out)]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "--trust-pickle" in res.output
    res = runner.invoke(app, [*args, "--trust-pickle"])
    assert res.exit_code == 0, res.output
    assert "accuracy: baseline" in res.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["compress", "MODEL", "-o", "OUT", "--quantize", "int9"], "choose one of: int8"),
        (["compress", "MODEL", "-o", "OUT", "--max-drop", "0.1"], "--max-drop needs --val"),
        (["compress", "missing.onnx", "-o", "OUT"], "not found"),
        (["bench", "MODEL", "--data", "VAL", "--batch-size", "1,x"], "comma-separated integers"),
        (["bench", "MODEL", "--data", "nope.npz"], "data file not found"),
        (["inspect", "nowhere.nimble"], "not a .nimble package"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(files, args, message):
    args = [
        a.replace("MODEL", str(files / "mlp.ts")).replace("VAL", str(files / "val.npz"))
        for a in args
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 2
    assert message in res.output
    assert "Traceback" not in res.output


def test_console_script_exit_code_and_no_traceback(tmp_path):
    proc = subprocess.run(
        [NIMBLEML, "inspect", str(tmp_path / "none.nimble")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def ensemble_files(tmp_path_factory, pipeline, digits):
    """Three scikit-learn packages on digits, the validation data and a YAML config."""
    import warnings

    from sklearn.linear_model import LogisticRegression

    import nimbleml

    d = tmp_path_factory.mktemp("ensemble")
    Xtr, Xte, ytr, yte = digits
    np.savez(d / "val.npz", X=Xte, y=yte)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings of the short fits
        models = [pipeline] + [
            LogisticRegression(C=c, max_iter=200).fit(Xtr, ytr) for c in (0.05, 0.5)
        ]
    for name, model in zip("abc", models, strict=True):
        nimbleml.compress(model, quantize=None, val=(Xte, yte), benchmark_time_s=0.01).save(
            d / f"{name}.nimble"
        )
    (d / "ensemble.yaml").write_text(
        "inference:\n  batch_size: 100\n  parallel: false\n"
        f"ensemble:\n  models: [{d / 'a.nimble'}, {d / 'b.nimble'}, {d / 'c.nimble'}]\n"
        "  fusion_method: weighted\n  weights: [2, 1, 1]\n"
    )
    return d


def test_ensemble_with_flags_writes_predictions(ensemble_files, digits):
    d = ensemble_files
    res = runner.invoke(app, [
        "ensemble", str(d / "a.nimble"), str(d / "b.nimble"), str(d / "c.nimble"),
        "--data", str(d / "val.npz"), "--fusion", "uncertainty_weighted", "--batch-size", "64",
        "--mode", "fused", "-o", str(d / "preds.npz"),
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "ensemble of 3: a, b, c" in res.output and "ran fused" in res.output
    assert "540 rows in batches of 64" in res.output
    assert "accuracy: ensemble 0.9" in res.output and "members: a 0.9" in res.output
    assert "mean uncertainty: 0.0" in res.output
    with np.load(d / "preds.npz") as z:
        assert set(z.files) == {"scores", "labels", "uncertainty"}
        assert z["scores"].shape == (540, 10) and z["uncertainty"].shape == (540,)
        assert np.array_equal(z["labels"], z["scores"].argmax(1))
        assert (z["labels"] == digits[3]).mean() > 0.9


def test_ensemble_from_yaml_where_flags_win(ensemble_files):
    d = ensemble_files
    res = runner.invoke(app, ["ensemble", "--config", str(d / "ensemble.yaml"), "--data",
                              str(d / "val.npz")])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "fusion: weighted; ran sequential; 540 rows in batches of 100" in res.output
    res = runner.invoke(app, ["ensemble", "--config", str(d / "ensemble.yaml"), "--data",
                              str(d / "val.npz"), "--batch-size", "50", "--fusion", "vote",
                              "--parallel"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "fusion: vote; ran " in res.output and "in batches of 50" in res.output
    assert "first batch, ms per call: threaded" in res.output and "fused" in res.output


def test_ensemble_benchmark_prints_the_table(ensemble_files):
    d = ensemble_files
    res = runner.invoke(app, [
        "ensemble", str(d / "a.nimble"), str(d / "b.nimble"), "--data", str(d / "val.npz"),
        "--batch-size", "32", "--benchmark", "--time-budget", "0.05",
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("way"))
    assert lines[header].split() == [
        "way",
        "batch",
        "p50",
        "ms",
        "p99",
        "ms",
        "n",
        "vs",
        "sequential",
    ]
    ways = [" ".join(line.split()[:2]) for line in lines[header + 2 : header + 12]]
    assert ways == ["member 0:", "member 1:", "sequential 1", "threaded 1", "fused 1",
                    "member 0:", "member 1:", "sequential 32", "threaded 32", "fused 32"]  # fmt: skip
    fused_rows = [line for line in lines if line.startswith("fused ")]
    assert [r.split()[1] for r in fused_rows] == ["1", "32"] and all("x" in r for r in fused_rows)


@pytest.mark.parametrize(
    ("yaml_text", "args", "message"),
    [
        ("inference:\n  batchsize: 4\n", [], "unknown setting 'inference.batchsize'"),
        ("serving:\n  port: 1\n", [], "unknown section 'serving'"),
        ("inference: [1, 2\n", [], "is not valid YAML"),
        ("inference:\n  batch_size: 0\n", [], "inference.batch_size must be a positive integer"),
        ("ensemble:\n  fusion_method: max\n", [], "ensemble.fusion_method must be one of: mean"),
        ("inference:\n  parallel: maybe\n", [], "inference.parallel must be true or false"),
        ("", ["--mc-samples", "4"], "mc_samples needs PyTorch members with dropout"),
        ("", ["--mode", "turbo"], "--mode must be one of: auto"),
        ("", ["--fusion", "weighted", "--weights", "1,x"], "--weights takes comma-separated"),
        ("", ["--fusion", "weighted", "--weights", "1,2"], "one weight per member (3)"),
    ],
)
def test_ensemble_user_errors_are_one_line_and_exit_2(ensemble_files, tmp_path, yaml_text, args,
                                                      message):  # fmt: skip
    d = ensemble_files
    config = tmp_path / "bad.yaml"
    config.write_text(yaml_text)
    res = runner.invoke(app, [
        "ensemble", str(d / "a.nimble"), str(d / "b.nimble"), str(d / "c.nimble"),
        "--data", str(d / "val.npz"), "--config", str(config), *args,
    ])  # fmt: skip
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert res.output.startswith("error: ") and len(res.output.strip().splitlines()) == 1


def test_an_internal_error_is_one_line_with_exit_1_and_debug_shows_it(monkeypatch, tmp_path):
    """Our bugs never show a user a traceback either: one line saying it is a bug, exit 1;
    --debug lets the traceback through (issue 11, "make it systematic")."""
    from typer.testing import CliRunner

    import nimbleml.package
    from nimbleml.cli import app

    def broken(path):  # an internal failure, injected where inspect loads the package
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(nimbleml.package, "load", broken)
    out = CliRunner().invoke(app, ["inspect", str(tmp_path)])
    assert out.exit_code == 1 and out.output.count("\n") == 1
    assert "error: ZeroDivisionError: division by zero" in out.output
    assert "--debug" in out.output and "Traceback" not in out.output
    debug = CliRunner().invoke(app, ["--debug", "inspect", str(tmp_path)])
    assert isinstance(debug.exception, ZeroDivisionError)


def test_ratios_under_one_are_said_the_other_way():
    """'0.28x faster' and '0.96x smaller' said the opposite of what they meant (issue 11)."""
    from nimbleml.cli.compress import _times

    assert _times(2.0, "faster", "slower") == "2.00x faster"
    assert _times(0.8, "faster", "slower") == "1.25x slower"
    assert _times(0.96, "smaller", "larger") == "1.04x larger"


def test_torchscript_recipes_refuse_or_work_in_cli_words(files, tmp_path):
    """torch-int8 on a .ts would quantise nothing: refused, pointing at --quantize int8;
    structured pruning points at --prune-method magnitude, which then works (issue 11, 2 and 8)."""
    ts, val = str(files / "mlp.ts"), str(files / "val.npz")
    res = runner.invoke(
        app, ["compress", ts, "--quantize", "torch-int8", "--val", val, "-o", str(tmp_path / "a")]
    )
    assert res.exit_code == 2 and "--quantize int8" in res.output and "quantize='" not in res.output
    res = runner.invoke(
        app, ["compress", ts, "--prune", "0.3", "--val", val, "-o", str(tmp_path / "b")]
    )
    assert res.exit_code == 2 and "--prune-method magnitude" in res.output
    res = runner.invoke(app, ["compress", ts, "--prune", "0.3", "--prune-method", "magnitude",
                              "--val", val, "-o", str(tmp_path / "c")])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "recipe: prune-magnitude" in res.output and "sparse-store" in res.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_compress_has_a_default_accuracy_budget(files, tmp_path):
    """--prune 0.95 used to ship a model 37.8 points worse with rc 0 and no warning (item 13)."""
    out = tmp_path / "p.nimble"
    proc = subprocess.run(
        [NIMBLEML, "compress", str(files / "mlp.ts"), "--prune", "0.95", "--prune-method",
         "magnitude", "--val", str(files / "val.npz"), "-o", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[1].startswith("FALLBACK: the compressed model")
    assert "--max-drop 0.01 (the default budget" in proc.stdout
    assert "recipe: none" in proc.stdout
    assert proc.stderr.startswith("warning: accuracy dropped") and ".py:" not in proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["fallback"] and manifest["validation"]["max_drop"] == 0.01
    assert manifest["validation"]["max_drop_source"] == "default"
    # 'none' turns the budget off; a bad value names the flag
    res = runner.invoke(app, ["compress", str(files / "mlp.ts"), "--val", str(files / "val.npz"),
                              "--max-drop", "none", "-o", str(tmp_path / "n.nimble")])  # fmt: skip
    assert res.exit_code == 0 and "no budget" in res.output
    res = runner.invoke(
        app, ["compress", str(files / "mlp.ts"), "--max-drop", "lots", "-o", str(tmp_path / "x")]
    )
    assert res.exit_code == 2 and "--max-drop takes a number" in res.output


def test_float64_data_and_out_of_range_values(files, tmp_path):
    """numpy's default float64 fits a float32 model; values beyond float32 are refused by name."""
    data = dict(np.load(files / "val.npz"))
    np.savez(tmp_path / "v64.npz", X=data["X"].astype(np.float64), y=data["y"])
    np.savez(tmp_path / "huge.npz", X=data["X"].astype(np.float64) * 1e300, y=data["y"])
    res = runner.invoke(app, ["compress", str(files / "mlp.ts"), "--val", str(tmp_path / "v64.npz"),
                              "-o", str(tmp_path / "ok.nimble")])  # fmt: skip
    assert res.exit_code == 0, res.output
    for verb in (["compress", str(files / "mlp.ts"), "-o", str(tmp_path / "no"), "--val"],
                 ["bench", str(tmp_path / "ok.nimble"), "--time-budget", "0.1", "--data"]):  # fmt: skip
        res = runner.invoke(app, [*verb, str(tmp_path / "huge.npz")])
        assert res.exit_code == 2, res.output
        assert (
            "range of" in res.output and "float32" in res.output and "Traceback" not in res.output
        )
