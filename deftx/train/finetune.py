"""Phase 1 of a sparse fine-tuning: full fine-tuning θ0 -> θ1, with an optional L1 pull.

The phase runs inside the user's own :class:`transformers.Trainer` (its optimizer, data
collator, callbacks and checkpointing); this module only adds what the method needs on
top of it:

* :func:`phase_arguments` sets the phase's length, learning rate and checkpoint folder on
  the trainer's ``TrainingArguments`` for the duration of the phase, and
  :func:`fresh_phase_optimizer` has the Trainer build a new optimizer for it (your
  ``TrainingArguments.optim`` or ``optimizer_cls_and_kwargs``, at the phase's learning rate);
* :class:`L1Pull` adds the gradient of ``l1 * Σ|θ − θ0| / N`` to every eligible
  parameter (see :mod:`deftx.train.config` for the normalisation), from a
  post-accumulate-grad hook so it is in the gradient before clipping, like the
  reference's extra ``backward`` of the penalty (a loop of its own, like
  :mod:`deftx.distributed.train`'s, calls :meth:`GradientAdjustment.apply_` between backward
  and clipping);
* :func:`run_full_finetuning` strings them together.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deftx.models.parameters import named_parameter_map
from deftx.train.config import PhaseConfig
from deftx.train.params import local_tensor

_PHASE_ARGUMENTS = ("max_steps", "num_train_epochs", "learning_rate", "output_dir")


def l1_gradient_scale(l1: float, model: nn.Module) -> float:
    """Per-entry gradient magnitude of the L1 penalty: ``l1 / N`` (N = all parameters)."""
    total = sum(p.numel() for p in model.parameters())
    return l1 / total if total else 0.0


def phase_settings(phase: PhaseConfig, output_dir: str | Path) -> dict[str, Any]:
    """The ``TrainingArguments`` values a phase runs with: its length, learning rate and checkpoint folder.

    A phase of ``steps`` sets ``max_steps``; one of ``epochs`` sets ``num_train_epochs`` and
    ``max_steps = -1`` (so the epochs count).
    """
    if phase.steps is not None:
        length: dict[str, Any] = {"max_steps": int(phase.steps)}
    else:
        length = {"max_steps": -1, "num_train_epochs": float(phase.epochs)}
    return {**length, "learning_rate": float(phase.learning_rate), "output_dir": str(output_dir)}


@contextlib.contextmanager
def phase_arguments(trainer, phase: PhaseConfig, output_dir: str | Path) -> Iterator[None]:
    """Temporarily give ``trainer.args`` the phase's :func:`phase_settings`.

    The previous values are restored on exit, so the user's ``TrainingArguments`` keep
    every other setting (batch size, scheduler, warm-up, logging, save strategy, ...).
    """
    args = trainer.args
    saved = {name: getattr(args, name) for name in _PHASE_ARGUMENTS}
    try:
        for name, value in phase_settings(phase, output_dir).items():
            setattr(args, name, value)
        yield
    finally:
        for name, value in saved.items():
            setattr(args, name, value)


@contextlib.contextmanager
def fresh_phase_optimizer(trainer, phase: PhaseConfig) -> Iterator[None]:
    """Let the Trainer build a new optimizer and scheduler for the phase, at the phase's learning rate.

    ``trainer.optimizer`` and ``trainer.lr_scheduler`` are cleared first (an optimizer left
    by an earlier ``train()`` would carry its state and schedule into the phase). A Trainer
    built with ``optimizer_cls_and_kwargs`` builds that class, with ``lr`` set to the phase's
    learning rate for the phase (the kwargs are restored on exit).
    """
    trainer.optimizer, trainer.lr_scheduler = None, None
    chosen = getattr(trainer, "optimizer_cls_and_kwargs", None)
    if chosen is not None:
        cls, kwargs = chosen
        trainer.optimizer_cls_and_kwargs = (cls, {**kwargs, "lr": float(phase.learning_rate)})
    try:
        yield
    finally:
        if chosen is not None:
            trainer.optimizer_cls_and_kwargs = chosen


def pull_toward_(param: torch.Tensor, base: torch.Tensor, scale: float) -> None:
    """``param.grad += scale * sign(param − base)`` on the entries this rank holds (``sign(0) = 0``)."""
    if param.grad is not None:
        local_tensor(param.grad).add_(torch.sign(local_tensor(param) - local_tensor(base)), alpha=scale)


class GradientAdjustment:
    """Adjusts some parameters' gradients after each backward, each by its own function.

    Used as a context manager around ``trainer.train()``: post-accumulate-grad hooks on the
    parameters that require a gradient. A loop of one's own whose parameters do not
    accumulate their gradients through autograd (FSDP2's shards) calls :meth:`apply_`
    between backward and clipping instead.

    Args:
        targets: (parameter, function adjusting that parameter's ``.grad`` in place) pairs.
    """

    def __init__(self, targets: Sequence[tuple[nn.Parameter, Callable[[torch.Tensor], None]]]) -> None:
        self._targets = list(targets)
        self._handles: list = []

    @torch.no_grad()
    def apply_(self) -> None:
        """Adjust the gradients there are now (once per optimizer step)."""
        for param, adjust in self._targets:
            adjust(param)

    def __enter__(self) -> GradientAdjustment:
        for param, adjust in self._targets:
            if param.requires_grad:
                self._handles.append(param.register_post_accumulate_grad_hook(adjust))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def pull_per_micro_batch_(param: torch.Tensor, base: torch.Tensor, scale: float, steps: Callable[[], int]) -> None:
    """:func:`pull_toward_` by ``scale / steps()``: one micro-batch's share of a step of ``steps()`` micro-batches."""
    pull_toward_(param, base, scale / max(int(steps()), 1))


class L1Pull(GradientAdjustment):
    """Adds ``scale * sign(θ − θ0)`` to the gradient of each named parameter.

    A :class:`GradientAdjustment`: as a context manager around ``trainer.train()`` the hook
    runs once per backward (each micro-batch), so the term is divided by the micro-batches of
    the optimizer step to be counted once per step. ``sign(0) = 0``, the subgradient
    ``torch.abs`` uses.

    Args:
        model: the model being trained.
        theta0: name -> θ0 values (same shape, dtype and device as the parameter).
        scale: per-entry gradient magnitude, e.g. :func:`l1_gradient_scale`.
        accumulation_steps: the micro-batches of each optimizer step, or a function giving those of the
            step under way (a Trainer's ``current_gradient_accumulation_steps``: an epoch's last step
            holds fewer when its batches are no multiple of ``gradient_accumulation_steps``).
    """

    def __init__(
        self,
        model: nn.Module,
        theta0: Mapping[str, torch.Tensor],
        scale: float,
        accumulation_steps: int | Callable[[], int] = 1,
    ) -> None:
        params = {name: p for name, p in named_parameter_map(model).items() if name in theta0}
        missing = set(theta0) - set(params)
        if missing:
            raise KeyError(f"L1Pull: the model has no parameters {sorted(missing)[:3]}")
        steps = accumulation_steps if callable(accumulation_steps) else partial(int, accumulation_steps)
        super().__init__([(param, partial(pull_per_micro_batch_, base=theta0[name], scale=scale, steps=steps))
                          for name, param in params.items()] if scale != 0.0 else [])


def current_accumulation_steps(trainer) -> int:
    """The micro-batches of the optimizer step ``trainer`` is taking (its ``gradient_accumulation_steps`` before
    its loop has set the count)."""
    return getattr(trainer, "current_gradient_accumulation_steps", trainer.args.gradient_accumulation_steps)


def run_full_finetuning(
    trainer,
    phase: PhaseConfig,
    theta0: Mapping[str, torch.Tensor],
    output_dir: str,
    resume_from_checkpoint: str | None = None,
):
    """Phase 1: ``trainer.train()`` for ``phase``'s length with the L1 pull toward θ0.

    Args:
        trainer: a ``transformers.Trainer`` (any subclass) whose model is at θ0.
        phase: length, learning rate and L1 coefficient.
        theta0: name -> θ0 of the eligible parameters (the L1 anchors).
        output_dir: the phase's checkpoint folder.
        resume_from_checkpoint: a checkpoint folder of this phase to continue from.

    Returns:
        The ``TrainOutput`` of ``trainer.train``.
    """
    scale = l1_gradient_scale(phase.l1, trainer.model)
    with (phase_arguments(trainer, phase, output_dir), fresh_phase_optimizer(trainer, phase),
          L1Pull(trainer.model, theta0, scale, partial(current_accumulation_steps, trainer))):
        return trainer.train(resume_from_checkpoint=resume_from_checkpoint)
