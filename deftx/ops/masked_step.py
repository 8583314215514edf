"""Public op: the masked AdamW step of sparse retraining (state only for the K entries)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from deftx.ops import library
from deftx.ops.dispatch import common_device, requested_backend
from deftx.ops.settings import AdamWSettings, MaskedStepTensors
from deftx.ops.validation import (
    as_tensor_list,
    check_disjoint,
    check_float_dtype,
    check_indices,
    check_state_tensors,
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
        indices: T int64 (K_t,) sorted unique flat indices.
        masters, exp_avgs, exp_avg_sqs: T fp32 (K_t,) tensors, updated in place.
        bases: T fp32 (K_t,) θ0 values for the L1 pull (required when ``l1 != 0``).
        step: the step number, >= 1 (bias correction).

    The index values are checked once per index tensor (see
    :func:`~deftx.ops.validation.check_indices`): passing the same, unmodified tensors on
    every step — as :class:`deftx.train.retrain.MaskedAdamW` does, having checked them when
    it was built — the step reads nothing back from the device.
    """
    items = as_tensor_list(params, "masked_adamw_step_")
    grad_items = as_tensor_list(grads, "masked_adamw_step_ grads")
    idx_items = as_tensor_list(indices, "masked_adamw_step_ indices")
    if not len(items) == len(grad_items) == len(idx_items):
        raise ValueError("masked_adamw_step_: params, grads and indices differ in length")
    for t, (p, g, idx) in enumerate(zip(items, grad_items, idx_items, strict=True)):
        check_float_dtype(p, f"masked_adamw_step_: param {t}")
        if idx.device != p.device:
            raise ValueError(f"masked_adamw_step_: indices {t} are on {idx.device}, param {t} on {p.device}")
        if g.shape != p.shape or g.dtype != p.dtype:
            raise ValueError(
                f"masked_adamw_step_: grad {t} is {g.dtype} {tuple(g.shape)}, param is {p.dtype} {tuple(p.shape)}"
            )
        if not p.is_contiguous():
            raise ValueError(f"masked_adamw_step_: param {t} is not contiguous")
    check_disjoint(items, "masked_adamw_step_: params")
    check_indices(idx_items, [p.numel() for p in items], lambda t: f"masked_adamw_step_: param {t}")
    for name, state in (("masters", masters), ("exp_avgs", exp_avgs), ("exp_avg_sqs", exp_avg_sqs)):
        check_state_tensors(state, idx_items, f"masked_adamw_step_: {name}")
        check_disjoint(state, f"masked_adamw_step_: {name}")
    if l1 != 0.0:
        if bases is None:
            raise ValueError("masked_adamw_step_: l1 != 0 needs bases (θ0 at the indices)")
        check_state_tensors(bases, idx_items, "masked_adamw_step_: bases")
    settings = AdamWSettings(step, lr, beta1, beta2, eps, weight_decay, l1)
    if not items:
        return
    common_device(items, "masked_adamw_step_")
    used_bases = list(bases) if settings.has_l1 and bases is not None else None
    tensors = MaskedStepTensors(items, grad_items, idx_items, list(masters), list(exp_avgs), list(exp_avg_sqs),
                                used_bases)
    run_masked_adamw_step_(tensors, settings, backend=backend)


def run_masked_adamw_step_(
    tensors: MaskedStepTensors, settings: AdamWSettings, *, backend: str | None = None
) -> None:
    """:func:`masked_adamw_step_` without its argument checks, for a training loop's every step.

    For a caller that made or checked its tensors once and passes the same ones on every step
    (:class:`deftx.train.retrain.MaskedAdamW` checks the selections when it is built and makes
    the state itself): ``params`` non-empty on one device, ``bases`` given when
    ``settings.l1 != 0``. Non-contiguous gradients are made contiguous.

    Eager calls run the backend directly (:func:`deftx.ops.library.masked_adamw_step`);
    traced ones go through the ``deftx::masked_adamw_step_`` custom op. (Through the
    dispatcher in eager mode, its per-tensor bookkeeping alone cost about 3 ms per step over
    XLM-R's 197 parameters, and the public op's checks 5 ms more: measured on the host with
    the kernel stubbed.)
    """
    grads = [g.contiguous() for g in tensors.grads]
    library.masked_adamw_step(tensors._replace(grads=grads), settings, requested_backend(backend))
