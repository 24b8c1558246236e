"""The command line, through the real console script and typer's runner."""

import json
import os
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


def test_demo_runs_end_to_end(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "error::DeprecationWarning:nimbleml"}
    proc = subprocess.run(
        [NIMBLEML, "demo", "--quick", "--out", str(tmp_path)], capture_output=True, text=True,
        timeout=600, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "mlp package" in proc.stdout and "pipeline package" in proc.stdout
    for name in ("mlp", "pipeline"):
        assert (tmp_path / f"{name}.nimble" / "manifest.json").is_file()
        assert (tmp_path / f"{name}-report" / "comparison.png").is_file()
