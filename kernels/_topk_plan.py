"""The top-k radix plan's shape, shared by the kernels (``kernels/topk.py``) and the cost model
(``deftx.ops.cost.topk``). Pure Python: importable without Triton."""

from __future__ import annotations

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


LIST_PASS = 2
"""The digit passes from this one on read the candidate list (when the call has one)."""

BLOCK_ELEMS = 16384
"""Elements per block, the unit of the per-block bookkeeping (1 KiB histogram per block)."""
