"""deftx's models under gradient accumulation: the same 8 examples in one batch of 8, two of 4
or four of 2 give one optimizer step the same gradient and logged loss, inside a real
``transformers.Trainer`` and through :class:`SparseFineTuner`'s phases.

The reference is plain autograd on all 8 examples at once: the mean cross-entropy over the 8
labels (classifiers) or over every masked position of the 8 (the MLM), computed here from the
model's logits.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn.functional import cross_entropy
from transformers import Trainer, TrainingArguments

from deftx.models.classifier import build_classifier
from deftx.models.mlm import IGNORE_INDEX, build_mlm_model
from deftx.train.checkpoint import read_log
from deftx.train.config import PhaseConfig, SparseFineTuningConfig
from deftx.train.sparse_finetuner import SparseFineTuner
from tests.train.conftest import SEQ, VOCAB, tiny_dataset, tiny_model

SPLITS = [(1, 8), (2, 4), (4, 2)]  # (gradient_accumulation_steps, per_device_train_batch_size)
NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A tiny BERT classifier's ``save_pretrained`` folder (no dropout)."""
    folder = tmp_path_factory.mktemp("base")
    tiny_model(**NO_DROPOUT).save_pretrained(folder)
    return folder


def classification_rows() -> list[dict]:
    return tiny_dataset(n=8)


def mlm_rows() -> list[dict]:
    """8 sequences with 1..8 masked positions, so micro-batches hold different numbers of labels."""
    generator = torch.Generator().manual_seed(3)
    rows = []
    for n in range(8):
        ids = torch.randint(4, VOCAB, (SEQ,), generator=generator)
        labels = torch.full((SEQ,), IGNORE_INDEX)
        where = torch.randperm(SEQ, generator=generator)[: n + 1]
        labels[where] = ids[where]
        ids[where] = 3
        rows.append({"input_ids": ids, "labels": labels})
    return rows


def model_and_rows(kind: str, base_dir):
    """(model at θ0, its 8 training rows) for ``kind``: "mean" / "cls" classifier or "mlm"."""
    if kind == "mlm":
        return build_mlm_model(build_classifier(base_dir, 3, seed=0, pooling="cls"), seed=0), mlm_rows()
    return build_classifier(base_dir, 3, seed=0, pooling=kind), classification_rows()


def reference_loss(model, rows: list[dict]) -> torch.Tensor:
    """Mean cross-entropy over every label of ``rows``, from the model's logits (one batch)."""
    input_ids = torch.stack([row["input_ids"] for row in rows])
    labels = torch.stack([torch.as_tensor(row["labels"]) for row in rows])
    logits = model(input_ids=input_ids).logits
    kept = labels != IGNORE_INDEX
    return cross_entropy(logits[kept] if labels.dim() == 2 else logits, labels[kept])


def reference_step(model, rows: list[dict]) -> tuple[float, float]:
    """(loss, gradient norm) of one mean-loss backward over all ``rows``."""
    model = copy.deepcopy(model)
    loss = reference_loss(model, rows)
    loss.backward()
    loss = loss.detach()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return float(loss), float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))


def trainer_step(model, rows: list[dict], tmp_path, ga: int, batch: int) -> tuple[float, float]:
    """(logged loss, logged gradient norm) of one Trainer step over ``rows``."""
    args = TrainingArguments(
        output_dir=str(tmp_path / f"ga{ga}"), max_steps=1, learning_rate=1e-9, per_device_train_batch_size=batch,
        gradient_accumulation_steps=ga, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True,
        logging_steps=1,
    )
    trainer = Trainer(model=model, args=args, train_dataset=rows)
    trainer.train()
    record = trainer.state.log_history[0]
    return record["loss"], record["grad_norm"]


@pytest.mark.parametrize("kind", ["mean", "cls", "mlm"])
@pytest.mark.parametrize(("ga", "batch"), SPLITS)
def test_one_trainer_step_has_the_mean_loss_gradient_for_every_accumulation(base_dir, tmp_path, kind, ga, batch):
    model, rows = model_and_rows(kind, base_dir)
    expected_loss, expected_norm = reference_step(model, rows)
    loss, norm = trainer_step(model, rows, tmp_path, ga, batch)
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    assert norm == pytest.approx(expected_norm, rel=1e-5)


def fit(kind: str, base_dir, folder, ga: int, batch: int):
    """The log records (loss, gradient norm) of both phases of an LT-SFT with clipping and the L1 pull."""
    model, rows = model_and_rows(kind, base_dir)
    args = TrainingArguments(
        output_dir=str(folder / "trainer"), per_device_train_batch_size=batch, gradient_accumulation_steps=ga,
        max_grad_norm=0.5, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, logging_steps=1,
        seed=7,
    )
    trainer = Trainer(model=model, args=args, train_dataset=rows)
    config = SparseFineTuningConfig(
        k=0.1, full=PhaseConfig(steps=2, learning_rate=1e-2, l1=0.1),
        sparse=PhaseConfig(steps=2, learning_rate=1e-2, l1=0.1), selections={"lt-sft": None},
        train_head=kind != "mlm", ship_head=False,
    )
    SparseFineTuner(trainer, config, folder / "work", progress=False, warn_overrides=False).fit()
    return [r for r in read_log(folder / "work" / "log.jsonl") if "grad_norm" in r]


@pytest.mark.parametrize("kind", ["mean", "mlm"])
def test_sparse_fine_tuning_phases_do_not_depend_on_the_accumulation(base_dir, tmp_path, kind):
    """The weights themselves are not compared: Adam turns the rounding noise of gradients that are
    zero in exact arithmetic (attention key biases) into full-size steps."""
    records = fit(kind, base_dir, tmp_path / "ga1", 1, 8)
    accumulated = fit(kind, base_dir, tmp_path / "ga4", 4, 2)
    assert [(r["phase"], r["step"]) for r in accumulated] == [(r["phase"], r["step"]) for r in records]
    assert len(records) == 4
    for one, four in zip(records, accumulated, strict=True):
        assert four["loss"] == pytest.approx(one["loss"], rel=1e-5), one["phase"]
        assert four["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-5), one["phase"]
