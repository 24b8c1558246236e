"""GPU paths: fp16 packages on the CUDA execution provider, torch models on CUDA.
Skipped cleanly on machines without an NVIDIA GPU (see conftest.py)."""

import numpy as np
import pytest

import nimbleml

pytestmark = pytest.mark.gpu


def test_fp16_package_runs_on_cuda_execution_provider(mlp, digits):
    _, Xte, _, yte = digits
    pkg = nimbleml.compress(mlp, quantize="fp16", val=(Xte, yte), max_drop=0.01)
    loaded = nimbleml.load(pkg.save(pkg.directory.parent / "gpu-fp16.nimble"))
    assert loaded.model.session.get_providers()[0] == "CUDAExecutionProvider"
    assert pkg.manifest["recipe"][0]["params"]["device"] == "cuda"
    ref = loaded.baseline(Xte)[0]
    assert np.mean(loaded.predict(Xte).argmax(1) == ref.argmax(1)) > 0.99


def test_torch_model_on_cuda(mlp, digits):
    import copy

    from nimbleml.models.torch_model import TorchModel

    model = TorchModel(copy.deepcopy(mlp), digits[1][:4], device="cuda")
    cpu = TorchModel(mlp, digits[1][:4])
    assert np.allclose(model(digits[1])[0], cpu(digits[1])[0], atol=1e-4)
