"""nimbleml.distill and nimbleml.students (issue 13): the T^2 loss against a hand
computation, students shrunk from MLP / CNN / encoder teachers with the teacher's weights,
the teacher's outputs cached (and invalidated) or run online under random augmentation,
feature distillation through a learned projection, a package as teacher, and the report."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import nimbleml
from nimbleml.distill import KDLoss, shrink
from nimbleml.distill import teacher as teachers
from nimbleml.errors import ConfigError, UnsupportedError
from tests.conftest import make_encoder, token_batch

F = torch.nn.functional


def mlp(width: int = 256, hidden: int = 3) -> torch.nn.Module:
    layers: list[torch.nn.Module] = [torch.nn.Linear(64, width), torch.nn.ReLU()]
    for _ in range(hidden - 1):
        layers += [torch.nn.Linear(width, width), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers, torch.nn.Linear(width, 10))


@pytest.fixture(scope="module")
def teacher(data):
    torch.manual_seed(0)
    return nimbleml.train(mlp(), data[0], epochs=8, lr=3e-3, dataloader={}).model


# -- the loss ------------------------------------------------------------------------------
def test_the_soft_term_is_t_squared_kl_and_the_hard_term_cross_entropy():
    torch.manual_seed(0)
    s, t, y = torch.randn(16, 7), torch.randn(16, 7), torch.randint(0, 7, (16,))
    T = 3.0
    p = np.exp(t.numpy() / T) / np.exp(t.numpy() / T).sum(1, keepdims=True)
    q = np.exp(s.numpy() / T) / np.exp(s.numpy() / T).sum(1, keepdims=True)
    by_hand = T**2 * float(np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1)))
    packed = torch.cat([y[:, None].float(), t], 1)
    soft_only = KDLoss(T, 1.0, 7, False, False, 0.0)(s, packed)
    assert abs(float(soft_only) - by_hand) < 1e-5
    hard_only = KDLoss(T, 0.0, 7, False, False, 0.0)(s, packed)
    assert abs(float(hard_only) - float(F.cross_entropy(s, y))) < 1e-6
    half = KDLoss(T, 0.5, 7, False, False, 0.0)(s, packed)
    assert abs(float(half) - (0.5 * by_hand + 0.5 * float(F.cross_entropy(s, y)))) < 1e-5
    # validation targets are the labels alone: the task loss
    assert abs(float(KDLoss(T, 0.5, 7, False, False, 0.0)(s, y)) - float(hard_only)) < 1e-6
    # top-k with every class kept is the full loss (renormalised over the same classes)
    idx = torch.arange(7).repeat(16, 1)
    topk = KDLoss(T, 1.0, 7, True, False, 0.0)(s, torch.cat([packed, idx.float()], 1))
    assert abs(float(topk) - by_hand) < 1e-5


# -- students ------------------------------------------------------------------------------
def test_shrink_an_mlp_keeps_the_strongest_units_of_the_teacher():
    torch.manual_seed(0)
    teacher = mlp(256, hidden=4)
    student = shrink(teacher, width=0.5, depth=0.5)
    linears = [m for m in student if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [128, 128, 10]  # 2 of 4 hidden, half wide
    assert student(torch.randn(5, 64)).shape == (5, 10)
    rows = teacher[0].weight.norm(dim=1).topk(128).indices.sort().values
    assert torch.equal(linears[0].weight, teacher[0].weight[rows])
    assert torch.equal(linears[0].bias, teacher[0].bias[rows])
    assert sum(p.numel() for p in student.parameters()) < 0.2 * sum(
        p.numel() for p in teacher.parameters())  # fmt: skip
    assert teacher[0].out_features == 256  # the teacher is not changed


def test_shrink_a_cnn_and_an_encoder():
    nn = torch.nn
    torch.manual_seed(0)
    cnn = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 64, 10),
    )  # fmt: skip
    small = shrink(cnn, width=0.5, depth=0.5)
    convs = [m for m in small if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 8] and small[-1].in_features == 8 * 64
    assert small(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    keep = cnn[0].weight.flatten(1).norm(dim=1).topk(8).indices.sort().values
    assert torch.equal(convs[0].weight, cnn[0].weight[keep])
    enc = make_encoder(layers=4)
    student = shrink(enc, width=0.5, depth=0.5)
    assert len(student.enc.layers) == 2
    assert torch.equal(
        student.enc.layers[1].self_attn.in_proj_weight, enc.enc.layers[2].self_attn.in_proj_weight
    )  # layers 0 and 2, as DistilBERT
    assert student.enc.layers[0].linear1.out_features == 32
    batch = {k: torch.from_numpy(v) for k, v in token_batch(4).items()}
    assert student(**batch).shape == (4, 3)
    with pytest.raises(ConfigError, match="width must be a share in"):
        shrink(cnn, width=0)
    with pytest.raises(UnsupportedError, match="write the student yourself"):
        shrink(nn.GRU(4, 4))


def _resnet():
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride=1):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.downsample = None if stride == 1 and cin == cout else nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))  # fmt: skip

        def forward(self, x):
            out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
            return torch.relu(out + (x if self.downsample is None else self.downsample(x)))

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(1, 8, 3, padding=1)
            self.layer1 = nn.Sequential(Block(8, 8), Block(8, 8), Block(8, 8))
            self.layer2 = nn.Sequential(Block(8, 16, 2), Block(16, 16), Block(16, 16))
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            h = self.layer2(self.layer1(torch.relu(self.stem(x))))
            return self.fc(h.mean(dim=(2, 3)))

    return ResNet()


def test_shrink_a_residual_cnn_keeps_the_skip_channels():
    torch.manual_seed(0)
    teacher = _resnet().eval()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = shrink(teacher, width=0.5, depth=0.5).eval()
    assert len(student.layer1) == 2 and len(student.layer2) == 2  # ceil(3 / 2) of each stage
    assert student.layer2[0].downsample is not None  # the first block, which downsamples, stays
    assert [b.conv1.out_channels for b in (*student.layer1, *student.layer2)] == [4, 4, 8, 8]
    assert [b.conv2.out_channels for b in (*student.layer1, *student.layer2)] == [8, 8, 16, 16]
    keep = teacher.layer1[0].conv1.weight.flatten(1).norm(dim=1).topk(4).indices.sort().values
    assert torch.equal(student.layer1[0].conv1.weight, teacher.layer1[0].conv1.weight[keep])
    assert torch.equal(student.layer1[0].bn1.running_var, teacher.layer1[0].bn1.running_var[keep])
    third = teacher.layer1[2].conv1.weight
    keep = third.flatten(1).norm(dim=1).topk(4).indices.sort().values
    assert torch.equal(student.layer1[1].conv1.weight, third[keep])  # blocks 0 and 2 kept
    x = torch.randn(2, 1, 8, 8)
    assert student(x).shape == teacher(x).shape == (2, 10)
    assert sum(p.numel() for p in student.parameters()) < sum(
        p.numel() for p in teacher.parameters()) / 2  # fmt: skip
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())


# -- the teacher's outputs -----------------------------------------------------------------
def test_the_cache_is_keyed_by_teacher_and_data(teacher, data, tmp_path):
    (X, y), _ = data
    first = teachers.compute(teacher, (X, y), cache_dir=tmp_path)
    assert first.path is not None and not first.reused and first.values.shape == (1200, 10)
    expected = teacher(torch.from_numpy(X)).detach().numpy()
    assert np.allclose(np.asarray(first.values), expected, atol=1e-5)
    again = teachers.compute(teacher, (X, y), cache_dir=tmp_path)
    assert again.reused and again.key == first.key
    changed = mlp()
    changed.load_state_dict(teacher.state_dict())
    with torch.no_grad():
        changed[0].bias[0] += 0.01
    assert not teachers.compute(changed, (X, y), cache_dir=tmp_path).reused
    assert not teachers.compute(teacher, (X[:-1], y[:-1]), cache_dir=tmp_path).reused
    top = teachers.compute(teacher, (X, y), top_k=3)
    assert top.values.shape == (1200, 3) and top.indices is not None
    assert np.array_equal(top.indices[:, 0], expected.argmax(1))


class Jittered(torch.utils.data.Dataset):
    """Random noise on every read: what augmentation does."""

    def __init__(self, X, y):
        self.X, self.y = torch.from_numpy(X), torch.from_numpy(y)

    def __len__(self):
        return len(self.X)

    def __getitem__(self, i):
        return self.X[i] + 0.05 * torch.randn(64), self.y[i]


def test_random_augmentation_runs_the_teacher_online(teacher, data):
    (X, y), val = data
    jittered = Jittered(X[:300], y[:300])
    res = nimbleml.distill(teacher, shrink(teacher), jittered, val, epochs=1, baseline=False,
                           temperature=2.0, alpha=0.5,
                           compare_models=False, dataloader={}, views=None)  # fmt: skip
    assert res.cache.startswith("online: the data has random transforms")
    with pytest.raises(ConfigError, match="cached teacher outputs would be stale"):
        nimbleml.distill(teacher, shrink(teacher), jittered, val, cache_teacher=True, epochs=1,
                         views=None)  # fmt: skip


def test_bad_options_are_named(teacher, data):
    train, val = data
    for options, words in [
        ({"temperature": 0}, "temperature must be a number > 0"),
        ({"alpha": 2}, "alpha must be in [0, 1]"),
        ({"cache_teacher": "yes"}, "cache_teacher must be 'auto', True or False"),
        ({"features": [("9", "0")]}, "the student has no module '9'"),
        ({"epochs": 0}, "epochs must be >= 1"),
    ]:
        with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("]", r"\]")):
            nimbleml.distill(teacher, shrink(teacher), train, val, **options)


# -- end to end ----------------------------------------------------------------------------
def test_distill_beside_the_student_alone_and_into_a_package(teacher, data, tmp_path):
    train, val = data
    torch.manual_seed(1)
    student = shrink(teacher, width=0.125, depth=0.34)
    res = nimbleml.distill(teacher, student, train, val, temperature=4.0, alpha=0.7, epochs=10,
                           lr=3e-3, dataloader={}, views=None)  # fmt: skip
    assert res.cache == "cached in memory"
    names = [r.name for r in res.report.rows]
    assert names == ["teacher", "student (no teacher)", "student (distilled)"]
    kd, alone = res.report.row("student (distilled)"), res.report.row("student (no teacher)")
    assert kd.metric is not None and kd.metric > 0.8 and alone.metric is not None
    assert res.report.verdict.startswith("distillation")  # helped, or plainly did not
    assert kd.parameters < res.report.row("teacher").parameters / 10
    assert all(r.n[1] >= 200 and r.p50_ms[1] > 0 for r in res.report.rows)
    table = res.report.table()
    assert "T=4, alpha=0.7" in table and "student (distilled)" in table
    found = res.optimize(max_drop=0.02, time_budget_s=20)
    assert len(res.report.rows) == 4 and res.report.rows[3].metric is not None
    pkg = found.best.save(tmp_path / "student.nimble")
    # a package as the teacher: its outputs through ONNX Runtime, cached like a module's
    again = nimbleml.distill(str(pkg), shrink(teacher, 0.125, 0.34), train, val, epochs=1,
                             temperature=2.0, alpha=0.5, baseline=False, compare_models=False,
                             dataloader={}, views=None)  # fmt: skip
    assert again.cache == "cached in memory" and again.history[0]["val_metric"] > 0.3


def test_feature_distillation_learns_a_projection(teacher, data):
    train, val = data
    student = shrink(teacher, width=0.25, depth=0.34)  # 64 wide against the teacher's 256
    res = nimbleml.distill(teacher, student, train, val, features=[("1", "1")], epochs=2,
                           temperature=2.0, alpha=0.5, baseline=False, compare_models=False,
                           dataloader={}, views=None)  # fmt: skip
    assert res.cache.startswith("online: feature distillation")
    assert res.history[-1]["val_metric"] > 0.5
    assert not any("projections" in k for k in res.student.state_dict())  # the student alone


def test_shrink_a_hugging_face_style_encoder_and_distill_its_features():
    """encoder.layer[i].intermediate.dense / output.dense, as Hugging Face's BERT names them;
    the student's hidden states are matched to the teacher's (same width: no projection)."""
    nn = torch.nn

    class Intermediate(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.dense = nn.Linear(dim, 4 * dim)

        def forward(self, h):
            return torch.relu(self.dense(h))

    class Output(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.dense = nn.Linear(4 * dim, dim)

        def forward(self, h, x):
            return x + self.dense(h)

    class Layer(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.intermediate, self.output = Intermediate(dim), Output(dim)

        def forward(self, x):
            return self.output(self.intermediate(x), x)

    class BertEncoder(nn.Module):
        def __init__(self, dim, n):
            super().__init__()
            self.layer = nn.ModuleList(Layer(dim) for _ in range(n))

        def forward(self, x):
            for layer in self.layer:
                x = layer(x)
            return x

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.encoder, self.head = (
                nn.Linear(64, 16),
                BertEncoder(16, 4),
                nn.Linear(16, 10),
            )

        def forward(self, x):
            return self.head(self.encoder(self.embed(x)))

    torch.manual_seed(0)
    teacher = Model().eval()
    student = shrink(teacher, width=0.5, depth=0.5)
    assert len(student.encoder.layer) == 2
    assert student.encoder.layer[0].intermediate.dense.out_features == 32
    assert torch.equal(
        student.encoder.layer[1].output.dense.bias, teacher.encoder.layer[2].output.dense.bias
    )  # layers 0 and 2 kept
    assert student(torch.randn(3, 64)).shape == (3, 10)
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = (X / 16).astype(np.float32)
    res = nimbleml.distill(teacher, student, (X[:400], y[:400]), (X[1400:], y[1400:]),
                           features=[("encoder", "encoder")], epochs=1, baseline=False,
                           temperature=2.0, alpha=0.5, compare_models=False, dataloader={},
                           views=None)  # fmt: skip
    assert res.cache.startswith("online: feature distillation")
    assert np.isfinite(res.history[0]["train_loss"])
