"""Randomized SVD of a row-sharded weight difference Δ = θ1 − θ0 (DeFT-X's denoising, sharded).

Rank r holds the row block Δ_r (m_r × n) of Δ (``Shard(0)``, as FSDP2 shards a weight).
The steps of the single-process op (:mod:`deftx.ops.denoise`) become:

* sketch: ``Y_r = Δ_r Ω`` locally, with the same seeded Ω (n × q) on every rank, drawn by
  :func:`deftx.ops.denoise.gaussian_sketch` exactly as the single-process op draws it;
* orthonormalise the row-sharded Y (m × q): Cholesky-QR with the Gram matrix ``YᵀY``
  summed over ranks in fp64 (one ``all_reduce`` of q² doubles), done twice (CholeskyQR2)
  so Q is orthonormal to working precision; if the Gram matrix is singular (Δ of rank < q,
  e.g. Δ = 0), a rank-revealing eigen-decomposition of it replaces the Cholesky factor
  and the null directions become zero columns;
* power iterations: ``ΔᵀQ = Σ_r Δ_rᵀ Q_r`` (one ``all_reduce`` of n × q fp32), whose
  orthonormal basis Z is computed replicated (``torch.linalg.qr``), then ``Y_r = Δ_r Z``;
* ``B = QᵀΔ = Σ_r Q_rᵀ Δ_r`` (one ``all_reduce`` of q × n), ``svd(B)`` replicated,
  ``U_r = Q_r U_B`` stays sharded like Δ.

The result depends only on span(Q) at each step, not on the basis chosen for it, so it
equals the single-process result up to fp32 rounding (and the sign of each singular
pair): singular values and the reconstruction ``U S Vh`` agree to ~1e-6 relative (of σ₁
and of ``||Δ||_F``) when the spectrum has a gap after the kept rank; the tests hold them
to 1e-5.

Every rank must pass the same rank / energy policy, ``oversample``, ``n_iter`` and seed (Ω is drawn
from the seed on each rank): one small all-reduce checks it first (:func:`sketch_settings`), and
ranks that differ all raise rather than each sketch its rows with another Ω.

Communication per call: ``(n_iter + 1) · 2 · 8 q²`` bytes of Gram matrices plus
``(n_iter + 1) · 4 n q`` bytes of sketches, never the m × n matrix, and the
:data:`SETTINGS_BYTES` of the settings check.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, Replicate

from deftx.distributed import comm
from deftx.distributed.topk import mesh_of
from deftx.ops.denoise import (
    INITIAL_ENERGY_SKETCH,
    energy_rank,
    energy_sketch_width,
    gaussian_sketch,
    lowrank_factors,
)
from deftx.ops.validation import check_float_dtype
from deftx.train.config import DenoiseConfig

GRAM_PASSES = 2
SETTINGS_BYTES = 8 * 6 * 6
"""Payload of the settings check: six settings, six int64 agreement terms each."""


def _local(t: DTensor) -> torch.Tensor:
    with torch.no_grad():
        return t.to_local().detach()


def local_difference(w1: DTensor, w0: DTensor | None) -> torch.Tensor:
    """This rank's rows of Δ = f32(w1) − f32(w0) (or f32(w1)), fp32 (m_r, n)."""
    delta = _local(w1).float()
    return delta - _local(w0).float() if w0 is not None else delta.clone()


def _zero_null_directions(gram: torch.Tensor) -> torch.Tensor:
    """(q, q) W with YW orthonormal on the range of Y and zero on its null space (from Gram = YᵀY)."""
    eigenvalues, vectors = torch.linalg.eigh(gram)
    cutoff = eigenvalues.max().clamp_min(0) * gram.shape[0] * torch.finfo(torch.float64).eps
    kept = eigenvalues > cutoff
    return vectors * torch.where(kept, eigenvalues.clamp_min(cutoff).rsqrt(), torch.zeros_like(eigenvalues))


def orthonormal_rows(y: torch.Tensor, group: dist.ProcessGroup, what: str) -> torch.Tensor:
    """Q (m_r, q) fp32: an orthonormal basis of the row-sharded Y (CholeskyQR2, fp64 Gram).

    Raises:
        ValueError: on every rank, when the Gram matrix is not finite (NaN or Inf in Y); names ``what``.
    """
    q = y.double()
    for _ in range(GRAM_PASSES):
        gram = comm.all_reduce_sum(q.T @ q, group, "rsvd gram")
        if not bool(torch.isfinite(gram).all()):
            raise ValueError(f"{what} is not finite (NaN or Inf in θ1 or θ0, or a difference that overflows fp32)")
        upper, info = torch.linalg.cholesky_ex(gram, upper=True)
        if int(info) == 0:
            q = torch.linalg.solve_triangular(upper, q, upper=True, left=False)
        else:
            q = q @ _zero_null_directions(gram)
    return q.float()


def randomized_svd_sharded(
    w1: DTensor, w0: DTensor | None, omega: torch.Tensor, n_iter: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Randomized SVD of the row-sharded Δ = w1 − w0 with sketch ``omega`` (n, q) fp32.

    Collective over the mesh of ``w1`` (Shard(0) on a 1-D mesh). Returns this rank's rows
    U_r (m_r, q) of U, and S (q,), Vh (q, n), replicated (plain tensors), all fp32.

    Raises:
        ValueError: on every rank, when Δ holds a NaN or an Inf on any rank.
    """
    group = mesh_of([w1], "randomized_svd_sharded").get_group()
    what = f"randomized_svd_sharded: Δ = θ1 − θ0 of shape {tuple(w1.shape)}"
    delta = local_difference(w1, w0)
    omega = omega.to(delta.device, torch.float32)
    q = orthonormal_rows(delta @ omega, group, what)
    for _ in range(n_iter):
        z = torch.linalg.qr(comm.all_reduce_sum(delta.T @ q, group, "rsvd sketch Δᵀ Q"), mode="reduced").Q
        q = orthonormal_rows(delta @ z, group, what)
    b = comm.all_reduce_sum(q.T @ delta, group, "rsvd B = Qᵀ Δ")
    u_small, s, vh = torch.linalg.svd(b, full_matrices=False)
    return q @ u_small, s, vh


def _check_pair(matrix: DTensor, base: DTensor | None) -> None:
    if not isinstance(matrix, DTensor) or matrix.dim() != 2:
        raise ValueError("lowrank_factors_sharded: matrix must be a 2-D DTensor")
    check_float_dtype(matrix, "lowrank_factors_sharded: matrix")
    if base is not None:
        check_float_dtype(base, "lowrank_factors_sharded: base")
        if base.dtype != matrix.dtype:
            raise TypeError(f"lowrank_factors_sharded: base has dtype {base.dtype}, its matrix {matrix.dtype}; "
                            "cast one of them")
        if not isinstance(base, DTensor) or base.shape != matrix.shape or base.placements != matrix.placements:
            raise ValueError("lowrank_factors_sharded: base must be a DTensor with the matrix's shape and placements")
        mesh_of([matrix, base], "lowrank_factors_sharded")


def _check_sketch(rank: int | None, oversample: int, n_iter: int) -> None:
    """The single-process op's refusals: a rank that is not an int, a negative oversample or n_iter."""
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int)):
        raise TypeError(f"lowrank_factors_sharded: rank must be an int, got {type(rank).__name__}")
    for name, value in (("oversample", oversample), ("n_iter", n_iter)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"lowrank_factors_sharded: {name} must be an int >= 0, got {value!r}")


def sketch_settings(rank: int | None, energy: float | None, oversample: int, n_iter: int, seed: int,
                    has_base: bool) -> dict[str, int]:
    """What every rank of a sharded rSVD must pass alike, as ints in [0, 2**63): the sketch Ω is drawn
    from ``seed`` on each rank, and the rank / energy policy, ``oversample`` and ``n_iter`` set the
    sizes and the number of the collectives (the energy by its float64 bits, a seed by its CRC-32)."""
    energy_bits = 0 if energy is None else struct.unpack("<q", struct.pack("<d", float(energy)))[0] & (2**63 - 1)
    return {"rank": 0 if rank is None else rank + 1, "energy": energy_bits, "oversample": oversample,
            "n_iter": n_iter, "seed": zlib.crc32(str(int(seed)).encode()), "base": int(has_base)}


def frobenius_energy_sharded(matrix: DTensor, base: DTensor | None) -> float:
    """``||matrix − base||_F²`` in fp64, summed over the row shards (one 8-byte all_reduce)."""
    local = local_difference(matrix, base).double().square().sum().reshape(1)
    return float(comm.all_reduce_sum(local, matrix.device_mesh.get_group(), "rsvd energy")[0])


def lowrank_factors_sharded(
    matrix: DTensor,
    rank: int | None = None,
    *,
    energy: float | None = None,
    base: DTensor | None = None,
    oversample: int = 8,
    n_iter: int = 2,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`deftx.ops.lowrank_factors` (randomized) of a row-sharded matrix difference.

    Same rank / energy policies, sketch sizes and seeded Ω as the single-process op.
    A replicated matrix is handed to the single-process op (every rank computes it).

    Returns:
        This rank's rows U_r (m_r, r), and S (r,), Vh (r, n) replicated, fp32.
    """
    _check_pair(matrix, base)
    _check_sketch(rank, oversample, n_iter)
    if isinstance(matrix.placements[0], Replicate):
        return lowrank_factors(
            _local(matrix),
            rank,
            energy=energy,
            base=None if base is None else _local(base),
            oversample=oversample,
            n_iter=n_iter,
            seed=seed,
        )
    mesh_of([matrix], "lowrank_factors_sharded")
    m, n = matrix.shape
    full = min(m, n)
    if full > 0:  # an empty matrix issues no collective
        settings = sketch_settings(rank, energy, oversample, n_iter, seed, base is not None)
        comm.check_agreement(settings, matrix.device_mesh.get_group(), "lowrank_factors_sharded",
                             _local(matrix).device, "rsvd settings check")
    if (rank is None) == (energy is None):
        raise ValueError("lowrank_factors_sharded: give exactly one of rank= or energy=")
    if rank is not None and not 0 <= rank <= full:
        raise ValueError(f"lowrank_factors_sharded: rank {rank} is outside [0, {full}]")
    if energy is not None and not 0.0 < energy <= 1.0:
        raise ValueError(f"lowrank_factors_sharded: energy must be in (0, 1], got {energy}")
    device = _local(matrix).device
    if full == 0:
        return (
            torch.zeros(_local(matrix).shape[0], 0, device=device),
            torch.zeros(0, device=device),
            torch.zeros(0, n, device=device),
        )
    if rank is not None:
        q = min(rank + oversample, full)
        u, s, vh = randomized_svd_sharded(matrix, base, gaussian_sketch(n, q, seed, device), n_iter)
        return u[:, :rank], s[:rank], vh[:rank]
    total = frobenius_energy_sharded(matrix, base)
    q = min(INITIAL_ENERGY_SKETCH, full)
    while True:
        u, s, vh = randomized_svd_sharded(matrix, base, gaussian_sketch(n, q, seed, device), n_iter)
        r = energy_rank(s, total, energy)
        wider = energy_sketch_width(r, q, full, oversample)
        if wider is None:
            r = q if r is None else r
            return u[:, :r], s[:r], vh[:r]
        q = wider


def matrix_scores_sharded(
    theta1: Sequence[DTensor], theta0: Sequence[DTensor], config: DenoiseConfig
) -> list[tuple[DTensor, int, None]]:
    """DeFT-X scores of row-sharded matrices, the sharded :func:`deftx.train.denoise.matrix_scores`
    (randomized method, no residual add-back): per matrix (``|Δ̂|`` placed like it, rank kept, None:
    the energy held is not computed). A uniform ``config.rank`` keeps ``min(rank, m, n)`` components
    of an (m, n) matrix, as the single-process batched op does."""
    scores = []
    for w1, w0 in zip(theta1, theta0, strict=True):
        rank = None if config.rank is None else min(config.rank, *w1.shape)
        u, s, vh = lowrank_factors_sharded(w1, rank, energy=config.energy, base=w0,
                                           oversample=config.oversample, n_iter=config.n_iter, seed=config.seed)
        scores.append((_magnitudes(w1, u, s, vh), int(s.numel()), None))
    return scores


def _magnitudes(matrix: DTensor, u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor) -> DTensor:
    """``|U S Vh|`` (this rank's rows of U) as a DTensor placed like ``matrix``."""
    local = ((u * s) @ vh).abs_() if s.numel() else torch.zeros(_local(matrix).shape, device=u.device)
    return DTensor.from_local(
        local, matrix.device_mesh, matrix.placements, run_check=False, shape=matrix.shape, stride=matrix.stride()
    )


def denoised_magnitudes_sharded(
    matrix: DTensor, base: DTensor | None = None, *, rank: int | None = None, energy: float | None = None,
    oversample: int = 8, n_iter: int = 2, seed: int = 0,
) -> DTensor:
    """DeFT-X's score ``|U S Vh|`` of a row-sharded Δ, as a DTensor placed like ``matrix`` (fp32).

    Each rank writes only its rows; feed the result to the sharded top-k.
    """
    factors = lowrank_factors_sharded(matrix, rank, energy=energy, base=base, oversample=oversample, n_iter=n_iter,
                                      seed=seed)
    return _magnitudes(matrix, *factors)
