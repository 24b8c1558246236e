import numpy as np
import pytest
import torch

from nimbleml.compress.pipeline import convert_verified
from nimbleml.errors import ConfigError, ModelLoadError, UntrustedPickleError
from nimbleml.models import load_model
from nimbleml.models.torch_model import TorchModel, torch_file_kind
from nimbleml.verify import variants


class TwoInputs(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Linear(4, 3), torch.nn.Linear(2, 3)

    def forward(self, left, right):
        return self.a(left) + self.b(right), self.a(left)


def test_tensor_example_names_the_input_after_forward(mlp, digits):
    model = load_model(mlp, torch.from_numpy(digits[1][:4]))
    assert model.input_names == ["input"]  # Sequential.forward(input)
    assert model.inputs[0].shape == ("batch", 64)
    out = model(digits[1][:5])
    assert out[0].shape == (5, 10)
    assert model.num_parameters() == sum(p.numel() for p in mlp.parameters())


def test_tuple_and_dict_examples():
    module = TwoInputs().eval()
    ex = (np.zeros((2, 4), np.float32), np.zeros((2, 2), np.float32))
    positional = TorchModel(module, ex)
    assert positional.input_names == ["left", "right"]
    assert positional.output_names == ["output_0", "output_1"]
    named = TorchModel(module, {"right": ex[1], "left": ex[0]})
    assert named.input_names == ["right", "left"]
    a = positional(ex)
    b = named({"left": ex[0], "right": ex[1]})
    assert np.allclose(a[0], b[0])


def test_torch_model_needs_examples(mlp):
    with pytest.raises(ConfigError, match="example inputs"):
        TorchModel(mlp, None)


def test_multi_output_model_converts_and_verifies():
    module = TwoInputs().eval()
    rng = np.random.default_rng(0)
    ex = (rng.normal(size=(8, 4)).astype(np.float32), rng.normal(size=(8, 2)).astype(np.float32))
    model = TorchModel(module, ex)
    onnx_model, report = convert_verified(model, variants(model.feeds(ex)))
    assert onnx_model.output_names == ["output_0", "output_1"]
    assert report["converter"] == "exporter=legacy"


def test_hf_style_encoder_with_padding_is_verified(encoder, tokens):
    """The legacy exporter bakes the example's shapes into the attention reshape: the
    verification on other batch sizes and padded lengths must catch it and move on."""
    model = load_model(encoder, tokens)
    cases = variants(model.feeds(tokens))
    assert any("padded" in name for name, _ in cases)
    onnx_model, report = convert_verified(model, cases)
    assert report["converter"] == "exporter=dynamo"
    assert {r["case"] for r in report["cases"]} == {name for name, _ in cases}
    assert all(r["max_abs_err"] < 1e-4 for r in report["cases"])
    assert onnx_model.inputs[0].shape[0] != 1  # dynamic batch, not baked


def test_torchscript_export_and_pickle_files(tmp_path, mlp, digits):
    x = torch.from_numpy(digits[1][:3])
    ts_path = tmp_path / "m.ts"
    torch.jit.save(torch.jit.trace(mlp, x), str(ts_path))
    pt2_path = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(mlp, (x,)), str(pt2_path))
    pickle_path = tmp_path / "m.pt"
    torch.save(mlp, pickle_path)
    assert torch_file_kind(ts_path) == "torchscript"
    assert torch_file_kind(pt2_path) == "export"
    assert torch_file_kind(pickle_path) == "pickle"
    ref = mlp(x).detach().numpy()
    for path in (ts_path, pt2_path):
        assert np.allclose(load_model(path, x.numpy())(x.numpy())[0], ref, atol=1e-5)
    with pytest.raises(UntrustedPickleError, match="trust_pickle=True"):
        load_model(pickle_path, x.numpy())
    trusted = load_model(pickle_path, x.numpy(), trust_pickle=True)
    assert np.allclose(trusted(x.numpy())[0], ref, atol=1e-5)


def test_unknown_files_and_objects_are_refused(tmp_path):
    (tmp_path / "m.xyz").write_text("?")
    with pytest.raises(ModelLoadError, match="unknown model file type '.xyz'"):
        load_model(tmp_path / "m.xyz")
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(tmp_path / "missing.onnx")
    with pytest.raises(ModelLoadError, match="cannot adapt a builtins.dict"):
        load_model({"not": "a model"})


def test_an_encoder_saves_as_torchscript_and_computes_the_same(encoder, tokens, tmp_path):
    """torch's trace check fails on a TransformerEncoder (a mangled class name differs); the
    save compares outputs instead, so an optimize whose best is the original can package it."""
    import torch

    from nimbleml.models.torch_model import TorchModel

    model = TorchModel(encoder, tokens)
    name = model.save(tmp_path, "model")
    loaded = torch.jit.load(str(tmp_path / name))
    args = [torch.from_numpy(v) for v in tokens.values()]
    with torch.inference_mode():
        assert torch.allclose(loaded(*args), encoder(*args), atol=1e-5)


def test_wrong_shape_data_is_one_line_naming_both_shapes(mlp, digits, tmp_path):
    """compress/optimize of a TorchScript file with 63 features for a 64-feature model: one
    error line with the data's shape and the first layer's width (issue 11, item 3; it was
    a ~100-line traceback)."""
    import numpy as np
    import torch
    from typer.testing import CliRunner

    import nimbleml
    from nimbleml.cli import app

    Xte, yte = digits[1], digits[3]
    torch.jit.save(torch.jit.trace(mlp, torch.from_numpy(Xte[:2])), str(tmp_path / "m.ts"))
    np.savez(tmp_path / "val.npz", X=Xte[:, :63], y=yte)
    with pytest.raises(nimbleml.DataError, match=r"\(16, 63\).*takes 64 features"):
        nimbleml.compress(str(tmp_path / "m.ts"), val=(Xte[:, :63], yte))
    for verb in ("compress", "optimize"):
        out = CliRunner().invoke(app, [verb, str(tmp_path / "m.ts"), "--val",
                                       str(tmp_path / "val.npz"), "-o", str(tmp_path / "o")])  # fmt: skip
        assert out.exit_code == 2 and out.output.count("\n") == 1, out.output
        assert "'input' has shape (16, 63)" in out.output and "takes 64 features" in out.output
