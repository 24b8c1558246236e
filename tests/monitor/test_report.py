"""`nimbleml report` on short runs: the README's monitor example (100 predictions, one
window) gave blank charts spanning 2025-2029, a lone accuracy dot, no accuracy in
insights.txt and a model named after a temporary folder (issue 11)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from nimbleml.monitor import ModelMonitor
from nimbleml.monitor.report import (
    MIN_ACCURACY_SPAN,
    accuracy_figure,
    accuracy_limits,
    figures,
    write_report,
)

UTC = dt.timezone.utc


def _short_run(tmp_path, models=("m",), labeled=100, wrong=2):
    """What the README example records: 100 predictions with ids, ground truth for each,
    one flush, close (so one window, one or two resource samples)."""
    url = f"sqlite:///{tmp_path / 'm.db'}"
    m = ModelMonitor(store=url, background=False, resources_interval_s=10.0)
    for model in models:
        for i in range(labeled):
            m.record(0.05 + 0.001 * i, prediction_id=f"{model}{i}", model=model, output=1)
            m.record_ground_truth(f"{model}{i}", 0 if i < wrong else 1)
    m.flush()
    m.close()
    return url


def _data_span(ax):
    """(first, last) x of every line with data on ``ax``, as matplotlib date numbers."""
    xs = [
        x
        for line in ax.get_lines()
        for x, y in zip(line.get_xdata(), line.get_ydata(), strict=True)
        if np.isfinite(y)
    ]
    from matplotlib.dates import date2num

    xs = [date2num(x) if isinstance(x, dt.datetime) else x for x in xs]
    return min(xs), max(xs)


def _check_time_axis(ax, labelled=True):
    lo, hi = ax.get_xlim()
    first, last = _data_span(ax)
    assert lo <= first <= last <= hi
    assert (hi - lo) * 86400 <= 60  # seconds around the data, not the years of 2025-2029
    label = ax.xaxis.get_major_formatter()(first)
    assert len(label) == 8 and label.count(":") == 2  # HH:MM:SS
    assert not labelled or "UTC" in ax.get_xlabel()


def _single_points_visible(ax):
    lines = [line for line in ax.get_lines() if len(line.get_xdata())]
    assert lines, "the chart has no data"
    for line in lines:
        if len(line.get_xdata()) == 1:
            assert line.get_marker() not in (
                None,
                "None",
                "",
                " ",
            )  # a line of one point is invisible


def test_short_run_charts_show_their_data(tmp_path):
    figs = figures(_short_run(tmp_path))

    top, bottom = figs["latency_throughput.png"].axes
    for ax in (top, bottom):
        _single_points_visible(ax)
        _check_time_axis(ax, labelled=ax is bottom)  # the axes share x; the lower one says UTC
        assert ax.get_legend() is not None
    assert all(np.isfinite(line.get_ydata()).all() for line in top.get_lines())
    (rate,) = bottom.get_lines()
    assert rate.get_ydata()[0] == pytest.approx(100.0)  # 100 requests in under a second, not /60

    (acc,) = figs["accuracy.png"].axes
    _single_points_visible(acc)
    _check_time_axis(acc)
    assert acc.get_lines()[0].get_ydata()[0] == pytest.approx(0.98)
    lo, hi = acc.get_ylim()
    assert 0.0 <= lo < 0.98 < hi <= 1.0 and hi - lo >= MIN_ACCURACY_SPAN - 1e-9
    assert "0.980 over 100 labeled predictions" in acc.get_title()
    assert any(t.get_text() == "n=100" for t in acc.texts)

    cpu_axis, rss_axis = figs["resources.png"].axes
    _single_points_visible(cpu_axis)
    _single_points_visible(rss_axis)
    _check_time_axis(cpu_axis)
    legend = cpu_axis.get_legend() or rss_axis.get_legend()
    labels = [t.get_text() for t in legend.get_texts()]
    assert any("CPU" in label for label in labels) and any("RSS" in label for label in labels)
    assert rss_axis.get_lines()[0].get_ydata()[0] > 0


def test_a_short_run_has_a_resource_sample_with_its_cpu(tmp_path):
    """The first sample came 0 s after psutil's counter started (CPU 0.0), and a run shorter
    than resources_interval_s had no other."""
    url = f"sqlite:///{tmp_path / 'm.db'}"
    m = ModelMonitor(store=url, background=False, resources_interval_s=10.0)
    m.record(1.0)
    sum(i * i for i in range(300_000))  # some CPU work inside the run
    m.close()
    from nimbleml.monitor.store import open_store

    store = open_store(url, read_only=True)
    rows = store.query("SELECT cpu_percent, rss_mb FROM resources")
    store.close()
    assert len(rows) == 1 and rows[0][0] > 0 and rows[0][1] > 0


def test_insights_give_accuracy_with_its_count_and_latency_with_n(tmp_path):
    url = _short_run(tmp_path)
    write_report(url, tmp_path / "report")
    text = (tmp_path / "report" / "insights.txt").read_text()
    assert "m: 100 predictions in 1 window of 60 s" in text
    assert "accuracy 0.980 over 100 labeled predictions" in text
    assert "(n=100; p95, p99 from too few samples to trust)" in text
    for name in ("latency_throughput.png", "accuracy.png", "resources.png"):
        assert (tmp_path / "report" / name).read_bytes()[:4] == b"\x89PNG"


def test_accuracy_axis_keeps_a_sensible_span():
    """A run at 0.8475-0.8479 filled the whole chart, as if accuracy swung wildly."""
    t = dt.datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    fig = accuracy_figure({"m": [(t, 0.8475, 4000), (t + 60, 0.8479, 4000)]})
    lo, hi = fig.axes[0].get_ylim()
    assert hi - lo >= MIN_ACCURACY_SPAN - 1e-9 and lo < 0.8475 and hi > 0.8479
    assert accuracy_limits([1.0]) == pytest.approx((0.95, 1.0))  # clipped to [0, 1]
    assert accuracy_limits([0.0, 0.01]) == pytest.approx((0.0, 0.05))
    assert accuracy_limits([0.2, 0.9]) == pytest.approx((0.13, 0.97))  # wide data: 10% room
    empty = accuracy_figure({})
    assert "no ground truth" in empty.axes[0].get_title()


def test_a_monitored_package_is_named_after_its_source_not_its_temporary_folder(
    tmp_path, pipeline, digits
):
    import nimbleml
    from nimbleml.runtime import OptimizedPredictor

    _, X_test, _, y_test = digits
    pkg = nimbleml.compress(pipeline, quantize=None, val=(X_test, y_test), benchmark_time_s=0.05)
    assert pkg.directory.name.startswith("nimble-")
    url = f"sqlite:///{tmp_path / 'm.db'}"
    m = ModelMonitor(store=url, background=False, resources_interval_s=None)
    predictor = OptimizedPredictor(pkg, monitor=m)
    assert predictor.name == "Pipeline"
    predictor.predict(X_test[:1], prediction_id=0)
    m.close()
    write_report(url, tmp_path / "report")
    text = (tmp_path / "report" / "insights.txt").read_text()
    assert text.startswith("Pipeline: 1 predictions") and "nimble-" not in text
    pkg.save(tmp_path / "digits.nimble")
    assert OptimizedPredictor(pkg).name == "digits"  # once saved, the folder names it


def test_a_report_of_a_closed_store_leaves_no_wal_or_shm_beside_it(tmp_path):
    """A read-only connection cannot remove the -wal/-shm it creates: a closed store (no
    -wal: no writer) is read as immutable, so the folder is as the monitor left it."""
    url = _short_run(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    write_report(url, tmp_path / "out")
    after = sorted(p.name for p in tmp_path.iterdir() if p.name != "out")
    assert after == before == ["m.db"]
