"""`nimbleml cost` end to end on synthetic reports; `nimbleml bench --cloud` on a real one;
benchmarks/serve.py's --json written and read back."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from nimbleml.cli import app
from nimbleml.cost import estimate_cost
from nimbleml.cost.catalog import COLUMNS

runner = CliRunner()
ROOT = Path(__file__).parents[2]


def cost(*argv: str):
    return runner.invoke(app, ["cost", *map(str, argv)], env={"COLUMNS": "250"})


def test_cost_prints_the_right_sizing_table_and_writes_json(reports):
    res = cost("--serve-report", reports / "serve.json", "--train-report", reports / "train",
               "--cloud", "aws,azure", "--rps", "2000", "--spot", "--json", reports / "new" / "c.json")  # fmt: skip
    assert res.exit_code == 0, res.output
    out = res.output
    assert "prices: nimbleml built-in catalog, dated 2026-12-01" in out and "days old" in out
    assert "serving iris: 2,400 req/s at p99 18.2 ms (searched at p99 <= 25 ms)" in out
    assert (
        "cheapest for 2,000 req/s:" in out
        and "training: 3 epoch(s), 18.0 min measured on cpu" in out
    )
    assert "not estimated:" in out and "no GPU figure: measured on the CPU: g4dn.xlarge" in out
    table = out.split("serving iris")[1].split("cheapest")[0].splitlines()[1:]
    header, body = table[0], table[2:]
    assert header.split()[:3] == ["instance", "cloud", "vCPU"] and header.rstrip().endswith(
        "basis     assumption")  # fmt: skip
    assert body and all(" estimate  vCPU-scaled 2->" in line for line in body)
    assert not any(n in line for line in body for n in ("n1-standard", "g4dn"))  # aws, azure only
    data = json.loads((reports / "new" / "c.json").read_text())  # its folder made (was: an error)
    assert data["options"]["clouds"] == ["aws", "azure"] and data["serving"]
    assert "estimate written to" in out


def test_cost_from_a_bench_folder_with_measured_on(reports):
    (reports / "bench").mkdir()
    (reports / "bench.json").rename(reports / "bench" / "report.json")
    res = cost("--report", reports / "bench", "--measured-on", "m6i.large", "--cloud", "aws")
    assert res.exit_code == 0, res.output
    line = next(x for x in res.output.splitlines() if x.startswith("m6i.large"))
    assert "measured  measured on this instance" in line
    assert "bench figures are timed in process" in res.output


def test_an_old_price_csv_warns(reports):
    old = reports / "old.csv"
    old.write_text(",".join(COLUMNS) + "\nc6i.xlarge,aws,us-east-1,4,8,,0.17,0.068,"
                   "https://aws.amazon.com/ec2/pricing/on-demand/,2025-03-01\n")  # fmt: skip
    res = cost("--serve-report", reports / "serve.json", "--prices", old)
    assert res.exit_code == 0, res.output
    warned = [x for x in res.output.splitlines() if x.startswith("warning: ")]
    assert len(warned) == 1 and "days old (dated 2025-03-01)" in warned[0]
    assert f"prices: {old}, dated 2025-03-01" in res.output


def test_bench_and_train_take_cloud(reports, tmp_path, monkeypatch):
    """bench --cloud on a real (tiny) benchmark; train's estimate through the same function."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from nimbleml.cli.cost import after

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(4, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])], [w],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "m.onnx")
    np.save(tmp_path / "d.npy", rng.normal(size=(64, 4)).astype(np.float32))
    res = runner.invoke(app, ["bench", str(tmp_path / "m.onnx"), "--data",
                              str(tmp_path / "d.npy"), "--batch-size", "1", "--time-budget",
                              "0.2", "--cloud", "gcp"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "cost (in-process figures of this run):" in res.output
    assert "serving m.onnx:" in res.output and "n2-standard-4" in res.output
    assert "c6i.xlarge" not in res.output
    bad = runner.invoke(app, ["bench", str(tmp_path / "m.onnx"), "--data",
                              str(tmp_path / "d.npy"), "--cloud", "ibm"])  # fmt: skip
    assert bad.exit_code == 2 and "unknown cloud 'ibm'" in bad.output
    after("aws", "this run's training time", train_report=reports / "train" / "report.json")
    # train --cloud is refused before any training when the cloud is unknown
    res = runner.invoke(app, ["train", "--model", "nope:build", "--data", str(tmp_path / "d.npy"),
                              "--cloud", "ibm"])  # fmt: skip
    assert res.exit_code == 2 and "unknown cloud 'ibm'" in res.output


def test_after_says_why_when_nothing_is_estimated(capsys):
    from nimbleml.cli.cost import after

    from .conftest import serve

    after("aws", "x", serve_report=serve(), sla_p99_ms=1)
    out = capsys.readouterr().out
    assert "cost: not estimated: no instance meets the p99 SLA of 1 ms" in out


@pytest.fixture
def serve_bench(monkeypatch):
    """benchmarks/serve.py as a module (it puts benchmarks/ on sys.path: undone after)."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    spec = importlib.util.spec_from_file_location("serve_bench", ROOT / "benchmarks" / "serve.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_serve_benchmark_json_is_what_serve_report_reads(serve_bench, tmp_path):
    serve_bench.CAPACITIES.clear()
    serve_bench.measured("iris", 2600.0, {"p99": 19.5, "p50": 2.1, "sent": 7800}, 32)
    serve_bench.measured("mlp", 700.0, {"p99": 22.0, "p50": 9.0, "sent": 2100}, 16)
    serve_bench.measured("mlp", 0.0, {}, 1)  # no rate met the target
    path = serve_bench.write_json(tmp_path / "serve.json", serve_bench.CAPACITIES, 3.0)
    data = json.loads(path.read_text())
    assert data["kind"] == "nimbleml-serve-capacity" and data["schema"] == 1
    assert data["target_p99_ms"] == 25.0 and data["device"] == "cpu"
    assert data["machine"]["logical_cores"] >= 1 and "3 s a rate" in data["load"]
    assert data["models"][1] == {"name": "mlp", "capacity_rps": 700.0, "p99_ms": 22.0,
                                 "p50_ms": 9.0, "max_batch_size": 16, "batching": True,
                                 "requests": 2100}  # fmt: skip
    est = estimate_cost(serve_report=path, clouds="aws")
    assert [m.capacity.model for m in est.measured] == [
        "iris", "mlp (batching on)", "mlp (batching off)"]  # fmt: skip
    assert [m.meets_sla for m in est.measured] == [True, True, False]
    serve_bench.CAPACITIES.clear()
