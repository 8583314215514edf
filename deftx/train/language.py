"""Language SFTs: masked-LM sparse fine-tuning on unlabelled text of one language.

The model is :func:`deftx.models.mlm.build_mlm_model`'s encoder body + an MLM head whose
decoder is a frozen copy of θ0's word embeddings (logits only at masked positions). The
head is warmed up once (:func:`warm_up_head`, cached) and is never part of an SFT; the
SFT holds body parameters only, stored under ``bert.*`` names so it applies to a
``BertForSequenceClassification`` of the same base model.

On a killed run, the Trainer restores model, optimizer, scheduler and RNG state, but the
MLM collator draws its masks from its own generator, which is reseeded at the start of
every phase (:class:`ReseedCollator`), not restored mid-phase: a phase resumed from a
mid-phase checkpoint sees other (equally distributed) masks than an uninterrupted run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import Trainer, TrainerCallback

from deftx.models.mlm import MLMCollator, build_mlm_model, chunk_token_ids, warm_up_mlm_head
from deftx.train.config import SparseFineTuningConfig
from deftx.train.sparse_finetuner import SparseFineTuner, SparseFineTuningResult
from deftx.train.trainer_args import TrainingSettings, training_arguments


@dataclass
class HeadWarmUp:
    """MLM head warm-up: head-only training on a frozen body, cached per base model.

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
            raise ValueError(f"HeadWarmUp: texts must be distinct corpus names, at least one; got {self.texts!r}")
        for name in ("steps", "batch_size", "seq_len", "eval_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"HeadWarmUp: {name} must be an integer >= 1, got {value!r}")
        if isinstance(self.eval_sequences, bool) or not isinstance(self.eval_sequences, int) or self.eval_sequences < 0:
            raise ValueError(f"HeadWarmUp: eval_sequences must be an integer >= 0, got {self.eval_sequences!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"HeadWarmUp: learning_rate must be > 0, got {self.learning_rate!r}")


class ReseedCollator(TrainerCallback):
    """Reseeds the MLM collator's generator when each phase starts (same masks per branch)."""

    def __init__(self, collator: MLMCollator, seed: int) -> None:
        self.collator = collator
        self.seed = seed

    def on_train_begin(self, args, state, control, **kwargs):
        self.collator.generator.manual_seed(self.seed)


def warm_up_head(
    model_dir: str | Path,
    tokenizer,
    texts: Sequence[str] | Mapping[str, Sequence[str]],
    settings: HeadWarmUp,
    cache_dir: str | Path,
    real_vocab_size: int | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Warm the MLM head up on ``texts`` (or load it from ``cache_dir``).

    Args:
        texts: sentences, or corpus name -> sentences (held-out curves are kept per corpus).
        log: gets a progress line every ``settings.eval_every`` steps (default: the logger).

    Returns:
        (path of the cached head file, warm-up metrics incl. the masked-token accuracy
        curves, see :func:`~deftx.models.mlm.warm_up_mlm_head`).
    """
    model = build_mlm_model(model_dir, seed=settings.seed)
    metrics = warm_up_mlm_head(
        model, tokenizer, texts if isinstance(texts, Mapping) else list(texts), steps=settings.steps,
        batch_size=settings.batch_size, lr=settings.learning_rate, seq_len=settings.seq_len, seed=settings.seed,
        cache_path=cache_dir, real_vocab_size=real_vocab_size, eval_every=settings.eval_every,
        eval_sequences=settings.eval_sequences, log=log,
    )
    return Path(metrics["cache_file"]), metrics


def mlm_examples(tokenizer, texts: Sequence[str], seq_len: int) -> list[dict[str, list[int]]]:
    """Token windows of ``texts`` (``[cls] ... [sep]``, at most ``seq_len``, nothing dropped)."""
    sequences = chunk_token_ids(tokenizer, list(texts), seq_len)
    if not sequences:
        raise ValueError("no text to train a language SFT on (all texts empty)")
    return [{"input_ids": ids} for ids in sequences]


def train_language_sft(
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
) -> SparseFineTuningResult:
    """Train (or resume) a language SFT on ``texts``, one branch per ``config.selections``.

    Args:
        model_dir: ``save_pretrained`` folder of the base encoder.
        tokenizer: its tokenizer.
        texts: unlabelled sentences of the language (never a test split's text).
        config: phases, K, eligible groups, branches (see :func:`~deftx.train.config.language_sft_config`).
        work_dir: the run folder (resumable).
        head_file: the warmed-up MLM head (:func:`warm_up_head`).
        settings: batch size, sequence length, seed, checkpoint interval.
        real_vocab_size: ids the tokenizer really produces (MLM replacement draws).
        base_model: identifier stored in the SFTs.
    """
    model = build_mlm_model(model_dir, head_state=head_file)
    collator = MLMCollator(tokenizer, real_vocab_size=real_vocab_size, seed=settings.seed)
    trainer = Trainer(
        model=model,
        args=training_arguments(settings, Path(work_dir) / "trainer"),
        train_dataset=mlm_examples(tokenizer, texts, settings.max_length),
        data_collator=collator,
        callbacks=[ReseedCollator(collator, settings.seed)],
    )
    tuner = SparseFineTuner(trainer, config, work_dir, base_model=base_model, progress=settings.progress)
    return tuner.fit()
