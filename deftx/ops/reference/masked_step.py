"""Torch reference of the masked AdamW step: optimizer state only for the selected entries."""

from __future__ import annotations

import torch

from deftx.ops.settings import AdamWSettings, MaskedStepTensors


@torch.no_grad()
def masked_adamw_step_(tensors: MaskedStepTensors, settings: AdamWSettings) -> None:
    """AdamW on the K_t entries ``indices[t]`` of each parameter, fp32 master values:
    ``params[t]`` receives ``cast(master)`` at the indices and nothing elsewhere.

    Outside autograd, as the other backends write through raw pointers (and torch.optim steps):
    parameters that require grad are written like detached ones."""
    params, grads, indices, masters, exp_avgs, exp_avg_sqs, bases = tensors
    beta1, one_minus_beta1, beta2, one_minus_beta2, decay, lr, bias1, bias2, eps, l1 = settings.scalars()
    for t, (param, grad, idx) in enumerate(zip(params, grads, indices, strict=True)):
        if idx.numel() == 0:
            continue
        master, m, v = masters[t], exp_avgs[t], exp_avg_sqs[t]
        g = grad.reshape(-1)[idx].float()
        if l1 != 0.0 and bases is not None:
            g = g + l1 * torch.sign(master - bases[t])
        m.mul_(beta1).add_(one_minus_beta1 * g)
        v.mul_(beta2).add_(one_minus_beta2 * g * g)
        master.mul_(decay)
        master.sub_(lr * (m / bias1) / ((v / bias2).sqrt() + eps))
        param.view(-1)[idx] = master.to(param.dtype)
