"""Small models as OpenVINO packages and IRs (the 'openvino' extra; every test file here
skips without it)."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def mlp_onnx(mlp, digits):
    """The digits MLP as a verified ONNX model (the baseline OpenVINO reads)."""
    from nimbleml.compress.pipeline import convert_verified
    from nimbleml.models import load_model
    from nimbleml.verify import variants

    source = load_model(mlp, digits[1][:16])
    model, _ = convert_verified(source, variants(source.feeds(digits[1])))
    return model


@pytest.fixture(scope="session")
def ov_packages(tmp_path_factory, mlp, digits):
    """{"fp32": path, "int8": path}: the MLP compressed with runtime="openvino"."""
    import nimbleml

    _, Xte, _, yte = digits
    folder = tmp_path_factory.mktemp("ov")
    return {
        name: nimbleml.compress(
            mlp, quantize=q, val=(Xte, yte), runtime="openvino", benchmark_time_s=0.01
        ).save(folder / f"{name}.nimble")
        for name, q in (("fp32", None), ("int8", "int8"))
    }


@pytest.fixture(scope="session")
def encoder_onnx(encoder, tokens):
    """The tiny encoder exported with torch.export (the exporter that keeps the sequence
    axis dynamic), checked against PyTorch on padded tokens."""
    from nimbleml.models import load_model
    from nimbleml.verify import check, variants

    source = load_model(encoder, tokens)
    onnx_model = source.to_onnx(source.feeds(tokens), exporter="dynamo")
    check(source.run, onnx_model.run, variants(source.feeds(tokens)), what="ONNX")
    return source, onnx_model


@pytest.fixture(scope="session")
def cnn(digits):
    """A tiny CNN on the 8x8 digit images: (torch model, images)."""
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 8, 3),
        torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10),
    ).eval()  # fmt: skip
    images = np.ascontiguousarray(digits[1].reshape(-1, 1, 8, 8))
    return net, images
