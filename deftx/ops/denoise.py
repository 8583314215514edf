"""Public op: low-rank denoising of a weight difference (DeFT-X's truncated SVD).

Two paths:

* ``method="exact"``: ``torch.linalg.svd`` of Δ (O(m n min(m, n)) flops).
* ``method="randomized"`` (Halko, Martinsson & Tropp 2011, Alg. 4.4): sketch
  ``q = rank + oversample`` columns with a seeded Gaussian Ω, ``n_iter`` power
  iterations with re-orthonormalisation, then the SVD of the small ``q x n`` matrix.
  Its expected spectral error is at most
  ``(1 + 4 sqrt(q) / (oversample - 1) * sqrt(min(m, n)))**(1 / (2 n_iter + 1)) * σ_{rank+1}``,
  so with a decaying spectrum and ``n_iter = 2`` the top components are close to exact.
  The result is deterministic for a given ``seed`` and the same on every device (Ω is
  drawn on the CPU).

Rank policy: a fixed ``rank``, or ``energy``: the smallest rank whose singular values
hold that fraction of ``||Δ||_F^2`` (the randomized path widens its sketch until the
captured energy reaches the target or the sketch covers the full spectrum).
"""

from __future__ import annotations

import torch

from deftx.ops.dispatch import backend_for
from deftx.ops.validation import check_finite, check_float_dtype

INITIAL_ENERGY_SKETCH = 64


def gaussian_sketch(n: int, q: int, seed: int, device: torch.device) -> torch.Tensor:
    """Seeded Gaussian test matrix Ω (n, q) fp32, drawn on the CPU so every device agrees."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, q, generator=generator, dtype=torch.float32).to(device)


def energy_rank(singular_values: torch.Tensor, total_energy: float, energy: float) -> int | None:
    """Smallest r with ``sum(S[:r]**2) >= energy * total_energy``; None if S falls short."""
    if total_energy <= 0.0:
        return 0
    captured = torch.cumsum(singular_values.double() ** 2, 0)
    reached = (captured >= energy * total_energy).nonzero()
    return int(reached[0]) + 1 if reached.numel() else None


def frobenius_energy(matrix: torch.Tensor, base: torch.Tensor | None) -> float:
    """``||matrix - base||_F^2`` in fp64, row block by row block (no full Δ copy)."""
    total = 0.0
    rows = max(1, (1 << 22) // max(matrix.shape[1], 1))
    for start in range(0, matrix.shape[0], rows):
        block = matrix[start : start + rows].double()
        if base is not None:
            block = block - base[start : start + rows].double()
        total += float(block.square().sum())
    return total


def _check_inputs(matrix: torch.Tensor, base: torch.Tensor | None, rank, energy) -> None:
    if not isinstance(matrix, torch.Tensor) or matrix.dim() != 2:
        shape = tuple(matrix.shape) if isinstance(matrix, torch.Tensor) else type(matrix).__name__
        raise ValueError(f"lowrank_denoise: matrix must be a 2-D tensor, got {shape}")
    check_float_dtype(matrix, "lowrank_denoise: matrix")
    check_finite(matrix, "lowrank_denoise: matrix")
    if base is not None:
        check_float_dtype(base, "lowrank_denoise: base")
        check_finite(base, "lowrank_denoise: base")
        if base.shape != matrix.shape:
            raise ValueError(f"lowrank_denoise: base shape {tuple(base.shape)} != matrix shape {tuple(matrix.shape)}")
        if base.device != matrix.device:
            raise ValueError(f"lowrank_denoise: base on {base.device}, matrix on {matrix.device}")
    if (rank is None) == (energy is None):
        raise ValueError("lowrank_denoise: give exactly one of rank= or energy=")
    if rank is not None:
        if isinstance(rank, bool) or not isinstance(rank, int):
            raise TypeError(f"lowrank_denoise: rank must be an int, got {type(rank).__name__}")
        if not 0 <= rank <= min(matrix.shape):
            raise ValueError(f"lowrank_denoise: rank {rank} is outside [0, {min(matrix.shape)}]")
    if energy is not None and not 0.0 < float(energy) <= 1.0:
        raise ValueError(f"lowrank_denoise: energy must be in (0, 1], got {energy}")


def _exact_factors(matrix, base, rank, energy):
    delta = matrix.float() - base.float() if base is not None else matrix.float()
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    if rank is None:
        rank = energy_rank(s, float(s.double().square().sum()), energy)
    return u[:, :rank], s[:rank], vh[:rank]


def _randomized_factors(matrix, base, rank, energy, oversample, n_iter, seed, backend):
    full = min(matrix.shape)
    ops = backend_for("rsvd", matrix.device, backend)
    w1, w0 = matrix.contiguous(), base.contiguous() if base is not None else None
    if rank is not None:
        q = min(rank + oversample, full)
        u, s, vh = ops.randomized_svd(w1, w0, gaussian_sketch(matrix.shape[1], q, seed, matrix.device), n_iter)
        return u[:, :rank], s[:rank], vh[:rank]
    total = frobenius_energy(matrix, base)
    q = min(INITIAL_ENERGY_SKETCH, full)
    while True:
        omega = gaussian_sketch(matrix.shape[1], q, seed, matrix.device)
        u, s, vh = ops.randomized_svd(w1, w0, omega, n_iter)
        r = energy_rank(s, total, energy)
        if r is not None or q == full:
            r = q if r is None else r
            return u[:, :r], s[:r], vh[:r]
        q = min(2 * q, full)


def lowrank_factors(
    matrix: torch.Tensor,
    rank: int | None = None,
    *,
    energy: float | None = None,
    base: torch.Tensor | None = None,
    method: str = "randomized",
    oversample: int = 8,
    n_iter: int = 2,
    seed: int = 0,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Truncated SVD factors of Δ = matrix − base: U (m, r), S (r,), Vh (r, n), fp32."""
    _check_inputs(matrix, base, rank, energy)
    if min(matrix.shape) == 0:
        m, n = matrix.shape
        dev = matrix.device
        return torch.zeros(m, 0, device=dev), torch.zeros(0, device=dev), torch.zeros(0, n, device=dev)
    if method == "exact":
        return _exact_factors(matrix, base, rank, energy)
    if method == "randomized":
        if oversample < 0 or n_iter < 0:
            raise ValueError("lowrank_denoise: oversample and n_iter must be >= 0")
        return _randomized_factors(matrix, base, rank, energy, oversample, n_iter, seed, backend)
    raise ValueError(f"lowrank_denoise: method must be 'exact' or 'randomized', got {method!r}")


def lowrank_denoise(
    matrix: torch.Tensor,
    rank: int | None = None,
    *,
    energy: float | None = None,
    base: torch.Tensor | None = None,
    method: str = "randomized",
    oversample: int = 8,
    n_iter: int = 2,
    seed: int = 0,
    return_factors: bool = False,
    backend: str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rank-r reconstruction of Δ = matrix − base (or of ``matrix`` when ``base`` is None).

    Args:
        matrix: (m, n) float tensor (θ1 for DeFT-X).
        rank: keep this many singular components; or
        energy: keep the fewest components holding this fraction of ``||Δ||_F^2``.
        base: (m, n) tensor subtracted first (θ0); the Triton path fuses the subtraction.
        method: ``"randomized"`` (default) or ``"exact"``.
        oversample, n_iter, seed: randomized sketch settings (see module docstring).
        return_factors: also return U (m, r), S (r,), Vh (r, n).

    Returns:
        The (m, n) fp32 reconstruction U diag(S) Vh, or ``(recon, U, S, Vh)``.
    """
    u, s, vh = lowrank_factors(
        matrix,
        rank,
        energy=energy,
        base=base,
        method=method,
        oversample=oversample,
        n_iter=n_iter,
        seed=seed,
        backend=backend,
    )
    recon = (u * s) @ vh
    return (recon, u, s, vh) if return_factors else recon


def denoised_magnitudes(
    matrix: torch.Tensor,
    base: torch.Tensor | None = None,
    *,
    rank: int | None = None,
    energy: float | None = None,
    method: str = "randomized",
    oversample: int = 8,
    n_iter: int = 2,
    seed: int = 0,
    backend: str | None = None,
) -> torch.Tensor:
    """|rank-r reconstruction of Δ|, (m, n) fp32: DeFT-X's selection score for one matrix.

    On CUDA the reconstruction and the absolute value are one fused kernel, so the score
    is the only (m, n) buffer written.
    """
    u, s, vh = lowrank_factors(
        matrix,
        rank,
        energy=energy,
        base=base,
        method=method,
        oversample=oversample,
        n_iter=n_iter,
        seed=seed,
        backend=backend,
    )
    if s.numel() == 0:
        return torch.zeros(matrix.shape, dtype=torch.float32, device=matrix.device)
    ops = backend_for("rsvd", matrix.device, backend)
    return ops.reconstruct_abs((u * s).contiguous(), vh.contiguous())
