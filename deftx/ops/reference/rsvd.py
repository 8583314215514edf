"""Torch reference of the randomized SVD of a weight difference (Halko et al., 2011).

The same functions as ``deftx.kernels.rsvd``. The reference materialises each Δ in fp32,
one matrix at a time (so its memory stays that of one matrix), and always multiplies in
fp32: ``precision`` selects the Triton kernels' product precision and is accepted here
only so that every backend takes the same arguments.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

ENERGY_ROWS_ELEMENTS = 1 << 22
"""Entries of Δ widened to fp64 at a time by :func:`difference_energy`."""


def difference(w1: torch.Tensor, w0: torch.Tensor | None) -> torch.Tensor:
    """Δ = f32(w1) − f32(w0) (or f32(w1)), shape (m, n), fp32."""
    delta = w1.float()
    return delta - w0.float() if w0 is not None else delta.clone()


def orthonormal_basis(y: torch.Tensor) -> torch.Tensor:
    """Q of the reduced QR of ``y`` (m, q) -> (m, q)."""
    return torch.linalg.qr(y, mode="reduced").Q


def randomized_svd(
    w1: torch.Tensor, w0: torch.Tensor | None, omega: torch.Tensor, n_iter: int, *, precision: str = "fp32"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Randomized SVD of Δ = w1 − w0 with sketch ``omega`` (n, q) and ``n_iter`` power iterations.

    Returns U (m, k), S (k,), Vh (k, n), all fp32, k = min(m, n, q).
    """
    delta = difference(w1, w0)
    q = orthonormal_basis(delta @ omega)
    for _ in range(n_iter):
        z = orthonormal_basis(delta.T @ q)
        q = orthonormal_basis(delta @ z)
    u_small, s, vh = torch.linalg.svd(q.T @ delta, full_matrices=False)
    return q @ u_small, s, vh


def randomized_svd_batched(
    w1s: Sequence[torch.Tensor],
    w0s: Sequence[torch.Tensor | None],
    omegas: Sequence[torch.Tensor],
    n_iter: int,
    *,
    precision: str = "fp32",
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """:func:`randomized_svd` for each matrix."""
    return [randomized_svd(a, b, o, n_iter) for a, b, o in zip(w1s, w0s, omegas, strict=True)]


def randomized_svd_group(
    w1s: Sequence[torch.Tensor],
    w0s: Sequence[torch.Tensor] | None,
    omega: torch.Tensor,
    n_iter: int,
    *,
    precision: str = "fp32",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`randomized_svd` of G same-shape matrices with one shared sketch ``omega`` (n, q).

    Returns U (G, m, k), S (G, k), Vh (G, k, n), fp32, contiguous, k = min(m, n, q).
    """
    bases = list(w0s) if w0s is not None else [None] * len(w1s)
    factors = [randomized_svd(w1, w0, omega, n_iter) for w1, w0 in zip(w1s, bases, strict=True)]
    return tuple(torch.stack(part) for part in zip(*factors, strict=True))


def _energy(w1: torch.Tensor, w0: torch.Tensor | None) -> torch.Tensor:
    """``||Δ||_F²`` as a 0-d fp64 tensor, widening a block of rows at a time (no full Δ copy)."""
    rows = max(1, ENERGY_ROWS_ELEMENTS // max(w1.shape[1], 1))
    total = torch.zeros((), dtype=torch.float64, device=w1.device)
    for start in range(0, w1.shape[0], rows):
        block = w1[start : start + rows].double()
        if w0 is not None:
            block = block - w0[start : start + rows].double()
        total += block.square().sum()
    return total


def difference_energy(w1s: Sequence[torch.Tensor], w0s: Sequence[torch.Tensor] | None) -> torch.Tensor:
    """``||Δ_g||_F²`` of each (m, n) difference, in fp64: (G,) on the tensors' device, no host sync."""
    if not w1s:
        return torch.zeros(0, dtype=torch.float64)
    bases = list(w0s) if w0s is not None else [None] * len(w1s)
    return torch.stack([_energy(w1, w0) for w1, w0 in zip(w1s, bases, strict=True)])


def reconstruct_magnitudes(
    us: Sequence[torch.Tensor],
    ss: Sequence[torch.Tensor],
    vhs: Sequence[torch.Tensor],
    *,
    precision: str = "fp32",
) -> list[torch.Tensor]:
    """``|u diag(s) vh|`` for each triple: (m, r) x (r,) x (r, n) -> new (m, n) fp32."""
    return [((u.float() * s.float()) @ vh.float()).abs_() for u, s, vh in zip(us, ss, vhs, strict=True)]


def reconstruct_abs(us: torch.Tensor, vh: torch.Tensor) -> torch.Tensor:
    """|us @ vh|: (m, r) x (r, n) -> (m, n) fp32."""
    return (us.float() @ vh.float()).abs_()
