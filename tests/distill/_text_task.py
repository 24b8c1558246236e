"""A synthetic text-classification task and a BERT-layout encoder for it, built here from a
seeded RNG (no download): the recipe of docs/distill.md "A transformer end to end" runs on
them in tests/distill/test_transformer_recipe.py and benchmarks/transformer_recipe.py.

The task: sentences of neutral words with one or three sentiment words, any of them
negated by a "not" right before it; the label is the sign of the sum (positive 1, negative
0), never a tie. A bag of words is not enough (a "not" flips the word after it, so the
order matters), which is what attention is for.

The model is Hugging Face BERT's layout and names (``bert.embeddings.word_embeddings``,
``bert.encoder.layer.N.attention.self.query``, ``...intermediate.dense``,
``...output.dense``, a tanh pooler on [CLS], a ``classifier``), so the same recipe applies
to a ``transformers`` BertForSequenceClassification (with ``return_dict=False`` so it
returns the logits tensor)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

PAD, CLS, NOT = 0, 1, 2


def sentences(n: int, *, length: int = 16, vocab: int = 64, sentiment: int = 8,
              negation: float = 0.35, seed: int = 0) -> dict[str, np.ndarray]:  # fmt: skip
    """``n`` padded rows: ``input_ids`` (int64, [CLS] first, pad 0), ``attention_mask``
    (int64) and ``labels`` (int64, 0/1, balanced). Ids 3 .. 3+sentiment-1 are positive
    words, the next ``sentiment`` negative ones, the rest up to ``vocab`` neutral;
    ``negation``: the chance that a sentiment word has a "not" before it."""
    rng = np.random.default_rng(seed)
    positive = np.arange(3, 3 + sentiment)
    negative = np.arange(3 + sentiment, 3 + 2 * sentiment)
    neutral = np.arange(3 + 2 * sentiment, vocab)
    ids = np.zeros((n, length), np.int64)
    mask = np.zeros((n, length), np.int64)
    labels = np.zeros(n, np.int64)
    for i in range(n):
        want = i % 2  # balanced classes
        while True:
            k = int(rng.choice([1, 3]))
            signs = rng.choice([-1, 1], size=k)
            negated = rng.random(k) < negation
            score = int(np.sum(np.where(negated, -signs, signs)))
            if (score > 0) == bool(want):
                break
        words: list[int] = []
        for s, neg in zip(signs, negated, strict=True):
            if neg:
                words.append(NOT)
            words.append(int(rng.choice(positive if s > 0 else negative)))
        size = int(rng.integers(max(len(words) + 1, length // 3), length))  # tokens after [CLS]
        filler = list(rng.choice(neutral, size=size - len(words)))
        # the sentiment words (with their "not") at random places among the neutral words
        slots = sorted(rng.choice(len(filler) + 1, size=k, replace=True))
        row, start, chunks = [], 0, _chunks(words)
        for slot, chunk in zip(slots, chunks, strict=True):
            row += filler[start:slot] + chunk
            start = slot
        row += filler[start:]
        row = [CLS, *row][:length]
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
        labels[i] = want
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _chunks(words: list[int]) -> list[list[int]]:
    """[NOT, w, v, NOT, u] -> [[NOT, w], [v], [NOT, u]]: a word stays after its "not"."""
    out: list[list[int]] = []
    pending: list[int] = []
    for w in words:
        pending.append(w)
        if w != NOT:
            out.append(pending)
            pending = []
    return out


class TextDataset(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Rows of :func:`sentences` as dicts of tensors: a DataLoader batches them into the
    dict batches (``input_ids``, ``attention_mask``, ``labels``) a Hugging Face Trainer
    takes, and nimbleml.train splits ``labels`` off as the target."""

    def __init__(self, rows: dict[str, np.ndarray]) -> None:
        self.rows = {k: torch.from_numpy(v) for k, v in rows.items()}

    def __len__(self) -> int:
        return len(self.rows["labels"])

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {k: v[i] for k, v in self.rows.items()}


def features(rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The model's inputs of ``rows`` (everything but the labels)."""
    return {k: v for k, v in rows.items() if k != "labels"}


# -- the model: Hugging Face BERT's layout ------------------------------------------------
class BertEmbeddings(nn.Module):
    def __init__(self, vocab: int, dim: int, max_len: int) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, dim, padding_idx=PAD)
        self.position_embeddings = nn.Embedding(max_len, dim)
        self.LayerNorm = nn.LayerNorm(dim, eps=1e-12)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        return self.LayerNorm(self.word_embeddings(input_ids) + self.position_embeddings(positions))


class _Dense(nn.Module):
    """HF's BertSelfOutput / BertOutput: dense, then residual + LayerNorm."""

    def __init__(self, d_in: int, dim: int) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, dim)
        self.LayerNorm = nn.LayerNorm(dim, eps=1e-12)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(residual + self.dense(h))


class BertSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.query, self.key, self.value = (nn.Linear(dim, dim) for _ in range(3))

    def split(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.heads, self.head_dim).transpose(1, 2)

    def forward(self, h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        q, k, v = self.split(self.query(h)), self.split(self.key(h)), self.split(self.value(h))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim) + bias
        return (scores.softmax(-1) @ v).transpose(1, 2).reshape(h.shape)


class BertAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.self = BertSelfAttention(dim, heads)
        self.output = _Dense(dim, dim)

    def forward(self, h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(h, bias), h)


class BertIntermediate(nn.Module):
    def __init__(self, dim: int, ffn: int) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, ffn)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return nn.functional.gelu(self.dense(h))


class BertLayer(nn.Module):
    def __init__(self, dim: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.attention = BertAttention(dim, heads)
        self.intermediate = BertIntermediate(dim, ffn)
        self.output = _Dense(ffn, dim)

    def forward(self, h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        h = self.attention(h, bias)
        return self.output(self.intermediate(h), h)


class BertEncoder(nn.Module):
    def __init__(self, dim: int, heads: int, ffn: int, layers: int) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(dim, heads, ffn) for _ in range(layers))

    def forward(self, h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            h = layer(h, bias)
        return h


class BertModel(nn.Module):
    def __init__(self, vocab: int, dim: int, heads: int, ffn: int, layers: int,
                 max_len: int) -> None:  # fmt: skip
        super().__init__()
        self.embeddings = BertEmbeddings(vocab, dim, max_len)
        self.encoder = BertEncoder(dim, heads, ffn, layers)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # HF's extended attention mask: 0 where attended, a large negative number at padding
        bias = (1.0 - attention_mask[:, None, None, :].float()) * -10000.0
        return self.encoder(self.embeddings(input_ids), bias)


class BertForSequenceClassification(nn.Module):
    """forward(input_ids, attention_mask) -> logits [batch, classes]: the [CLS] hidden state
    through a tanh pooler and a Linear classifier, as BERT's."""

    def __init__(self, vocab: int = 64, dim: int = 64, heads: int = 4, ffn: int = 256,
                 layers: int = 4, max_len: int = 32, classes: int = 2) -> None:  # fmt: skip
        super().__init__()
        self.bert = BertModel(vocab, dim, heads, ffn, layers, max_len)
        self.pooler = nn.Linear(dim, dim)
        self.classifier = nn.Linear(dim, classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.bert(input_ids, attention_mask)
        return self.classifier(torch.tanh(self.pooler(h[:, 0])))


def encoder(seed: int = 0, **sizes: int) -> BertForSequenceClassification:
    """A freshly initialised classifier (BERT's init: normal, std 0.02)."""
    torch.manual_seed(seed)
    model = BertForSequenceClassification(**sizes)
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Embedding):
            module.weight.data.normal_(0.0, 0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()
    return model


def accuracy(predict: Any, rows: dict[str, np.ndarray]) -> float:
    """Share of ``rows`` whose argmax of ``predict(features)`` is the label."""
    out = np.asarray(predict(features(rows)))
    return float((out.argmax(1) == rows["labels"]).mean())
