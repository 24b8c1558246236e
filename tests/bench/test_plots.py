"""Charts that tell the truth at a glance: latency bars on a linear axis from zero with their
values written on, and a Pareto chart whose labels do not pile up (issue 11)."""

from __future__ import annotations

import itertools

import pytest

from nimbleml.bench.plots import comparison_chart, latency_chart, latency_figure
from nimbleml.bench.report import BenchmarkReport, BenchmarkResult, PerformanceMetrics
from nimbleml.bench.stats import LatencyStats
from nimbleml.optimizer.result import Candidate, OptimizationResult


def _latency(p50, n=2000):
    return LatencyStats(n=n, mean_ms=p50, p50_ms=p50, p90_ms=p50 * 1.1, p95_ms=p50 * 1.2,
                        p99_ms=p50 * 1.5, min_ms=p50 * 0.9, max_ms=p50 * 2, iqr_ms=p50 * 0.05,
                        stable=True)  # fmt: skip


@pytest.fixture
def report():
    perf = PerformanceMetrics(1.0, 1000.0, 0.1, None, None, 1.0, 1000)
    return BenchmarkReport([
        BenchmarkResult("sklearn", "sklearn", 1, _latency(0.137), perf),
        BenchmarkResult("package", "onnx", 1, _latency(0.100), perf),
        BenchmarkResult("sklearn", "sklearn", 32, _latency(1.37), perf),
        BenchmarkResult("package", "onnx", 32, _latency(1.0), perf),
    ])  # fmt: skip


def test_latency_bars_are_linear_from_zero_and_labelled(report, tmp_path):
    """On a log axis 1.37x looked like 5x."""
    fig = latency_figure(report)
    assert len(fig.axes) == 2
    for ax, scale in zip(fig.axes, (0.137, 1.37), strict=True):
        assert ax.get_yscale() == "linear"
        lo, hi = ax.get_ylim()
        assert lo == 0.0 and hi >= scale * 1.5  # the p99 marks and the labels fit
        heights = [bar.get_height() for bar in ax.patches]
        assert heights == pytest.approx([scale, scale / 1.37])
        # bar heights on the chart are in the ratio of the values: what the eye compares
        assert heights[0] / heights[1] == pytest.approx(1.37)
        texts = [t.get_text() for t in ax.texts]
        assert texts[0] == f"p50 {scale:.3f} ms"
        assert texts[1] == f"p50 {scale / 1.37:.3f} ms\n1.37x faster"
    assert latency_chart(report, tmp_path / "l.png").read_bytes()[:4] == b"\x89PNG"
    assert comparison_chart(report, tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def _result():
    """Twelve candidates, several timed alike: their names used to be drawn on top of one
    another."""
    base = Candidate("baseline", "baseline", metric=0.97, drop=0.0, p50_ms=1.0, size_bytes=4000)
    specs = [
        ("int8-dynamic", 0.969, 0.52, 1000), ("int8-dynamic+thr1", 0.969, 0.53, 1000),
        ("int8-dynamic+thr2", 0.969, 0.51, 1000), ("int8-static", 0.965, 0.45, 1000),
        ("fp16", 0.97, 0.98, 2000), ("fp16+thr1", 0.97, 0.99, 2000),
        ("prune-30%", 0.968, 0.97, 4000), ("prune-30%+int8-dynamic", 0.967, 0.50, 1000),
        ("prune-50%", 0.95, 0.96, 4000), ("bs32", 0.97, 0.70, 4000), ("bs32+thr2", 0.97, 0.71, 4000),
    ]  # fmt: skip
    cands = [base] + [
        Candidate(n, "ok", metric=m, drop=0.97 - m, p50_ms=p, size_bytes=s) for n, m, p, s in specs
    ]
    return OptimizationResult(best=None, best_name="int8-dynamic+thr2", baseline=base,  # type: ignore[arg-type]
                              candidates=cands, objective="latency",
                              settings={"batch_size": 1, "metric": "accuracy"}, seconds=1.0)  # fmt: skip


def test_pareto_labels_do_not_overlap_and_the_key_names_every_candidate(tmp_path):
    result = _result()
    fig = result._figure()
    (ax,) = fig.axes
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    labels = ax.texts
    assert [t.get_text() for t in labels] == [str(i) for i in range(1, 13)]
    boxes = [t.get_window_extent(renderer) for t in labels]
    for (i, a), (j, b) in itertools.combinations(enumerate(boxes), 2):
        assert not a.overlaps(b), (labels[i].get_text(), labels[j].get_text())
    for text, box in zip(labels, boxes, strict=True):  # each number sits by its point
        x, y = ax.transData.transform(text.xy)
        assert abs(box.x0 + box.width / 2 - x) < 60 and abs(box.y0 + box.height / 2 - y) < 60
    key = [t.get_text() for t in ax.get_legend().get_texts()]
    assert key[0] == "1  baseline" and key[3] == "4  int8-dynamic+thr2  (best)"
    assert len(key) == 12
    path = result._plot(tmp_path / "pareto.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
