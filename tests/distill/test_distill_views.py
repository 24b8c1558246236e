"""Distillation that pays (issue 24): teacher and student see the same view each step
(mixup of rows, crops and flips of images, mixup of token embeddings), rows without labels
labelled by the teacher, temperature and alpha picked by a short search, feature pairs
recorded by shrink, the better of the distilled and the alone student returned, and each bad
input refused before anything trains or is written. Small models, few epochs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import nimbleml
from nimbleml.distill import KDLoss, shrink
from nimbleml.distill.features import PAIRS_ATTR
from nimbleml.distill.loss import KDOutput
from nimbleml.distill.modules import Online
from nimbleml.distill.views import Mix
from nimbleml.errors import ConfigError
from tests.conftest import make_encoder, token_batch

FAST = {"dataloader": {}, "precision": "fp32", "device": "cpu"}
nn = torch.nn


@pytest.fixture(scope="module")
def teacher(data):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                          nn.Linear(128, 10))  # fmt: skip
    return nimbleml.train(model, data[0], epochs=6, lr=3e-3, **FAST).model


class Seen(nn.Module):
    """A net that keeps what it was given (to compare the teacher's and the student's view)."""

    def __init__(self, net):
        super().__init__()
        self.net, self.seen = net, []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.net(x)


# -- views ---------------------------------------------------------------------------------
def test_teacher_and_student_see_the_same_mixed_view_of_vectors_and_images():
    torch.manual_seed(0)
    for x, spec in [(torch.rand(16, 64), "auto"), (torch.rand(8, 1, 8, 8), "mixup+crop+flip")]:
        width = x[0].numel()
        body = nn.Sequential(nn.Flatten(), nn.Linear(width, 10))
        teacher, student = Seen(body), Seen(nn.Sequential(nn.Flatten(), nn.Linear(width, 10)))
        online = Online(student, teacher, [], "mse", x, views=spec).train()
        out = online(x)
        assert isinstance(out, KDOutput) and out.mix is not None
        s_view, t_view = student.seen[-1], teacher.seen[-1]
        assert torch.equal(s_view, t_view)  # one view, both nets
        assert not torch.equal(s_view, x)  # and not the batch as it was
        assert torch.allclose(out.teacher, body(s_view))  # the teacher's outputs on the view
        if x.dim() == 2:  # mixup: row i between rows i and perm[i], by lam[i]
            lam = out.mix.lam[:, None]
            assert torch.allclose(s_view, lam * x + (1 - lam) * x[out.mix.perm], atol=1e-6)
        online.eval()
        online(x)
        assert torch.equal(student.seen[-1], x)  # validation sees the batch as it is
        online.close()


def test_token_batches_mix_the_embeddings_of_both_nets_alike():
    teacher = make_encoder(layers=2)
    student = shrink(teacher, width=0.5, depth=0.5)
    batch = {k: torch.from_numpy(v) for k, v in token_batch(8).items()}
    online = Online(student, teacher, [], "mse", batch, views="auto").train()
    got = {}
    for name, net in (("s", student), ("t", teacher)):
        net.emb.register_forward_hook(lambda m, i, o, name=name: got.__setitem__(name, o))
    torch.manual_seed(3)
    out = online(**batch)
    s_emb, t_emb = got["s"], got["t"]
    with torch.no_grad():
        plain = teacher.emb(batch["input_ids"])  # (the hooks mix nothing outside a step)
    lam = out.mix.lam[:, None, None]
    mixed = lam * plain + (1 - lam) * plain[out.mix.perm]
    assert torch.allclose(got["t"], plain)
    assert torch.allclose(t_emb, mixed, atol=1e-6)  # the teacher's embeddings mixed
    assert torch.allclose(s_emb, t_emb, atol=1e-6)  # the same mix in the student
    assert online.views.describe() == "mixup of the embeddings"
    online.close()  # the hooks are gone (but this test's): the student runs as it was
    assert len(student.emb._forward_hooks) == 1 and len(teacher.emb._forward_hooks) == 1
    got.clear()
    student.eval()(**batch)
    assert torch.allclose(got["s"], student.emb(batch["input_ids"]))


def test_the_mixed_task_loss_and_rows_without_labels():
    torch.manual_seed(0)
    s, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, -1, -1])
    F = torch.nn.functional
    loss = KDLoss(2.0, 0.0, 0, False, False, 0.0)
    labelled = F.cross_entropy(s[:4], y[:4])
    assert torch.allclose(loss(KDOutput(s, torch.randn(6, 4), None), y), labelled)
    mix = Mix(perm=torch.tensor([1, 0, 3, 2, 5, 4]), lam=torch.full((6,), 0.25))
    full = torch.tensor([0, 1, 2, 3, 0, 1])
    ce_a = F.cross_entropy(s, full, reduction="none")
    ce_b = F.cross_entropy(s, full[mix.perm], reduction="none")
    by_hand = (0.25 * ce_a[:4] + 0.75 * ce_b[:4]).sum() / 4  # rows 4, 5: no label either side
    assert torch.allclose(loss(KDOutput(s, torch.randn(6, 4), None, mix), y), by_hand)


# -- unlabeled rows, search, keep ----------------------------------------------------------
def test_unlabeled_rows_are_used_and_counted(teacher, data):
    (X, y), val = data
    seen = []

    def count(event, info):
        if event == "step_end":
            seen.append(info["samples"])

    res = nimbleml.distill(teacher, shrink(teacher, 0.25, 0.5), (X[:100], y[:100]), val,
                           unlabeled=X[100:600], temperature=2.0, alpha=0.5, views=None,
                           epochs=1, callbacks=[count], **FAST)  # fmt: skip
    assert max(seen) == 600  # the 500 unlabeled rows were trained on
    assert res.report.unlabeled == 500
    assert "unlabeled rows labelled by the teacher: 500" in res.report.table()
    assert res.baseline_history[0]["epoch"] == 1  # the student alone: the 100 labelled rows

    class Rows(torch.utils.data.Dataset):  # a Dataset of (tensor, int), run online with views
        def __len__(self):
            return 100

        def __getitem__(self, i):
            return torch.from_numpy(X[i]), int(y[i])

    seen.clear()
    res = nimbleml.distill(teacher, shrink(teacher, 0.25, 0.5), Rows(), val, views="mixup",
                           unlabeled=X[100:300], temperature=2.0, alpha=0.5, epochs=1,
                           callbacks=[count], baseline=False, compare_models=False,
                           **FAST)  # fmt: skip
    assert max(seen) == 300 and res.report.unlabeled == 200


def test_the_search_picks_temperature_and_alpha_and_reports_them(teacher, data):
    (X, y), val = data
    res = nimbleml.distill(teacher, shrink(teacher, 0.25, 0.5), (X[:300], y[:300]), val,
                           temperature=2.0, epochs=2, baseline=False, compare_models=False,
                           **FAST)  # fmt: skip
    search = res.report.search
    assert search is not None and search["held_out"] == 60 and search["epochs"] == 2
    assert [t["alpha"] for t in search["tried"]] == [0.9, 0.5]  # no views: Hinton's alphas
    best = max(search["tried"], key=lambda t: t["score"])
    assert search["score"] == best["score"] and res.report.alpha == search["alpha"]
    assert "chosen by a search on 60 held-out training rows" in res.report.table()
    fixed = nimbleml.distill(teacher, shrink(teacher, 0.25, 0.5), (X[:100], y[:100]), val,
                             temperature=2.0, alpha=1.0, epochs=1, baseline=False,
                             compare_models=False, views="auto", **FAST)  # fmt: skip
    assert fixed.report.search is None and fixed.report.views == "mixup"


def test_keep_best_returns_the_student_trained_alone_when_it_is_better(data):
    (X, y), val = data
    torch.manual_seed(0)
    useless = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))  # never trained
    options = dict(temperature=1.0, alpha=1.0, views=None, epochs=3, lr=3e-3, **FAST)
    res = nimbleml.distill(useless, shrink(useless, 0.5, 1.0), (X[:400], y[:400]), val,
                           **options)  # fmt: skip
    assert res.returned == "alone" and res.student is res.baseline
    assert res.report.returned == "alone"
    assert res.baseline_history[-1]["val_metric"] > res.history[-1]["val_metric"]
    assert "returned: the student trained alone" in res.report.table()
    assert [r.name for r in res.report.rows] == [
        "teacher", "student (no teacher)", "student (distilled)"]  # fmt: skip
    kept = nimbleml.distill(useless, shrink(useless, 0.5, 1.0), (X[:400], y[:400]), val,
                            keep="distilled", compare_models=False, **options)  # fmt: skip
    assert kept.returned == "distilled" and kept.student is kept.distilled


# -- feature pairs -------------------------------------------------------------------------
def cnn():
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 16, 10),
    )  # fmt: skip


def test_shrink_records_the_feature_pairs_and_distill_uses_them(teacher, data):
    mlp = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                        nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 10))  # fmt: skip
    small = shrink(mlp, width=0.5, depth=2 / 3)  # hidden layers 0 and 4 kept
    assert getattr(small, PAIRS_ATTR) == [("1", "1"), ("3", "5")]
    assert isinstance(small[3], nn.Tanh)  # the kept layer's own activation
    big = cnn()
    student = shrink(big, width=0.5, depth=0.5)  # the second 8->8 convolution dropped
    assert getattr(student, PAIRS_ATTR) == [("3", "5"), ("6", "8")]  # what reaches the pools
    assert isinstance(student[4], nn.MaxPool2d) and isinstance(student[7], nn.Flatten)
    enc = shrink(make_encoder(layers=4), 0.5, 0.5)
    assert getattr(enc, PAIRS_ATTR) == [("enc.layers.0", "enc.layers.0"),
                                        ("enc.layers.1", "enc.layers.2")]  # fmt: skip
    (X, y), val = data
    res = nimbleml.distill(teacher, shrink(teacher, 0.25, 0.5), (X[:200], y[:200]), val,
                           temperature=2.0, alpha=1.0, epochs=1, baseline=False,
                           features="auto", compare_models=False, **FAST)  # fmt: skip
    assert any("pair(s) shrink recorded matched (1~1)" in n for n in res.report.notes)
    images = torch.rand(40, 1, 8, 8)
    labels = torch.randint(0, 10, (40,))
    res = nimbleml.distill(big, student, (images, labels), None, temperature=2.0, alpha=1.0,
                           epochs=1, baseline=False, compare_models=False, features="auto",
                           **FAST)  # fmt: skip
    assert any("2 pair(s)" in n for n in res.report.notes)
    assert not student[3]._forward_hooks and not big[5]._forward_hooks  # hooks removed


# -- bad input: one error naming the value and the fix, nothing written ---------------------
def test_bad_input_is_refused_before_anything_runs(teacher, data, tmp_path):
    (X, y), _ = data
    out = tmp_path / "ck"
    student = shrink(teacher, 0.25, 0.5)
    run = dict(temperature=2.0, alpha=1.0, epochs=1, checkpoint_dir=str(out), cache_dir=out,
               **FAST)  # fmt: skip
    big = cnn()
    cases = [
        ({"unlabeled": X[:50, :32]}, teacher, student, (X[:100], y[:100]),
         r"unlabeled: rows of shape \(32,\) \(32 wide\), but the training rows are \(64,\) "
         r"\(64 wide\); give unlabeled rows with the same columns"),
        ({"unlabeled": (X[:50], y[:50])}, teacher, student, (X[:100], y[:100]),
         "unlabeled= takes the rows alone"),
        ({"features": [("1", "nope")]}, teacher, student, (X[:100], y[:100]),
         r"features \('1', 'nope'\): the teacher has no module 'nope'; give names from "
         r"teacher.named_modules\(\)"),
        ({"features": [("1", "7")]}, big, shrink(big), (torch.rand(20, 1, 8, 8),
                                                       torch.randint(0, 10, (20,))),
         r"features \('1', '7'\): outputs of shapes \(8, 4, 8, 8\) \(student\) and "
         r"\(8, 16, 4, 4\) \(teacher\) cannot be aligned"),
        ({"features": "1~1"}, teacher, student, (X[:100], y[:100]), "features must be 'auto'"),
        ({"keep": "both"}, teacher, student, (X[:100], y[:100]), "keep must be 'best' or"),
        ({"views": "cutmix"}, teacher, student, (X[:100], y[:100]), "views must be one of"),
        ({"cache_teacher": True, "views": "mixup"}, teacher, student, (X[:100], y[:100]),
         "cache_teacher=True with views"),
    ]  # fmt: skip
    for options, t, s, train, words in cases:
        with pytest.raises(ConfigError, match=words):
            nimbleml.distill(t, s, train, None, **{**run, **options})
        assert not out.exists(), options


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors:UserWarning")
def test_encoder_features_when_the_teacher_returns_nested_tensors():
    """An eval-mode torch encoder with enable_nested_tensor gives its layers' outputs as nested
    tensors, padded to the batch's longest row (10 here); the training student keeps all 12."""

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(50, 32)
            layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True, dropout=0.0)
            self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=True)
            self.head = nn.Linear(32, 3)

        def forward(self, input_ids, attention_mask):
            h = self.enc(self.emb(input_ids), src_key_padding_mask=attention_mask == 0)
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            return self.head((h * m).sum(1) / m.sum(1))

    torch.manual_seed(0)
    teacher = Encoder().eval()
    batch = token_batch(64, length=12)
    batch["attention_mask"][:, 10:] = 0
    batch["input_ids"][:, 10:] = 0
    labels = (batch["input_ids"][:, 0] % 3).astype(np.int64)
    res = nimbleml.distill(teacher, shrink(teacher, 1.0, 0.5), (batch, labels), None,
                           features="auto", temperature=2.0, alpha=0.5, epochs=1,
                           baseline=False, compare_models=False, **FAST)  # fmt: skip
    assert np.isfinite(res.history[0]["train_loss"])
