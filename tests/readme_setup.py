"""What the README's runnable snippets assume a user already has (run by tests/test_readme.py, in a fresh folder).

Tiny random models, generated data, no downloads.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from transformers import BertForSequenceClassification, BertTokenizer

from deftx.sft import SparseDiff
from deftx.train.architecture import describe_model
from tests.sft.test_composable import sparse_delta, write_sft
from tests.sft.tiny import random_diff, tiny_bert

__all__ = ["link_examples", "save_classifier_folder_and_sft", "tiny_model_and_sft", "write_composable_sft"]

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "fine", "film", "day", "the", "a", "was"]
LABELS = ["negative", "neutral", "positive"]
REVIEWS = [("the film was good", "positive"), ("a bad day", "negative"), ("the day was fine", "neutral")]


def tiny_model_and_sft() -> tuple[BertForSequenceClassification, SparseDiff]:
    """A tiny random BERT classifier and a SparseDiff of it (body entries + its head)."""
    model = tiny_bert()
    return model, random_diff(model, 300, head=True, method="lt-sft", info=describe_model(model, head=True))


def write_composable_sft(folder: str) -> None:
    """A composable-sft style folder: ``pytorch_diff.bin`` (its documented layout) and the model's config.json."""
    model = tiny_bert()
    deltas = {name: sparse_delta(p.shape, i, density=0.02) for i, (name, p) in enumerate(model.named_parameters())
              if name.startswith("bert.encoder")}
    write_sft(Path(folder), deltas, config={"_name_or_path": "xlm-roberta-base",
                                            "architectures": ["XLMRobertaForMaskedLM"]})


def save_classifier_folder_and_sft(model_dir: str, sft_dir: str, data_file: str) -> None:
    """A save_pretrained classifier with a word-level tokenizer, a task SFT folder of it, a labelled CSV."""
    model = tiny_bert(vocab_size=len(WORDS), id2label=dict(enumerate(LABELS)),
                      label2id={n: i for i, n in enumerate(LABELS)})
    model.config.deftx_pooling = "cls"
    model.save_pretrained(model_dir)
    BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)}).save_pretrained(model_dir)
    sft = random_diff(model, 200, head=True, base_model=str(Path(model_dir)), info=describe_model(model, head=True))
    sft.save_pretrained(sft_dir)
    with open(data_file, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sentence", "sentiment"])
        writer.writerows(REVIEWS)


def link_examples() -> None:
    """The repository's examples/ folder, reachable from the snippet's working folder."""
    os.symlink(ROOT / "examples", "examples")
