"""Selection scores: LT-SFT's raw ``|θ1 − θ0|`` and DeFT-X's denoised magnitudes.

DeFT-X replaces each eligible 2-D weight difference Δ = θ1 − θ0 by its truncated-SVD
reconstruction Δ̂ (the top singular components are the signal) and ranks entries by
``|Δ̂|`` in the same global top-K as LT-SFT. Which matrices are denoised is an option
(:class:`~deftx.train.config.DenoiseConfig` ``groups``); every other parameter — 1-D
biases, matrices of groups left out — is scored by its raw ``|Δ|``.

With ``add_back_residual`` the discarded part R = Δ − Δ̂ is magnitude-pruned (its largest
``residual_keep`` fraction of entries kept, per matrix) and added back before ranking:
score = ``|Δ̂ + prune(R)|``.

The denoised matrices go through the batched ops of :mod:`deftx.ops.denoise`: matrices
are grouped by shape, each group is one randomized-SVD call (one kernel launch per product
on the Triton backend, Δ never formed, one seeded sketch per width shared by the group),
and the scores ``|U_r S_r Vh_r|`` are one fused launch per shape, the only (m, n) buffer
written per matrix. The residual variant forms Δ and Δ̂ in torch (it needs both).
Products run at the ops' default IEEE fp32 precision: ``DenoiseConfig`` has no precision
field, because a new field changes the content digest of every DeFT-X branch in the step
store (``to_plain`` of the selection), so cached runs would be recomputed.

Denoised scores are fp32 tensors shaped like the parameters, never one model-sized
concatenation; raw scores are not computed at all: a :class:`~deftx.train.select.Difference`
of (θ1, θ0), which the selection ranks by ``|θ1 − θ0|`` inside its passes over the data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from deftx.ops import LowRankFactors, reconstruct_magnitudes, topk_mask
from deftx.ops.denoise import factors_batched
from deftx.train.config import DenoiseConfig
from deftx.train.select import Difference, Score


@dataclass(frozen=True)
class DenoiseRecord:
    """What denoising did to one matrix: its shape, the rank kept, the energy it holds."""

    name: str
    shape: tuple[int, int]
    rank: int
    energy: float | None


def keep_largest(matrix: torch.Tensor, fraction: float) -> torch.Tensor:
    """``matrix`` with all but its ``ceil(fraction * numel)`` largest-magnitude entries zeroed.

    Ties at the threshold are broken by flat index (deterministic), via ``topk_mask``.
    """
    count = min(matrix.numel(), math.ceil(fraction * matrix.numel()))
    if count == 0:
        return torch.zeros_like(matrix)
    (mask,) = topk_mask([matrix.contiguous()], count)
    return torch.where(mask, matrix, torch.zeros_like(matrix))


def _factors(
    theta1: Sequence[torch.Tensor], theta0: Sequence[torch.Tensor], config: DenoiseConfig
) -> list[LowRankFactors]:
    """Truncated-SVD factors of every θ1 − θ0 (batched by shape), with the energy they hold."""
    return factors_batched(theta1, theta0, config.lowrank())


def _with_residual(
    theta1: torch.Tensor, theta0: torch.Tensor, factors: LowRankFactors, keep: float
) -> torch.Tensor:
    """``|Δ̂ + prune(Δ − Δ̂)|`` (m, n) fp32: forms Δ and Δ̂ in torch (the residual needs both)."""
    delta = theta1.float() - theta0.float()
    recon = (factors.u * factors.s) @ factors.vh
    recon += keep_largest(delta - recon, keep)
    return recon.abs_()


def matrix_scores(
    theta1: Sequence[torch.Tensor], theta0: Sequence[torch.Tensor], config: DenoiseConfig
) -> list[tuple[torch.Tensor, int, float | None]]:
    """DeFT-X scores of many 2-D matrices, batched: one rSVD call and one fused
    ``|U S Vh|`` call per shape group (see :func:`deftx.ops.lowrank_factors_batched`).

    Returns:
        Per matrix, in order: (scores (m, n) fp32, rank kept, fraction of ``||Δ||_F^2``
        the kept rank holds).
    """
    for w1 in theta1:
        if w1.dim() != 2:
            raise ValueError(f"denoising needs a 2-D matrix, got shape {tuple(w1.shape)}")
    factors = _factors(theta1, theta0, config)
    if config.add_back_residual:
        keep = config.residual_keep
        scores = [_with_residual(a, b, f, keep) for a, b, f in zip(theta1, theta0, factors, strict=True)]
    else:
        scores = reconstruct_magnitudes(factors)
    return [(score, int(f.s.numel()), f.energy) for score, f in zip(scores, factors, strict=True)]


MatrixScorer = Callable[[Sequence[torch.Tensor], Sequence[torch.Tensor], DenoiseConfig],
                        list[tuple[torch.Tensor, int, float | None]]]
"""Scores many 2-D (θ1, θ0) pairs: per matrix (``|Δ̂|``, rank kept, energy held or None), like
:func:`matrix_scores` (:func:`deftx.distributed.rsvd.matrix_scores_sharded` for row-sharded DTensors)."""


def denoised_scores(
    theta1: torch.Tensor, theta0: torch.Tensor, config: DenoiseConfig
) -> tuple[torch.Tensor, int, float | None]:
    """DeFT-X score of one 2-D matrix: ``|Δ̂|`` (or ``|Δ̂ + prune(R)|``), fp32.

    Returns:
        (scores (m, n) fp32, rank kept, fraction of ``||Δ||_F^2`` the kept rank holds).
    """
    return matrix_scores([theta1], [theta0], config)[0]


def selection_scores(
    theta1: Mapping[str, torch.Tensor],
    theta0: Mapping[str, torch.Tensor],
    groups: Mapping[str, str],
    denoise: DenoiseConfig | None,
    *,
    progress: bool = True,
    score_matrices: MatrixScorer = matrix_scores,
) -> tuple[dict[str, Score], list[DenoiseRecord]]:
    """Per-parameter selection scores for LT-SFT (``denoise=None``) or DeFT-X.

    The denoised matrices are scored together (:func:`matrix_scores`: batched by shape,
    Δ never formed on the Triton backend); every other parameter by its raw ``|Δ|``, handed
    on as a :class:`~deftx.train.select.Difference` (never materialised).

    Args:
        theta1, theta0: name -> tensor for every eligible parameter (same keys).
        groups: name -> parameter group (see :mod:`deftx.train.params`).
        denoise: DeFT-X settings, or None for raw ``|Δ|`` everywhere.
        progress: a tqdm bar over the denoised matrices (filled when their batched scoring
            returns; raw scores take no time here).
        score_matrices: how the denoised matrices are scored (default :func:`matrix_scores`).

    Returns:
        (name -> fp32 scores shaped like the parameter or a ``Difference``, one record per
        denoised matrix, in ``theta1``'s order), for :func:`~deftx.train.select.select_top_k`.
    """
    if set(theta1) != set(theta0):
        raise ValueError("θ1 and θ0 must hold the same parameter names")
    denoised = [
        name for name in theta1
        if denoise is not None and theta1[name].dim() == 2 and groups[name] in denoise.groups
    ]
    scores: dict[str, Score] = {}
    records: list[DenoiseRecord] = []
    if denoised:
        with tqdm(total=len(denoised), desc="scoring (DeFT-X)", disable=not progress, leave=False) as bar:
            batch = score_matrices([theta1[n] for n in denoised], [theta0[n] for n in denoised], denoise)
            bar.update(len(denoised))
        for name, (score, rank, energy) in zip(denoised, batch, strict=True):
            scores[name] = score
            shape = theta1[name].shape
            records.append(DenoiseRecord(name, (int(shape[0]), int(shape[1])), rank, energy))
    for name in theta1:
        scores.setdefault(name, Difference(theta1[name], theta0[name]))
    return {name: scores[name] for name in theta1}, records
