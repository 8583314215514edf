"""The top-k radix plan's shape, shared by the kernels (``kernels/topk.py``) and the cost model
(``deftx.ops.cost.topk``). Pure Python: importable without Triton."""

from __future__ import annotations

import math

import torch

RADIX_BITS = 8
RADIX = 1 << RADIX_BITS
PASS_SHIFTS: tuple[int, ...] = (24, 16, 8, 0)
"""Digit shifts of the radix passes; pass p reads digit ``(key >> PASS_SHIFTS[p]) & 255``."""

LAST_PASS: dict[torch.dtype, int] = {torch.float32: 3, torch.float16: 2, torch.bfloat16: 1}
"""Index of the last pass whose digit can be non-zero in keys of each dtype."""


def last_pass(dtype: torch.dtype, has_base: bool) -> int:
    """Index of the last pass a group needs: its dtype's, or the fp32 one with a base (the
    fp32 difference of two bf16 / fp16 values can use every fp32 mantissa bit)."""
    return PASS_SHIFTS.index(0) if has_base else LAST_PASS[dtype]


BLOCK_ELEMS = 16384
"""Elements per block, the unit of the per-block bookkeeping (1 KiB histogram per block)."""

SAMPLES = 16384
"""Keys sampled per call to bracket the threshold (8 bytes each; one program reads them)."""

BRACKET_SIGMAS = 5.0
"""Standard deviations of the sampled rank the list's lowest key is placed below the k-th
largest sample (z): the list holds fewer than k keys with probability about 3e-7 per call on
data in random order (then the call takes the data path); the list's capacity allows twice the
expected excess."""

MIN_LIST_SLACK = 1 << 16
"""The candidate list holds k + max(MIN_LIST_SLACK, N >> LIST_SLACK_SHIFT, twice the
bracket's expected excess) entries, at most N."""

LIST_SLACK_SHIFT = 7


def bracket_excess(total: int, k: int, total_blocks: int, samples: int = SAMPLES) -> int:
    """Entries a sampled list is expected to hold beyond k: ``N (z sqrt(q / s) + z^2 / s)`` with
    q = k / N, z = BRACKET_SIGMAS and s the valid samples expected (``samples`` times the share of
    the blocks' slots that hold elements)."""
    expected_samples = samples * total / (total_blocks * BLOCK_ELEMS)
    q = k / total
    z = BRACKET_SIGMAS
    return math.ceil(total * (z * math.sqrt(q / expected_samples) + z * z / expected_samples))


def list_capacity(total: int, k: int, total_blocks: int, samples: int = SAMPLES, min_slack: int = MIN_LIST_SLACK,
                  slack_shift: int = LIST_SLACK_SHIFT) -> int:
    """Entries of the candidate list for k of ``total`` entries in ``total_blocks`` blocks:
    k + max(min_slack, N >> slack_shift, twice the bracket's expected excess), at most N. A call
    brackets its list from samples when this is below N."""
    if not total:
        return 0
    slack = max(min_slack, total >> slack_shift, 2 * bracket_excess(total, k, total_blocks, samples))
    return min(total, k + slack)
