"""estimate_cost: measured and estimated figures never mixed, the arithmetic of $/1M and
instances for a rate, the SLA, GPU classes, bench and train reports."""

from __future__ import annotations

import datetime as dt
import json
import math

import pytest

import nimbleml
from nimbleml.bench.report import BenchmarkReport, BenchmarkResult, PerformanceMetrics
from nimbleml.bench.stats import LatencyStats
from nimbleml.cost import CostOptions, estimate_cost
from nimbleml.errors import ConfigError, DataError

from .conftest import bench, machine, serve, train

TODAY = dt.date(2026, 12, 1)
GPUS = {"g4dn.xlarge", "g5.xlarge", "g6.xlarge", "p3.2xlarge", "g2-standard-4",
        "a2-highgpu-1g", "Standard_NC4as_T4_v3", "Standard_NC6s_v3"}  # fmt: skip


def rows(est, model):
    return {r.instance.name: r for r in est.serving if r.model == model}


def test_cpu_figures_scale_by_vcpus_and_are_labelled_estimates():
    est = estimate_cost(serve_report=serve(), rps=10_000, headroom=0.2, today=TODAY)
    iris = rows(est, "iris")
    c6i = iris["c6i.xlarge"]
    assert c6i.capacity_rps == 2400 * 4 / 2 and c6i.p99_ms == 18.2
    assert c6i.usd_per_million == pytest.approx(0.17 / (4800 * 3600) * 1e6)
    assert c6i.instances_needed == math.ceil(10_000 / (4800 * 0.8)) == 3
    assert c6i.fleet_usd_hour == pytest.approx(3 * 0.17)
    assert iris["m6i.large"].capacity_rps == 2400 and iris["c6i.2xlarge"].capacity_rps == 9600
    assert {r.basis for r in est.serving} == {"estimate"}
    assert all(r.assumption.startswith("vCPU-scaled 2->") for r in est.serving)
    assert "arm64 (AWS Graviton3): other architecture" in iris["c7g.xlarge"].assumption
    assert "arm64" not in iris["c6i.xlarge"].assumption
    # no GPU figure from a CPU report: GPU instances are listed as not estimated
    assert not GPUS & set(iris)
    assert {e.instance for e in est.excluded if e.model == "iris"} == GPUS
    assert all("no GPU figure" in e.reason for e in est.excluded)
    # the right-sizing table, cheapest per 1M predictions first
    cost = [r.usd_per_million for r in est.serving if r.model == "iris"]
    assert cost == sorted(cost)
    assert {r.model for r in est.serving} == {"iris", "mlp (batching on)", "mlp (batching off)"}


def test_instances_for_a_rate_without_headroom_is_the_plain_ceiling():
    est = estimate_cost(serve_report=serve(), rps=4800, clouds="aws", today=TODAY)
    assert rows(est, "iris")["c6i.xlarge"].instances_needed == 1  # exactly at capacity
    assert rows(est, "iris")["m6i.large"].instances_needed == 2
    assert rows(est, "mlp (batching off)")["c6i.xlarge"].instances_needed == 16
    assert {r.instance.cloud for r in est.serving} == {"aws"}


def test_measured_on_labels_that_instance_measured():
    est = estimate_cost(serve_report=serve(), measured_on="m6i.large", today=TODAY)
    iris = rows(est, "iris")
    assert iris["m6i.large"].basis == "measured" and iris["m6i.large"].capacity_rps == 2400
    assert iris["m6i.large"].assumption == "measured on this instance"
    assert {r.basis for n, r in iris.items() if n != "m6i.large"} == {"estimate"}
    assert not est.warnings  # 2 vCPUs, as the report's machine
    est = estimate_cost(serve_report=serve(), measured_on="c6i.xlarge", today=TODAY)
    assert "gives it 4 vCPUs, the report's machine had 2" in est.warnings[0]


def test_spot_prices_savings_and_order():
    est = estimate_cost(serve_report=serve(), spot=True, rps=2000, today=TODAY)
    iris = rows(est, "iris")
    c6i = iris["c6i.xlarge"]
    assert c6i.spot_usd_per_million == pytest.approx(0.068 / (4800 * 3600) * 1e6)
    assert c6i.instance.spot_saving == pytest.approx(1 - 0.068 / 0.17)
    assert c6i.fleet_spot_usd_hour == pytest.approx(0.068)
    spot = [r.spot_usd_per_million for r in est.serving if r.model == "iris"]
    assert spot == sorted(spot)
    text = est.table()
    assert "spot $/1M" in text and "saving" in text and "spot saves $" in text


def test_a_stricter_sla_than_measured_excludes_the_model_and_says_its_p99():
    est = estimate_cost(serve_report=serve(), sla_p99_ms=20, today=TODAY)
    assert set(rows(est, "iris")) and not rows(est, "mlp (batching on)")  # 18.2 ms <= 20
    note = next(m.note for m in est.measured if m.capacity.model == "mlp (batching on)")
    assert "p99 21.5 ms" in note and "over the 20 ms SLA" in note
    est = estimate_cost(serve_report=serve(), sla_p99_ms=5, today=TODAY)
    assert not est.serving
    problem = est.problem()
    assert problem and problem.startswith("no instance meets the p99 SLA of 5 ms")
    assert "iris: 2,400 req/s at p99 18.2 ms" in problem


def test_a_looser_sla_keeps_the_measured_capacity_and_says_so():
    est = estimate_cost(serve_report=serve(), sla_p99_ms=50, today=TODAY)
    assert rows(est, "iris")["c6i.xlarge"].capacity_rps == 4800
    assert "the 50 ms SLA may allow more (not measured)" in est.measured[0].note


def test_a_server_that_met_no_rate_is_excluded():
    est = estimate_cost(serve_report=serve(iris=(0.0, None)), today=TODAY)
    assert not rows(est, "iris") and rows(est, "mlp (batching on)")
    assert "no rate met p99 <= 25 ms" in est.measured[0].note


def test_gpu_figures_carry_over_only_to_the_same_gpu_class():
    est = estimate_cost(serve_report=json.loads(json.dumps(serve(gpu="Tesla T4")))
                        | {"device": "cuda"}, today=TODAY)  # fmt: skip
    iris = rows(est, "iris")
    assert set(iris) == {"g4dn.xlarge", "Standard_NC4as_T4_v3"}
    assert iris["g4dn.xlarge"].capacity_rps == 2400 and iris["g4dn.xlarge"].basis == "estimate"
    assert iris["g4dn.xlarge"].assumption.startswith("same GPU class (T4)")
    reasons = {e.instance: e.reason for e in est.excluded if e.model == "iris"}
    assert reasons["g5.xlarge"] == "no A10G figure: measured on T4"
    assert reasons["c6i.xlarge"] == "no CPU figure: measured on a GPU (T4)"
    # a GPU the machine has but the server did not use: a CPU figure
    cpu = estimate_cost(serve_report=serve(gpu="Tesla T4"), today=TODAY)
    assert "c6i.xlarge" in rows(cpu, "iris") and "g4dn.xlarge" not in rows(cpu, "iris")


def test_bench_report_takes_the_fastest_batch_size_within_the_sla():
    est = estimate_cost(bench(), clouds="aws", today=TODAY)  # SLA 25 ms: batch 32 meets it
    assert [(m.capacity.model, m.capacity.batch_size) for m in est.measured] == [
        ("model.ts", 32), ("model.nimble", 32)]  # fmt: skip
    assert rows(est, "model.nimble")["c6i.xlarge"].capacity_rps == 32000
    est = estimate_cost(bench(), clouds="aws", sla_p99_ms=1, today=TODAY)
    assert [m.capacity.batch_size for m in est.measured] == [1, 1]
    assert "no HTTP, no queueing" in est.table()
    est = estimate_cost(bench(), sla_p99_ms=0.2, today=TODAY)
    assert "p99 0.40 ms in process at batch 1, its fastest, is over the 0.2 ms SLA" in str(
        est.problem()
    )


def test_a_p99_from_too_few_samples_is_said():
    est = estimate_cost(bench(n=50), clouds="aws", today=TODAY)
    assert any("n=50 timed calls, too few for a p99" in w for w in est.warnings)


def test_a_benchmark_report_object_is_read_as_its_json():
    stats = LatencyStats(n=500, mean_ms=1.0, p50_ms=1.0, p90_ms=1.2, p95_ms=1.3, p99_ms=2.0,
                         min_ms=0.8, max_ms=3.0, iqr_ms=0.1, stable=True)  # fmt: skip
    perf = PerformanceMetrics(1.0, 1000.0, 0.0, None, None, 0.1, 10)
    report = BenchmarkReport([BenchmarkResult("m", "onnx", 1, stats, perf)],
                             machine=machine(cores=4))  # fmt: skip
    est = nimbleml.estimate_cost(report, clouds="aws", today=TODAY)
    assert rows(est, "m")["c6i.2xlarge"].capacity_rps == 2000  # 4 cores measured -> 8 vCPUs


def test_training_cost_per_run():
    est = estimate_cost(train_report=train(), clouds="aws", spot=True, today=TODAY)
    assert est.run and est.run.seconds == 1080 and est.run.epochs == 3
    by = {r.instance.name: r for r in est.training}
    assert by["c6i.xlarge"].hours == pytest.approx(1080 / 2 / 3600)  # 2 cores -> 4 vCPUs
    assert by["c6i.xlarge"].usd_per_run == pytest.approx(0.15 * 0.17)
    assert by["c6i.xlarge"].spot_usd_per_run == pytest.approx(0.15 * 0.068)
    assert by["c6i.xlarge"].assumption == "time vCPU-scaled 2->4"
    assert "g4dn.xlarge" not in by and not est.serving
    costs = [r.spot_usd_per_run for r in est.training]
    assert costs == sorted(costs)  # type: ignore[type-var]
    gpu = estimate_cost(train_report=train("cuda", "NVIDIA A10G"), today=TODAY)
    assert [r.instance.name for r in gpu.training] == ["g5.xlarge"]
    assert gpu.training[0].usd_per_run == pytest.approx(0.3 * 1.006)


def test_json_holds_every_figure_with_its_basis(tmp_path):
    est = estimate_cost(serve_report=serve(), train_report=train(), rps=2000, spot=True,
                        today=TODAY)  # fmt: skip
    est.to_json(tmp_path / "cost.json")
    data = json.loads((tmp_path / "cost.json").read_text())
    assert data["catalog"]["date"] == "2026-12-01" and data["catalog"]["age_days"] == 0
    assert data["options"]["rps"] == 2000 and data["training_run"]["seconds"] == 1080
    row = data["serving"][0]
    assert {"instance", "capacity_rps", "p99_ms", "usd_per_million", "spot_usd_per_million",
            "instances_needed", "fleet_usd_hour", "basis", "assumption"} <= set(row)  # fmt: skip
    assert all(r["basis"] in ("measured", "estimate") and r["assumption"]
               for r in data["serving"] + data["training"])  # fmt: skip
    assert data["measured"][0]["machine"]["logical_cores"] == 2
    assert {e["for"] for e in data["excluded"]} == {"serving", "training"}


@pytest.mark.parametrize(
    "kw, words",
    [({"rps": -5}, "rps (--rps) must be a number > 0, got -5"),
     ({"sla_p99_ms": 0}, "sla_p99_ms (--sla-p99-ms) must be a number > 0"),
     ({"headroom": 1.0}, "from 0 to below 1")],
)  # fmt: skip
def test_bad_options(kw, words):
    with pytest.raises(ConfigError) as info:
        CostOptions(**kw)
    assert words in str(info.value)
    with pytest.raises(ConfigError):
        estimate_cost(serve_report=serve(), **kw)


def test_bad_reports(tmp_path):
    with pytest.raises(ConfigError, match="nothing to estimate from"):
        estimate_cost()
    with pytest.raises(DataError, match="is a serve report: pass it as --serve-report"):
        estimate_cost(serve())
    with pytest.raises(DataError, match="is a bench report: pass it as --report"):
        estimate_cost(train_report=bench())
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(DataError, match="not a JSON report"):
        estimate_cost(tmp_path / "x.json")
    with pytest.raises(DataError, match="file not found"):
        estimate_cost(tmp_path / "missing.json")
    with pytest.raises(DataError, match="not a bench report"):
        estimate_cost({"hello": 1})
    with pytest.raises(DataError, match="schema 2 is not 1"):
        estimate_cost(serve_report=serve() | {"schema": 2})
    broken = bench()
    del broken["results"][0]["performance"]
    with pytest.raises(DataError, match="a result lacks"):
        estimate_cost(broken)


def test_a_capacity_without_its_p99_is_not_judged():
    est = estimate_cost(serve_report=serve(iris=(900.0, None)), today=TODAY)
    assert not rows(est, "iris") and "no p99 recorded" in est.measured[0].note


def test_the_same_model_in_two_reports_stays_two_tables():
    b = bench()
    for r in b["results"]:
        r["name"] = "iris"
    est = estimate_cost(b, serve_report=serve(), clouds="aws", today=TODAY)
    assert [(m.capacity.source, m.capacity.model) for m in est.measured][:2] == [
        ("bench", "iris"), ("serve", "iris")]  # fmt: skip
    c6i = {r.source: r.capacity_rps for r in est.serving
           if (r.model, r.instance.name) == ("iris", "c6i.xlarge")}  # fmt: skip
    assert c6i == {"bench": 16000 * 2, "serve": 2400 * 2}
    assert est.table().count("cheapest per 1M predictions") == 4  # bench iris; serve: 3
