"""Models of real size for the side-by-side benchmarks, built here from random weights (no
download): a BERT-layout sentence encoder and a conv net with BatchNorm, plus digits MLPs."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


def bert_layout_encoder(
    vocab: int = 30522, dim: int = 384, layers: int = 6, heads: int = 12, ffn: int = 1536,
    max_len: int = 512, seed: int = 0, outliers: float = 20.0,
) -> nn.Module:  # fmt: skip
    """A MiniLM-sized sentence encoder in Hugging Face BERT's layout (22.7M parameters at the
    defaults): word + position + token-type embeddings and LayerNorm; per layer separate
    query/key/value Linears, an additive mask bias, softmax, output dense, residual +
    LayerNorm, GELU feed-forward, residual + LayerNorm; masked mean pooling. Weights drawn as
    BERT initialises them (normal, std 0.02). Like BERT's own code it unpacks shapes into
    Python ints, so torch.fx cannot trace it.

    ``outliers``: trained transformers carry a few output channels whose weights are far
    larger than the rest (the residual stream's outlier dimensions); 1 in 64 output channels of
    every Linear is scaled by this factor (1.0: none). One such channel sets a per-tensor int8
    scale for the whole matrix and flattens the others to a few levels, which is how
    per-tensor int8 of a real encoder loses its cosine while per-channel keeps it."""

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.query, self.key, self.value = (nn.Linear(dim, dim) for _ in range(3))
            self.dense, self.norm = nn.Linear(dim, dim), nn.LayerNorm(dim, eps=1e-12)

        def split(self, x: torch.Tensor) -> torch.Tensor:
            b, s, _ = x.shape
            return x.view(b, s, heads, dim // heads).transpose(1, 2)

        def forward(self, h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
            q, k, v = self.split(self.query(h)), self.split(self.key(h)), self.split(self.value(h))
            scores = q @ k.transpose(-1, -2) / math.sqrt(dim // heads) + bias
            ctx = (scores.softmax(-1) @ v).transpose(1, 2).reshape(h.shape)
            return self.norm(h + self.dense(ctx))

    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention = Attention()
            self.intermediate, self.output = nn.Linear(dim, ffn), nn.Linear(ffn, dim)
            self.norm = nn.LayerNorm(dim, eps=1e-12)

        def forward(self, h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
            h = self.attention(h, bias)
            return self.norm(h + self.output(nn.functional.gelu(self.intermediate(h))))

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.word = nn.Embedding(vocab, dim, padding_idx=0)
            self.position, self.token_type = nn.Embedding(max_len, dim), nn.Embedding(2, dim)
            self.norm = nn.LayerNorm(dim, eps=1e-12)
            self.layers = nn.ModuleList(Layer() for _ in range(layers))

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)
            h = self.word(input_ids) + self.position(positions) + self.token_type.weight[0]
            h = self.norm(h)
            bias = (1.0 - attention_mask[:, None, None, :].to(h.dtype)) * -10000.0
            for layer in self.layers:
                h = layer(h, bias)
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            return (h * m).sum(1) / m.sum(1).clamp(min=1e-9)

    torch.manual_seed(seed)
    model = Encoder()
    for module in model.modules():  # BertPreTrainedModel._init_weights
        if isinstance(module, nn.Linear | nn.Embedding):
            module.weight.data.normal_(0.0, 0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()
    generator = torch.Generator().manual_seed(seed + 1)
    for module in model.modules():
        if isinstance(module, nn.Linear):
            rows = torch.randperm(module.out_features, generator=generator)[
                : module.out_features // 64
            ]
            module.weight.data[rows] *= outliers
    return model.eval()


def sentences(
    n: int = 64, length: int = 64, vocab: int = 30522, seed: int = 2
) -> dict[str, np.ndarray]:
    """Padded token batches: each row a random length from 8 to ``length``, pad id 0 where
    the mask is 0, a [CLS]-like id 101 first."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, vocab, size=(n, length)).astype(np.int64)
    mask = np.zeros_like(ids)
    for i in range(n):
        mask[i, : rng.integers(8, length + 1)] = 1
    ids[:, 0] = 101
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask}


def bn_convnet(channels: int = 3, classes: int = 10, width: int = 32, seed: int = 0) -> nn.Module:
    """A conv net with BatchNorm for 32x32 images (CIFAR layout): three Conv-BN-ReLU stages
    (width, 2 width, 4 width channels) with max pooling, global average pooling, a Linear
    head; BatchNorm statistics made non-trivial so folding them is not a no-op."""
    torch.manual_seed(seed)

    def stage(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    model = nn.Sequential(
        *stage(channels, width), nn.MaxPool2d(2),
        *stage(width, 2 * width), nn.MaxPool2d(2),
        *stage(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(4 * width, classes),
    )  # fmt: skip
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()
