"""The task phases' examples: batched as evaluation batches them, padded on the right whatever the
tokenizer's padding side (BERT numbers positions from the first token, pad or not); labelled with class
ids of the classifier, checked before anything trains."""

from __future__ import annotations

import numpy
import pytest
import torch

from deftx.train.config import PhaseConfig, task_sft_config
from deftx.train.task import classification_examples, task_sft_tuner, train_full_finetune
from deftx.train.trainer_args import TrainingSettings
from tests.helpers import assert_bitwise_equal
from tests.train.test_disk import tiny_model_dir  # noqa: F401  (fixture)

TEXTS = ["w1 w2 w3", "w4", "w6 w1 w7 w3 w9 w2", "w2 w8"] * 4
LABELS = [2, 0, 1, 2] * 4


def trained(folder, tokenizer, work) -> torch.nn.Module:
    examples = classification_examples(tokenizer, TEXTS, LABELS, 16)
    settings = TrainingSettings(batch_size=4, max_length=16, save_steps=0, progress=False)
    return train_full_finetune(folder, tokenizer, examples, PhaseConfig(steps=3, learning_rate=1e-2), work,
                               num_labels=3, settings=settings)


def test_a_left_padding_tokenizer_trains_the_model_a_right_padding_one_does(tmp_path, tiny_model_dir):  # noqa: F811
    from transformers import AutoTokenizer

    right = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    left = AutoTokenizer.from_pretrained(str(tiny_model_dir), padding_side="left")
    assert (right.padding_side, left.padding_side) == ("right", "left")
    expected = trained(tiny_model_dir, right, tmp_path / "right")
    model = trained(tiny_model_dir, left, tmp_path / "left")
    for (name, a), (_, b) in zip(expected.named_parameters(), model.named_parameters(), strict=True):
        assert_bitwise_equal(b.detach(), a.detach(), what=name)
    assert left.padding_side == "left", "the tokenizer is left as it was"


@pytest.mark.parametrize("label", [1.7, "positive", True, None])
def test_a_label_that_is_no_class_id_is_refused_naming_its_example(tiny_model_dir, label):  # noqa: F811
    """int() made 1.7 class 1 and True class 1, and refused a class name without saying which example."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    with pytest.raises(ValueError, match=r"example 3: label .+ is not a class id \(an integer"):
        classification_examples(tokenizer, TEXTS[:4], [2, 0, 1, label], 16)
    rows = classification_examples(tokenizer, TEXTS[:3], [numpy.int64(2), torch.tensor(0), 1], 16)
    assert [row["labels"] for row in rows] == [2, 0, 1] and all(type(row["labels"]) is int for row in rows)


@pytest.mark.parametrize("label", [3, -1, -100])
def test_a_label_past_the_classifier_is_refused_before_training(tmp_path, tiny_model_dir, label):  # noqa: F811
    """An id past the head failed inside training (IndexError), and -100, the loss's ignore index, trained
    the run on one example fewer without a word."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    examples = classification_examples(tokenizer, TEXTS, [*LABELS[:-1], label], 16)
    settings = TrainingSettings(batch_size=4, max_length=16, save_steps=0, progress=False)
    message = rf"example 15: label {label} is not a class id of the 3-way classifier \(0 to 2\)"
    with pytest.raises(ValueError, match=message):
        train_full_finetune(tiny_model_dir, tokenizer, examples, PhaseConfig(steps=1, learning_rate=1e-2),
                            tmp_path / "full", num_labels=3, settings=settings)
    with pytest.raises(ValueError, match=message):
        task_sft_tuner(tiny_model_dir, tokenizer, examples, task_sft_config(k=10), tmp_path / "sft", num_labels=3,
                       settings=settings)
    assert not (tmp_path / "full").exists() and not (tmp_path / "sft").exists()


def test_label_names_of_another_count_than_the_head_are_refused(tmp_path, tiny_model_dir):  # noqa: F811
    """Two names for a 3-row head made the model's config (and so the SFT's info) say 2 classes."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    examples = classification_examples(tokenizer, TEXTS, LABELS, 16)
    settings = TrainingSettings(batch_size=4, max_length=16, save_steps=0, progress=False)
    with pytest.raises(ValueError, match=r"2 label names \['neg', 'pos'\] for a 3-way classifier"):
        task_sft_tuner(tiny_model_dir, tokenizer, examples, task_sft_config(k=10), tmp_path / "sft", num_labels=3,
                       settings=settings, labels=["neg", "pos"])
    tuner = task_sft_tuner(tiny_model_dir, tokenizer, examples, task_sft_config(k=10), tmp_path / "sft",
                           num_labels=3, settings=settings, labels=["neg", "neu", "pos"])
    assert tuner.trainer.model.config.num_labels == 3
