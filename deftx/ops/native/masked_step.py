"""Native CPU backend of ``masked_step``: AdamW on the selected entries only (csrc/masked_step.cpp)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from deftx.ops.settings import AdamWSettings, MaskedStepTensors
from deftx.ops.validation import check_state_tensors

from . import (
    check_cpu_contiguous,
    check_status,
    dtype_codes,
    float32_array,
    int32_array,
    int64_array,
    library,
    pointer_array,
)


def _check_states(name: str, states: Sequence[torch.Tensor], indices: Sequence[torch.Tensor]) -> None:
    """ValueError unless ``states[t]`` is a contiguous fp32 CPU tensor of ``indices[t]``'s shape."""
    check_state_tensors(states, indices, f"masked_adamw_step_: {name}")
    for t, state in enumerate(states):
        check_cpu_contiguous(state, f"masked_adamw_step_: {name}[{t}]")


def _param_dtype_codes(
    params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], indices: Sequence[torch.Tensor]
) -> list[int]:
    """Validate params, grads and indices (what the library reads through raw pointers); dtype codes."""
    if not len(params) == len(grads) == len(indices):
        raise ValueError("masked_adamw_step_: params, grads and indices differ in length")
    codes = dtype_codes(params, "masked_adamw_step_: params")
    for t, (param, grad, index) in enumerate(zip(params, grads, indices, strict=True)):
        check_cpu_contiguous(grad, f"masked_adamw_step_: grads[{t}]")
        check_cpu_contiguous(index, f"masked_adamw_step_: indices[{t}]")
        if grad.dtype != param.dtype or grad.numel() != param.numel():
            raise ValueError(f"masked_adamw_step_: grads[{t}] differs from params[{t}] in dtype or size")
        if index.dtype != torch.int64 or index.dim() != 1:
            raise ValueError(f"masked_adamw_step_: indices[{t}] must be int64 1-D")
    return codes


def masked_adamw_step_(tensors: MaskedStepTensors, settings: AdamWSettings) -> None:
    """AdamW on the selected entries of each parameter, in place.

    Per entry j with ``i = indices[t][j]``, every operation one rounded fp32 operation
    (division and square root correctly rounded, no fused multiply-add), in the torch
    reference's order: bit-identical to that formula. torch's own CPU ``sqrt`` can be 1 ulp
    off on vectorised lengths, so masters may differ from the torch backend's by that much::

        g = f32(grad[i]) (+ l1 * sign(master - base) when l1 != 0)
        m = beta1 m + (1 - beta1) g ;  v = beta2 v + ((1 - beta2) g) g
        master = master (1 - lr wd) - (lr (m / (1 - beta1^step))) / (sqrt(v / (1 - beta2^step)) + eps)
        param[i] = cast(master)            (round to nearest even)

    ``tensors`` (:class:`~deftx.ops.settings.MaskedStepTensors`): contiguous CPU tensors, params
    fp32 / bf16 / fp16; the scalars of ``settings`` are derived in float64 and passed as fp32.

    Params must not share memory with each other (threads write them concurrently).

    Raises:
        TypeError: a param dtype other than fp32 / bf16 / fp16.
        ValueError: a tensor the library would read wrongly (device, layout, dtype, size), or
            an index list that is not sorted, unique and in range (then nothing is written).
    """
    params, grads, indices, masters, exp_avgs, exp_avg_sqs, bases = tensors
    codes = _param_dtype_codes(params, grads, indices)
    for name, states in (("masters", masters), ("exp_avgs", exp_avgs), ("exp_avg_sqs", exp_avg_sqs)):
        _check_states(name, states, indices)
    has_l1 = settings.has_l1
    if has_l1:
        if bases is None:
            raise ValueError("masked_adamw_step_: l1 != 0 needs bases (θ0 at the indices)")
        _check_states("bases", bases, indices)
    status = library().deftx_masked_adamw_step(
        len(params),
        pointer_array(params),
        pointer_array(grads),
        int32_array(codes),
        int64_array([param.numel() for param in params]),
        pointer_array(indices),
        int64_array([index.numel() for index in indices]),
        pointer_array(masters),
        pointer_array(exp_avgs),
        pointer_array(exp_avg_sqs),
        pointer_array(bases) if has_l1 and bases is not None else None,
        float32_array(settings.scalars()),
    )
    check_status(status, "deftx_masked_adamw_step")
