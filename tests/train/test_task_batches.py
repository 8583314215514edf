"""The task phases batch their examples as evaluation does: padded on the right whatever the tokenizer's
padding side (BERT numbers positions from the first token, pad or not)."""

from __future__ import annotations

import torch

from deftx.train.config import PhaseConfig
from deftx.train.task import classification_examples, train_full_finetune
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
