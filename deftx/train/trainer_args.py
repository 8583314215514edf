"""The ``TrainingArguments`` deftx's own language / task runs use (users bring their own)."""

from __future__ import annotations

import json
import math
import types
import typing
from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any

import torch
from transformers import HfArgumentParser, TrainingArguments

from deftx.text import short_repr
from deftx.train.config import is_number

PHASE_ARGUMENTS = {
    "max_steps": "each phase's steps",
    "num_train_epochs": "each phase's epochs",
    "learning_rate": "each phase's learning_rate",
    "output_dir": "the run's folder",
}
SETTINGS_ARGUMENTS = {
    "per_device_train_batch_size": "batch_size",
    "seed": "seed",
    "data_seed": "seed",
    "save_steps": "save_steps",
    "logging_steps": "logging_steps",
    "weight_decay": "weight_decay",
    "warmup_steps": "warmup_ratio",
    "max_grad_norm": "max_grad_norm",
    "disable_tqdm": "progress",
    "train_sampling_strategy": "group_by_length",
}
RUN_ONLY_ARGUMENTS = (
    "output_dir", "overwrite_output_dir", "report_to", "run_name", "project", "logging_dir", "logging_strategy",
    "logging_steps", "logging_first_step", "logging_nan_inf_filter", "log_level", "log_level_replica",
    "log_on_each_node", "disable_tqdm", "save_strategy", "save_steps", "save_total_limit", "save_on_each_node",
    "save_only_model", "save_safetensors", "enable_jit_checkpoint", "dataloader_num_workers",
    "dataloader_persistent_workers", "dataloader_prefetch_factor", "dataloader_pin_memory",
    "dataloader_multiprocessing_context", "push_to_hub", "hub_model_id", "hub_strategy", "hub_private_repo",
    "hub_token", "hub_always_push", "hub_revision", "trackio_space_id", "trackio_bucket_id",
    "trackio_static_space_id", "skip_memory_metrics", "include_num_input_tokens_seen", "do_train", "do_eval",
    "do_predict", "resume_from_checkpoint", "local_rank", "ddp_timeout",
)
"""``TrainingArguments`` fields that change where and how a run reports, never what it trains."""


def result_arguments(args: TrainingArguments) -> dict[str, Any]:
    """The ``TrainingArguments`` fields that can change a phase's result (JSON-ready).

    Every field but :data:`RUN_ONLY_ARGUMENTS` and the ones each phase sets itself
    (:data:`PHASE_ARGUMENTS`), so a field transformers adds later counts until it is
    known to be harmless.
    """
    plain = json.loads(json.dumps(args.to_dict(), sort_keys=True, default=str))
    return {k: v for k, v in plain.items() if k not in RUN_ONLY_ARGUMENTS and k not in PHASE_ARGUMENTS}


def trainer_argument_names() -> frozenset[str]:
    """Every field ``TrainingArguments(...)`` takes."""
    return frozenset(f.name for f in fields(TrainingArguments) if f.init)


def given_argument(settings: TrainingSettings, name: str) -> Any:
    """The ``TrainingArguments`` field ``name`` as ``settings.arguments`` gives it, else the field's default."""
    if name in settings.arguments:
        return settings.arguments[name]
    return next(f.default for f in fields(TrainingArguments) if f.name == name)


PLAIN_TYPES = {bool: "true or false", int: "an integer", float: "a number"}
"""The field types whose values :func:`check_trainer_arguments` checks, each as its message names it (text fields
are left to transformers, which takes more than their annotation says: ``fsdp: true``, a list of options)."""


@cache
def plain_argument_types() -> dict[str, tuple[type, bool]]:
    """``TrainingArguments`` fields of one type of :data:`PLAIN_TYPES`, or it or None: name -> (type, None allowed)."""
    plain = {}
    for name, hint in typing.get_type_hints(TrainingArguments).items():
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        kinds = set(typing.get_args(hint)) if union else {hint}
        given = kinds - {type(None)}
        if len(given) == 1 and (kind := given.pop()) in PLAIN_TYPES:
            plain[name] = (kind, type(None) in kinds)
    return plain


def has_type(value: Any, kind: type) -> bool:
    """Whether ``value`` is a ``kind`` of :data:`PLAIN_TYPES` as a YAML or JSON config gives it: a bool is no
    number, an int is a float."""
    if kind is bool or isinstance(value, bool):
        return kind is bool and isinstance(value, bool)
    return isinstance(value, (int, float) if kind is float else int)


def argument_type_problem(key: str, value: Any) -> str | None:
    """Why ``value`` is not of field ``key``'s type (:func:`plain_argument_types`), or None. ``HfArgumentParser``
    converts no value of a mapping, so ``bf16: "false"`` would reach the Trainer as a truthy string."""
    if key not in plain_argument_types():
        return None
    kind, optional = plain_argument_types()[key]
    if (value is None and optional) or (value is not None and has_type(value, kind)):
        return None
    text_number = kind in (int, float) and isinstance(value, str)
    return (f"{key!r} must be {PLAIN_TYPES[kind]}{' or null' if optional else ''}, got {short_repr(value)}"
            + (" (YAML reads a number such as 1e-8 without a dot as text: write 1.0e-8)" if text_number else ""))


def check_trainer_arguments(arguments: dict[str, Any]) -> None:
    """Refuse keys that are not ``TrainingArguments`` fields, or that deftx sets itself (naming where), and values
    not of their field's type (:func:`argument_type_problem`).

    Raises:
        ValueError: naming every offending key.
    """
    known = trainer_argument_names()
    problems = [f"{key!r} is not a TrainingArguments field" for key in sorted(set(arguments) - known)]
    problems += [f"{key!r} is set by {PHASE_ARGUMENTS[key]}" for key in sorted(set(arguments) & set(PHASE_ARGUMENTS))]
    problems += [f"{key!r} is set by training.{SETTINGS_ARGUMENTS[key]}"
                 for key in sorted(set(arguments) & set(SETTINGS_ARGUMENTS))]
    problems += [problem for key in sorted(set(arguments) & known)
                 if (problem := argument_type_problem(key, arguments[key])) is not None]
    if problems:
        raise ValueError("TrainingSettings.arguments: " + "; ".join(problems))


@dataclass
class TrainingSettings:
    """Run-level settings shared by every phase of deftx's language and task runs.

    Attributes:
        batch_size: per-step training batch.
        max_length: token limit per example (NusaX: 0.9% of sentences exceed 128).
        seed: data order, dropout, head init, MLM masks.
        save_steps: Trainer checkpoint interval inside a phase (resume granularity); 0: no
            checkpoints inside a phase (a killed phase restarts from its start; what the phase
            boundaries persist is kept either way). Each checkpoint of a full fine-tuning phase
            writes the weights and the AdamW moments (e5-small: 1.4 GB, 2.5-3.7 s on the
            development machine), so a run that restarts whole units (a GPU visit) sets 0.
        logging_steps: loss logging interval (every record goes to the run's log.jsonl).
        weight_decay, warmup_ratio, max_grad_norm: as in ``TrainingArguments``.
        group_by_length: batch examples of similar length (much less padding; NusaX
            sentences average ~50 tokens but a random batch pads to its longest).
        progress: show progress bars.
        arguments: any other ``TrainingArguments`` field (``bf16``, ``gradient_accumulation_steps``,
            ``report_to``, ``lr_scheduler_type``, ``optim``, ...), passed through transformers'
            ``HfArgumentParser``; the fields above and each phase's length, learning rate and
            folder are set by deftx and refused here.
    """

    batch_size: int = 16
    max_length: int = 128
    seed: int = 0
    save_steps: int = 100
    logging_steps: int = 10
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    max_grad_norm: float = 1.0
    group_by_length: bool = True
    progress: bool = True
    arguments: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_trainer_arguments(self.arguments)
        for name, low in (("batch_size", 1), ("max_length", 1), ("save_steps", 0), ("logging_steps", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"TrainingSettings: {name} must be an integer >= {low}, got {short_repr(value)}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"TrainingSettings: seed must be an integer >= 0, got {short_repr(self.seed)}")
        for name, low, high in (("weight_decay", 0, math.inf), ("warmup_ratio", 0, 1), ("max_grad_norm", 0, math.inf)):
            value = getattr(self, name)
            if not (is_number(value) and low <= value < high):
                raise ValueError(
                    f"TrainingSettings: {name} must be a finite number in [{low}, {high}), got {short_repr(value)}"
                )
        for name in ("group_by_length", "progress"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"TrainingSettings: {name} must be true or false, got {short_repr(value)}")


def trainer_output_dir(work_dir: str | Path, trainer_dir: str | Path | None = None) -> Path:
    """The ``output_dir`` of the Trainer of a deftx run in ``work_dir``: ``trainer_dir`` where given, else
    ``work_dir / "trainer"``. Building the Trainer creates it; nothing is written there (each phase trains in
    a folder of its own)."""
    return Path(trainer_dir) if trainer_dir is not None else Path(work_dir) / "trainer"


def training_arguments(settings: TrainingSettings, output_dir: str | Path) -> TrainingArguments:
    """``TrainingArguments`` for one deftx run (phase lengths and rates are set per phase).

    deftx's values first, then ``settings.arguments`` over them, all through transformers'
    ``HfArgumentParser`` (which rejects unknown keys). Batches are pinned only where there is
    a CUDA device to copy them to (on CPU, torch warns at every phase that pinning is ignored). A NaN or
    Inf loss is logged as it is (the Trainer's default logs the mean of the finite ones instead, 0.0 once
    every loss since the last log is NaN), so the loss trends (:mod:`deftx.train.losses`) can name it.
    """
    values = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=settings.batch_size,
        seed=settings.seed,
        data_seed=settings.seed,
        learning_rate=5e-5,
        max_steps=1,
        weight_decay=settings.weight_decay,
        warmup_steps=float(settings.warmup_ratio),
        max_grad_norm=settings.max_grad_norm,
        **({"save_strategy": "steps", "save_steps": settings.save_steps} if settings.save_steps
           else {"save_strategy": "no"}),
        save_total_limit=1,
        logging_steps=settings.logging_steps,
        logging_nan_inf_filter=False,
        report_to=[],
        disable_tqdm=not settings.progress,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        remove_unused_columns=False,
        train_sampling_strategy="group_by_length" if settings.group_by_length else "random",
    )
    (arguments,) = HfArgumentParser(TrainingArguments).parse_dict({**values, **settings.arguments})
    return arguments
