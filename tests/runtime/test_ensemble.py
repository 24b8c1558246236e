import numpy as np
import pytest
import torch

import nimbleml
from nimbleml.errors import ConfigError
from nimbleml.runtime import EnsemblePredictor, OptimizedPredictor


@pytest.fixture(scope="module")
def members(digits):
    from nimbleml.demo import train_mlp

    Xtr, Xte, ytr, yte = digits
    return [
        nimbleml.compress(
            torch.nn.Sequential(
                train_mlp(Xtr, ytr, hidden=32, epochs=6, seed=s), torch.nn.Softmax(-1)
            ),
            quantize=None,
            val=(Xte, yte),
            benchmark_time_s=0.01,
        )
        for s in range(3)
    ]


def test_mean_fusion_averages_member_scores(members, digits):
    Xte, yte = digits[1], digits[3]
    with EnsemblePredictor(members, fusion="mean", parallel=False) as ens:
        out = ens.predict(Xte)
    each = np.stack([m.predict(Xte) for m in members])
    assert np.allclose(out.scores, each.mean(axis=0), atol=1e-6)
    assert out.members.shape == (3, len(Xte), 10)
    assert np.array_equal(out.labels, out.scores.argmax(1))
    assert np.allclose(out.uncertainty, each.std(axis=0).mean(axis=-1), atol=1e-6)
    assert (out.labels == yte).mean() > 0.7


def test_parallel_gives_the_same_answer_and_picks_a_mode(members, digits):
    Xte = digits[1][:64]
    with (
        EnsemblePredictor(members, parallel=True) as par,
        EnsemblePredictor(members, parallel=False) as seq,
    ):
        a, b = par.predict(Xte), seq.predict(Xte)
        # the members are ONNX packages with the same input: fused is a candidate too
        assert par.mode in ("parallel", "sequential", "fused")
        assert set(par.timings_ms) == {"parallel", "sequential", "fused"}
        assert seq.mode == "sequential" and seq.fused is None
    assert np.allclose(a.scores, b.scores, atol=1e-5)


def test_vote_weighted_and_uncertainty_weighted(members, digits):
    Xte = digits[1][:50]
    each = np.stack([m.predict(Xte) for m in members])
    with EnsemblePredictor(members, fusion="vote", parallel=False) as ens:
        vote = ens.predict(Xte)
    votes = each.argmax(-1)
    agree = (votes == vote.labels).mean(axis=0)
    assert np.allclose(vote.uncertainty, 1 - agree)
    assert np.allclose(vote.scores.sum(axis=1), 1.0)
    with EnsemblePredictor(members, fusion="weighted", weights=[1, 0, 0], parallel=False) as ens:
        assert np.allclose(ens.predict(Xte).scores, each[0], atol=1e-6)
    with EnsemblePredictor(members, fusion="uncertainty_weighted", parallel=False) as ens:
        uw = ens.predict(Xte).scores
    ent = -(np.clip(each, 1e-12, 1) * np.log(np.clip(each, 1e-12, 1))).sum(-1)
    w = 1 / (ent + 1e-6)
    w = w / w.sum(0)
    assert np.allclose(uw, (w[..., None] * each).sum(0), atol=1e-5)


def test_monte_carlo_dropout(digits):
    Xte = digits[1][:20]
    torch.manual_seed(0)
    nets = [
        torch.nn.Sequential(
            torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Dropout(0.5), torch.nn.Linear(32, 3)
        ).eval()
        for _ in range(2)
    ]
    with EnsemblePredictor(nets, mc_samples=8, parallel=False, example_inputs=Xte) as ens:
        out = ens.predict(Xte)
        plain = EnsemblePredictor(nets, parallel=False, example_inputs=Xte).predict(Xte)
    assert out.uncertainty.shape == (20,)
    assert np.all(out.uncertainty > plain.uncertainty)  # MC variance adds to the spread
    assert not any(m.training for n in nets for m in n.modules())  # eval mode restored


def test_ensemble_arguments(members, pipeline, digits):
    with pytest.raises(ConfigError, match="at least 2 members"):
        EnsemblePredictor(members[:1])
    with pytest.raises(ConfigError, match="choose one of: mean, vote"):
        EnsemblePredictor(members, fusion="max")
    with pytest.raises(ConfigError, match="one weight per member"):
        EnsemblePredictor(members, fusion="weighted", weights=[1, 2])
    with pytest.raises(ConfigError, match="positive sum"):
        EnsemblePredictor(members, fusion="weighted", weights=[0, 0, 0])
    with pytest.raises(ConfigError, match="weights apply"):
        EnsemblePredictor(members, weights=[1, 1, 1])
    with pytest.raises(ConfigError, match="dropout"):
        EnsemblePredictor(members, mc_samples=4)
    mixed = EnsemblePredictor([OptimizedPredictor(pipeline), members[0]], parallel=False)
    assert mixed.predict(digits[1][:5]).scores.shape == (5, 10)  # sklearn probabilities + softmax


def _dropout_net(seed: int):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Dropout(0.5), torch.nn.Linear(16, 3)
    ).eval()


def test_monte_carlo_dropout_is_honest_about_what_can_run_it(members, digits, tmp_path):
    Xte = digits[1][:8]
    with pytest.raises(ConfigError, match=r"member 0 \(.*\) is a onnx model"):
        EnsemblePredictor(members, mc_samples=4)
    traced = [torch.jit.trace(_dropout_net(s), torch.from_numpy(Xte)) for s in range(2)]
    with pytest.raises(ConfigError, match="traced in eval mode"):
        EnsemblePredictor(traced, mc_samples=4, example_inputs=Xte)
    nodrop = torch.jit.script(torch.nn.Sequential(torch.nn.Linear(64, 3)).eval())
    with pytest.raises(ConfigError, match="member 1 .* has no dropout"):
        EnsemblePredictor([torch.jit.script(_dropout_net(0)), nodrop], mc_samples=4,
                          example_inputs=Xte)  # fmt: skip
    scripted = [torch.jit.script(_dropout_net(s)) for s in range(2)]
    with EnsemblePredictor(scripted, mc_samples=6, example_inputs=Xte) as ens:
        out = ens.predict(Xte)
        assert ens.fused is None and "cannot be fused" in (ens.fused_unavailable or "")
    assert out.uncertainty.shape == (8,) and np.all(out.uncertainty > 0)


def test_torch_and_sklearn_members_fuse_across_opsets(members, pipeline, digits):
    """torch export (ai.onnx 17, ONNX Runtime's fused Gemms) + skl2onnx (ai.onnx 22 declared
    but unused, ai.onnx.ml 1) in one graph: the opsets each domain is used at."""
    import onnx

    from nimbleml.models.onnx_model import OnnxModel
    from nimbleml.runtime import FusedEnsemble

    Xte, yte = digits[1], digits[3]
    proto = members[0].model.proto()  # rename its input 'input' to the pipeline's 'X'
    proto.graph.input[0].name = "X"
    for node in proto.graph.node:
        node.input[:] = ["X" if name == "input" else name for name in node.input]
    torch_member = OnnxModel(proto.SerializeToString())
    sk = nimbleml.compress(pipeline, quantize=None, val=(Xte, yte), benchmark_time_s=0.01)
    fused = FusedEnsemble([torch_member, sk])
    opsets = {o.domain: o.version for o in onnx.load_from_string(fused.data).opset_import}
    assert opsets[""] == 17 and opsets["ai.onnx.ml"] == 1
    np.testing.assert_allclose(fused(Xte)[0], members[0].predict(Xte), atol=1e-6)
    with (
        EnsemblePredictor([torch_member, sk], mode="fused") as one,
        EnsemblePredictor([torch_member, sk], mode="sequential") as two,
    ):
        a, b = one.predict(Xte), two.predict(Xte)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)
    assert (a.labels == yte).mean() > 0.9
