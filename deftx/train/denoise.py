"""Selection scores: LT-SFT's raw ``|θ1 − θ0|`` and DeFT-X's denoised magnitudes.

DeFT-X replaces each eligible 2-D weight difference Δ = θ1 − θ0 by its truncated-SVD
reconstruction Δ̂ (the top singular components are the signal) and ranks entries by
``|Δ̂|`` in the same global top-K as LT-SFT. Which matrices are denoised is an option
(:class:`~deftx.train.config.DenoiseConfig` ``groups``); every other parameter — 1-D
biases, matrices of groups left out — is scored by its raw ``|Δ|``.

With ``add_back_residual`` the discarded part R = Δ − Δ̂ is magnitude-pruned (its largest
``residual_keep`` fraction of entries kept, per matrix) and added back before ranking:
score = ``|Δ̂ + prune(R)|``.

Scores are fp32 tensors shaped like the parameters; one is alive per parameter, never
one model-sized concatenation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from deftx.ops import lowrank_factors, topk_mask
from deftx.train.config import DenoiseConfig


@dataclass(frozen=True)
class DenoiseRecord:
    """What denoising did to one matrix: its shape, the rank kept, the energy it holds."""

    name: str
    shape: tuple[int, int]
    rank: int
    energy: float


def raw_scores(theta1: torch.Tensor, theta0: torch.Tensor) -> torch.Tensor:
    """``|θ1 − θ0|`` in fp32 (LT-SFT's score), same shape as the parameter."""
    if theta1.shape != theta0.shape:
        raise ValueError(f"θ1 shape {tuple(theta1.shape)} != θ0 shape {tuple(theta0.shape)}")
    return (theta1.float() - theta0.float()).abs_()


def keep_largest(matrix: torch.Tensor, fraction: float) -> torch.Tensor:
    """``matrix`` with all but its ``ceil(fraction * numel)`` largest-magnitude entries zeroed.

    Ties at the threshold are broken by flat index (deterministic), via ``topk_mask``.
    """
    count = min(matrix.numel(), math.ceil(fraction * matrix.numel()))
    if count == 0:
        return torch.zeros_like(matrix)
    (mask,) = topk_mask([matrix.contiguous()], count)
    return torch.where(mask, matrix, torch.zeros_like(matrix))


def denoised_scores(
    theta1: torch.Tensor, theta0: torch.Tensor, config: DenoiseConfig
) -> tuple[torch.Tensor, int, float]:
    """DeFT-X score of one 2-D matrix: ``|Δ̂|`` (or ``|Δ̂ + prune(R)|``), fp32.

    Returns:
        (scores (m, n) fp32, rank kept, fraction of ``||Δ||_F^2`` the kept rank holds).
    """
    if theta1.dim() != 2:
        raise ValueError(f"denoising needs a 2-D matrix, got shape {tuple(theta1.shape)}")
    u, s, vh = lowrank_factors(
        theta1, config.rank, energy=config.energy, base=theta0, method=config.method,
        oversample=config.oversample, n_iter=config.n_iter, seed=config.seed,
    )
    delta = theta1.float() - theta0.float()
    total = float(delta.square().sum(dtype=torch.float64))
    energy = float(s.double().square().sum()) / total if total > 0 else 1.0
    recon = (u * s) @ vh
    if config.add_back_residual:
        recon += keep_largest(delta - recon, config.residual_keep)
    return recon.abs_(), int(s.numel()), energy


def selection_scores(
    theta1: Mapping[str, torch.Tensor],
    theta0: Mapping[str, torch.Tensor],
    groups: Mapping[str, str],
    denoise: DenoiseConfig | None,
    *,
    progress: bool = True,
) -> tuple[dict[str, torch.Tensor], list[DenoiseRecord]]:
    """Per-parameter selection scores for LT-SFT (``denoise=None``) or DeFT-X.

    Args:
        theta1, theta0: name -> tensor for every eligible parameter (same keys).
        groups: name -> parameter group (see :mod:`deftx.train.params`).
        denoise: DeFT-X settings, or None for raw ``|Δ|`` everywhere.
        progress: show a tqdm bar over the parameters.

    Returns:
        (name -> fp32 scores shaped like the parameter, one record per denoised matrix).
    """
    if set(theta1) != set(theta0):
        raise ValueError("θ1 and θ0 must hold the same parameter names")
    scores: dict[str, torch.Tensor] = {}
    records: list[DenoiseRecord] = []
    bar = tqdm(list(theta1), desc="scoring (deft-x)" if denoise else "scoring (|Δ|)",
               disable=not progress, leave=False)
    for name in bar:
        w1, w0 = theta1[name], theta0[name]
        if denoise is not None and w1.dim() == 2 and groups[name] in denoise.groups:
            scores[name], rank, energy = denoised_scores(w1, w0, denoise)
            records.append(DenoiseRecord(name, (int(w1.shape[0]), int(w1.shape[1])), rank, energy))
        else:
            scores[name] = raw_scores(w1, w0)
    return scores, records
