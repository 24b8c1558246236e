"""The quick start of the project's first seed document runs as written, with `nimbleml` as
the module; compress(module) infers inputs where the first layer says them."""

from __future__ import annotations

import pytest
import torch

import nimbleml
from nimbleml.errors import SyntheticInputsWarning

QUICK_START = """
from nimbleml import OptimizedPredictor, ModelCompressor
compressor = ModelCompressor(quantization="int8")
compressed_model = compressor.compress(original_model)
predictor = OptimizedPredictor(model=compressed_model, batch_size=32, use_cache=True, cache_size_mb=500)
predictions = predictor.predict_batch(game_data)
print(f"Latency: {predictor.last_latency_ms}ms")
"""


def test_quick_start_runs_as_written(mlp, digits, capsys):
    X_test = digits[1]
    scope = {"original_model": mlp, "game_data": X_test}
    with pytest.warns(SyntheticInputsWarning) as caught:
        exec(QUICK_START, scope)
    assert len([w for w in caught if w.category is SyntheticInputsWarning]) == 1  # once
    predictions = scope["predictions"]
    assert predictions.shape == (len(X_test), 10)
    with torch.inference_mode():
        reference = mlp(torch.from_numpy(X_test)).argmax(1).numpy()
    assert (predictions.argmax(1) == reference).mean() > 0.97  # int8 of the same model
    assert "Latency: " in capsys.readouterr().out
    assert scope["predictor"].last_latency_ms > 0
    validation = scope["compressed_model"].manifest["validation"]
    assert validation["inputs"] == "synthetic" and validation["metric"] is None
    assert "no accuracy was measured" in validation["note"]


def test_top_level_names_stay_lazy():
    assert {"OptimizedPredictor", "EnsemblePredictor", "ModelMonitor"} <= set(nimbleml.__all__)
    assert nimbleml.ModelMonitor.__name__ == "ModelMonitor"
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        nimbleml.Nope  # noqa: B018


def test_predictor_takes_model_and_keeps_the_old_name(mlp, digits):
    X = digits[1][:4]
    new = nimbleml.OptimizedPredictor(model=mlp, example_inputs=X)
    old = nimbleml.OptimizedPredictor(model_or_package=mlp, example_inputs=X)
    assert (new.predict(X) == old.predict(X)).all()
    with pytest.raises(nimbleml.ConfigError, match="needs a model"):
        nimbleml.OptimizedPredictor()
    with pytest.raises(nimbleml.ConfigError, match="pass the model once"):
        nimbleml.OptimizedPredictor(mlp, model_or_package=mlp)


def test_token_inputs_are_inferred_from_a_first_embedding(encoder):
    with pytest.warns(SyntheticInputsWarning, match="token ids"):
        pkg = nimbleml.compress(encoder, quantize=None)
    specs = {s["name"]: s for s in pkg.manifest["inputs"]}
    assert specs["input_ids"]["dtype"] == "int64" and specs["attention_mask"]["dtype"] == "int64"
    cases = [c["case"] for c in pkg.manifest["conversion"]["cases"]]
    assert any(c.startswith("seq=") and "padded" not in c for c in cases)  # a second length
    assert any("padded" in c for c in cases)


@pytest.mark.parametrize(
    ("module", "message"),
    [
        (lambda: torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3)), r"randn\(8, 3, H, W\)"),
        (lambda: torch.nn.Sequential(torch.nn.LayerNorm(4)), "first LayerNorm"),
        (lambda: _TwoInputs(), r"forward takes 2 inputs \['a', 'b'\]"),
    ],
    ids=["conv", "layernorm", "two-inputs"],
)
def test_ambiguous_modules_are_refused_naming_the_first_layer(module, message):
    with pytest.raises(nimbleml.ConfigError, match=message) as info:
        nimbleml.compress(module())
    assert "first layer:" in str(info.value) and "example_inputs=" in str(info.value)


class _TwoInputs(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, a, b):
        return self.fc(a + b)
