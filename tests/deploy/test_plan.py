"""The settings deploy derives from the manifests, each with its reason; measured capacity
read from a serve report; refusals of bad input in one line."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

import nimbleml
from nimbleml.deploy import capacity, plan
from nimbleml.errors import ConfigError, DataError


def served(iris_package, **manifest) -> plan.Served:
    data = json.loads((iris_package / "manifest.json").read_text())
    data.update(manifest)
    return plan.Served("iris", iris_package, data)


def timing(p99: float, p50: float | None = None, unreliable=()) -> dict:
    side = {"p50_ms": p50 if p50 is not None else p99 / 2, "p99_ms": p99, "n": 200,
            "unreliable": list(unreliable)}  # fmt: skip
    return {"original": side, "package": side, "speedup_p50": 1.0}


def test_tuned_settings_come_from_what_optimize_recorded(iris_package):
    p = plan.derive([served(iris_package, runtime={"intra_op_num_threads": 3, "batch_size": 16})])
    assert p["threads"] == 3 and "optimize measured" in p.settings["threads"].why
    assert p["max_batch_size"] == 16 and p["cpu"] == 4
    assert (
        "--threads" in p.serve_args()
        and p.serve_args()[p.serve_args().index("--threads") + 1] == "3"
    )


def test_without_tuning_the_batch_is_the_largest_whose_p99_fits_half_the_target(iris_package):
    bench = {"batch_1": timing(0.5), "batch_8": timing(9.0), "batch_32": timing(20.0)}
    p = plan.derive([served(iris_package, benchmark=bench, machine={"physical_cores": 8})])
    assert p["max_batch_size"] == 8  # 20 ms > 12.5 ms
    assert p["threads"] == 7 and "8 cores" in p.settings["threads"].why
    # queue target: one window + one batch's p50 at the chosen size (4.5 ms)
    assert p["queue_target_s"] == pytest.approx(0.0065)
    assert plan.quantity_seconds(p["queue_target_s"]) == "7m"
    no_bench = plan.derive([served(iris_package, benchmark={})])
    assert (
        no_bench["max_batch_size"] == 32
        and "no benchmark" in no_bench.settings["max_batch_size"].why
    )


def test_memory_counts_the_files_twice_the_cache_and_headroom(iris_package):
    s = served(iris_package)
    s.manifest["model"]["size_bytes"] = s.manifest["baseline"]["size_bytes"] = 50 * 2**20
    p = plan.derive([s], cache_mb=100)
    assert p["memory_mib"] == 512  # (105 + 2 x 100 + 100) x 1.25 = 506.25 -> 512 (32 MiB steps)


def test_capacity_sets_the_concurrency_target_by_littles_law(iris_package):
    bench = {"batch_1": timing(1.0, p50=1.0)}
    measured = capacity.given(2000)
    p = plan.derive([served(iris_package, benchmark=bench)], max_batch_size=1, capacity=measured)
    assert p["capacity_rps"] == 2000
    assert p["concurrency_target"] == 6  # 2000/s x (2 ms window + 1 ms batch) = 6
    unmeasured = plan.derive([served(iris_package, benchmark=bench)])
    assert unmeasured["capacity_rps"] is None
    assert unmeasured["concurrency_target"] == plan.DEFAULT_CONCURRENCY
    assert "not measured" in unmeasured.settings["capacity_rps"].why


@pytest.mark.parametrize("report", [
    {"models": {"iris": {"capacity_rps": 1350, "p50_ms": 4.0, "p99_ms": 17.9}}},
    {"models": [{"name": "iris", "rps_at_p99": 1350, "p50_ms": 4.0}]},
    {"iris": {"capacity": 1350, "p50_ms": 4}, "other": {"capacity_rps": 10}},
    {"capacity_rps": 1350, "p50_ms": 4.0},
    # benchmarks/serve.py --json: a model measured with batching on and off
    {"schema": 1, "target_p99_ms": 25.0, "models": [
        {"name": "iris", "capacity_rps": 177, "p50_ms": 9.0, "max_batch_size": 1},
        {"name": "iris", "capacity_rps": 1350, "p50_ms": 4.0, "max_batch_size": 32}]},
])  # fmt: skip
def test_serve_reports_of_several_shapes_are_read(tmp_path, report):
    path = tmp_path / "serve.json"
    path.write_text(json.dumps(report))
    found = capacity.read_report(path, ["iris"])
    assert (found.rps, found.p50_ms) == (1350, 4.0)


def test_the_slowest_model_sets_the_capacity_and_a_report_without_it_is_refused(tmp_path):
    path = tmp_path / "serve.json"
    path.write_text(
        json.dumps({"models": {"a": {"capacity_rps": 900}, "b": {"capacity_rps": 300}}})
    )
    assert capacity.read_report(path, ["a", "b"]).rps == 300
    with pytest.raises(ConfigError, match="no capacity for c.*models in it: a, b"):
        capacity.read_report(path, ["c"])
    path.write_text("not json")
    with pytest.raises(DataError, match="not a JSON report"):
        capacity.read_report(path, ["a"])


def test_requirements_pin_the_runtime_the_package_needs(iris_package):
    onnx = plan.Plan([served(iris_package)])
    reqs, options = plan.requirements(onnx)
    assert reqs[0] == f"nimbleml[serve]=={nimbleml.__version__}" and options == []
    assert not any(r.startswith(("torch", "scikit-learn")) for r in reqs)
    libs = {
        "onnxruntime": "1.20.0",
        "torch": "2.13.0+cpu",
        "scikit-learn": "1.5.0",
        "skops": "0.10",
    }
    ts = served(iris_package, machine={"libraries": libs},
                model={"path": "model.ts", "size_bytes": 1})  # fmt: skip
    reqs, options = plan.requirements(plan.Plan([ts]))
    assert "torch==2.13.0" in reqs and "onnxruntime==1.20.0" in reqs
    assert options == ["--extra-index-url", "https://download.pytorch.org/whl/cpu"]
    skops = served(iris_package, machine={"libraries": libs},
                   model={"path": "model.skops", "size_bytes": 1})  # fmt: skip
    reqs, _ = plan.requirements(plan.Plan([skops]))
    assert {"scikit-learn==1.5.0", "skops==0.10"} <= set(reqs) and not any(
        "torch" in r for r in reqs
    )


def test_every_generated_file_says_how_its_settings_were_chosen(deployments):
    for target, folder in deployments.items():
        text = (folder / ("Dockerfile" if target == "docker" else {
            "compose": "compose.yaml", "kserve": "inferenceservice.yaml",
            "k8s": "kubernetes.yaml", "skypilot": "task.yaml"}[target])).read_text()  # fmt: skip
        for key in plan.KEYS[target]:
            assert f"#   {key}: " in text, (target, key)
    assert (
        "capacity_rps: none - not measured"
        in (deployments["kserve"] / "inferenceservice.yaml").read_text()
    )


def test_bad_input_is_refused_naming_the_fix(tmp_path, iris_package):
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="choose one of: docker, compose, kserve, k8s, skypilot"):
        nimbleml.deploy([iris_package], "helm", out)
    with pytest.raises(ConfigError, match="does not exist"):
        nimbleml.deploy([tmp_path / "missing.nimble"], "docker", out)
    with pytest.raises(ConfigError, match="not a .nimble package"):
        nimbleml.deploy([tmp_path], "docker", out)
    with pytest.raises(ConfigError, match="two packages are named 'iris'"):
        nimbleml.deploy([iris_package, f"iris={iris_package}"], "docker", out)
    with pytest.raises(ConfigError, match="no packages"):
        nimbleml.deploy([], "docker", out)
    with pytest.raises(ConfigError, match="--train runs on --target skypilot only"):
        nimbleml.deploy(target="k8s", out=out, train=tmp_path / "t.yaml")
    assert not out.exists()  # nothing written by a refusal


def test_a_folder_that_is_not_empty_needs_force(tmp_path, iris_package):
    out = tmp_path / "out"
    nimbleml.deploy([iris_package], "docker", out)
    (out / "mine.txt").write_text("kept")
    with pytest.raises(ConfigError, match="not empty; give --force"):
        nimbleml.deploy([iris_package], "k8s", out)
    shutil.rmtree(out / "models" / "iris.nimble" / "baseline.onnx", ignore_errors=True)
    result = nimbleml.deploy([iris_package], "k8s", out, force=True)
    assert (out / "kubernetes.yaml").is_file() and (out / "mine.txt").read_text() == "kept"
    assert (out / "models" / "iris.nimble" / "manifest.json").is_file()
    assert set(result.settings) == set(plan.KEYS["k8s"])


def test_cli_writes_and_prints_the_settings(tmp_path, iris_package):
    from nimbleml.cli import app

    res = CliRunner().invoke(app, ["deploy", str(iris_package), "--target", "kserve",
                                   "-o", str(tmp_path / "k"), "--capacity-rps", "500"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "wrote kserve deployment" in res.output and "inferenceservice.yaml" in res.output
    assert "capacity_rps = 500.0: measured, from --capacity-rps" in res.output


def test_the_serve_report_shown_in_the_docs_is_read(tmp_path):
    from tests.test_docs import BY_ID

    path = tmp_path / "serve.json"
    path.write_text(BY_ID["docs/deploy.md#1"].text)
    found = capacity.read_report(path, ["model"])
    assert (found.rps, found.p50_ms, found.p99_ms) == (1350, 4.1, 17.9)
