"""Synthetic tensors for the benchmarks, generated on the target device and seeded per tensor.

Every generator takes the tensor's name: the seed is ``crc32(name) + seed``, so a tensor
has the same values whether its set is generated whole or chunk by chunk (streaming).
"""

from __future__ import annotations

import zlib

import torch

from deftx.perf.shapes import TensorShape

WEIGHT_STD = 0.02
"""Standard deviation of the synthetic pretrained weights θ0 (BERT-style initialisation)."""

DIFF_SPECTRUM_TERMS_PER_RANK = 2
"""A synthetic weight difference has ``2 * rank`` signal components (see :func:`lowrank_difference`)."""

DIFF_NOISE_SHARE = 0.05
"""Frobenius norm of the noise in a synthetic difference, relative to its signal's."""


def generator(name: str, seed: int, device: torch.device, salt: str = "") -> torch.Generator:
    """A generator on ``device`` seeded by ``crc32(salt + name) + seed``."""
    return torch.Generator(device=device).manual_seed(zlib.crc32(f"{salt}{name}".encode()) + seed)


def normal(
    shape: TensorShape, seed: int, device: torch.device, dtype: torch.dtype, std: float, salt: str = ""
) -> torch.Tensor:
    """``std * N(0, 1)`` of ``shape.shape`` in ``dtype`` on ``device``."""
    out = torch.empty(shape.shape, dtype=dtype, device=device)
    return out.normal_(0.0, std, generator=generator(shape.name, seed, device, salt))


def weights(shape: TensorShape, seed: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Synthetic pretrained weights θ0: ``N(0, 0.02²)``."""
    return normal(shape, seed, device, dtype, WEIGHT_STD, salt="theta0:")


def sparse_indices(shape: TensorShape, fraction: float, seed: int, device: torch.device) -> torch.Tensor:
    """Sorted unique flat int64 indices at uniformly random positions, about ``fraction * numel``.

    ``round(fraction * numel)`` positions are drawn with replacement and deduplicated
    (costs O(k log k), not a pass over all entries), so the count falls short of the
    target by the collisions, a share of about ``fraction / 2``. Uniform positions are
    the worst case for sector locality, which is what the traffic models assume.
    """
    draws = round(fraction * shape.numel)
    if draws == 0:
        return torch.empty(0, dtype=torch.int64, device=device)
    gen = generator(shape.name, seed, device, "mask:")
    return torch.randint(shape.numel, (draws,), generator=gen, device=device).unique(sorted=True)


def lowrank_difference(shape: TensorShape, rank: int, seed: int, device: torch.device) -> torch.Tensor:
    """A synthetic fine-tuning difference Δ (m, n) fp32: low-rank signal plus noise.

    ``Δ = U diag(σ) V + E``: ``2 * rank`` components with ``σ_i = 1 / (1 + i)`` (a
    decaying spectrum, so a rank-``rank`` truncation is meaningful), U and V with
    unit-variance Gaussian entries scaled to unit-norm columns/rows, and Gaussian noise
    ``E`` with ``||E||_F = 0.05 ||signal||_F``. Scaled so entries are ~1e-3.
    """
    m, n = shape.shape
    terms = max(1, min(DIFF_SPECTRUM_TERMS_PER_RANK * rank, m, n))
    gen = generator(shape.name, seed, device, "delta:")
    sigma = 1.0 / torch.arange(1, terms + 1, device=device, dtype=torch.float32)
    u = torch.randn(m, terms, generator=gen, device=device) / m**0.5
    v = torch.randn(terms, n, generator=gen, device=device) / n**0.5
    delta = (u * sigma) @ v
    signal_norm = float(sigma.square().sum().sqrt())
    noise_std = DIFF_NOISE_SHARE * signal_norm / (m * n) ** 0.5
    delta.add_(torch.randn(m, n, generator=gen, device=device), alpha=noise_std)
    return delta.mul_(1e-3 * (m * n) ** 0.5 / signal_norm)
