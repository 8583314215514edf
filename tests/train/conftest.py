"""Tiny randomly initialised BERT models and Trainers for the training-step tests."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

VOCAB = 61
SEQ = 11


def tiny_config(**overrides) -> BertConfig:
    """A 2-layer BERT with odd sizes (hidden 12, FFN 20), 3 labels."""
    settings = dict(
        vocab_size=VOCAB, hidden_size=12, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=20, max_position_embeddings=16, num_labels=3,
    )
    settings.update(overrides)
    return BertConfig(**settings)


def tiny_model(seed: int = 0, **overrides) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    return BertForSequenceClassification(tiny_config(**overrides))


def tiny_dataset(n: int = 24, seed: int = 1) -> list[dict]:
    """Random token ids whose label is a function of the first token (learnable)."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        ids = torch.randint(4, VOCAB, (SEQ,), generator=generator)
        rows.append({"input_ids": ids, "labels": int(ids[0]) % 3})
    return rows


def tiny_trainer(tmp_path, model=None, *, save_steps: int = 2, callbacks=None, **arg_overrides) -> Trainer:
    settings = dict(
        output_dir=str(tmp_path / "trainer"), per_device_train_batch_size=8, report_to=[],
        save_strategy="steps", save_steps=save_steps, logging_steps=1, disable_tqdm=True,
        use_cpu=True, seed=7, weight_decay=0.01,
    )
    settings.update(arg_overrides)
    return Trainer(
        model=model if model is not None else tiny_model(),
        args=TrainingArguments(**settings),
        train_dataset=tiny_dataset(),
        callbacks=callbacks,
    )


@pytest.fixture
def make_trainer(tmp_path):
    """Factory: ``make_trainer(model=None, **training_arguments)``."""

    def factory(model=None, **kwargs):
        return tiny_trainer(tmp_path, model, **kwargs)

    return factory
