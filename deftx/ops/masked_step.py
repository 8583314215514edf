"""Public op: the masked AdamW step of sparse retraining (state only for the K entries)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import Any

import torch
from torch.autograd.graph import increment_version

from deftx.ops import library
from deftx.ops.dispatch import backend_for, common_device, device_guard, requested_backend
from deftx.ops.settings import AdamWSettings, MaskedStepTensors
from deftx.ops.validation import (
    as_tensor_list,
    check_disjoint,
    check_float_dtype,
    check_indices,
    check_no_grad,
    check_same_devices,
    check_state_tensors,
    named_tensors,
)


def masked_adamw_step_(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    indices: Sequence[torch.Tensor],
    masters: Sequence[torch.Tensor],
    exp_avgs: Sequence[torch.Tensor],
    exp_avg_sqs: Sequence[torch.Tensor],
    bases: Sequence[torch.Tensor] | None = None,
    *,
    step: int,
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    l1: float = 0.0,
    backend: str | None = None,
) -> None:
    """One AdamW step on the selected entries ``indices[t]`` of each parameter only.

    Per entry (fp32): ``g = grad[i] (+ l1 * sign(master - base))``; Adam moments;
    decoupled weight decay on the fp32 ``master``; ``param[i] = cast(master)``. Entries
    outside ``indices`` are never read or written, and the optimizer state is O(K).

    Args:
        params, grads: T contiguous tensors (same shape and dtype pairwise).
        indices: T contiguous int64 (K_t,) sorted unique flat indices.
        masters, exp_avgs, exp_avg_sqs: T fp32 (K_t,) tensors, updated in place (each on its
            parameter's device, as are ``grads``, ``indices`` and ``bases``).
        bases: T fp32 (K_t,) θ0 values for the L1 pull (required when ``l1 != 0``).
        step: the step number, >= 1 (bias correction).

    Not differentiable: with grad mode on, a written tensor with autograd history (a non-leaf that
    requires grad) or a gradient or base that requires grad raises RuntimeError (autograd would
    not see the write); run it under ``torch.no_grad()``, as optimizers do. ``nn.Parameter`` s are
    written as plain tensors.

    The index values are checked once per index tensor (see
    :func:`~deftx.ops.validation.check_indices`): passing the same, unmodified tensors on
    every step — as :class:`deftx.train.retrain.MaskedAdamW` does, having checked them when
    it was built — the step reads nothing back from the device.
    """
    what = "masked_adamw_step_"
    grad_items = as_tensor_list(grads, f"{what} grads")
    tensors = _checked_fixed(MaskedStepTensors(params, grad_items, indices, masters, exp_avgs, exp_avg_sqs,
                                               bases if l1 != 0.0 else None), what, needs_bases=l1 != 0.0)
    _check_grads(tensors.params, grad_items, what)
    settings = AdamWSettings(step, lr, beta1, beta2, eps, weight_decay, l1)
    if not tensors.params:
        return
    common_device(tensors.params, what)
    run_masked_adamw_step_(tensors, settings, backend=backend)


def _checked_fixed(fixed: MaskedStepTensors, what: str, needs_bases: bool) -> MaskedStepTensors:
    """Check everything of ``fixed`` but the gradients (its ``bases`` when given, or raise when
    ``needs_bases`` and none are); returns it with every sequence as a list."""
    items = as_tensor_list(fixed.params, what)
    idx_items = as_tensor_list(fixed.indices, f"{what} indices")
    if len(items) != len(idx_items):
        raise ValueError(f"{what}: params and indices differ in length")
    for t, (p, idx) in enumerate(zip(items, idx_items, strict=True)):
        check_float_dtype(p, f"{what}: param {t}")
        if idx.device != p.device:
            raise ValueError(f"{what}: indices {t} are on {idx.device}, param {t} on {p.device}")
        if not p.is_contiguous():
            raise ValueError(f"{what}: param {t} is not contiguous")
        if not idx.is_contiguous():
            raise ValueError(f"{what}: indices {t} are not contiguous (the step reads them as one buffer)")
    check_disjoint(items, f"{what}: params")
    check_indices(idx_items, [p.numel() for p in items], lambda t: f"{what}: param {t}")
    for name, state in (("masters", fixed.masters), ("exp_avgs", fixed.exp_avgs), ("exp_avg_sqs", fixed.exp_avg_sqs)):
        check_state_tensors(state, idx_items, f"{what}: {name}")
        check_same_devices(state, items, f"{what}: {name}", "param")
        check_disjoint(state, f"{what}: {name}")
    if fixed.bases is None and needs_bases:
        raise ValueError(f"{what}: l1 != 0 needs bases (θ0 at the indices)")
    if fixed.bases is not None:
        check_state_tensors(fixed.bases, idx_items, f"{what}: bases")
        check_same_devices(fixed.bases, items, f"{what}: bases", "param")
    return MaskedStepTensors(items, list(fixed.grads), idx_items, list(fixed.masters), list(fixed.exp_avgs),
                             list(fixed.exp_avg_sqs), list(fixed.bases) if fixed.bases is not None else None)


def _check_grads(items: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], what: str) -> None:
    """One gradient per parameter, of its shape, dtype and device (host attributes only)."""
    if len(grads) != len(items):
        raise ValueError(f"{what}: params and grads differ in length")
    for t, (p, g) in enumerate(zip(items, grads, strict=True)):
        if g.shape != p.shape or g.dtype != p.dtype:
            raise ValueError(f"{what}: grad {t} is {g.dtype} {tuple(g.shape)}, param is {p.dtype} {tuple(p.shape)}")
    check_same_devices(grads, items, f"{what}: grads", "param")


def run_masked_adamw_step_(
    tensors: MaskedStepTensors, settings: AdamWSettings, *, backend: str | None = None
) -> None:
    """:func:`masked_adamw_step_` without its argument checks, for a training loop's every step.

    For a caller that made or checked its tensors once and passes the same ones on every step
    (:class:`deftx.train.retrain.MaskedAdamW` checks the selections when it is built and makes
    the state itself): ``params`` non-empty on one device, ``bases`` given when
    ``settings.l1 != 0``. Non-contiguous gradients are made contiguous. In grad mode, tensors autograd
    would get wrong still raise (as in :func:`masked_adamw_step_`).

    Eager calls run the backend directly (:func:`deftx.ops.library.masked_adamw_step`);
    traced ones go through the ``deftx::masked_adamw_step_`` custom op. (Through the
    dispatcher in eager mode, its per-tensor bookkeeping alone cost about 3 ms per step over
    XLM-R's 197 parameters, and the public op's checks 5 ms more: measured on the host with
    the kernel stubbed.)
    """
    _check_no_grad(tensors, "masked_adamw_step_")
    grads = [g.contiguous() for g in tensors.grads]
    library.masked_adamw_step(tensors._replace(grads=grads), settings, requested_backend(backend))


def _check_no_grad(tensors: MaskedStepTensors, what: str) -> None:
    """In grad mode: no written tensor with autograd history, no read one that requires grad
    (:func:`~deftx.ops.validation.check_no_grad`)."""
    written = [("param", tensors.params), ("masters", tensors.masters), ("exp_avgs", tensors.exp_avgs),
               ("exp_avg_sqs", tensors.exp_avg_sqs)]
    read = [("grad", tensors.grads), ("bases", tensors.bases or [])]
    check_no_grad(_named(written), _named(read), what)


def _named(groups: Sequence[tuple[str, Sequence[torch.Tensor]]]) -> Iterator[tuple[str, torch.Tensor]]:
    """:func:`~deftx.ops.validation.named_tensors` of each ``(name, tensors)`` group, in order."""
    for name, group in groups:
        yield from named_tensors(name, group)


class _UnplannedStep:
    """A prepared step for the backends without a planned one (native, torch): the fixed
    lists, each step straight to the backend."""

    def __init__(self, module: ModuleType, fixed: MaskedStepTensors) -> None:
        self._module = module
        self._fixed = fixed

    def step(self, grads: list[torch.Tensor], settings: AdamWSettings) -> None:
        self._module.masked_adamw_step_(self._fixed._replace(grads=grads), settings)


class PreparedMaskedStep:
    """The masked AdamW step over fixed parameters, indices and optimizer state, planned once.

    Built by :func:`prepare_masked_step` for a caller that made or checked its tensors once
    (:class:`deftx.train.retrain.MaskedAdamW`); :meth:`step` then runs the step of
    :func:`masked_adamw_step_` with new gradients and settings, with nothing checked or
    planned again: on the Triton backend one launch per parameter dtype, and an address
    table uploaded only when the gradients moved. Eager only (a traced step goes through
    :func:`run_masked_adamw_step_`). The tensors must keep their storage while it is used.
    """

    def __init__(self, fixed: MaskedStepTensors, runner: Any) -> None:
        self._fixed = fixed
        self._params = fixed.params
        self._has_bases = fixed.bases is not None
        self._written = [*fixed.params, *fixed.masters, *fixed.exp_avgs, *fixed.exp_avg_sqs]
        self._runner = runner

    def step(self, grads: Sequence[torch.Tensor], settings: AdamWSettings) -> None:
        """One step: ``grads`` one per parameter (same shape and dtype, checked on the host;
        made contiguous). ``settings.l1 != 0`` needs the plan to have bases."""
        _check_grads(self._params, grads, "PreparedMaskedStep.step")
        _check_no_grad(self._fixed._replace(grads=grads), "PreparedMaskedStep.step")
        if settings.has_l1 and not self._has_bases:
            raise ValueError("PreparedMaskedStep.step: l1 != 0 needs bases, and the step was prepared without")
        with device_guard(self._params[0].device):
            self._runner.step([g.contiguous() for g in grads], settings)
        increment_version(self._written)


def prepare_masked_step(
    params: Sequence[torch.Tensor],
    indices: Sequence[torch.Tensor],
    masters: Sequence[torch.Tensor],
    exp_avgs: Sequence[torch.Tensor],
    exp_avg_sqs: Sequence[torch.Tensor],
    bases: Sequence[torch.Tensor] | None = None,
    *,
    backend: str | None = None,
) -> PreparedMaskedStep:
    """Check and plan the masked AdamW step once: the arguments of :func:`masked_adamw_step_`
    without the gradients and the settings (``params`` non-empty, on one device; ``bases``
    needed by steps with ``l1 != 0``). Returns a :class:`PreparedMaskedStep`, whose
    ``step(grads, settings)`` gives the public op's bits."""
    what = "prepare_masked_step"
    fixed = _checked_fixed(MaskedStepTensors(params, [], indices, masters, exp_avgs, exp_avg_sqs, bases), what,
                           needs_bases=False)
    if not fixed.params:
        raise ValueError(f"{what}: no parameters")
    common_device(fixed.params, what)
    return plan_masked_step(fixed, backend=backend)


def plan_masked_step(fixed: MaskedStepTensors, *, backend: str | None = None) -> PreparedMaskedStep:
    """:func:`prepare_masked_step` without its checks, for a caller that made or checked the
    tensors itself (:class:`deftx.train.retrain.MaskedAdamW`, when it is built): ``fixed``'s
    ``grads`` are ignored, its ``params`` non-empty on one device."""
    device = fixed.params[0].device
    module = backend_for("masked_step", device, requested_backend(backend))
    planned = getattr(module, "PreparedMaskedStep", None)
    with device_guard(device):
        runner = (planned(fixed.params, fixed.indices, fixed.masters, fixed.exp_avgs, fixed.exp_avg_sqs, fixed.bases)
                  if planned is not None else _UnplannedStep(module, fixed))
    return PreparedMaskedStep(fixed, runner)
