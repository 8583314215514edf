"""What :class:`~deftx.train.sparse_finetuner.SparseFineTuner` does to the Trainer you give it.

The contract (README, "Your Trainer, sparse fine-tuned"):

* **Your TrainingArguments** hold for every phase, except the fields each phase sets:
  its length (``max_steps`` / ``num_train_epochs``), ``learning_rate`` (phase 1 from
  ``config.full``, phase 3 from ``config.sparse``) and ``output_dir`` (the phase's
  checkpoint folder in the tuner's ``work_dir``). Where your values differ, ``fit()``
  warns once with a :class:`TrainerOverrideWarning` naming each field, yours and the
  phase's value. Your ``output_dir`` is never written to nor deleted.
  ``PhaseConfig.from_training_arguments(trainer.args)`` as ``config.full`` runs phase 1
  with your length and learning rate.
* **Optimizers.** Phase 1's optimizer is built by your Trainer as it builds any (your
  ``TrainingArguments.optim``, ``optim_args``, ``weight_decay``, ``adam_*``, or the class
  and keyword arguments of ``Trainer(optimizer_cls_and_kwargs=...)``), at phase 1's
  learning rate, with your scheduler settings; phase 3 uses
  :class:`~deftx.train.retrain.MaskedAdamW` with your betas, epsilon (those of
  ``optimizer_cls_and_kwargs`` where it names them) and weight decay. An
  optimizer *instance* (``Trainer(optimizers=(optimizer, scheduler))``, or one left by an
  earlier ``trainer.train()``) cannot be rebuilt for each phase and is refused
  (:func:`refuse_optimizer_instances`). A Trainer built with ``model_init`` (a fresh model at every
  ``train()``) is refused too (:func:`refuse_model_init`).
* **After fit()** the Trainer is as you gave it (:func:`trainer_restored`): the model at
  θ0 with its ``requires_grad`` flags and every module's train / eval mode, ``trainer.args``
  (every field), ``trainer.optimizer`` and ``trainer.lr_scheduler`` (None: the next
  ``train()`` builds fresh ones from your arguments), ``optimizer_cls_and_kwargs``,
  ``trainer.state`` and ``trainer.control``, the callbacks, and the model's ``forward``
  (:func:`forward_restored`: mixed precision's autocast wrapper taken off); ``trainer.train()``
  and ``trainer.evaluate()`` work as before ``fit()``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from deftx.train.config import PhaseConfig
from deftx.train.finetune import phase_settings

RESTORED_ATTRIBUTES = ("optimizer", "lr_scheduler", "optimizer_cls_and_kwargs", "state", "control")
"""The Trainer attributes ``fit()`` puts back as it found them (besides the model and the arguments)."""
FORWARD_ATTRIBUTES = ("forward", "_original_forward")
"""The model attributes through which ``accelerate`` wraps its ``forward`` in autocast when a ``train()`` runs with
mixed precision (``bf16`` / ``fp16``): the wrapper stays on the model after training."""
CHECKPOINT_CONFIG_ATTRIBUTES = ("dtype", "architectures")
"""The model configuration's entries a Trainer checkpoint writes (``save_pretrained``): a model built from its
configuration has no ``dtype``, and would after a phase saved a checkpoint — another identity for a second ``fit()``."""


class TrainerOverrideWarning(UserWarning):
    """A setting of your Trainer is replaced for a phase of the sparse fine-tuning (the message names it)."""


def refuse_optimizer_instances(trainer: Any) -> None:
    """ValueError when the Trainer holds an optimizer or scheduler instance (see the module docstring)."""
    held = [name for name in ("optimizer", "lr_scheduler") if getattr(trainer, name, None) is not None]
    if held:
        raise ValueError(
            f"SparseFineTuner: the Trainer holds an {' and a '.join(held)} instance (passed as "
            "Trainer(optimizers=...), or left by an earlier trainer.train()). Each phase needs its own: phase 1 "
            "builds one the way the Trainer does, at config.full.learning_rate, phase 3 uses MaskedAdamW. Choose "
            "phase 1's optimizer with TrainingArguments(optim=..., optim_args=...) or "
            "Trainer(optimizer_cls_and_kwargs=(cls, kwargs)); or set trainer.optimizer = trainer.lr_scheduler = None"
        )


def refuse_model_init(trainer: Any) -> None:
    """ValueError when the Trainer was built with ``model_init``: its ``train()`` replaces ``trainer.model`` by a fresh
    model at every call, so each phase would train that model (every parameter trainable) instead of θ0 / θ1 with
    only the eligible entries."""
    if getattr(trainer, "model_init", None) is not None:
        raise ValueError(
            "SparseFineTuner: the Trainer was built with model_init, whose train() builds a fresh model at every "
            "call: phase 1 and phase 3 would train that model, every parameter trainable, not the tuner's θ0 / θ1. "
            "Build the Trainer with Trainer(model=...) instead"
        )


def _shown(value: Any) -> str:
    return repr(value) if not isinstance(value, float) else f"{value:g}"


def overridden_fields(args: Any, settings: Mapping[str, Any]) -> list[str]:
    """``"field yours -> phase's"`` for each of a phase's ``settings`` that differs from ``args``."""
    lines = []
    for name, value in settings.items():
        current = getattr(args, name)
        if current == value:
            continue
        line = f"{name} {_shown(current)} -> {_shown(value)}"
        if name == "max_steps" and value > 0 and current <= 0:
            line += f" (instead of num_train_epochs {_shown(args.num_train_epochs)})"
        lines.append(line)
    return lines


def optimizer_override(trainer: Any, phase: PhaseConfig) -> list[str]:
    """The ``lr`` of ``optimizer_cls_and_kwargs`` replaced by phase 1's, if it differs."""
    chosen = getattr(trainer, "optimizer_cls_and_kwargs", None)
    if chosen is None:
        return []
    cls, kwargs = chosen
    lr = kwargs.get("lr")
    if lr is not None and float(lr) == float(phase.learning_rate):
        return []
    yours = "its default" if lr is None else _shown(lr)
    return [f"optimizer_cls_and_kwargs ({cls.__name__}) lr {yours} -> {_shown(float(phase.learning_rate))}"]


def override_message(trainer: Any, full: PhaseConfig, sparse: PhaseConfig, work_dir: Path) -> str | None:
    """The one warning ``fit()`` gives about the fields its phases set (None when nothing differs)."""
    args = trainer.args
    phase1 = overridden_fields(args, phase_settings(full, work_dir / "phase1")) + optimizer_override(trainer, full)
    phase3 = overridden_fields(args, phase_settings(sparse, work_dir / "<branch>" / "phase3"))
    if not phase1 and not phase3:
        return None
    parts = [f"phase 1 (config.full): {', '.join(phase1)}"] if phase1 else []
    if phase3:
        parts.append(f"phase 3 (config.sparse): {', '.join(phase3)}, optimizer -> MaskedAdamW")
    own_phase1 = [line for line in phase1 if not line.startswith("output_dir")]
    hint = ("; PhaseConfig.from_training_arguments(trainer.args) as config.full keeps your length and rate "
            "in phase 1") if own_phase1 else ""
    return (f"SparseFineTuner overrides TrainingArguments for its phases (yours are restored after fit()): "
            f"{'; '.join(parts)}. Your output_dir is neither written to nor deleted{hint}")


@contextlib.contextmanager
def forward_restored(model: Any) -> Iterator[None]:
    """Put ``model``'s own :data:`FORWARD_ATTRIBUTES` back as they were on entry (on any exit).

    A ``trainer.train()`` with ``bf16`` / ``fp16`` leaves the model's ``forward`` wrapped in autocast
    (``accelerate``'s ``prepare_model``): every later forward of the model, an evaluation's too, would run
    in half precision, where the same weights loaded into a fresh model run in float32.
    """
    kept = {name: model.__dict__[name] for name in FORWARD_ATTRIBUTES if name in model.__dict__}
    try:
        yield
    finally:
        for name in FORWARD_ATTRIBUTES:
            model.__dict__.pop(name, None)
        model.__dict__.update(kept)


@contextlib.contextmanager
def trainer_restored(trainer: Any) -> Iterator[None]:
    """Put :data:`RESTORED_ATTRIBUTES` of ``trainer``, the train / eval mode of each of its model's
    modules (``trainer.train()`` leaves them in train mode), the model's ``forward``
    (:func:`forward_restored`) and its configuration's :data:`CHECKPOINT_CONFIG_ATTRIBUTES` back as they
    were on entry (on any exit)."""
    kept = {name: getattr(trainer, name) for name in RESTORED_ATTRIBUTES if hasattr(trainer, name)}
    modes = [(module, module.training) for module in trainer.model.modules()]
    config = getattr(trainer.model, "config", None)
    settings = {name: getattr(config, name) for name in CHECKPOINT_CONFIG_ATTRIBUTES if hasattr(config, name)}
    try:
        with forward_restored(trainer.model):
            yield
    finally:
        for name, value in kept.items():
            setattr(trainer, name, value)
        for name, value in settings.items():
            setattr(config, name, value)
        for module, training in modes:
            module.training = training

