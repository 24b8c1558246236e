import json

import pytest

import nimbleml
from nimbleml.bench import TimingConfig
from nimbleml.errors import BenchmarkError, ConfigError

FAST = TimingConfig(warmup_s=0.01, min_samples=50, time_budget_s=0.2)


@pytest.fixture(scope="module")
def report(tmp_path_factory, pipeline, digits):
    _, Xte, _, yte = digits
    pkg = nimbleml.compress(pipeline, quantize=None, val=(Xte, yte), benchmark_time_s=0.05)
    path = pkg.save(tmp_path_factory.mktemp("b") / "p.nimble")
    return nimbleml.benchmark(
        [pipeline, str(path)], Xte, (1, 8), names=["sklearn", "package"],
        val=(Xte, yte), metric="accuracy", timing=FAST,
    )  # fmt: skip


def test_results_carry_counts_metrics_and_ratios(report):
    assert [(r.name, r.batch_size) for r in report.results] == [
        ("sklearn", 1), ("sklearn", 8), ("package", 1), ("package", 8),
    ]  # fmt: skip
    for r in report.results:
        assert r.latency.n >= 3
        assert r.latency.p50_ms <= r.latency.p99_ms
        assert r.metric_value == pytest.approx(report.results[0].metric_value)
        assert r.performance.samples_per_second > 0
        assert r.performance.num_parameters > 0 and r.performance.model_size_mb > 0
    base = report.get("sklearn", 1)
    assert report.ratios(base)["speedup_p50"] == 1.0
    assert report.ratios(report.get("package", 1))["speedup_p50"] > 1.0


def test_json_text_and_charts(report, tmp_path):
    written = report.save(tmp_path)
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["schema"] == 1 and data["baseline"] == "sklearn"
    assert {"cpu", "cpu_flags", "libraries"} <= set(data["machine"])
    first = data["results"][0]
    assert {"n", "p50_ms", "p99_ms", "unreliable"} <= set(first["latency_ms"])
    assert set(first["performance"]) == {
        "total_time", "samples_per_second", "peak_memory_gb", "gpu_memory_gb",
        "gpu_utilization", "model_size_mb", "num_parameters",
    }  # fmt: skip
    text = (tmp_path / "report.txt").read_text()
    assert "p99 ms" in text and "too few samples" in text
    pngs = [p for p in written if p.suffix == ".png"]
    assert len(pngs) == 2
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000


def test_bad_benchmark_arguments(pipeline, digits):
    with pytest.raises(ConfigError, match="at least one model"):
        nimbleml.benchmark([], digits[1])
    with pytest.raises(ConfigError, match="positive integers"):
        nimbleml.benchmark([pipeline], digits[1], (0,))
    with pytest.raises(ConfigError, match="2 names for 1 models"):
        nimbleml.benchmark([pipeline], digits[1], names=["a", "b"])
    with pytest.raises(BenchmarkError, match="no rows"):
        nimbleml.benchmark([pipeline], digits[1][:0], timing=FAST)
