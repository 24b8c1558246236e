"""Structured pruning through activations, pooling, BatchNorm and Flatten (issue 21), and the
optimizer's one-trace probe of whether it can apply."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import nimbleml
from nimbleml.compress import Context, get_recipe
from nimbleml.compress.prune import structured_pruning_check
from nimbleml.errors import UnsupportedError
from nimbleml.models import load_model


def images(digits, n=None):
    X = digits[1] if n is None else digits[1][:n]
    return X.reshape(-1, 1, 8, 8)


def at(module, index):
    """Layer ``index`` of a Sequential, also once pruning made it a GraphModule."""
    return module.get_submodule(str(index))


def params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def randomise(model, seed=0):
    """Random weights and BatchNorm statistics, so that a wrong slice shows in the outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                m.weight.copy_(torch.randn(m.num_features, generator=gen))
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model.eval()


def kill(conv, channels, norm=None):
    """Make ``channels`` of ``conv`` dead: zero filters and bias; a BatchNorm after it then
    maps them to a negative constant that ReLU turns into 0."""
    with torch.no_grad():
        conv.weight[channels] = 0
        conv.bias[channels] = 0
        if norm is not None:
            norm.running_mean[channels] = 0
            norm.bias[channels] = -1.0


def prune(model, x, amount):
    loaded = load_model(model, x)
    recipe = get_recipe("prune-structured", amount=amount)
    return recipe.apply(loaded, Context(example=loaded.feeds(x))), recipe.params()


def same_outputs(original, pruned, x):
    with torch.inference_mode():
        want = original(torch.from_numpy(x)).numpy()
    got = pruned(x)[0]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def cnn(width=8):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(2 * width * 4, 10),
    )  # fmt: skip


def test_cnn_with_batchnorm_pooling_and_flatten_loses_exactly_its_dead_channels(digits):
    model = randomise(cnn())
    kill(model[0], [1, 4, 6], model[1])  # dead by their zero filters
    with torch.no_grad():  # dead by BatchNorm: γ = 0, large filters, β < 0 (ReLU gives 0)
        dead = [0, 3, 5, 9, 12, 15]
        model[4].weight[dead] *= 10
        model[5].weight[dead] = 0
        model[5].bias[dead] = -0.5
    x = images(digits)
    pruned, info = prune(model, x, 0.375)  # 3 of 8 and 6 of 16
    assert info["layers"] == 2 and info["units_removed"] == 9
    p = pruned.module
    assert (at(p, 0).out_channels, at(p, 4).in_channels, at(p, 4).out_channels) == (5, 5, 10)
    assert at(p, 1).num_features == 5 and at(p, 1).running_var.shape == (5,)
    assert at(p, 5).num_features == 10 and at(p, 5).running_mean.shape == (10,)
    assert at(p, 9).in_features == 40  # 10 channels × 2×2 columns each
    # conv 1·8·9+8 + BN 16 + conv 8·16·9+16 + BN 32 + linear 64·10+10 = 1946
    # conv 1·5·9+5 + BN 10 + conv 5·10·9+10 + BN 20 + linear 40·10+10 = 950
    assert (params(model), params(p)) == (1946, 950)
    assert torch.equal(at(p, 0).weight, model[0].weight[[0, 2, 3, 5, 7]])
    same_outputs(model, pruned, x)
    assert pruned.num_parameters() < load_model(model, x[:2]).num_parameters()


class Functional(nn.Module):
    """relu / max_pool2d / flatten written as calls in forward, not as modules."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.c1, self.c2 = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 2 * 2, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.c1(x)), 2)
        x = F.dropout(torch.relu(self.c2(x)).relu(), 0.1, training=self.training)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 2), 1))


def test_functional_forward_prunes_through_calls(digits):
    model = Functional().eval()
    kill(model.c1, [0, 7])
    kill(model.c2, [2, 3])
    x = images(digits)
    pruned, info = prune(model, x, 0.25)
    assert info["layers"] == 2
    m = pruned.module
    assert (m.c1.out_channels, m.c2.in_channels, m.c2.out_channels, m.fc.in_features) == (
        6, 6, 6, 24
    )  # fmt: skip
    assert params(m) == (1 * 6 * 9 + 6) + (6 * 6 * 9 + 6) + (24 * 10 + 10)
    same_outputs(model, pruned, x)


def test_conv1d_chain(digits):
    torch.manual_seed(2)
    model = randomise(
        nn.Sequential(
            nn.Conv1d(8, 8, 3, padding=1), nn.BatchNorm1d(8), nn.ReLU(), nn.MaxPool1d(2),
            nn.Conv1d(8, 12, 3, padding=1), nn.GELU(), nn.AvgPool1d(2), nn.Flatten(), nn.Linear(12 * 2, 5),
        )
    )  # fmt: skip
    kill(model[0], [2, 5], model[1])
    kill(model[4], [0, 1, 11])
    with torch.no_grad():
        model[4].bias[[0, 1, 11]] = -20.0  # GELU(-20) is 0 to float precision
    x = digits[1].reshape(-1, 8, 8)  # 8 channels of length 8
    pruned, _ = prune(model, x, 0.25)
    m = pruned.module
    assert (at(m, 0).out_channels, at(m, 4).in_channels, at(m, 4).out_channels, at(m, 8).in_features) == (
        6, 6, 9, 18
    )  # fmt: skip
    assert params(m) == (8 * 6 * 3 + 6) + 12 + (6 * 9 * 3 + 9) + (18 * 5 + 5)
    same_outputs(model, pruned, x)


def test_mlp_with_batchnorm_between_linears(digits):
    torch.manual_seed(3)
    model = randomise(
        nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.2),
                      nn.Linear(32, 10))
    )  # fmt: skip
    with torch.no_grad():
        model[1].weight[:16] = 0
        model[1].bias[:16] = -1.0
    pruned, _ = prune(model, digits[1], 0.5)
    assert (
        at(pruned.module, 1).num_features == 16 and params(pruned.module) == 64 * 16 + 16 + 32 + 170
    )
    same_outputs(model, pruned, digits[1])


def test_removed_constant_units_move_into_the_next_bias(digits):
    """A unit that always outputs the same value carries no information but shifts the next
    layer: its mean contribution is folded into that layer's bias (created where it had none)."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10, bias=False)).eval()
    with torch.no_grad():
        model[0].weight[::2] = 0  # 16 units: zero weights, so the lowest norms
        model[0].bias[::2] = 0.5  # ... yet a constant 0.5 after ReLU
    pruned, _ = prune(model, digits[1], 0.5)
    assert at(pruned.module, 2).in_features == 16 and at(pruned.module, 2).bias is not None
    same_outputs(model, pruned, digits[1])


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.stem, self.bn0 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c1, self.bn1 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = F.relu(self.bn0(self.stem(x)))
        y = self.bn2(self.c2(F.relu(self.bn1(self.c1(x)))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(F.relu(x + y), 1), 1))


def test_residual_channels_are_kept_and_the_rest_pruned(digits):
    model = randomise(Residual())
    kill(model.c1, [1, 2, 5, 6], model.bn1)
    x = images(digits)
    pruned, info = prune(model, x, 0.5)
    m = pruned.module
    assert info["layers"] == 1  # only c1 → c2: the stem and c2 feed the residual add
    assert (m.stem.out_channels, m.c1.out_channels, m.c2.in_channels, m.c2.out_channels) == (
        8, 4, 4, 8
    )  # fmt: skip
    assert m.bn1.num_features == 4 and m.bn2.num_features == 8 and m.fc.in_features == 8
    same_outputs(model, pruned, x)
    assert structured_pruning_check(model, None) is None


class Branching(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            return self.a(x)
        return x


def test_probe_says_why_not_and_the_recipe_uses_the_same_words(digits):
    mlp = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    assert structured_pruning_check(mlp, None) is None
    assert structured_pruning_check(mlp, {"input": digits[1][:2]}) is None

    reason = structured_pruning_check(Branching(), None)
    assert reason == (
        "not fx-traceable: symbolically traced variables cannot be used as inputs to control flow"
    )
    model = load_model(Branching(), np.ones((2, 4), np.float32))
    with pytest.raises(UnsupportedError) as caught:
        get_recipe("prune-structured").apply(model, Context(example=model.example))
    assert reason in str(caught.value) and "prune_method='magnitude'" in str(caught.value)

    head = nn.Sequential(nn.Linear(64, 32), nn.ReLU()).eval()
    reason = structured_pruning_check(head, None)
    assert reason is not None and reason.startswith("no prunable layer pair")
    assert "'0' output reaches ReLU '1'" not in reason and "model's output" in reason
    model = load_model(head, digits[1][:2])
    with pytest.raises(UnsupportedError, match="no prunable layer pair"):
        get_recipe("prune-structured").apply(model, Context(example=model.example))


def test_probe_with_feeds_leaves_a_training_model_untouched(digits):
    model = cnn().train()
    before = model[1].running_mean.clone()
    assert structured_pruning_check(model, {"input": images(digits, 4)}) is None
    assert model.training and model[1].training
    assert torch.equal(model[1].running_mean, before)


def train_cnn(digits):
    """3 epochs of Adam (about 0.95 accuracy); one thread: convolutions this small ran 10×
    slower on two threads of a busy 2-core machine (3.3 s against 0.33 s)."""
    Xtr, _, ytr, _ = digits
    torch.manual_seed(0)
    model = cnn(width=16)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = torch.from_numpy(Xtr.reshape(-1, 1, 8, 8)), torch.from_numpy(ytr.astype(np.int64))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(3):
            for i in range(0, len(x), 64):
                opt.zero_grad()
                F.cross_entropy(model(x[i : i + 64]), y[i : i + 64]).backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def test_compress_prunes_a_cnn_end_to_end(digits):
    model = train_cnn(digits)
    X, y = images(digits), digits[3]
    pkg = nimbleml.compress(model, prune=0.3, quantize=None, val=(X, y), max_drop=0.15,
                            benchmark_time_s=0.05)  # fmt: skip
    m = pkg.manifest
    assert not pkg.using_baseline and m["fallback"] is None
    step = next(s for s in m["recipe"] if s["step"] == "prune-structured")
    assert step["params"]["layers"] == 2 and step["params"]["units_removed"] == 5 + 10
    assert m["model"]["size_bytes"] < m["baseline"]["size_bytes"] * 0.8
    assert m["validation"]["drop"] <= 0.15
    assert pkg.predict(X).shape == (len(X), 10)
