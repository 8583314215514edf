"""A tiny BERT sentiment classifier with a word-level tokenizer, its task SFTs and a six-sentence data
file: ``compose`` / ``evaluate`` on any encoder in seconds (the folders are the fixtures ``plain_bert`` and
``bert_body`` of ``tests/commands/conftest.py``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification, BertTokenizer

from deftx.sft import SparseDiff
from deftx.train.architecture import describe_model
from tests.sft.tiny import random_diff

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
         "good", "bad", "fine", "film", "day", "the", "a", "is", "was", "very", "not"]
LABELS = ["negative", "neutral", "positive"]
SENTENCES = [("the film was very good", "positive"), ("a bad day", "negative"), ("the day was fine", "neutral"),
             ("not a good film", "negative"), ("a very fine film", "positive"), ("the film is the film", "neutral")]


def save_plain_bert(folder: Path) -> Path:
    """Save a seeded BertForSequenceClassification (with its pooler; 32 positions) and the word-level
    tokenizer into ``folder``."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(WORDS), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=24, max_position_embeddings=32, num_labels=3)
    BertForSequenceClassification(config).save_pretrained(folder)
    BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)}).save_pretrained(folder)
    return folder


def labelled_classifier(folder: Path) -> BertForSequenceClassification:
    """The classifier of ``folder`` with the sentiment label names, in eval mode."""
    model = AutoModelForSequenceClassification.from_pretrained(
        str(folder), id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)}).eval()
    model.config.deftx_pooling = "cls"
    return model


def task_sft(folder: Path, *, info: bool = True, base_model: str | None = None) -> SparseDiff:
    """A task SFT of the plain BERT classifier: sparse body entries (pooler included) + its head."""
    model = labelled_classifier(folder)
    return random_diff(model, 200, head=True, info=describe_model(model, head=True) if info else None,
                       base_model=base_model)


def write_reviews(path: Path, rows: Sequence[tuple[str, str]] = SENTENCES, *, label_ids: bool = False) -> Path:
    """``rows`` (text, label name; default the six SENTENCES) as a ``text,label`` CSV (label names, or
    class ids with ``label_ids``)."""
    lines = [f"{text},{LABELS.index(label) if label_ids else label}" for text, label in rows]
    path.write_text("text,label\n" + "\n".join(lines) + "\n")
    return path
