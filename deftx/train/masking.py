"""Masked-LM batches: token windows of texts, and BERT's 80/10/10 masking (seeded).

``chunk_token_ids`` cuts texts into ``[cls] + piece + [sep]`` windows (nothing truncated);
``MLMCollator`` pads and masks them and never draws a replacement id outside the tokenizer's
real vocabulary (e5 has 250002 pieces but 250037 embedding rows). Used by the MLM-head
warm-up (:mod:`deftx.train.head_warm_up`) and the language SFTs (:mod:`deftx.train.language`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from deftx.models.mlm import IGNORE_INDEX


def chunk_token_ids(tokenizer, texts: Sequence[str], seq_len: int) -> list[list[int]]:
    """Token ids of ``texts`` as ``[cls] + piece + [sep]`` sequences of at most ``seq_len``.

    A text longer than ``seq_len - 2`` tokens is split into consecutive windows (nothing is
    truncated); texts with no tokens are skipped (no texts: no windows). A text longer than the tokenizer's
    ``model_max_length`` is no error here (it is windowed), so the tokenizer is not let warn
    that running it through the model would fail.
    """
    if seq_len < 3:
        raise ValueError(f"seq_len must be >= 3 (room for [cls], one token, [sep]), got {seq_len}")
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    if cls_id is None or sep_id is None:
        raise ValueError("the tokenizer needs cls and sep tokens (<s> and </s> for e5)")
    width = seq_len - 2
    if not texts:
        return []
    encoded = tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
    return [[cls_id, *ids[start : start + width], sep_id] for ids in encoded for start in range(0, len(ids), width)]


class MLMCollator:
    """Pads id sequences and masks them for MLM (BERT's 80/10/10 rule), deterministically.

    Each non-special, non-padding position is selected with probability ``mlm_probability``;
    a selected position gets its original id as label (others -100) and is replaced by the
    mask id (80%), by a random id (10%) or kept (10%). Random ids are drawn uniformly from
    the ids below ``real_vocab_size`` that are not special tokens. All draws come from one
    ``torch.Generator`` seeded with ``seed``: the same seed and inputs give the same batches.

    Args:
        tokenizer: needs ``pad_token_id``, ``mask_token_id``, ``all_special_ids``, ``len()``.
        mlm_probability: selection probability in (0, 1].
        real_vocab_size: ids the tokenizer really produces (default ``len(tokenizer)``; for e5
            250002 while its embedding matrix has 250037 rows).
        seed: generator seed.
    """

    def __init__(
        self, tokenizer, mlm_probability: float = 0.15, real_vocab_size: int | None = None, seed: int = 0
    ) -> None:
        if not 0.0 < mlm_probability <= 1.0:
            raise ValueError(f"mlm_probability must be in (0, 1], got {mlm_probability}")
        if tokenizer.mask_token_id is None or tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer needs a mask token and a pad token")
        size = len(tokenizer) if real_vocab_size is None else int(real_vocab_size)
        if not 0 < size <= len(tokenizer):
            raise ValueError(f"real_vocab_size must be in [1, {len(tokenizer)}] (the tokenizer's size), got {size}")
        self.mask_token_id = int(tokenizer.mask_token_id)
        self.pad_token_id = int(tokenizer.pad_token_id)
        self.mlm_probability = float(mlm_probability)
        self.real_vocab_size = size
        self.special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.int64)
        candidates = torch.arange(size, dtype=torch.int64)
        self.replacement_ids = candidates[~torch.isin(candidates, self.special_ids)]
        if self.replacement_ids.numel() == 0:
            raise ValueError(f"no non-special id below real_vocab_size={size} to draw replacements from")
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)

    def identity_settings(self) -> dict[str, Any]:
        """What the batches depend on besides the examples (a run's identity records it, see
        :func:`deftx.train.identity.settings_identity`): the masking rate, seed and token ids."""
        return {"mlm_probability": self.mlm_probability, "real_vocab_size": self.real_vocab_size, "seed": self.seed,
                "mask_token_id": self.mask_token_id, "pad_token_id": self.pad_token_id,
                "special_ids": self.special_ids.tolist()}

    def pad(self, examples: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-pad id sequences (lists, 1-D tensors or dicts with ``input_ids``) -> (B, L) ids, mask."""
        if len(examples) == 0:
            raise ValueError("cannot collate an empty batch")
        rows = [torch.as_tensor(e["input_ids"] if isinstance(e, Mapping) else e, dtype=torch.int64) for e in examples]
        if any(r.dim() != 1 for r in rows):
            raise ValueError("every example must be a 1-D sequence of token ids")
        length = max(r.numel() for r in rows)
        ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.int64)
        attention = torch.zeros((len(rows), length), dtype=torch.int64)
        for i, row in enumerate(rows):
            ids[i, : row.numel()] = row
            attention[i, : row.numel()] = 1
        if bool((ids < 0).any()):
            raise ValueError("token ids must be non-negative")
        return ids, attention

    def __call__(self, examples: Sequence[Any]) -> dict[str, torch.Tensor]:
        """-> ``input_ids`` (B, L) int64 (masked), ``attention_mask`` (B, L), ``labels`` (B, L)."""
        ids, attention = self.pad(examples)
        maskable = attention.bool() & ~torch.isin(ids, self.special_ids)
        selected = (torch.rand(ids.shape, generator=self.generator) < self.mlm_probability) & maskable
        roll = torch.rand(ids.shape, generator=self.generator)
        draws = torch.randint(0, self.replacement_ids.numel(), ids.shape, generator=self.generator)
        inputs = torch.where(selected & (roll < 0.8), self.mask_token_id, ids)
        inputs = torch.where(selected & (roll >= 0.8) & (roll < 0.9), self.replacement_ids[draws], inputs)
        labels = torch.where(selected, ids, IGNORE_INDEX)
        return {"input_ids": inputs, "attention_mask": attention, "labels": labels}


def mask_once(collator: MLMCollator, sequences: Sequence[Sequence[int]],
              batch_size: int) -> list[dict[str, torch.Tensor]]:
    """``sequences`` masked once by ``collator``, ``batch_size`` at a time in order: fixed batches on which
    several models (θ0, θ0 + an SFT, ...) are scored against the same masks.

    Returns:
        ``collator``'s batches (``input_ids``, ``attention_mask``, ``labels``; each (B, L) int64), CPU.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return [collator(sequences[start : start + batch_size]) for start in range(0, len(sequences), batch_size)]
