"""Cost model of the global top-k (``topk_indices``): HBM bytes of deftx's sampled-bracket list
and radix select (the plan's shape from ``kernels/_topk_plan.py``) and of the torch baseline."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from deftx.kernels._topk_plan import BLOCK_ELEMS, SAMPLES, last_pass, list_capacity

BLOCK_BOOKKEEPING_BYTES = 128
"""Per block: its list length (written by the count, summed in place, read by the partition, the
classification and the compaction) and its ``> T`` / ``== T`` counts with their cumulative sums
(written, summed, read by the compaction): about 100 B, counted as 128 B."""

LIST_ENTRY_BYTES = 8

SAMPLE_BYTES = 6 * 8 * SAMPLES
"""The samples: written once (the gathered reads count as their 16-byte sectors' worth, one
per sample: as much again), read once to count the valid ones and four times by the bracket's
radix passes."""

FULL_PASSES = 2
"""Passes over all elements when the candidate list is in use: the count and the partition. When
it is not (a bracket off by more than 5 sigma, or ties that overflow it) the radix passes and
the compaction read the data as well."""


def bytes_moved(shapes: Sequence[Sequence[int]], k: int, dtype: torch.dtype, with_base: bool = False) -> int:
    """HBM bytes ``topk_indices`` moves for tensors of ``shapes`` and one ``dtype`` (``with_base``:
    every tensor has a base of its shape, read beside it) when its candidate list is in use.

    With N the total numel, e the element size (2e with bases), P the radix passes (fp32 4,
    fp16 3, bf16 2; 4 with bases), B = sum over tensors of ceil(numel / 16384) blocks, and L the
    list's entries: k when the list's capacity is below N (the call brackets it from samples;
    its excess over k, about 1% of k at 7B and k = 1%, counted as none), else N (it takes all)::

        2 * N * e                  two full passes: the count and the partition
      + 8 * L * (1 + P + 2)        the list: written by the partition, read by the P radix
                                   passes, the classification and the compaction
      + 8 * k                      int64 indices written
      + 6 * 8 * 16384              the samples (gathered, written, read by the bracket), when
                                   the call brackets its list
      + B * 128                    per-block counters (an upper bound)
    """
    numels = [math.prod(shape) for shape in shapes]
    n = sum(numels)
    e = dtype.itemsize * (2 if with_base else 1)
    blocks = sum(-(-numel // BLOCK_ELEMS) for numel in numels)
    passes = last_pass(dtype, with_base) + 1
    sampled = list_capacity(n, k, blocks) < n
    list_bytes = LIST_ENTRY_BYTES * (k if sampled else n) * (1 + passes + 2)
    sample_bytes = SAMPLE_BYTES if sampled else 0
    return FULL_PASSES * n * e + list_bytes + 8 * k + sample_bytes + blocks * BLOCK_BOOKKEEPING_BYTES


def _torch_topk_bytes(n: int, k: int, e: int) -> int:
    """``torch.topk`` on ``n`` flat entries of ``e`` bytes: one read per 8-bit digit of its radix
    key (e of them) and one gathering read, then k values and int64 indices written."""
    return (e + 1) * n * e + k * (e + 8)


def baseline_bytes_moved(shapes: Sequence[Sequence[int]], k: int, dtype: torch.dtype) -> int:
    """HBM bytes of the dense torch baseline: ``torch.cat`` of the flattened tensors, then
    ``torch.topk`` and a sort of the k flat indices back into per-tensor order.

    With N, e as in :func:`bytes_moved` and R = 8 * e / 8 radix digits of torch's key (4 for
    fp32, 2 for 16-bit types)::

        2 * N * e        cat: read every tensor, write the flat copy (an extra N * e buffer)
      + (R + 1) * N * e  topk radix select: one read per 8-bit digit, one gathering read
      + k * (e + 8)      topk values and int64 indices written
      + 4 * 8 * k        sort of the k indices (read + write) and the per-tensor split
                         (read + write); a lower bound for the sort
    """
    n = sum(math.prod(shape) for shape in shapes)
    e = dtype.itemsize
    return 2 * n * e + _torch_topk_bytes(n, k, e) + 32 * k


def cat_abs_topk_bytes_moved(shapes: Sequence[Sequence[int]], k: int, dtype: torch.dtype) -> int:
    """HBM bytes of the benchmark's ``cat_topk`` baseline (``deftx.perf.cases.topk``):
    ``torch.topk(torch.cat(flat tensors).abs_(), k, sorted=False)``, no sort, below torch's
    2^31-entry slice (past it the chunked baseline moves more).

    With N, e and R as in :func:`baseline_bytes_moved`::

        2 * N * e        cat: read every tensor, write the flat copy
      + 2 * N * e        abs_: read and write the copy in place
      + (R + 1) * N * e  topk radix select: one read per 8-bit digit, one gathering read
      + k * (e + 8)      topk values and int64 indices written
    """
    n = sum(math.prod(shape) for shape in shapes)
    e = dtype.itemsize
    return 4 * n * e + _torch_topk_bytes(n, k, e)
