"""Tiny random BERT classifiers and SparseDiffs on them, for the interop tests (no downloads)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import BertConfig, BertForSequenceClassification

from deftx.ops import topk_mask
from deftx.sft import SparseDiff


def tiny_bert(seed: int = 0, **overrides) -> BertForSequenceClassification:
    values = dict(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
                  max_position_embeddings=20, num_labels=3)
    values.update(overrides)
    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(**values)).eval()


def random_diff(model, count: int, *, seed: int = 1, body: Callable[[str], bool] = lambda n: True,
                head: bool = False, **fields) -> SparseDiff:
    """Top-k entries of a random perturbation of ``model``'s non-head parameters accepted by ``body``."""
    gen = torch.Generator().manual_seed(seed)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    tuned = {n: t + 0.05 * torch.randn(t.shape, generator=gen) for n, t in base.items()}
    names = [n for n in base if not n.startswith("classifier") and body(n)]
    masks = topk_mask([tuned[n] - base[n] for n in names], count)
    dense = [n for n in base if n.startswith("classifier")] if head else ()
    return SparseDiff.from_states(base, tuned, dict(zip(names, masks, strict=True)), dense, **fields)


def logits(model, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=input_ids).logits


def token_ids(seed: int = 2, shape: tuple[int, int] = (4, 10), vocab: int = 64) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))
