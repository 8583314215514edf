"""A language SFT's MLM masks inside a real ``transformers.Trainer``: batch n of a phase is
masked from ``batch_seed(seed, n)`` whether the main process or data-loader workers collate
it, across epochs and after a resume.

The reference is an :class:`MLMCollator` seeded with ``batch_seed(seed, n)`` applied to the
n-th batch's unmasked ids (recovered from the recorded batch: labels where masked, ids elsewhere).
"""

from __future__ import annotations

import pytest
import torch
from transformers import Trainer, TrainingArguments

from deftx.models.mlm import IGNORE_INDEX, build_mlm_model
from deftx.train.config import language_sft_config
from deftx.train.language import (
    BatchSeededCollator,
    CountResumedBatches,
    batch_seed,
    check_loader_workers,
    language_sft_tuner,
)
from deftx.train.masking import MLMCollator
from deftx.train.trainer_args import TrainingSettings
from tests.models.conftest import EMBEDDING_ROWS, tiny_bert, tiny_tokenizer

SEED = 5
ROWS, LENGTH, BATCH, ACCUMULATION = 20, 10, 4, 2  # 5 batches, 3 optimizer steps per epoch
STEPS = 8  # 2 2/3 epochs: 14 batches


class Recording(Trainer):
    """Keeps every micro-batch it trains on, in order."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[dict[str, torch.Tensor]] = []

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.batches.append({key: inputs[key].detach().clone() for key in ("input_ids", "labels")})
        return super().training_step(model, inputs, num_items_in_batch)


def mlm_collator() -> MLMCollator:
    return MLMCollator(tiny_tokenizer(), 0.5, seed=SEED)


def rows() -> list[dict[str, list[int]]]:
    """Same-length sequences of non-special ids (every batch has one shape)."""
    ids = torch.randint(4, 18, (ROWS, LENGTH), generator=torch.Generator().manual_seed(2))
    return [{"input_ids": row.tolist()} for row in ids]


def train(folder, workers: int, resume: str | None = None, save_steps: int = 0) -> list[dict[str, torch.Tensor]]:
    """The micro-batches of a language-SFT-like Trainer run with ``workers`` data-loader workers."""
    collator = BatchSeededCollator(mlm_collator(), SEED)
    args = TrainingArguments(
        output_dir=str(folder), max_steps=STEPS, learning_rate=1e-3, per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=ACCUMULATION, dataloader_num_workers=workers, seed=SEED, use_cpu=True,
        report_to=[], disable_tqdm=True, remove_unused_columns=False,
        **({"save_strategy": "steps", "save_steps": save_steps} if save_steps else {"save_strategy": "no"}),
    )
    trainer = Recording(model=build_mlm_model(tiny_bert(EMBEDDING_ROWS), seed=0), args=args, train_dataset=rows(),
                        data_collator=collator, callbacks=[CountResumedBatches(collator)])
    trainer.train(resume_from_checkpoint=resume)
    return trainer.batches


def reference_batch(recorded: dict[str, torch.Tensor], position: int) -> dict[str, torch.Tensor]:
    """Batch ``position`` of the phase masked afresh from its unmasked ids."""
    masked = recorded["labels"] != IGNORE_INDEX
    original = torch.where(masked, recorded["labels"], recorded["input_ids"])
    collator = mlm_collator()
    collator.generator.manual_seed(batch_seed(SEED, position))
    return collator(original.tolist())


def assert_same_batches(actual, expected, what: str) -> None:
    assert len(actual) == len(expected), what
    for n, (one, other) in enumerate(zip(actual, expected, strict=True)):
        for key in ("input_ids", "labels"):
            assert torch.equal(one[key], other[key]), f"{what}: batch {n} {key}"


@pytest.fixture(scope="module")
def without_workers(tmp_path_factory):
    return train(tmp_path_factory.mktemp("workers0"), workers=0)


def test_every_batch_is_masked_from_its_position(without_workers):
    assert len(without_workers) == 14
    assert_same_batches(without_workers, [reference_batch(b, n) for n, b in enumerate(without_workers)],
                        "0 workers vs reference")
    assert len({tuple(b["labels"].ne(IGNORE_INDEX).flatten().tolist()) for b in without_workers}) == 14


def test_two_workers_give_the_masks_of_none(without_workers, tmp_path):
    assert_same_batches(train(tmp_path, workers=2), without_workers, "2 workers vs 0")


def test_a_run_resumed_with_workers_continues_the_masks(tmp_path):
    """Checkpoint at step 4 (7 batches in: 5 of epoch 1, 2 of epoch 2), resumed with 2 workers:
    its n-th batch is the phase's (7 + n)-th. (Which examples a resumed epoch draws is the
    Trainer's business: transformers 5.17 draws others than 5.25.)"""
    train(tmp_path, workers=0, save_steps=4)
    resumed = train(tmp_path, workers=2, resume=str(tmp_path / "checkpoint-4"), save_steps=4)
    assert len(resumed) == 7
    assert_same_batches(resumed, [reference_batch(b, 7 + n) for n, b in enumerate(resumed)],
                        "resumed with 2 workers vs reference")


@pytest.mark.parametrize(
    ("arguments", "match"),
    [({"dataloader_persistent_workers": True}, "dataloader_persistent_workers"),
     ({"dataloader_in_order": False}, "dataloader_in_order")],
)
def test_workers_that_break_the_positions_are_refused(tmp_path, arguments, match):
    """Before anything is loaded; without workers the setting is harmless."""
    harmless = TrainingArguments(output_dir=str(tmp_path), dataloader_num_workers=0, **arguments)
    check_loader_workers(harmless.dataloader_num_workers, harmless.dataloader_persistent_workers,
                         harmless.dataloader_in_order)
    settings = TrainingSettings(arguments={"dataloader_num_workers": 2, **arguments})
    with pytest.raises(ValueError, match=f"language SFTs: {match}"):
        language_sft_tuner(tmp_path / "no-model", tiny_tokenizer(), ["the cat sat"], language_sft_config(),
                           tmp_path / "work", head_file=tmp_path / "no-head", settings=settings)
