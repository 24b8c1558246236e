"""optimize on the models people ship: candidates ordered by model kind, OpenVINO beside ONNX
Runtime, candidates that cannot apply listed at no cost, the batch sizes a user will run at,
and int8 defaults right for transformers."""

import numpy as np
import pytest
import torch

import nimbleml
from nimbleml.bench.machine import CpuCaps
from nimbleml.compress.pipeline import prepare
from nimbleml.errors import ConfigError
from nimbleml.optimizer.space import model_kind, search_space
from tests.conftest import make_encoder, token_batch

FAST = {"timing_s": 0.2, "prune": False, "mixed_precision": False}


def small_cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.MaxPool2d(2), torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(16 * 16, 10),
    ).eval()  # fmt: skip


def test_model_kind_orders_the_candidates(mlp, digits):
    """On an AVX2 CPU (no VNNI) a transformer starts with per-channel dynamic int8, then
    graph-optimised fp32; a conv net with OpenVINO int8 / static int8 (dynamic int8 leaves its
    Convs in float)."""
    avx2 = CpuCaps(("avx", "avx2", "fma"))
    tokens = token_batch(n=16, length=12)
    enc = prepare(make_encoder(), None, None, (tokens, None))
    assert model_kind(enc.baseline) == "transformer"
    names = [s.name for s in search_space(enc.source, avx2, True, kind="transformer")]
    assert names[:2] == ["onnx int8 dynamic per-channel", "onnx fp32"]
    assert names.index("onnx int8 dynamic") > names.index("onnx int8 static minmax")
    last = names.index("onnx int8 dynamic")  # every int8/fp32/OpenVINO candidate before pruning
    assert all(names.index(n) > last for n in names if n.startswith("pruned"))
    x = np.random.default_rng(0).normal(size=(8, 1, 8, 8)).astype(np.float32)
    cnn = prepare(small_cnn(), None, None, (x, None))
    assert model_kind(cnn.baseline) == "conv"
    names = [s.name for s in search_space(cnn.source, avx2, True, kind="conv")]
    assert names[:2] == ["openvino int8", "onnx int8 static minmax"]
    _, Xte, _, _ = digits
    flat = prepare(mlp, None, None, (Xte[:8], None))
    assert model_kind(flat.baseline) == "mlp"


def test_batch_sizes_decide_by_the_worst_ratio(mlp, digits):
    _, Xte, _, yte = digits
    r = nimbleml.optimize(mlp, (Xte, yte), batch_sizes=[1, 8], time_budget_s=60, **FAST)
    base = r.baseline
    assert set(base.timings) == {1, 8} and base.score == pytest.approx(1.0)
    timed = [c for c in r.candidates if c.status == "ok"]
    assert timed
    for c in timed:  # the score is the worst ratio to the original over both sizes
        ratios = [c.timings[b]["p50_ms"] / base.timings[b]["p50_ms"] for b in (1, 8)]
        assert c.score == pytest.approx(max(ratios))
        assert all(c.timings[b]["n"] >= 30 for b in (1, 8))
    best = next(c for c in r.candidates if c.name == r.best_name)
    assert best.score <= min(c.score for c in [*timed, base]) * 1.03  # the fastest, or a tie
    table = r.table()
    assert "p50@1" in table and "p50@8" in table and "vs orig" in table and "seconds" in table
    bench = r.best.manifest["benchmark"]
    assert set(bench) == {"batch_1", "batch_8"}
    assert r.best.manifest["optimization"]["batch_sizes"] == [1, 8]
    assert r.best_name != base.name  # an int8 MLP beats torch here
    # the original and the best re-timed side by side at the end, at each deciding size
    assert set(r.interleaved) == {1, 8}
    for b in (1, 8):
        again = bench[f"batch_{b}"]["interleaved"]
        assert again == r.interleaved[b] and again["rounds"] == 8
        assert again["speedup_p50"] == pytest.approx(
            again["original_p50_ms"] / again["package_p50_ms"]
        )
    assert "re-timed side by side" in table


def test_batch_size_weights(mlp, digits):
    _, Xte, _, yte = digits
    r = nimbleml.optimize(mlp, (Xte, yte), batch_sizes={1: 3, 8: 1}, time_budget_s=60, **FAST)
    c = next(c for c in r.candidates if c.status == "ok")
    ratios = {b: c.timings[b]["p50_ms"] / r.baseline.timings[b]["p50_ms"] for b in (1, 8)}
    assert c.score == pytest.approx((3 * ratios[1] + ratios[8]) / 4)
    assert r.settings["batch_weights"] == {1: 3, 8: 1}


@pytest.mark.parametrize(
    ("sizes", "message"),
    [([], "empty"), ([0, 8], "positive integers"), ([1, 1], "twice"), ("1,32", "positive"),
     ({1: 0, 8: 1}, "weight of batch size 1"), (5, "list of sizes")],
)  # fmt: skip
def test_bad_batch_sizes(mlp, digits, sizes, message):
    _, Xte, _, yte = digits
    with pytest.raises(ConfigError, match=message):
        nimbleml.optimize(mlp, (Xte, yte), batch_sizes=sizes)


def test_batch_sizes_are_for_latency(mlp, digits):
    _, Xte, _, yte = digits
    with pytest.raises(ConfigError, match="objective='latency'"):
        nimbleml.optimize(mlp, (Xte, yte), objective="throughput", batch_sizes=[1, 32])


def test_openvino_missing_is_listed_not_failed(mlp, digits, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "openvino", None)  # as on a machine without the extra
    _, Xte, _, yte = digits
    r = nimbleml.optimize(mlp, (Xte, yte), time_budget_s=60, **FAST)
    ov = {c.name: c for c in r.candidates if c.name.startswith("openvino")}
    assert {"openvino fp32", "openvino int8"} <= set(ov)  # + bf16 ones where the CPU runs bf16
    for c in ov.values():
        assert c.status == "not-installed" and c.seconds == 0.0
        assert c.reason == "not installed: pip install 'nimbleml[openvino]'"
    assert r.best.manifest["runtime"]["engine"] != "openvino"


def test_structured_pruning_not_applicable_costs_nothing(digits):
    """One fx probe: a model torch.fx cannot trace gets its pruning candidates listed with the
    reason, none of them built."""

    class Branchy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = torch.nn.Linear(64, 32), torch.nn.Linear(32, 10)

        def forward(self, x):
            h = torch.relu(self.a(x))
            if h.sum() > 0:  # data-dependent control flow: not traceable
                h = h * 2
            return self.b(h)

    torch.manual_seed(0)
    _, Xte, _, yte = digits
    r = nimbleml.optimize(Branchy().eval(), (Xte, yte), metric="agreement", timing_s=0.2,
                          time_budget_s=60, mixed_precision=False)  # fmt: skip
    pruned = [c for c in r.candidates if c.name.startswith("pruned")]
    assert len(pruned) == 4
    for c in pruned:
        assert c.status == "not-applicable" and c.seconds == 0.0
        assert c.reason.startswith("not applicable: not fx-traceable")


def test_an_ok_candidate_records_its_runtime_and_cost(mlp, digits):
    _, Xte, _, yte = digits
    r = nimbleml.optimize(mlp, (Xte, yte), time_budget_s=90, **FAST)
    ran = [c for c in r.candidates if c.status in ("ok", "slower", "over-budget")]
    assert all(c.seconds > 0 for c in ran)
    engines = {c.name: c.engine for c in ran}
    assert engines.get("openvino fp32") == "openvino"
    assert engines.get("onnx fp32") == "onnxruntime"
    runtime = r.best.manifest["runtime"]
    assert runtime["engine"] in ("onnxruntime", "openvino", "torch")
    assert "measured" in runtime["why"]


def test_transformer_int8_is_per_channel_by_default():
    tokens = token_batch(n=32, length=12)
    pkg = nimbleml.compress(make_encoder(), quantize="int8", val=(tokens, None))
    step = next(s for s in pkg.manifest["recipe"] if s["step"] == "int8")
    assert step["params"]["per_channel"] is True
    assert "transformer" in step["params"]["per_channel_why"]
    # cosine has a default budget now, like accuracy
    assert pkg.manifest["validation"]["max_drop"] == 0.01
    assert pkg.manifest["validation"]["max_drop_source"] == "default"


def test_mlp_int8_stays_per_tensor_by_default(mlp, digits):
    _, Xte, _, yte = digits
    pkg = nimbleml.compress(mlp, quantize="int8", val=(Xte, yte))
    step = next(s for s in pkg.manifest["recipe"] if s["step"] == "int8")
    assert step["params"]["per_channel"] is False


@pytest.mark.parametrize("calibration", ["entropy", "percentile"])
def test_static_int8_calibrates_on_any_row_count(mlp, digits, calibration):
    """300 rows: the last batch of 32 would be short; entropy and percentile used to fail."""
    _, Xte, _, yte = digits
    pkg = nimbleml.compress(mlp, quantize="int8-static", calibration=calibration,
                            calib=Xte[:300], val=(Xte, yte), max_drop=None)  # fmt: skip
    step = next(s for s in pkg.manifest["recipe"] if s["step"] == "int8-static")
    assert step["params"]["calibration_rows"] == 288
    assert (pkg.predict(Xte).argmax(1) == yte).mean() > 0.8


def test_openvino_int8_over_budget_gets_accuracy_control(mlp, digits):
    """NNCF's accuracy-aware mode follows an OpenVINO int8 that broke a budget within its
    reach, and is listed as unable to win where int8's drop is far past the budget."""
    Xte = digits[1]
    kw = {**FAST, "metric": "cosine", "time_budget_s": 90}
    first = nimbleml.optimize(mlp, (Xte, None), max_drop=0.01, **kw)
    drop = next(c.drop for c in first.candidates if c.name == "openvino int8")
    assert drop and drop > 0
    near = nimbleml.optimize(mlp, (Xte, None), max_drop=drop / 2, **kw)
    aware = next(c for c in near.candidates if c.name == "openvino int8 accuracy-aware")
    assert aware.status in ("ok", "slower", "over-budget"), aware.reason
    step = aware.recipe[0]
    assert step["step"] == "openvino-int8" and step["params"]["accuracy_control"] is True
    far = nimbleml.optimize(mlp, (Xte, None), max_drop=drop / 100, **kw)
    aware = next(c for c in far.candidates if c.name == "openvino int8 accuracy-aware")
    assert aware.status == "skipped" and aware.reason.startswith("cannot win: int8's drop")
