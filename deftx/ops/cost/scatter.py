"""Cost model of the sparse scatter-add (``scatter_add_``): HBM bytes of deftx's kernel and of
the torch baselines."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from deftx.ops.cost import SECTOR_BYTES


def _touched_sectors(numel: int, entries: int, element_bytes: int) -> float:
    """Expected 32-byte sectors holding at least one of ``entries`` uniformly spread indices."""
    if not numel or not entries:
        return 0.0
    per_sector = SECTOR_BYTES // element_bytes
    sectors = -(-numel // per_sector)
    return sectors * (1.0 - (1.0 - entries / numel) ** per_sector)


def _union_entries(numel: int, nnz: int, num_diffs: int) -> float:
    """Expected distinct positions of ``num_diffs`` independent uniform diffs of nnz entries."""
    return numel * (1.0 - (1.0 - nnz / numel) ** num_diffs) if numel else 0.0


def bytes_moved(shapes: Sequence[Sequence[int]], nnz: Sequence[int], dtype: torch.dtype, *,
                value_dtype: torch.dtype = torch.float32, num_diffs: int = 1, save: bool = False) -> int:
    """HBM bytes ``scatter_add_`` moves: ``num_diffs`` diffs of ``nnz[t]`` entries on tensor t.

    With e / v the dense / value element sizes and, per tensor, S_t the expected touched
    32-byte sectors of the union U_t of the diffs' positions (entries spread uniformly:
    U_t = n_t (1 - (1 - nnz_t / n_t)^D), S_t = ceil(n_t / s) (1 - (1 - U_t / n_t)^s) with
    s = 32 / e elements per sector)::

        sum_t 64 * S_t                 read-modify-write of every touched sector, once (a
                                       program applies all diffs to its range while on chip)
      + D * sum_t nnz_t * (8 + v)      index and value payload
      + D * sum_t nnz_t * e            saved originals written (save=True only)
    """
    e = dtype.itemsize
    v = value_dtype.itemsize
    total = 0.0
    for shape, entries in zip(shapes, nnz, strict=True):
        numel = math.prod(shape)
        union = _union_entries(numel, entries, num_diffs)
        total += 2 * SECTOR_BYTES * _touched_sectors(numel, round(union), e)
        total += num_diffs * entries * (8 + v + (e if save else 0))
    return round(total)


def baseline_bytes_moved(shapes: Sequence[Sequence[int]], nnz: Sequence[int], dtype: torch.dtype, *,
                         value_dtype: torch.dtype = torch.float32, num_diffs: int = 1, method: str = "dense") -> int:
    """HBM bytes of the torch baselines, per diff and tensor (n_t elements, nnz_t entries).

    ``method="dense"`` densifies the diff and adds it::

        D * sum_t [ 4 n_t                  zeros(n_t) fp32 written
                  + nnz_t (8 + v) + 64 S1  index / value read, scattered into it
                  + 4 n_t + 4 n_t          scale * delta (read, write)
                  + 4 n_t + 2 e n_t ]      w.add_(delta): read delta, read and write w

    ``method="index_add"`` runs ``w.view(-1).index_add_(0, idx, (scale * v).to(dtype))``::

        D * sum_t [ nnz_t (8 + v)          index / value read
                  + nnz_t v * 2            scaled temporary (write, read)
                  + nnz_t e * 2 * c        its cast (write, read); c = 0 when the values
                                           already have the weights' dtype (``.to`` is a no-op)
                  + 64 S1 ]                read-modify-write of the touched sectors

    S1 = expected sectors touched by one diff (as in :func:`bytes_moved`).
    """
    if method not in ("dense", "index_add"):
        raise ValueError(f"method must be 'dense' or 'index_add', not {method!r}")
    e = dtype.itemsize
    v = value_dtype.itemsize
    total = 0.0
    for shape, entries in zip(shapes, nnz, strict=True):
        numel = math.prod(shape)
        payload = entries * (8 + v)
        if method == "dense":
            sectors = 2 * SECTOR_BYTES * _touched_sectors(numel, entries, 4)
            total += 4 * numel + payload + sectors + 12 * numel + 2 * e * numel
        else:
            sectors = 2 * SECTOR_BYTES * _touched_sectors(numel, entries, e)
            cast = 0 if value_dtype == dtype else e
            total += payload + 2 * entries * (v + cast) + sectors
    return round(num_diffs * total)
