"""Shared by the SparseDiff tests: tiny BERTs, random SFTs on them, raw rewrites of SFT files."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import BertConfig

from deftx.ops import topk_mask
from deftx.sft import SparseDiff, SparseDiffFormatError
from deftx.sft.format import content_digest
from tests.helpers import assert_bitwise_equal


def tiny_config(**overrides) -> BertConfig:
    values = dict(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=24,
        max_position_embeddings=20,
        num_labels=3,
    )
    values.update(overrides)
    return BertConfig(**values)


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def assert_model_equals(model, state, what="model"):
    for name, p in model.named_parameters():
        assert_bitwise_equal(p.detach(), state[name], what=f"{what}: {name}")


def random_sft(model, k, seed=0, scale=1e-2, head=False) -> SparseDiff:
    """A SparseDiff on ``model``: top-k of a random perturbation of the body."""
    gen = torch.Generator().manual_seed(seed)
    base = snapshot(model)
    body = [n for n in base if not n.startswith("classifier")]
    tuned = {n: (t.float() + scale * torch.randn(t.shape, generator=gen)).to(t.dtype) for n, t in base.items()}
    masks = topk_mask([tuned[n].float() - base[n].float() for n in body], k)
    return SparseDiff.from_states(
        base,
        tuned,
        dict(zip(body, masks, strict=True)),
        dense_names=[n for n in base if n.startswith("classifier")] if head else (),
        base_model="tiny-bert",
        method="lt-sft",
        k=k,
        settings={"lr": 1e-4},
    )


def rewrite(path, mutate, sign=True):
    """Load the raw tensors/metadata of a SparseDiff file, mutate them, write them back.

    ``sign``: store the digest of the mutated content (so the mutation reaches the checks
    behind the digest); otherwise the old digest stays.
    """
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    mutate(tensors, meta)
    if sign:
        meta["sha256"] = content_digest(tensors, meta)
    save_file(tensors, str(path), metadata=meta)


def assert_rewrite_refused(tmp_path, model, mutate, match) -> None:
    """A random SFT saved, its raw content ``mutate``d (digest re-signed): loading it is a format error ``match``."""
    path = tmp_path / "sft.safetensors"
    random_sft(model, 100).save(path)
    rewrite(path, mutate)
    with pytest.raises(SparseDiffFormatError, match=match):
        SparseDiff.load(path)
