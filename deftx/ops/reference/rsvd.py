"""Torch reference of the randomized SVD of a weight difference (Halko et al., 2011)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def difference(w1: torch.Tensor, w0: torch.Tensor | None) -> torch.Tensor:
    """Δ = f32(w1) − f32(w0) (or f32(w1)), shape (m, n), fp32."""
    delta = w1.float()
    return delta - w0.float() if w0 is not None else delta.clone()


def orthonormal_basis(y: torch.Tensor) -> torch.Tensor:
    """Q of the reduced QR of ``y`` (m, q) -> (m, q)."""
    return torch.linalg.qr(y, mode="reduced").Q


def randomized_svd(
    w1: torch.Tensor, w0: torch.Tensor | None, omega: torch.Tensor, n_iter: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Randomized SVD of Δ = w1 − w0 with sketch ``omega`` (n, q) and ``n_iter`` power iterations.

    Returns U (m, q), S (q,), Vh (q, n), all fp32.
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
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """:func:`randomized_svd` for each matrix."""
    return [randomized_svd(a, b, o, n_iter) for a, b, o in zip(w1s, w0s, omegas, strict=True)]


def reconstruct_abs(us: torch.Tensor, vh: torch.Tensor) -> torch.Tensor:
    """|us @ vh|: (m, r) x (r, n) -> (m, n) fp32."""
    return (us.float() @ vh.float()).abs_()
