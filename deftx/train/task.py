"""Task SFTs and the full fine-tuning baseline: sequence classification on labelled data.

A task SFT is trained on the source language's labelled data *with the source language's
SFT applied* (θ0 = base + φ_L(source)), so that it learns the task rather than the
language; the classifier head (and the newly initialised pooler, e5 has none) are
trained densely and shipped in the SFT's ``dense`` tensors. The full fine-tuning
baseline trains every parameter of the base model, no SFT anywhere.
"""

from __future__ import annotations

import operator
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer

from deftx.models.classifier import build_classifier
from deftx.models.parameters import named_parameter_map
from deftx.sft import SparseDiff
from deftx.text import short_repr
from deftx.train.checkpoint import LOG, load_changed_rows_, save_changed_rows, trim_log
from deftx.train.config import PhaseConfig, SparseFineTuningConfig, to_plain
from deftx.train.finetune import phase_arguments
from deftx.train.identity import claim, owned, stale_results
from deftx.train.sparse_finetuner import SparseFineTuner, run_phase, trainer_identity
from deftx.train.store import StepStore
from deftx.train.trainer_args import TrainingSettings, trainer_output_dir, training_arguments
from deftx.train.trainer_contract import forward_restored


def label_id(value: Any, row: int) -> int:
    """``value`` as a class id: an integer (Python, NumPy, or a one-element integer tensor).

    Raises:
        ValueError: a bool, a float (``int`` would turn 1.7 into 1), a class name or anything else, naming
            the example's ``row``.
    """
    if not isinstance(value, bool):
        try:
            return operator.index(value)
        except TypeError:
            pass
    raise ValueError(f"example {row}: label {short_repr(value)} is not a class id (an integer 0, 1, ...); "
                     "map class names to their ids first")


def check_class_ids(examples: Sequence[Mapping[str, Any]], num_labels: int) -> None:
    """Every example's ``labels`` is a class id of a ``num_labels``-way classifier (in ``[0, num_labels)``).

    Raises:
        ValueError: naming the first example whose label is no class id or out of range (an id past the
            head fails inside training; -100, the loss's ignore index, would leave the example out unsaid).
    """
    for row, example in enumerate(examples):
        value = label_id(example.get("labels"), row)
        if not 0 <= value < num_labels:
            raise ValueError(f"example {row}: label {value} is not a class id of the {num_labels}-way classifier "
                             f"(0 to {num_labels - 1})")


def check_label_names(labels: Sequence[str] | None, num_labels: int) -> None:
    """``labels`` (class names in id order), when given, name exactly ``num_labels`` classes.

    Raises:
        ValueError: another count (the SFT would record that many classes beside a head of ``num_labels`` rows).
    """
    if labels is not None and len(labels) != num_labels:
        raise ValueError(f"{len(labels)} label names {short_repr(list(labels))} for a {num_labels}-way classifier")


def classification_examples(
    tokenizer, texts: Sequence[str], labels: Sequence[int] | None, max_length: int,
    pairs: Sequence[str] | None = None,
) -> list[dict[str, list[int] | int]]:
    """Tokenised examples (``input_ids``, ``attention_mask``, ``labels``), truncated to ``max_length``.

    ``pairs`` gives second segments (NLI hypotheses), tokenised as sentence pairs: the rows then also
    hold the tokenizer's ``token_type_ids`` where it makes them (BERT's segment ids: 1 on the second
    segment, which the model would otherwise read as the first).
    """
    if labels is not None and len(labels) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    encoded = tokenizer(list(texts), list(pairs) if pairs is not None else None,
                        truncation=True, max_length=max_length)
    keys = ["input_ids", "attention_mask", *(["token_type_ids"] if pairs is not None and "token_type_ids" in encoded
                                             else [])]
    rows = []
    for i in range(len(texts)):
        row = {key: encoded[key][i] for key in keys}
        if labels is not None:
            row["labels"] = label_id(labels[i], i)
        rows.append(row)
    return rows


def at_token_limit(examples: Sequence[Mapping[str, Any]], max_length: int) -> int:
    """How many of the tokenised ``examples`` (:func:`classification_examples`) fill ``max_length``
    tokens: those whose text may have lost its end to the truncation."""
    return sum(len(example["input_ids"]) >= max_length for example in examples)


@dataclass(frozen=True)
class RightPadding:
    """Batches tokenised rows (:func:`classification_examples`) padded on the right whatever the
    tokenizer's ``padding_side``, as evaluation pads them (:func:`deftx.eval.predict.predict_labels`): a
    model that numbers positions from the first token (BERT's absolute positions) and pools its first
    token (``cls``) would read a left-padded text elsewhere in training than in evaluation."""

    tokenizer: Any

    def __call__(self, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        """Rows -> (B, L) int64 tensors of each key (``labels`` (B,))."""
        return self.tokenizer.pad(list(rows), padding=True, padding_side="right", return_tensors="pt")


def _trainer(model, tokenizer, examples, settings: TrainingSettings, output_dir: Path) -> Trainer:
    return Trainer(
        model=model,
        args=training_arguments(settings, output_dir),
        train_dataset=examples,
        data_collator=RightPadding(tokenizer),
    )


def task_sft_tuner(
    model_dir: str | Path,
    tokenizer,
    examples: Sequence[dict],
    config: SparseFineTuningConfig,
    work_dir: str | Path,
    *,
    num_labels: int,
    settings: TrainingSettings,
    source_sft: SparseDiff | None = None,
    base_model: str | None = None,
    pooling: str = "mean",
    labels: Sequence[str] | None = None,
    overwrite: bool = False,
    store: StepStore | None = None,
    trainer_dir: str | Path | None = None,
) -> SparseFineTuner:
    """The tuner of a task SFT (one branch per ``config.selections``): ``.fit()`` trains or resumes it.

    Args:
        model_dir: ``save_pretrained`` folder of the base encoder.
        tokenizer: its tokenizer (for padding).
        examples: :func:`classification_examples` of the source language's train split.
        config: phases, K, branches (see :func:`~deftx.train.config.task_sft_config`).
        work_dir: the run folder (resumable; see :class:`~deftx.train.sparse_finetuner.SparseFineTuner`).
        num_labels: classifier outputs.
        settings: batch size, seed, checkpoint interval.
        source_sft: the source language's SFT, applied underneath for the whole run (part of
            θ0, so of the run's identity).
        base_model: identifier stored in the SFTs.
        pooling: classifier pooling (see :func:`~deftx.models.classifier.build_classifier`).
        labels: class names in id order, recorded in the SFTs' ``info``.
        overwrite: discard results of ``work_dir`` whose identity differs instead of refusing them.
        store: finished steps to link from, and to publish to.
        trainer_dir: the Trainer's ``output_dir``, which building the Trainer creates (default
            ``work_dir / "trainer"``; the phases train in folders of their own): a tuner only asked which of
            ``work_dir``'s steps are stale (a dry run) passes an existing folder, ``work_dir``, so as to create none.

    Raises:
        ValueError: an example's label that is no class id below ``num_labels`` (:func:`check_class_ids`),
            or ``labels`` naming another number of classes.
    """
    check_label_names(labels, num_labels)
    check_class_ids(examples, num_labels)
    model = build_classifier(model_dir, num_labels, settings.seed, pooling)
    if labels is not None:
        model.config.update({"id2label": dict(enumerate(labels)), "label2id": {n: i for i, n in enumerate(labels)}})
    if source_sft is not None:
        source_sft.apply(model)
    trainer = _trainer(model, tokenizer, list(examples), settings, trainer_output_dir(work_dir, trainer_dir))
    return SparseFineTuner(trainer, config, work_dir, base_model=base_model, progress=settings.progress,
                           overwrite=overwrite, store=store, label="task sft", warn_overrides=False)


BASELINE_FILE = "final.safetensors"
"""The baseline's result: the rows full fine-tuning changed (:func:`~deftx.train.checkpoint.save_changed_rows`)."""
BASELINE_PHASE = "phase1"
BASELINE_OUTPUTS = (BASELINE_FILE, BASELINE_PHASE, LOG)
"""What a change of the baseline's identity invalidates: its result, its phase's checkpoints, its log."""


def _baseline_trainer(model_dir: str | Path, tokenizer, examples: Sequence[dict], output_dir: Path, num_labels: int,
                      settings: TrainingSettings, pooling: str) -> Trainer:
    """The Trainer of the full fine-tuning baseline, on a freshly built classifier, with ``output_dir`` (which
    building it creates; never trained in: the phase has a folder of its own)."""
    model = build_classifier(model_dir, num_labels, settings.seed, pooling)
    return _trainer(model, tokenizer, list(examples), settings, output_dir)


def check_baseline_phase(phase: PhaseConfig) -> None:
    """The baseline's ``phase`` asks for no L1 pull: full fine-tuning trains without one.

    Raises:
        ValueError: ``phase.l1`` other than 0 (it would train as with 0).
    """
    if phase.l1:
        raise ValueError(
            f"the full fine-tuning baseline takes no L1 pull toward the base weights, but the phase's l1 "
            f"is {phase.l1}: set it to 0"
        )


def baseline_identity(trainer: Trainer, phase: PhaseConfig) -> dict[str, Any]:
    """What the baseline trained by ``trainer`` (at its initial weights) for ``phase`` depends on."""
    return {"step": "full fine-tuning", **trainer_identity(trainer), "phase": to_plain(phase)}


def stale_baseline(
    model_dir: str | Path,
    tokenizer,
    examples: Sequence[dict],
    phase: PhaseConfig,
    work_dir: str | Path,
    *,
    num_labels: int,
    settings: TrainingSettings,
    pooling: str = "mean",
) -> list[str]:
    """What :func:`train_full_finetune` with these arguments would refuse in ``work_dir`` (or discard, with
    ``overwrite``): one line per changed field of its identity; [] when the folder holds this baseline's results
    or none. Reads the folder only (a dry run's check): its Trainer's ``output_dir`` is ``work_dir`` itself, which
    exists, so no folder is created."""
    work_dir = Path(work_dir)
    if not work_dir.is_dir():
        return []
    trainer = _baseline_trainer(model_dir, tokenizer, examples, work_dir, num_labels, settings, pooling)
    return stale_results(work_dir, baseline_identity(trainer, phase), BASELINE_OUTPUTS)


def train_full_finetune(
    model_dir: str | Path,
    tokenizer,
    examples: Sequence[dict],
    phase: PhaseConfig,
    work_dir: str | Path,
    *,
    num_labels: int,
    settings: TrainingSettings,
    pooling: str = "mean",
    overwrite: bool = False,
    store: StepStore | None = None,
) -> torch.nn.Module:
    """The baseline: fine-tune every parameter of the base model (no SFT), resumable.

    The run claims ``work_dir`` with its identity (the built classifier's weights, the
    data, the arguments, the phase: see :mod:`deftx.train.identity`; ``overwrite`` discards
    a different run's results instead of refusing them) and keeps, once finished, only the
    rows the fine-tuning changed (``final.safetensors``); a later call rebuilds the
    classifier and writes them back instead of training again. Either way the classifier's
    ``forward`` is its own (:func:`~deftx.train.trainer_contract.forward_restored`): with ``bf16`` /
    ``fp16`` it is evaluated in float32, as a resumed baseline and every SFT composition are.

    Returns:
        The fine-tuned classifier.

    Raises:
        ValueError: an example's label that is no class id below ``num_labels`` (:func:`check_class_ids`), or
            a phase with an L1 pull (:func:`check_baseline_phase`).
        BusyError: another process trains in ``work_dir`` (:func:`~deftx.train.identity.owned`).
    """
    work_dir = Path(work_dir)
    check_baseline_phase(phase)
    check_class_ids(examples, num_labels)
    trainer = _baseline_trainer(model_dir, tokenizer, examples, trainer_output_dir(work_dir), num_labels, settings,
                                pooling)
    model = trainer.model
    with owned(work_dir, holder=trainer.args.process_index == 0):
        identity = baseline_identity(trainer, phase)
        folder = work_dir / BASELINE_PHASE
        claim(work_dir, identity, BASELINE_OUTPUTS, overwrite=overwrite)
        final = work_dir / BASELINE_FILE
        if not final.is_file() and store is not None and store.attach(work_dir, identity, [BASELINE_FILE]):
            trim_log(work_dir / LOG, "full", 0)  # a run stopped here logged part of the phase the store finished
        params = named_parameter_map(model)
        if final.is_file():
            load_changed_rows_(params, final)
            return model
        base = {name: param.detach().clone() for name, param in params.items()}

        def train(checkpoint: str | None) -> None:
            with phase_arguments(trainer, phase, str(folder)):
                trainer.train(resume_from_checkpoint=checkpoint)

        with forward_restored(model):
            run_phase(trainer, work_dir / LOG, "full", "full-ft", folder, train)
        save_changed_rows(final, base, params)
        if store is not None:
            store.publish(work_dir, identity, [BASELINE_FILE])
        shutil.rmtree(folder, ignore_errors=True)
    return model
