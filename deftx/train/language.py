"""Language SFTs: masked-LM sparse fine-tuning on unlabelled text of one language.

The model is :func:`deftx.models.mlm.build_mlm_model`'s encoder body + an MLM head whose
decoder is a frozen copy of θ0's word embeddings (logits only at masked positions). The
head is warmed up once (:func:`warm_up_head`, cached) and is never part of an SFT; the
SFT holds body parameters only, stored under ``bert.*`` names so it applies to a
``BertForSequenceClassification`` of the same base model.

The MLM masks of a phase's n-th batch are drawn from a generator seeded with the run's
seed and n (:class:`BatchSeededCollator`); a phase resumed from a checkpoint restarts the
count at the first batch the Trainer has not trained on (:class:`CountResumedBatches`), so
a killed and resumed run sees the same masks, batch for batch, as an uninterrupted one, and
so does a run whose batches are collated by data-loader workers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import get_worker_info
from transformers import Trainer, TrainerCallback

from deftx.models.mlm import build_mlm_model
from deftx.text import short_repr
from deftx.train.config import SparseFineTuningConfig, is_number
from deftx.train.head_warm_up import warm_up_mlm_head
from deftx.train.masking import MLMCollator, chunk_token_ids
from deftx.train.sparse_finetuner import SparseFineTuner
from deftx.train.store import StepStore
from deftx.train.trainer_args import TrainingSettings, trainer_output_dir, training_arguments


@dataclass
class HeadWarmUp:
    """MLM head warm-up: head-only training on a frozen body, cached by base model, text and these settings.

    Attributes:
        steps, batch_size, learning_rate: the warm-up loop.
        seq_len: token window of the warm-up text.
        seed: head init, batch order, masking and the held-out choice.
        texts: which corpora the caller draws the warm-up text from (names the caller
            resolves, e.g. the pipeline's ``nusax`` and ``americasnlp``); one text group each.
        eval_every: steps between points of the masked-token accuracy curves.
        eval_sequences: token windows of each text group held out of training and scored
            every ``eval_every`` steps (0: no held-out curve, only the training curve).
    """

    steps: int = 500
    batch_size: int = 16
    learning_rate: float = 1e-3
    seq_len: int = 128
    seed: int = 0
    texts: tuple[str, ...] = ("nusax",)
    eval_every: int = 100
    eval_sequences: int = 0

    def __post_init__(self) -> None:
        self.texts = (self.texts,) if isinstance(self.texts, str) else tuple(self.texts)
        if not self.texts or len(set(self.texts)) != len(self.texts):
            raise ValueError(
                f"HeadWarmUp: texts must be distinct corpus names, at least one; got {short_repr(self.texts)}"
            )
        for name in ("steps", "batch_size", "seq_len", "eval_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"HeadWarmUp: {name} must be an integer >= 1, got {short_repr(value)}")
        for name in ("eval_sequences", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"HeadWarmUp: {name} must be an integer >= 0, got {short_repr(value)}")
        if not (is_number(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(
                f"HeadWarmUp: learning_rate must be a finite number > 0, got {short_repr(self.learning_rate)}"
            )


def batch_seed(seed: int, batch: int) -> int:
    """The generator seed of the ``batch``-th batch (0-based) of a phase of a run seeded with ``seed``."""
    digest = hashlib.sha256(f"deftx-mlm:{int(seed)}:{int(batch)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def batches_before(global_step: int, batches_per_epoch: int, accumulation: int) -> int:
    """Batches a Trainer has consumed before optimizer step ``global_step`` (what a resume skips).

    The Trainer's own arithmetic: ``ceil(batches_per_epoch / accumulation)`` updates per
    epoch, every batch of a finished epoch, ``accumulation`` batches per update of the current one.
    """
    updates_per_epoch = max(-(-batches_per_epoch // accumulation), 1)
    epochs, updates = divmod(global_step, updates_per_epoch)
    return epochs * batches_per_epoch + updates * accumulation


class BatchSeededCollator:
    """Wraps an :class:`MLMCollator`: the masks of the n-th batch come from ``batch_seed(seed, n)``.

    ``batches`` is the position in the phase of the next batch the main process collates;
    :class:`CountResumedBatches` sets it when an epoch starts. A data-loader worker collates
    with a copy made when the epoch's iterator started, and worker w of W gets that iterator's
    batches w, w + W, w + 2W, ... (PyTorch deals them out in turn), so it places its k-th batch
    at ``batches + w + k * W``. A batch's masks thus depend only on the seed, its position in
    the phase and its content, not on when or where it was collated (the data loader
    prefetches; any number of workers) or on whether the phase was resumed.
    """

    def __init__(self, collator: MLMCollator, seed: int) -> None:
        self.collator = collator
        self.seed = seed
        self.batches = 0
        self._worker_batches = 0

    def identity_settings(self) -> dict[str, Any]:
        """The seed and the wrapped collator (the batch count is the phase's progress, not a setting)."""
        return {"seed": self.seed, "collator": self.collator}

    def __call__(self, examples: Sequence[Any]) -> dict[str, Any]:
        self.collator.generator.manual_seed(batch_seed(self.seed, self._next_position()))
        return self.collator(examples)

    def _next_position(self) -> int:
        """The position in the phase of the batch collated now (see the class docstring)."""
        worker = get_worker_info()
        if worker is None:
            self.batches += 1
            return self.batches - 1
        self._worker_batches += 1
        return self.batches + worker.id + (self._worker_batches - 1) * worker.num_workers


class CountResumedBatches(TrainerCallback):
    """Sets a :class:`BatchSeededCollator`'s count when an epoch starts: the batches the Trainer
    consumed before it, those a resume skips included.

    Set before the epoch's data-loader workers copy the collator. Holds for map-style datasets
    (the Trainer skips their batches without collating them).
    """

    def __init__(self, collator: BatchSeededCollator) -> None:
        self.collator = collator

    def on_epoch_begin(self, args, state, control, train_dataloader=None, **kwargs):
        self.collator.batches = batches_before(
            state.global_step, len(train_dataloader), args.gradient_accumulation_steps
        )


def check_loader_workers(workers: int, persistent: bool, in_order: bool) -> None:
    """Refuse data-loader workers (``TrainingArguments``' ``dataloader_num_workers``, ``…_persistent_workers``,
    ``…_in_order``) that would not be dealt batches in turn from a fresh copy of the collator each epoch
    (:class:`BatchSeededCollator`): persistent ones, or out of order."""
    if workers == 0:
        return
    if persistent:
        raise ValueError(
            "language SFTs: dataloader_persistent_workers with dataloader_num_workers > 0 is not supported "
            "(each epoch's workers must copy the MLM collator's batch count); set it false or use no workers"
        )
    if not in_order:
        raise ValueError(
            "language SFTs: dataloader_in_order false with dataloader_num_workers > 0 is not supported "
            "(the MLM masks are seeded by each batch's position, which workers only keep in order)"
        )


def warm_up_head(
    model_dir: str | Path,
    tokenizer,
    texts: Sequence[str] | Mapping[str, Sequence[str]],
    settings: HeadWarmUp,
    cache_dir: str | Path,
    real_vocab_size: int | None = None,
    log: Callable[[str], None] | None = None,
    device: str | torch.device = "cpu",
    shipped_dir: str | Path | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Warm the MLM head up on ``texts`` (or load it from ``cache_dir``, or from ``shipped_dir``).

    Args:
        texts: sentences, or corpus name -> sentences (held-out curves are kept per corpus).
        log: gets a progress line every ``settings.eval_every`` steps (default: the logger).
        device: where the warm-up runs (a head warmed elsewhere than the CPU is cached under its own key).
        shipped_dir: read-only heads looked up by key when the cache has none (see
            :func:`~deftx.train.head_warm_up.warm_up_mlm_head`).

    Returns:
        (path of the cached head file, warm-up metrics incl. the masked-token accuracy
        curves, see :func:`~deftx.train.head_warm_up.warm_up_mlm_head`).
    """
    metrics = _head_warm_up(model_dir, tokenizer, texts, settings, cache_dir, real_vocab_size, device, shipped_dir,
                            log=log)
    return Path(metrics["cache_file"]), metrics


def cached_head(
    model_dir: str | Path,
    tokenizer,
    texts: Sequence[str] | Mapping[str, Sequence[str]],
    settings: HeadWarmUp,
    cache_dir: str | Path,
    real_vocab_size: int | None = None,
    device: str | torch.device = "cpu",
    shipped_dir: str | Path | None = None,
) -> Path | None:
    """The head file :func:`warm_up_head` with these arguments would load (from ``cache_dir``, else the one
    ``shipped_dir`` holds), or None when it would have to warm one up; nothing is trained or written."""
    metrics = _head_warm_up(model_dir, tokenizer, texts, settings, cache_dir, real_vocab_size, device, shipped_dir,
                            cached_only=True)
    return None if metrics["cache_file"] is None else Path(metrics["cache_file"])


def _head_warm_up(model_dir: str | Path, tokenizer, texts: Sequence[str] | Mapping[str, Sequence[str]],
                  settings: HeadWarmUp, cache_dir: str | Path, real_vocab_size: int | None,
                  device: str | torch.device, shipped_dir: str | Path | None, *,
                  log: Callable[[str], None] | None = None, cached_only: bool = False) -> dict[str, Any]:
    """:func:`~deftx.train.head_warm_up.warm_up_mlm_head` of ``settings`` on the model of ``model_dir``."""
    model = build_mlm_model(model_dir, seed=settings.seed).to(device)
    return warm_up_mlm_head(
        model, tokenizer, texts if isinstance(texts, Mapping) else list(texts), steps=settings.steps,
        batch_size=settings.batch_size, lr=settings.learning_rate, seq_len=settings.seq_len, seed=settings.seed,
        cache_path=cache_dir, real_vocab_size=real_vocab_size, eval_every=settings.eval_every,
        eval_sequences=settings.eval_sequences, log=log, shipped_path=shipped_dir, cached_only=cached_only,
    )


def mlm_examples(tokenizer, texts: Sequence[str], seq_len: int) -> list[dict[str, list[int]]]:
    """Token windows of ``texts`` (``[cls] ... [sep]``, at most ``seq_len``, nothing dropped)."""
    sequences = chunk_token_ids(tokenizer, list(texts), seq_len)
    if not sequences:
        raise ValueError("no text to train a language SFT on (all texts empty)")
    return [{"input_ids": ids} for ids in sequences]


def language_sft_tuner(
    model_dir: str | Path,
    tokenizer,
    texts: Sequence[str],
    config: SparseFineTuningConfig,
    work_dir: str | Path,
    *,
    head_file: str | Path,
    settings: TrainingSettings,
    real_vocab_size: int | None = None,
    base_model: str | None = None,
    overwrite: bool = False,
    store: StepStore | None = None,
    trainer_dir: str | Path | None = None,
) -> SparseFineTuner:
    """The tuner of a language SFT on ``texts`` (one branch per ``config.selections``): ``.fit()`` trains or resumes it.

    Args:
        model_dir: ``save_pretrained`` folder of the base encoder.
        tokenizer: its tokenizer.
        texts: unlabelled sentences of the language (never a test split's text).
        config: phases, K, eligible groups, branches (see :func:`~deftx.train.config.language_sft_config`).
        work_dir: the run folder (resumable; see :class:`~deftx.train.sparse_finetuner.SparseFineTuner`).
        head_file: the warmed-up MLM head (:func:`warm_up_head`).
        settings: batch size, sequence length, seed, checkpoint interval.
        real_vocab_size: ids the tokenizer really produces (MLM replacement draws).
        base_model: identifier stored in the SFTs.
        overwrite: discard results of ``work_dir`` whose identity differs instead of refusing them.
        store: finished steps to link from, and to publish to.
        trainer_dir: the Trainer's ``output_dir``, which building the Trainer creates (default
            ``work_dir / "trainer"``; the phases train in folders of their own): a tuner only asked which of
            ``work_dir``'s steps are stale (a dry run) passes an existing folder, ``work_dir``, so as to create none.
    """
    args = training_arguments(settings, trainer_output_dir(work_dir, trainer_dir))
    check_loader_workers(args.dataloader_num_workers, args.dataloader_persistent_workers, args.dataloader_in_order)
    model = build_mlm_model(model_dir, head_state=head_file)
    collator = BatchSeededCollator(
        MLMCollator(tokenizer, real_vocab_size=real_vocab_size, seed=settings.seed), settings.seed
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=mlm_examples(tokenizer, texts, settings.max_length),
        data_collator=collator,
        callbacks=[CountResumedBatches(collator)],
    )
    return SparseFineTuner(trainer, config, work_dir, base_model=base_model, progress=settings.progress,
                           overwrite=overwrite, store=store, label="language sft", warn_overrides=False)
