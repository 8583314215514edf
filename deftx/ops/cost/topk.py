"""Cost model of the global top-k (``topk_indices``): HBM bytes of deftx's radix select (the
plan's shape from ``kernels/_topk_plan.py``) and of the torch baseline."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from deftx.kernels._topk_plan import BLOCK_ELEMS, LIST_PASS, RADIX, last_pass

_BLOCK_BOOKKEEPING_BYTES = 3 * RADIX * 4 + 128
"""Per block: its histogram written once and read once by a classification, plus its counters
(above, greater / equal and their cumulative sums, read by the compaction): about 2 KiB +
100 B, counted as 3 KiB + 128 B (an upper bound; under 1% of a block's input bytes)."""

LIST_ENTRY_BYTES = 8


FULL_PASSES = 3
"""Passes over all elements of a call whose candidate list fits: two histograms and the
partition (fp32, fp16, any dtype with bases) or the compaction (bf16). With an overflowing list
fp32 makes 5 and fp16 4 (5 with bases), as without a list."""


def bytes_moved(shapes: Sequence[Sequence[int]], k: int, dtype: torch.dtype, with_base: bool = False) -> int:
    """HBM bytes ``topk_indices`` moves for tensors of ``shapes`` and one ``dtype`` (``with_base``:
    every tensor has a base of its shape, read beside it) when its candidate list fits.

    With N the total numel, e the element size (2e with bases), P the passes (fp32 4, fp16 3,
    bf16 2; 4 with bases) and B = sum over tensors of ceil(numel / 16384) blocks::

        3 * N * e                  three full passes: two histograms and the partition (fp32,
                                   fp16) or the compaction's read (bf16)
      + 8 * k * (P - 2 + 3)        fp32 / fp16: the list, k entries (its threshold bin's
                                   candidates counted as none), written once and read by the
                                   P - 2 later digit passes, the classification and the
                                   compaction
      + 8 * k                      int64 indices written
      + B * (3 * 256 * 4 + 128)    per-block histograms and counters (an upper bound)
    """
    numels = [math.prod(shape) for shape in shapes]
    n = sum(numels)
    e = dtype.itemsize * (2 if with_base else 1)
    blocks = sum(-(-numel // BLOCK_ELEMS) for numel in numels)
    passes = last_pass(dtype, with_base) + 1
    list_bytes = 0 if passes <= LIST_PASS else LIST_ENTRY_BYTES * k * (passes - LIST_PASS + 3)
    return FULL_PASSES * n * e + list_bytes + 8 * k + blocks * _BLOCK_BOOKKEEPING_BYTES


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
    return (2 + e + 1) * n * e + k * (e + 8) + 32 * k
