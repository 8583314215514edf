"""Cost model of the masked AdamW step: HBM bytes and fp32 operations, and a dense step's."""

from __future__ import annotations

from deftx.ops.cost import SECTOR_BYTES

FLOPS_PER_ENTRY = 16
"""fp32 operations of the AdamW update per entry (moments 7, decay 1, step 8); the L1 pull adds 3."""


def touched_sector_bytes(k: int, numel: int, element_bytes: int) -> float:
    """Expected bytes of 32-byte sectors touched by k uniformly random entries of ``numel``::

        (numel * element_bytes / 32) * 32 * (1 - (1 - k / numel) ** (32 / element_bytes))
    """
    if numel == 0 or k == 0:
        return 0.0
    per_sector = SECTOR_BYTES / element_bytes
    sectors = numel * element_bytes / SECTOR_BYTES
    return sectors * SECTOR_BYTES * (1.0 - (1.0 - k / numel) ** per_sector)


def bytes_moved(k: int, numel: int, *, param_bytes: int, has_l1: bool = False) -> float:
    """HBM bytes of :func:`deftx.ops.masked_adamw_step_` for K selected entries of ``numel``.

    Streams in K space: indices (8 B), master / exp_avg / exp_avg_sq read and written
    (24 B), θ0 with L1 (4 B). Gathered gradient reads and scattered parameter writes move
    whole 32-byte sectors: each touches ``touched_sector_bytes(k, numel, param_bytes)``::

        k * (8 + 24 + 4 * has_l1) + 2 * touched_sector_bytes(k, numel, param_bytes)
    """
    streams = k * (8 + 24 + (4 if has_l1 else 0))
    return streams + 2 * touched_sector_bytes(k, numel, param_bytes)


def baseline_bytes_moved(numel: int, *, param_bytes: int, state_bytes: int | None = None) -> int:
    """HBM bytes of a dense AdamW step (``torch.optim.AdamW``, fused or foreach) on ``numel``.

    Reads param, grad, exp_avg, exp_avg_sq; writes param, exp_avg, exp_avg_sq. The moments
    have the parameter's dtype in torch unless ``state_bytes`` says otherwise::

        numel * (3 * param_bytes + 4 * state_bytes)
    """
    state = param_bytes if state_bytes is None else state_bytes
    return numel * (3 * param_bytes + 4 * state)


def flops(k: int, *, has_l1: bool = False) -> int:
    """fp32 operations of :func:`deftx.ops.masked_adamw_step_`: ``k * (16 + 3 * has_l1)``."""
    return k * (FLOPS_PER_ENTRY + (3 if has_l1 else 0))


def baseline_flops(numel: int) -> int:
    """Operations of a dense AdamW step: ``16 * numel``."""
    return FLOPS_PER_ENTRY * numel
