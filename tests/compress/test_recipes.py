"""One conformance test over every registered recipe, plus what each one must really do."""

import hashlib
import pickle

import numpy as np
import pytest
import torch

from nimbleml.bench.machine import CpuCaps, cpu_caps
from nimbleml.compress import RECIPES, Context, get_recipe
from nimbleml.compress.pipeline import convert_verified
from nimbleml.compress.quantize import int8_layout
from nimbleml.compress.torch_native import bf16_support
from nimbleml.errors import ConfigError, UnsupportedError
from nimbleml.models import load_model
from nimbleml.verify import compare_outputs, variants

# each recipe: the fixture model it applies to, and the least cosine it must keep
SUBJECT = {
    "int8": ("mlp-onnx", 0.99),
    "int8-static": ("mlp-onnx", 0.99),
    "fp16": ("mlp-onnx", 0.999),
    "graph-opt": ("mlp-onnx", 0.99999),
    "sparse-store": ("mlp-pruned-onnx", 0.99999),
    "torch-int8": ("mlp", 0.99),
    "bf16": ("mlp", 0.99),
    "prune-structured": ("mlp", 0.5),
    "prune-magnitude": ("mlp", 0.9),
    "qat": ("mlp", 0.99),
    "coef-prune": ("pipeline", 0.9),
    "coef-int8": ("pipeline", 0.999),
    "coef-int16": ("pipeline", 0.99999),
    "openvino": ("mlp-onnx", 0.99999),
    "openvino-int8": ("mlp-onnx", 0.99),
}


@pytest.fixture(scope="module")
def subjects(mlp, pipeline, digits):
    Xte = digits[1]
    torch_model = load_model(mlp, Xte[:8])
    onnx_model, _ = convert_verified(torch_model, variants(torch_model.feeds(Xte)))
    scripted = load_model(torch.jit.trace(mlp, torch.from_numpy(Xte[:2])), Xte[:8])
    pruned = get_recipe("prune-magnitude", amount=0.8).apply(
        torch_model, Context(example=torch_model.feeds(Xte[:4]))
    )
    pruned_onnx, _ = convert_verified(pruned, variants(pruned.feeds(Xte)))
    return {"mlp": torch_model, "mlp-onnx": onnx_model, "pipeline": load_model(pipeline),
            "mlp-ts": scripted, "mlp-pruned-onnx": pruned_onnx}  # fmt: skip


def fingerprint(model) -> str:
    """What a recipe claims to change: the ONNX graph, the torch weights and module types, or
    the scikit-learn estimator."""
    h = hashlib.sha256()
    if model.framework == "onnx":
        h.update(model.data)
    elif model.framework == "openvino":
        h.update(model.digest().encode())
    elif model.framework == "torch":
        for name, m in model.module.named_modules():
            h.update(f"{name}:{type(m).__name__}".encode())
        for name, t in model.module.state_dict().items():
            h.update(name.encode())
            if isinstance(t, torch.Tensor) and not t.is_quantized:
                h.update(t.detach().float().numpy().tobytes())
    else:
        h.update(pickle.dumps(model.estimator))
    return h.hexdigest()


def test_every_registered_recipe_is_covered():
    get_recipe("int8")  # imports the built-ins
    get_recipe("qat")  # registered on demand: it imports torch
    assert set(RECIPES) == set(SUBJECT)


@pytest.mark.parametrize("name", sorted(SUBJECT))
def test_recipe_conformance(name, subjects, digits):
    subject, min_cosine = SUBJECT[name]
    model = subjects[subject]
    Xte = digits[1]
    ctx = Context(example=model.feeds(Xte[:16]), calib=model.feeds(Xte[:128]),
                  train=(digits[0], digits[2]))  # fmt: skip
    if name.startswith("openvino"):
        pytest.importorskip("openvino")
    recipe = get_recipe(name, epochs=1) if name == "qat" else get_recipe(name)
    assert recipe.__doc__ and recipe.stage in ("source", "onnx", "torch")
    if name == "bf16" and not bf16_support()[0]:
        with pytest.raises(UnsupportedError, match="bf16 needs hardware"):
            recipe.check(model, ctx)
        return
    recipe.check(model, ctx)
    out = recipe.apply(model, ctx)
    assert out is not model
    assert fingerprint(out) != fingerprint(model), f"{name} changed nothing"
    assert out.input_names == model.input_names
    assert out.output_names == model.output_names
    feeds = model.feeds(Xte)
    agreement = compare_outputs(model.run(feeds), out(Xte))
    assert agreement.cosine >= min_cosine, agreement
    desc = recipe.describe()
    assert desc["step"] == name and isinstance(desc["params"], dict)


@pytest.mark.parametrize("name", ["int8", "fp16", "graph-opt"])
def test_onnx_recipes_refuse_framework_models(name, subjects, digits):
    model = subjects["mlp"]
    with pytest.raises(UnsupportedError, match="works on onnx"):
        get_recipe(name).check(model, Context(example=model.feeds(digits[1][:4])))


def test_int8_shrinks_weights_about_four_times(subjects, digits):
    model = subjects["mlp-onnx"]
    q = get_recipe("int8").apply(model, Context(example=model.feeds(digits[1][:4])))
    assert model.size_bytes() / q.size_bytes() > 3.2  # float biases and scales remain
    assert any("Integer" in op or "Dynamic" in op for op in q.op_types())


def test_int8_on_a_graph_without_matmul_says_use_none(forest, digits):
    onnx_model, _ = convert_verified(
        load_model(forest), variants(load_model(forest).feeds(digits[1]))
    )
    with pytest.raises(UnsupportedError, match="quantize=None"):
        get_recipe("int8").check(onnx_model, Context(example=onnx_model.feeds(digits[1][:4])))


def test_int8_static_needs_calibration(subjects, digits):
    model = subjects["mlp-onnx"]
    with pytest.raises(ConfigError, match="calibration data"):
        get_recipe("int8-static").check(model, Context(example=model.feeds(digits[1][:4])))
    with pytest.raises(ConfigError, match="choose one of: minmax"):
        get_recipe("int8-static", calibration="kl")


def test_int8_layout_follows_the_cpu():
    assert int8_layout(CpuCaps(("avx2",)))["reduce_range"] is True
    assert int8_layout(CpuCaps(("avx2", "avx512_vnni")))["reduce_range"] is False
    layout = int8_layout(cpu_caps())
    assert layout["reduce_range"] is (not cpu_caps().vnni)


def test_structured_pruning_removes_units(subjects, digits):
    model = subjects["mlp"]
    ctx = Context(example=model.feeds(digits[1][:4]))
    recipe = get_recipe("prune-structured", amount=0.5)
    pruned = recipe.apply(model, ctx)
    shapes = [tuple(p.shape) for n, p in pruned.module.named_parameters() if n.endswith("weight")]
    assert shapes == [(64, 64), (64, 64), (10, 64)]  # 128 hidden units each -> 64
    assert pruned.num_parameters() < model.num_parameters() * 0.4
    assert recipe.params()["units_removed"] == 128


def test_structured_pruning_of_conv_channels(digits):
    conv = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(8 * 64, 10),
    ).eval()  # fmt: skip
    x = digits[1][:4].reshape(-1, 1, 8, 8)
    model = load_model(conv, x)
    pruned = get_recipe("prune-structured", amount=0.5).apply(
        model, Context(example=model.feeds(x))
    )
    mods = list(pruned.module.modules())
    convs = [m for m in mods if isinstance(m, torch.nn.Conv2d)]
    assert convs[0].out_channels == 4 and convs[1].in_channels == 4 and convs[1].out_channels == 4
    assert next(m for m in mods if isinstance(m, torch.nn.BatchNorm2d)).num_features == 4
    assert pruned(x)[0].shape == (4, 10)


def test_structured_pruning_without_pairs_is_refused(digits):
    model = load_model(torch.nn.Linear(64, 10).eval(), digits[1][:2])
    with pytest.raises(UnsupportedError, match="prune_method='magnitude'"):
        get_recipe("prune-structured").apply(model, Context(example=model.feeds(digits[1][:2])))


def test_torch_int8_on_torchscript_is_refused_not_a_no_op(subjects, digits):
    model = subjects["mlp-ts"]
    with pytest.raises(UnsupportedError, match="TorchScript.*quantize='int8'"):
        get_recipe("torch-int8").apply(model, Context(example=model.feeds(digits[1][:4])))


def test_torch_int8_without_linear_layers_is_refused(digits):
    model = load_model(torch.nn.Sequential(torch.nn.ReLU()).eval(), digits[1][:2])
    with pytest.raises(UnsupportedError, match="no nn.Linear"):
        get_recipe("torch-int8").apply(model, Context(example=model.feeds(digits[1][:2])))


def test_structured_pruning_of_torchscript_points_to_magnitude(subjects, digits):
    model = subjects["mlp-ts"]
    with pytest.raises(UnsupportedError, match="TorchScript.*prune_method='magnitude'"):
        get_recipe("prune-structured").apply(model, Context(example=model.feeds(digits[1][:2])))


def test_magnitude_pruning_works_on_torchscript(subjects, digits):
    model = subjects["mlp-ts"]
    ctx = Context(example=model.feeds(digits[1][:4]))
    pruned = get_recipe("prune-magnitude", amount=0.5).apply(model, ctx)
    weights = [p for n, p in pruned.module.named_parameters() if n.endswith("weight")]
    assert weights and all(float((w == 0).float().mean()) > 0.2 for w in weights)
    assert fingerprint(pruned) != fingerprint(model)
    before = [p for n, p in model.module.named_parameters() if n.endswith("weight")]
    assert all(float((w == 0).float().mean()) < 0.01 for w in before)  # the source is untouched
    agreement = compare_outputs(model.run(model.feeds(digits[1])), pruned(digits[1]))
    assert agreement.cosine > 0.9


def test_magnitude_pruning_zeroes_and_sparse_store_shrinks(subjects, digits):
    model = subjects["mlp"]
    ctx = Context(example=model.feeds(digits[1][:4]))
    pruned = get_recipe("prune-magnitude", amount=0.8).apply(model, ctx)
    weights = torch.cat(
        [p.detach().flatten() for n, p in pruned.module.named_parameters() if "weight" in n]
    )
    assert (weights == 0).float().mean() >= 0.79
    dense, _ = convert_verified(pruned, variants(pruned.feeds(digits[1])))
    store = get_recipe("sparse-store")
    sparse = store.apply(dense, ctx)
    assert store.params()["sparse_tensors"] >= 2
    assert sparse.size_bytes() < dense.size_bytes() * 0.6
    assert np.allclose(sparse(digits[1])[0], dense(digits[1])[0], atol=1e-5)


def test_prune_amount_is_validated():
    for bad in (0, 1, 1.5, "lots"):
        with pytest.raises(ConfigError, match="between 0 and 1|must be a number"):
            get_recipe("prune-structured", amount=bad)


def test_coefficient_quantisation_uses_few_levels(subjects):
    model = subjects["pipeline"]
    q = get_recipe("coef-int8").apply(model, Context(example={}))
    coef = q.estimator.steps[-1][1].coef_
    for row in coef:
        assert len(np.unique(row)) <= 255
    assert model.estimator.steps[-1][1].coef_ is not coef  # the original is untouched


def test_coef_recipes_need_a_linear_model(forest):
    with pytest.raises(UnsupportedError, match="needs a linear model"):
        get_recipe("coef-int8").apply(load_model(forest), Context(example={}))


def test_unknown_recipe_lists_the_known_ones():
    with pytest.raises(ConfigError, match="choose one of: bf16, coef-int16"):
        get_recipe("int9")
