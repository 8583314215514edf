"""Global top-k by magnitude over many tensors, without concatenating them, optionally of the
differences to base tensors (never materialised).

Keys
    An entry's score ``|x|`` is compared through its *key*: the fp32 bit pattern of ``|x|``
    (sign bit cleared) read as an unsigned integer. On non-negative floats the key order is the
    value order, and every fp16 / bf16 value is an exact fp32 value, so one key space serves
    mixed-dtype lists. ``-0.0`` and ``+0.0`` share key 0; ``+inf`` has the largest key of any
    number. A NaN ranks above ``+inf``; the first pass counts the NaN keys, and the caller is
    told how many there were (the selection is then meaningless). With a base ``b`` the score
    is ``|d|``, ``d = fl32(f32(x) − f32(b))``: both widened exactly, one fp32 subtraction
    (round to nearest even, subnormals kept), computed in registers in every pass that reads
    the tensor, so a selection from (θ1, θ0) equals the selection of the materialised
    ``θ1.float() − θ0.float()`` entry for entry.

List first: a sampled bracket, then one partition of the data
    The 8-bit radix passes below are instruction-bound over the data (Triton 3.6 lowers
    ``tl.histogram`` to warp ballots: ~2-3 warp instructions per element, 8-22% of the copy
    bandwidth measured on an H200), so the data are read by two simple passes instead, and
    the radix passes read a candidate list of about k entries:

    1. *Sample*: ``SAMPLES`` keys at stratified, hashed positions over the blocks (one
       gathered load each; positions past a tensor's end are dropped).
    2. *Bracket*: one program finds, among the ``s`` valid samples, the ``j``-th largest key
       with ``j = floor(q s + z sqrt(q s) + z^2) + 1`` (``q = k / N``, ``z = BRACKET_SIGMAS``): the
       list's lowest key. At least k keys are at or above it unless the sample is off by
       more than z standard deviations.
    3. *Count*: per block, the keys at or above the lowest key (and the NaN keys); their
       cumulative sum gives every block its slice of the list. Two compares and two adds per
       element into per-lane counters, one reduction per block (about 0.4 warp instructions
       per element on sm_90 under Triton 3.6, against 2.2 for a ``tl.histogram`` pass).
    4. *Partition*: each block writes those keys with their in-block offsets (packed in an
       int64 ``key << 14 | offset``, in index order) into its slice; the positions come from
       one scan of per-vector counts and an in-vector scan (about 1 warp instruction per
       element).

    Both passes compare ``key + 1`` (0 for a masked-off lane) with the lowest key, so the
    unmasked tiles carry no validity mask.

    The list is in use when it holds at least k entries and fits its capacity (decided on the
    device; nothing is read back). Calls whose list capacity covers every entry skip steps 1-2
    (the lowest key is 0). Otherwise, every later kernel takes the data path with the same
    launches: the radix passes and the compaction read the data, as the radix select below
    describes.

Radix select (8-bit digits, most significant first)
    Pass ``p`` counts, for the keys whose higher digits equal the threshold prefix found so far
    (the *band*), the digit ``(key >> SHIFT_p) & 255`` with ``SHIFT = 24, 16, 8, 0``. After each
    pass one small kernel sums the histograms, picks the digit that holds the k-th largest key
    and updates the number still to take, on the device (no host sync). Over the list one
    launch per pass counts its entries. Over the data (the list not in use) every group is
    counted: bf16 keys have 16 zero low bits and fp16 keys 13, so a bf16 tensor needs 2 passes,
    fp16 3 and fp32 4 (a difference of two bf16 / fp16 values is an fp32 value: 4); in the
    passes after a group's last one its band keys all have digit 0, which the digit kernel
    carries into bin 0 without reading them again. Each data histogram program is persistent:
    it strides over the blocks of one group (one dtype, with or without a base; a device table
    of base addresses, one launch per group), builds a block-local histogram with
    ``tl.histogram`` from contiguous 16-byte vector loads, issues ONE global integer atomic per
    non-empty bin at its end, and in the group's last pass stores each block's histogram and
    its count of keys above the band (1 KiB per block of 16384 elements).

Compaction
    With the exact threshold key ``T`` and ``r`` (how many keys equal to ``T`` to take), one
    kernel derives per block the count of keys ``> T`` and ``== T`` (from its list slice, or
    from its last histogram); one cumulative sum over the blocks in (tensor position, flat
    index) order gives every block its output offset and how many of its ``== T`` keys it takes
    (the lowest positions win ties). One program per block then writes its selected flat
    indices, ascending, with in-block scans, and the last block of each tensor writes the
    tensor's count. Everything after the bracket is integer arithmetic: exact and
    deterministic; the bracket only decides which path runs.

Host work
    The launcher plans on the host from shapes and addresses only and moves the plan — tensor
    table, initial state, zeroed histograms and counters — to the device in one copy. Per call
    with one group: the sample and the bracket (2, skipped when the list holds everything),
    the count, its cumulative sum and the partition (3), ``2 * passes`` radix launches, the
    classification, its cumulative sum and the compaction (3): fp32 16, bf16 12, whatever the
    number of tensors, and nothing read back: the caller reads the per-tensor counts and the
    NaN count together, once. A pair whose tensor and base sit at different offsets modulo 16
    bytes costs one more launch: the base is copied once to the tensor's alignment.

Alignment
    A tensor's base address is rounded down to 16 bytes and its first ``head`` elements
    masked off, so full tiles are 16-byte aligned and loaded unmasked with vector loads; its
    base tensor is read at the same offsets.

Extra memory: per block of 16384 elements, 1 KiB of histogram and a few counters, about
0.07 byte per parameter; the candidate list, 8 bytes per entry of its capacity (k plus the
larger of 2^16, N / 128 and twice the bracket's expected excess, at most N); the samples
(8 bytes each); the int64 output.
"""

from __future__ import annotations

import functools
import itertools
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl

from . import KernelSpec, _topk_specs, upload
from ._common import TL_DTYPES
from ._topk_plan import (
    BLOCK_ELEMS,
    BRACKET_SIGMAS,
    LAST_PASS,
    LIST_SLACK_SHIFT,
    MIN_LIST_SLACK,
    PASS_SHIFTS,
    RADIX,
    RADIX_BITS,
    SAMPLES,
    last_pass,
    list_capacity,
)

OFFSET_BITS = 14
"""Bits of an in-block offset in a list entry (``key << 14 | offset``): BLOCK_ELEMS <= 2^14."""

HISTOGRAM_TILE = 1024
"""Elements a histogram program of HISTOGRAM_WARPS warps loads at once: 8 per thread (two fp32 /
one 16-bit 16-byte vector load). Every pass keeps 8 per thread; one with more warps
(:data:`HISTOGRAM_PASS_WARPS`) loads a proportionally larger tile. Triton 3.6 lowers
``tl.histogram`` to warp ballots whose registers grow with the elements per thread (up to 152
per thread at 16); at 8 every pass fits in at most 128 registers there and 80 under Triton 3.9."""

HISTOGRAM_PASS_WARPS: dict[tuple[torch.dtype, bool, int], int] = {
    (torch.float32, False, 0): 8,
    (torch.float32, True, 16): 2,
    (torch.float32, True, 0): 2,
    (torch.float16, False, 8): 8,
    (torch.float16, True, 24): 8,
    (torch.float16, True, 16): 16,
    (torch.float16, True, 8): 8,
    (torch.bfloat16, True, 16): 8,
}
"""Warps of the histogram passes (dtype, has_base, shift) that do not use HISTOGRAM_WARPS: at 4,
ptxas (Triton 3.6; sm_90, and sm_80 for fp32 base shift 16) spills 8-32 bytes per thread in
these; at these widths, with the same 8 elements per thread, it spills in none of them under
Triton 3.6 or 3.9, on sm_80 or sm_90 (the widths were picked by compiling each pass at 2, 4, 8
and 16 warps). The programs per SM scale inversely with the width (:func:`_programs`), so each
SM is given as many warps."""

COMPACT_TILE = 1024
"""Elements the compaction, the partition and the list passes scan at once (8 per thread:
keeps their two scans in registers)."""

SAMPLE_TILE = 256
"""Samples a program of the sample kernel gathers (2 per thread: at 4, ptxas of Triton 3.9 spills 8
bytes per thread on sm_90 in the pairs' samples)."""

BRACKET_TILE = 1024
"""Samples the bracket program reads at once."""

PROGRAMS_PER_SM = 8
"""Persistent histogram programs per SM at HISTOGRAM_WARPS (4 warps, 1 KiB shared each; all 8 are
resident at up to 64 registers per thread); a pass of other width has as many warps per SM."""

INTERPRETER_PROGRAMS = 3
HISTOGRAM_WARPS = 4
HISTOGRAM_STAGES = 1
COMPACT_WARPS = 4
COMPACT_STAGES = 1
SELECT_WARPS = 4


_RADIX = tl.constexpr(RADIX)
_RADIX_BITS = tl.constexpr(RADIX_BITS)
_TOP_SHIFT = tl.constexpr(PASS_SHIFTS[0])
_OFFSET_BITS = tl.constexpr(OFFSET_BITS)
_OFFSET_MASK = tl.constexpr((1 << OFFSET_BITS) - 1)

MAX_GROUPS = 8
"""Groups the digit kernel can sum (3 dtypes, each with or without a base), a power of two."""

CLASSIFY_ROWS = 16
"""Blocks per program of the block classification (16 x 256 bins)."""

# Rows of the tensor table (int64, shape (TABLE_ROWS, num_columns)); a column per tensor with
# at least one block, grouped by (dtype, has a base): aligned base address, head, end (= head +
# numel), first block in the group-major block order, first global block, position in the
# input list, shift of its group's last pass, aligned address of its base (0 without one),
# and the value added to its flat indices (its start in the concatenation, or 0).
TABLE_ROWS = 9
_ROW_BASE = tl.constexpr(0)
_ROW_HEAD = tl.constexpr(1)
_ROW_END = tl.constexpr(2)
_ROW_FIRST_MAJOR = tl.constexpr(3)
_ROW_FIRST_GLOBAL = tl.constexpr(4)
_ROW_POSITION = tl.constexpr(5)
_ROW_SHIFT = tl.constexpr(6)
_ROW_SUBTRAHEND = tl.constexpr(7)
_ROW_START = tl.constexpr(8)

# The state vector (int64): keys still to take, digits found so far, threshold key so far, the
# lowest key the candidate list keeps, and k (read by every kernel that asks whether the list is
# in use: it is when it holds at least k entries and fits its capacity).
STATE_SIZE = 5
STATE_PREFIX = 1
STATE_LOWEST = 3
_STATE_REMAINING = tl.constexpr(0)
_STATE_PREFIX = tl.constexpr(STATE_PREFIX)
_STATE_THRESHOLD = tl.constexpr(2)
_STATE_LOWEST = tl.constexpr(STATE_LOWEST)
_STATE_K = tl.constexpr(4)

NO_KEY = 1 << 31
"""A lowest key above every key (k = 0: the list keeps nothing)."""

SHORT_LIST = 1 << 62
"""The verdict of a list with fewer than k entries: above every capacity."""

_INF_KEY = tl.constexpr(0x7F800000)
_NO_KEY = tl.constexpr(NO_KEY)
_SHORT_LIST = tl.constexpr(SHORT_LIST)
_HASH = tl.constexpr(2654435761)
_JITTER_MASK = tl.constexpr((1 << 16) - 1)
_JITTER_SCALE = tl.constexpr(2.0**-16)


@triton.jit
def _exclusive_cumsum(x):
    """Exclusive prefix sum of a 1-D block, in its own dtype."""
    return tl.cumsum(x, 0) - x


@triton.jit
def _as_float32(x, DTYPE: tl.constexpr):
    """``x`` widened exactly to fp32 (bf16 through its bit pattern: the upper half of an fp32)."""
    if DTYPE.is_bf16():
        wide = (x.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    elif DTYPE.is_fp16():
        wide = x.to(tl.float32)
    else:
        wide = x
    return wide


@triton.jit
def _magnitude_key(x, DTYPE: tl.constexpr):
    """uint32 key of |x|: the fp32 bit pattern with the sign cleared."""
    if DTYPE.is_bf16():
        key = (x.to(tl.uint16, bitcast=True).to(tl.uint32) & 0x7FFF) << 16
    else:
        key = _as_float32(x, DTYPE).to(tl.uint32, bitcast=True) & 0x7FFFFFFF
    return key


@triton.jit
def _difference_key(x, b, DTYPE: tl.constexpr):
    """uint32 key of |fl32(f32(x) − f32(b))|: one fp32 subtraction, rounded to nearest even."""
    difference = _as_float32(x, DTYPE) - _as_float32(b, DTYPE)
    return difference.to(tl.uint32, bitcast=True) & 0x7FFFFFFF


@triton.jit
def _tensor_row(table_ptr, num_columns, c, DTYPE: tl.constexpr, HAS_BASE: tl.constexpr):
    """(16-byte aligned pointer of the tensor and of its base (the tensor's again without one),
    head, end, first group-major block, first global block) of column c of the tensor table.

    Element ``v`` of the aligned pointers is flat index ``v - head``; valid ``v`` lie in
    ``[head, end)``.
    """
    values = tl.load(table_ptr + _ROW_BASE * num_columns + c).to(tl.pointer_type(DTYPE))
    values = tl.multiple_of(values, 16)
    if HAS_BASE:
        subtrahend = tl.load(table_ptr + _ROW_SUBTRAHEND * num_columns + c).to(tl.pointer_type(DTYPE))
        subtrahend = tl.multiple_of(subtrahend, 16)
    else:
        subtrahend = values
    head = tl.load(table_ptr + _ROW_HEAD * num_columns + c)
    end = tl.load(table_ptr + _ROW_END * num_columns + c)
    first_major = tl.load(table_ptr + _ROW_FIRST_MAJOR * num_columns + c)
    first_global = tl.load(table_ptr + _ROW_FIRST_GLOBAL * num_columns + c)
    return values, subtrahend, head, end, first_major, first_global


@triton.jit
def _tile_keys(values, subtrahend, tile_start, valid, DTYPE: tl.constexpr, HAS_BASE: tl.constexpr,
               TILE: tl.constexpr, MASKED: tl.constexpr):
    """Keys (uint32, [TILE]) of elements ``tile_start + [0, TILE)`` of the aligned pointers:
    loaded unmasked (16-byte vector loads), or under ``valid`` with 0.0 elsewhere. With
    HAS_BASE the key is the difference's."""
    offs = tl.arange(0, TILE)
    if MASKED:
        x = tl.load(values + tile_start + offs, mask=valid, other=0.0)
        if HAS_BASE:
            b = tl.load(subtrahend + tile_start + offs, mask=valid, other=0.0)
    else:
        x = tl.load(values + tile_start + offs)
        if HAS_BASE:
            b = tl.load(subtrahend + tile_start + offs)
    return _difference_key(x, b, DTYPE) if HAS_BASE else _magnitude_key(x, DTYPE)


@triton.jit
def _is_full_tile(tile_start, head, end, TILE: tl.constexpr):
    """Whether elements ``tile_start + [0, TILE)`` all lie in ``[head, end)``."""
    return (tile_start >= head) & (tile_start + TILE <= end)


@triton.jit
def _load_tile_keys(values, subtrahend, tile_start, head, end, DTYPE: tl.constexpr, HAS_BASE: tl.constexpr,
                    TILE: tl.constexpr):
    """Keys (uint32, [TILE]) and validity mask of elements ``tile_start + [0, TILE)``: full tiles
    loaded unmasked, the first and last tile of a tensor masked (masked-off keys are 0)."""
    offs = tl.arange(0, TILE)
    if _is_full_tile(tile_start, head, end, TILE):
        valid = offs < TILE
        keys = _tile_keys(values, subtrahend, tile_start, valid, DTYPE, HAS_BASE, TILE, False)
    else:
        valid = (tile_start + offs >= head) & (tile_start + offs < end)
        keys = _tile_keys(values, subtrahend, tile_start, valid, DTYPE, HAS_BASE, TILE, True)
    return keys, valid


@triton.jit
def _load_tile_ranks(values, subtrahend, tile_start, head, end, DTYPE: tl.constexpr, HAS_BASE: tl.constexpr,
                     TILE: tl.constexpr):
    """``key + 1`` (uint32, [TILE]) of elements ``tile_start + [0, TILE)``, 0 where masked off:
    ``rank > L`` is ``key >= L`` for the elements and false off the tensor, with no mask to carry
    (keys are below 2^31, so key + 1 does not wrap)."""
    offs = tl.arange(0, TILE)
    if _is_full_tile(tile_start, head, end, TILE):
        ranks = _tile_keys(values, subtrahend, tile_start, offs < TILE, DTYPE, HAS_BASE, TILE, False) + 1
    else:
        valid = (tile_start + offs >= head) & (tile_start + offs < end)
        ranks = tl.where(valid, _tile_keys(values, subtrahend, tile_start, valid, DTYPE, HAS_BASE, TILE, True) + 1, 0)
    return ranks


@triton.jit
def _list_use(list_total_ptr, capacity):
    """Whether this call's candidate list is in use, from the partition's verdict: the list's
    length when it holds at least k entries (every key at or above the k-th largest), else
    SHORT_LIST; in use when that fits the capacity (-1: the call has none)."""
    return tl.load(list_total_ptr) <= capacity


@triton.jit
def _sample_positions(i, stride):
    """Group-major element position (``block * BLOCK + offset``) of samples ``i`` (int64): one
    hashed position in each stratum ``[i stride, (i + 1) stride)``, ``stride`` the fp64 number
    of element slots per sample (no 64-bit integer division: it would be a call)."""
    jitter = ((i * _HASH) >> 8) & _JITTER_MASK
    return ((i.to(tl.float64) + jitter.to(tl.float64) * _JITTER_SCALE) * stride).to(tl.int64)


@triton.jit(do_not_specialize=["num_columns", "first_block", "sample_first", "num_samples", "stride"])
def _sample_kernel(
    table_ptr,
    block_column_ptr,
    sample_ptr,
    num_columns,
    first_block,
    sample_first,
    num_samples,
    stride,
    DTYPE: tl.constexpr,
    HAS_BASE: tl.constexpr,
    BLOCK: tl.constexpr,
    TILE: tl.constexpr,
):
    """Gather num_samples keys of one group at :func:`_sample_positions` into
    ``sample_ptr[sample_first:]`` (int64), -1 where a position lies outside its tensor (the
    head of its first block or past its end). stride: the group's element slots (blocks x
    BLOCK) per sample, fp64. TILE samples per program."""
    i = tl.program_id(0).to(tl.int64) * TILE + tl.arange(0, TILE)
    present = i < num_samples
    position = _sample_positions(i, stride)
    q = first_block + position // BLOCK
    c = tl.load(block_column_ptr + q, mask=present, other=0)
    head = tl.load(table_ptr + _ROW_HEAD * num_columns + c, mask=present, other=0)
    end = tl.load(table_ptr + _ROW_END * num_columns + c, mask=present, other=0)
    first_major = tl.load(table_ptr + _ROW_FIRST_MAJOR * num_columns + c, mask=present, other=0)
    v = (q - first_major) * BLOCK + position % BLOCK
    valid = present & (v >= head) & (v < end)
    values = tl.load(table_ptr + _ROW_BASE * num_columns + c, mask=present, other=0).to(tl.pointer_type(DTYPE))
    x = tl.load(values + v, mask=valid, other=0.0)
    if HAS_BASE:
        subtrahend = tl.load(table_ptr + _ROW_SUBTRAHEND * num_columns + c, mask=present, other=0)
        b = tl.load(subtrahend.to(tl.pointer_type(DTYPE)) + v, mask=valid, other=0.0)
        keys = _difference_key(x, b, DTYPE)
    else:
        keys = _magnitude_key(x, DTYPE)
    tl.store(sample_ptr + sample_first + i, tl.where(valid, keys.to(tl.int64), -1), mask=present)


@triton.jit(do_not_specialize=["num_samples", "total"])
def _bracket_kernel(sample_ptr, num_samples, state_ptr, total, SIGMAS: tl.constexpr, TILE: tl.constexpr):
    """One program: the lowest key the candidate list keeps, into the state.

    sample_ptr: int64 (num_samples,) sampled keys, -1 for none; total: N. With s valid samples
    and q = k / N the list keeps the keys at or above the j-th largest sample, ``j = floor(q s +
    z sqrt(q s) + z^2) + 1`` (z = SIGMAS, in fp32, the square root correctly rounded); every key
    (lowest key 0) when j exceeds s; none (NO_KEY) for k = 0. The j-th largest is found by four
    8-bit radix passes over the samples.
    """
    k = tl.load(state_ptr + _STATE_K)
    offs = tl.arange(0, TILE)
    valid_count = 0
    for first in range(0, num_samples, TILE):
        keys = tl.load(sample_ptr + first + offs, mask=first + offs < num_samples, other=-1)
        valid_count += tl.sum((keys >= 0).to(tl.int32))
    expected = k.to(tl.float32) / total.to(tl.float32) * valid_count.to(tl.float32)
    take = (expected + SIGMAS * tl.sqrt_rn(expected) + SIGMAS * SIGMAS).to(tl.int64) + 1
    remaining = tl.minimum(take, valid_count)
    bins = tl.arange(0, _RADIX)
    prefix = tl.zeros([], dtype=tl.int64)
    for p in tl.static_range(4):
        hist = tl.zeros([_RADIX], dtype=tl.int32)
        for first in range(0, num_samples, TILE):
            keys = tl.load(sample_ptr + first + offs, mask=first + offs < num_samples, other=-1)
            in_band = (keys >= 0) & ((keys >> (_TOP_SHIFT - p * _RADIX_BITS + _RADIX_BITS)) == prefix)
            digits = (keys >> (_TOP_SHIFT - p * _RADIX_BITS)) & (_RADIX - 1)
            hist += tl.histogram(digits.to(tl.int32), _RADIX, mask=in_band)
        at_or_above = tl.sum(hist, 0) - tl.cumsum(hist, 0) + hist
        digit = tl.sum((at_or_above >= remaining).to(tl.int64)) - 1
        remaining -= tl.sum(tl.where(bins == digit, at_or_above - hist, 0))
        prefix = prefix * _RADIX + digit
    lowest = tl.where(take > valid_count, 0, prefix)
    tl.store(state_ptr + _STATE_LOWEST, tl.where(k == 0, _NO_KEY, lowest))


@triton.jit
def _histogram_blocks(
    table_ptr, block_column_ptr, prefix, hist_ptr, block_hist_ptr, block_above_ptr,
    num_columns, first_block, num_blocks,
    DTYPE: tl.constexpr, HAS_BASE: tl.constexpr, SHIFT: tl.constexpr, STORE_BLOCKS: tl.constexpr,
    BLOCK: tl.constexpr, TILE: tl.constexpr,
):
    """This program's share of a histogram pass over the data: the digit ``(key >> SHIFT) & 255``
    of the band keys (``key >> (SHIFT + 8) == prefix``; every key in the first pass) of its
    blocks, atomically added to hist_ptr (int64 (256,)) once per bin. With STORE_BLOCKS,
    block_hist_ptr (int32 (B, 256)) and block_above_ptr (int32 (B,), keys above the band)
    receive each block's counts at its global block id."""
    bins = tl.arange(0, _RADIX)
    totals = tl.full([_RADIX], 0, dtype=tl.int32)
    for q in range(first_block + tl.program_id(0), first_block + num_blocks, tl.num_programs(0)):
        c = tl.load(block_column_ptr + q)
        values, subtrahend, head, end, first_major, first_global = _tensor_row(
            table_ptr, num_columns, c, DTYPE, HAS_BASE)
        j = q - first_major
        block_start = j * BLOCK
        num_tiles = tl.minimum((end - block_start + TILE - 1) // TILE, BLOCK // TILE)
        block_hist = tl.full([_RADIX], 0, dtype=tl.int32)
        above = 0
        for s in range(num_tiles):
            keys, valid = _load_tile_keys(values, subtrahend, block_start + s * TILE, head, end, DTYPE, HAS_BASE,
                                          TILE)
            digits = (keys >> SHIFT) & (_RADIX - 1)
            if SHIFT == _TOP_SHIFT:
                in_band = valid
            else:
                high = (keys >> SHIFT) >> _RADIX_BITS
                in_band = valid & (high == prefix)
                above += tl.sum((valid & (high > prefix)).to(tl.int32))
            block_hist += tl.histogram(digits, _RADIX, mask=in_band)
        totals += block_hist
        if STORE_BLOCKS:
            g = first_global + j
            tl.store(block_hist_ptr + g * _RADIX + bins, block_hist)
            tl.store(block_above_ptr + g, above)
    tl.atomic_add(hist_ptr + bins, totals.to(tl.int64), mask=totals > 0, sem="relaxed")


@triton.jit
def _histogram_list(list_ptr, total, prefix, list_hist_ptr, SHIFT: tl.constexpr, TILE: tl.constexpr):
    """This program's share of a digit pass over the candidate list's ``total`` entries: the
    digit ``(key >> SHIFT) & 255`` of the entries whose ``key >> (SHIFT + 8) == prefix``,
    atomically added to list_hist_ptr (int64 (256,)) once per bin."""
    bins = tl.arange(0, _RADIX)
    counts = tl.full([_RADIX], 0, dtype=tl.int32)
    for t in range(tl.program_id(0), (total + TILE - 1) // TILE, tl.num_programs(0)):
        entry = t * TILE + tl.arange(0, TILE)
        present = entry < total
        keys = tl.load(list_ptr + entry, mask=present, other=0) >> _OFFSET_BITS
        in_band = present & ((keys >> (SHIFT + _RADIX_BITS)) == prefix)
        counts += tl.histogram(((keys >> SHIFT) & (_RADIX - 1)).to(tl.int32), _RADIX, mask=in_band)
    tl.atomic_add(list_hist_ptr + bins, counts.to(tl.int64), mask=counts > 0, sem="relaxed")


@triton.jit(do_not_specialize=["capacity", "owns_list", "num_columns", "first_block", "num_blocks"])
def _band_histogram_kernel(
    table_ptr,
    block_column_ptr,
    state_ptr,
    hist_ptr,
    block_hist_ptr,
    block_above_ptr,
    list_ptr,
    list_hist_ptr,
    list_total_ptr,
    capacity,
    owns_list,
    num_columns,
    first_block,
    num_blocks,
    DTYPE: tl.constexpr,
    HAS_BASE: tl.constexpr,
    SHIFT: tl.constexpr,
    STORE_BLOCKS: tl.constexpr,
    BLOCK: tl.constexpr,
    TILE: tl.constexpr,
    LIST_TILE: tl.constexpr,
):
    """One group's launch of a radix pass: over the candidate list when it is in use (by the
    launch with ``owns_list``, the first of the pass; the others return), else over the
    group's data (:func:`_histogram_blocks`).

    table_ptr: int64 (TABLE_ROWS, num_columns) tensor table; block_column_ptr: int64 column of
    every block in group-major order, this group's blocks at ``[first_block, first_block +
    num_blocks)``; state_ptr: int64 (STATE_SIZE,), its prefix is the band; hist_ptr: int64
    (256,) this group's histogram of the pass; list_ptr: int64 entries ``key << 14 | in-block
    offset``, list_total_ptr: int64 (1,) their number; list_hist_ptr: int64 (256,) the list's
    histogram of this pass. block_hist_ptr / block_above_ptr as in :func:`_histogram_blocks`.
    """
    prefix = tl.load(state_ptr + _STATE_PREFIX)
    if _list_use(list_total_ptr, capacity):
        if owns_list != 0:
            _histogram_list(list_ptr, tl.load(list_total_ptr), prefix, list_hist_ptr, SHIFT, LIST_TILE)
    else:
        _histogram_blocks(table_ptr, block_column_ptr, prefix.to(tl.uint32), hist_ptr, block_hist_ptr,
                          block_above_ptr, num_columns, first_block, num_blocks, DTYPE, HAS_BASE, SHIFT,
                          STORE_BLOCKS, BLOCK, TILE)


@triton.jit(do_not_specialize=["capacity", "num_groups", "carry_mask", "shift"])
def _select_digit_kernel(hist_ptr, next_hist_ptr, state_ptr, list_hist_ptr, list_total_ptr, capacity, num_groups,
                         carry_mask, shift, GROUPS: tl.constexpr):
    """One program: the digit of this pass that holds the k-th largest key.

    hist_ptr: int64 (num_groups, 256) this pass's band histograms, or, when the candidate list
    is in use, list_hist_ptr: int64 (256,) the list's; state_ptr: int64 (STATE_SIZE,) — keys
    still to take r (``1 <= r <= band size``, or 0 for k = 0: digit 255, nothing above it),
    the digits so far, and the threshold key (``prefix << shift``) updated in place. Groups
    whose bit is set in ``carry_mask`` have no histogram pass next: their band count at the
    chosen digit goes to bin 0 of their row at next_hist_ptr (int64 (num_groups, 256)); with
    the list in use nothing is carried (the list holds their keys).
    """
    bins = tl.arange(0, _RADIX)
    groups = tl.arange(0, GROUPS)
    present = groups < num_groups
    rows = tl.load(hist_ptr + groups[:, None] * _RADIX + bins[None, :], mask=present[:, None], other=0)
    use_list = _list_use(list_total_ptr, capacity)
    list_row = tl.load(list_hist_ptr + bins)
    rows = tl.where(use_list, tl.where(groups[:, None] == 0, list_row[None, :], 0), rows)
    hist = tl.sum(rows, 0)
    remaining = tl.load(state_ptr + _STATE_REMAINING)
    at_or_above = tl.sum(hist, 0) - tl.cumsum(hist, 0) + hist
    digit = tl.sum((at_or_above >= remaining).to(tl.int64)) - 1
    chosen = bins == digit
    above = tl.sum(tl.where(chosen, at_or_above - hist, 0))
    prefix = tl.load(state_ptr + _STATE_PREFIX) * _RADIX + digit
    tl.store(state_ptr + _STATE_REMAINING, remaining - above)
    tl.store(state_ptr + _STATE_PREFIX, prefix)
    tl.store(state_ptr + _STATE_THRESHOLD, prefix << shift)
    band = tl.sum(tl.where(chosen[None, :], rows, 0), 1)
    carry = present & (((tl.where(use_list, 0, carry_mask) >> groups) & 1) != 0)
    tl.store(next_hist_ptr + groups * _RADIX, band, mask=carry)


@triton.jit
def _block_ids(table_ptr, block_column_ptr, q, valid, num_columns):
    """(column, global block id) of group-major blocks ``q`` (masked by ``valid``)."""
    c = tl.load(block_column_ptr + q, mask=valid, other=0)
    first_major = tl.load(table_ptr + _ROW_FIRST_MAJOR * num_columns + c, mask=valid, other=0)
    first_global = tl.load(table_ptr + _ROW_FIRST_GLOBAL * num_columns + c, mask=valid, other=0)
    return c, first_global + q - first_major


@triton.jit
def _classify_from_histograms(table_ptr, block_column_ptr, block_hist_ptr, block_above_ptr, state_ptr, sums_ptr,
                              num_columns, num_blocks, ROWS: tl.constexpr):
    """Per block of this program: keys ``> T`` and ``== T`` from its stored histogram.

    A block's stored digit of T is ``d = (T >> s) & 255`` (s: its dtype's last shift); its keys
    ``> T`` are those above that pass's band plus its bins above d, and its keys ``== T`` are
    bin d when T has no bits below s (otherwise none of its keys can equal T). Stores greater
    at sums_ptr[g] and equal at sums_ptr[num_blocks + g].
    """
    q = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    valid = q < num_blocks
    c, g = _block_ids(table_ptr, block_column_ptr, q, valid, num_columns)
    shift = tl.load(table_ptr + _ROW_SHIFT * num_columns + c, mask=valid, other=0)
    threshold = tl.load(state_ptr + _STATE_THRESHOLD)
    digit = (threshold >> shift) & (_RADIX - 1)
    exact = (threshold & ((1 << shift) - 1)) == 0
    bins = tl.arange(0, _RADIX)
    hist = tl.load(block_hist_ptr + g[:, None] * _RADIX + bins[None, :], mask=valid[:, None], other=0)
    equal = tl.sum(tl.where(bins[None, :] == digit[:, None], hist, 0), 1).to(tl.int64)
    higher = tl.sum(tl.where(bins[None, :] > digit[:, None], hist, 0), 1).to(tl.int64)
    above = tl.load(block_above_ptr + g, mask=valid, other=0).to(tl.int64) + higher
    tl.store(sums_ptr + g, above, mask=valid)
    tl.store(sums_ptr + num_blocks + g, tl.where(exact, equal, 0), mask=valid)


@triton.jit
def _list_slice(list_ends_ptr, g):
    """[start, end) of global block g's entries in the candidate list."""
    start = tl.load(list_ends_ptr + g - 1, mask=g > 0, other=0)
    return start, tl.load(list_ends_ptr + g)


@triton.jit
def _classify_from_list(table_ptr, block_column_ptr, state_ptr, sums_ptr, list_ptr, list_ends_ptr, num_columns,
                        num_blocks, ROWS: tl.constexpr, TILE: tl.constexpr):
    """Per block of this program: its list entries with key ``> T`` and ``== T``, stored as
    :func:`_classify_from_histograms` stores them."""
    threshold = tl.load(state_ptr + _STATE_THRESHOLD)
    for r in range(ROWS):
        q = tl.program_id(0) * ROWS + r
        if q < num_blocks:
            _, g = _block_ids(table_ptr, block_column_ptr, q, q < num_blocks, num_columns)
            start, end = _list_slice(list_ends_ptr, g)
            greater = 0
            equal = 0
            for first in range(start, end, TILE):
                entry = first + tl.arange(0, TILE)
                present = entry < end
                keys = tl.load(list_ptr + entry, mask=present, other=0) >> _OFFSET_BITS
                greater += tl.sum((present & (keys > threshold)).to(tl.int32))
                equal += tl.sum((present & (keys == threshold)).to(tl.int32))
            tl.store(sums_ptr + g, greater)
            tl.store(sums_ptr + num_blocks + g, equal)


@triton.jit(do_not_specialize=["capacity", "num_columns", "num_blocks"])
def _classify_blocks_kernel(
    table_ptr,
    block_column_ptr,
    block_hist_ptr,
    block_above_ptr,
    state_ptr,
    sums_ptr,
    list_ptr,
    list_ends_ptr,
    list_total_ptr,
    capacity,
    num_columns,
    num_blocks,
    ROWS: tl.constexpr,
    TILE: tl.constexpr,
):
    """Per block: how many of its keys are ``> T`` and ``== T`` (T the threshold key).

    block_hist_ptr: int32 (B, 256), block_above_ptr: int32 (B,) by global block; sums_ptr:
    int64 (2, B) by global block. When the candidate list is in use the counts come from each
    block's list slice (list_ends_ptr: int64 (B,) inclusive ends), else from the stored
    histograms. Blocks in group-major order, ROWS per program.
    """
    if _list_use(list_total_ptr, capacity):
        _classify_from_list(table_ptr, block_column_ptr, state_ptr, sums_ptr, list_ptr, list_ends_ptr, num_columns,
                            num_blocks, ROWS, TILE)
    else:
        _classify_from_histograms(table_ptr, block_column_ptr, block_hist_ptr, block_above_ptr, state_ptr, sums_ptr,
                                  num_columns, num_blocks, ROWS)


@triton.jit(do_not_specialize=["capacity", "num_columns", "num_blocks", "first_block"])
def _partition_kernel(
    table_ptr,
    block_column_ptr,
    state_ptr,
    list_ptr,
    list_ends_ptr,
    list_total_ptr,
    nan_ptr,
    capacity,
    num_columns,
    num_blocks,
    first_block,
    DTYPE: tl.constexpr,
    HAS_BASE: tl.constexpr,
    WRITE: tl.constexpr,
    BLOCK: tl.constexpr,
    TILE: tl.constexpr,
):
    """The full passes over the data: the keys at or above the state's lowest key L.

    Program i handles group-major block ``first_block + i``, global block g. Without WRITE
    (the count): stores how many of the block's keys are ``>= L`` at list_ends_ptr[g] and adds
    its NaN keys to nan_ptr (int64 (1,)). With WRITE (the partition, after the inclusive
    cumulative sum of those counts over global blocks): writes them into the block's slice of
    the candidate list, as ``key << 14 | in-block offset``, in index order; nothing when the
    list is not in use (fewer than k entries, or over ``capacity``). Its program 0 stores the
    verdict the later kernels read at list_total_ptr (int64 (1,)): the list's length, or
    SHORT_LIST when it holds fewer than k entries.
    """
    q = first_block + tl.program_id(0)
    c = tl.load(block_column_ptr + q)
    values, subtrahend, head, end, first_major, first_global = _tensor_row(table_ptr, num_columns, c, DTYPE, HAS_BASE)
    j = q - first_major
    g = first_global + j
    lowest = tl.load(state_ptr + _STATE_LOWEST).to(tl.uint32)
    block_start = j * BLOCK
    num_tiles = tl.minimum((end - block_start + TILE - 1) // TILE, BLOCK // TILE)
    if WRITE:
        total = tl.load(list_ends_ptr + num_blocks - 1)
        verdict = tl.where(total >= tl.load(state_ptr + _STATE_K), total, _SHORT_LIST)
        if tl.program_id(0) == 0:
            tl.store(list_total_ptr, verdict)
        if verdict <= capacity:
            slot, stop = _list_slice(list_ends_ptr, g)
            if stop > slot:
                VECTOR: tl.constexpr = 128 // DTYPE.primitive_bitwidth
                offsets = tl.reshape(tl.arange(0, TILE).to(tl.uint32), [TILE // VECTOR, VECTOR])
                for s in range(num_tiles):
                    ranks = _load_tile_ranks(values, subtrahend, block_start + s * TILE, head, end, DTYPE, HAS_BASE,
                                             TILE)
                    ranks = tl.reshape(ranks, [TILE // VECTOR, VECTOR])
                    kept = (ranks > lowest).to(tl.int32)
                    entries = ((ranks - 1).to(tl.uint64) << _OFFSET_BITS) | (offsets + s * TILE).to(tl.uint64)
                    row_kept = tl.sum(kept, 1)
                    # a kept key's slot: the one before its vector's first, plus its inclusive rank in the vector
                    before_row = slot - 1 + _exclusive_cumsum(row_kept)
                    tl.store(list_ptr + (before_row[:, None] + tl.cumsum(kept, 1)), entries.to(tl.int64, bitcast=True),
                             mask=kept != 0)
                    slot += tl.sum(row_kept)
    else:
        kept = tl.zeros([TILE], tl.int32)
        nans = tl.zeros([TILE], tl.int32)
        for s in range(num_tiles):
            ranks = _load_tile_ranks(values, subtrahend, block_start + s * TILE, head, end, DTYPE, HAS_BASE, TILE)
            kept += (ranks > lowest).to(tl.int32)
            nans += (ranks > _INF_KEY + 1).to(tl.int32)
        tl.store(list_ends_ptr + g, tl.sum(kept).to(tl.int64))
        nan_count = tl.sum(nans)
        tl.atomic_add(nan_ptr, nan_count.to(tl.int64), mask=nan_count > 0, sem="relaxed")


@triton.jit
def _selected_through(sums_ptr, num_blocks, g, remaining):
    """Entries selected in global blocks ``[0, g]`` (0 for g < 0), from the inclusive sums."""
    before = g >= 0
    greater = tl.load(sums_ptr + g, mask=before, other=0)
    equal = tl.load(sums_ptr + num_blocks + g, mask=before, other=0)
    return greater + tl.minimum(equal, remaining)


@triton.jit
def _compact_list(list_ptr, list_ends_ptr, g, threshold, take_equal, slot, index_base, out_ptr,
                  TILE: tl.constexpr):
    """Write the selected entries of global block g's list slice: their flat indices
    ``index_base + in-block offset``, ascending, from output slot ``slot``."""
    start, end = _list_slice(list_ends_ptr, g)
    equal_seen = 0
    for first in range(start, end, TILE):
        entry = first + tl.arange(0, TILE)
        present = entry < end
        packed = tl.load(list_ptr + entry, mask=present, other=0)
        keys = packed >> _OFFSET_BITS
        equal = (present & (keys == threshold)).to(tl.int32)
        equal_rank = equal_seen + _exclusive_cumsum(equal)
        chosen = ((present & (keys > threshold)) | ((equal != 0) & (equal_rank < take_equal))).to(tl.int32)
        flat = index_base + (packed & _OFFSET_MASK)
        tl.store(out_ptr + slot + _exclusive_cumsum(chosen), flat, mask=chosen != 0)
        slot += tl.sum(chosen)
        equal_seen += tl.sum(equal)


@triton.jit
def _compact_data(values, subtrahend, block_start, head, end, threshold, take_equal, slot, index_base, out_ptr,
                  DTYPE: tl.constexpr, HAS_BASE: tl.constexpr, BLOCK: tl.constexpr, TILE: tl.constexpr):
    """Write the selected entries of one block, read from the data: their flat indices
    ``index_base + aligned offset``, ascending, from output slot ``slot``."""
    num_tiles = tl.minimum((end - block_start + TILE - 1) // TILE, BLOCK // TILE)
    equal_seen = 0
    for s in range(num_tiles):
        tile_start = block_start + s * TILE
        keys, valid = _load_tile_keys(values, subtrahend, tile_start, head, end, DTYPE, HAS_BASE, TILE)
        equal = (valid & (keys == threshold)).to(tl.int32)
        equal_rank = equal_seen + _exclusive_cumsum(equal)
        chosen = ((valid & (keys > threshold)) | ((equal != 0) & (equal_rank < take_equal))).to(tl.int32)
        flat = index_base + tile_start + tl.arange(0, TILE)
        tl.store(out_ptr + slot + _exclusive_cumsum(chosen), flat, mask=chosen != 0)
        slot += tl.sum(chosen)
        equal_seen += tl.sum(equal)


@triton.jit(do_not_specialize=["capacity", "num_columns", "num_blocks", "first_block"])
def _compact_indices_kernel(
    table_ptr,
    block_column_ptr,
    state_ptr,
    sums_ptr,
    out_ptr,
    counts_ptr,
    list_ptr,
    list_ends_ptr,
    list_total_ptr,
    capacity,
    num_columns,
    num_blocks,
    first_block,
    DTYPE: tl.constexpr,
    HAS_BASE: tl.constexpr,
    BLOCK: tl.constexpr,
    TILE: tl.constexpr,
):
    """Write the selected flat indices of one block, ascending, at its output offset.

    Program i handles group-major block ``first_block + i``. sums_ptr: int64 (2, num_blocks)
    inclusive cumulative sums over global blocks of the keys ``> T`` and ``== T``; with r the
    ``== T`` keys to take, the entries selected through block g are
    ``greater[g] + min(equal[g], r)`` (the lowest blocks take the ties), which gives the
    block's output offset and how many of its ``== T`` keys it takes. The entries are read
    from the block's list slice when the candidate list is in use, else from the data.
    out_ptr: int64 (k,); each index is offset by the tensor's start (table row START); the
    last block of a tensor writes the tensor's count at counts_ptr[position].
    """
    q = first_block + tl.program_id(0)
    c = tl.load(block_column_ptr + q)
    values, subtrahend, head, end, first_major, first_global = _tensor_row(table_ptr, num_columns, c, DTYPE, HAS_BASE)
    j = q - first_major
    g = first_global + j
    remaining = tl.load(state_ptr + _STATE_REMAINING)
    slot = _selected_through(sums_ptr, num_blocks, g - 1, remaining)
    selected = _selected_through(sums_ptr, num_blocks, g, remaining) - slot
    if j == (end + BLOCK - 1) // BLOCK - 1:
        position = tl.load(table_ptr + _ROW_POSITION * num_columns + c)
        start = _selected_through(sums_ptr, num_blocks, first_global - 1, remaining)
        tl.store(counts_ptr + position, slot + selected - start)
    if selected > 0:
        threshold = tl.load(state_ptr + _STATE_THRESHOLD)
        equal_before = tl.load(sums_ptr + num_blocks + g - 1, mask=g > 0, other=0)
        take_equal = tl.minimum(tl.load(sums_ptr + num_blocks + g), remaining)
        take_equal -= tl.minimum(equal_before, remaining)
        block_start = j * BLOCK
        index_base = tl.load(table_ptr + _ROW_START * num_columns + c) - head
        if _list_use(list_total_ptr, capacity):
            _compact_list(list_ptr, list_ends_ptr, g, threshold, take_equal, slot, index_base + block_start,
                          out_ptr, TILE)
        else:
            _compact_data(values, subtrahend, block_start, head, end, threshold.to(tl.uint32), take_equal, slot,
                          index_base, out_ptr, DTYPE, HAS_BASE, BLOCK, TILE)


@dataclass(frozen=True)
class _Group:
    """The tensors of one dtype, with or without bases: their blocks in group-major order, and
    their share of the samples (``samples`` from ``first_sample`` on)."""

    dtype: torch.dtype
    has_base: bool
    first_block: int
    num_blocks: int
    first_sample: int = 0
    samples: int = 0

    @property
    def last_pass(self) -> int:
        return last_pass(self.dtype, self.has_base)


@dataclass(frozen=True)
class _Plan:
    """Everything a call needs, planned on the host from shapes and addresses.

    ``values`` is the one int64 buffer uploaded to the device, laid out as the ``*_at``
    offsets say: the tensor table (TABLE_ROWS, C), blocks per column (C,), the state
    (STATE_SIZE,), zeroed histograms (passes, groups, 256), zeroed list histograms (passes,
    256), zeroed stats (T + 1,): the per-tensor counts, then the NaN count, and the list's
    verdict (1,), written by the partition. ``sampled``: whether the list's lowest key is
    bracketed from samples (else it is 0: the list's capacity holds every entry).
    """

    groups: list[_Group]
    num_columns: int
    total_blocks: int
    num_passes: int
    total: int
    list_capacity: int
    sampled: bool
    values: list[int]
    repeats_at: int
    state_at: int
    hist_at: int
    list_hist_at: int
    stats_at: int


def _list_capacity(total: int, k: int, total_blocks: int) -> int:
    """:func:`list_capacity` at this module's SAMPLES, MIN_LIST_SLACK and LIST_SLACK_SHIFT."""
    return list_capacity(total, k, total_blocks, SAMPLES, MIN_LIST_SLACK, LIST_SLACK_SHIFT)


def _sample_shares(groups: list[_Group], total_blocks: int) -> list[_Group]:
    """The groups with SAMPLES split in proportion to their blocks (at least one each)."""
    shared, first = [], 0
    for group in groups:
        count = max(1, SAMPLES * group.num_blocks // total_blocks)
        shared.append(replace(group, first_sample=first, samples=count))
        first += count
    return shared


def _plan(tensors: Sequence[torch.Tensor], bases: Sequence[torch.Tensor | None], k: int,
          concatenated: bool) -> _Plan:
    """Split every tensor into 16-byte aligned blocks, numbered globally in (tensor, block)
    order, and lay the tensors out in one table grouped by (dtype, has a base)."""
    columns: dict[tuple[torch.dtype, bool], list[tuple[int, ...]]] = {}
    next_global = 0
    starts = itertools.accumulate((x.numel() for x in tensors), initial=0)
    for position, (x, base, start) in enumerate(zip(tensors, bases, starts, strict=False)):
        numel = x.numel()
        head = (x.data_ptr() % 16) // x.element_size() if numel else 0
        blocks = -(-(numel + head) // BLOCK_ELEMS)
        if blocks:
            aligned_base = 0 if base is None else base.data_ptr() - head * x.element_size()
            columns.setdefault((x.dtype, base is not None), []).append(
                (x.data_ptr() - head * x.element_size(), head, head + numel, next_global, position, blocks,
                 aligned_base, start if concatenated else 0))
        next_global += blocks
    groups, table, repeats, first_major = [], [[] for _ in range(TABLE_ROWS)], [], 0
    for (dtype, has_base), rows in columns.items():
        groups.append(_Group(dtype, has_base, first_major, sum(row[5] for row in rows)))
        for address, head, end, first_global, position, blocks, aligned_base, start in rows:
            for row, value in enumerate((address, head, end, first_major, first_global, position,
                                         PASS_SHIFTS[last_pass(dtype, has_base)], aligned_base, start)):
                table[row].append(value)
            repeats.append(blocks)
            first_major += blocks
    total = sum(x.numel() for x in tensors)
    capacity = _list_capacity(total, k, first_major)
    sampled = capacity < total
    if sampled:
        groups = _sample_shares(groups, first_major)
    num_passes = max((group.last_pass + 1 for group in groups), default=0)
    values = [v for row in table for v in row] + repeats + [k, 0, 0, 0, k]
    hist_at = len(values)
    values += [0] * (num_passes * len(groups) * RADIX)
    list_hist_at = len(values)
    values += [0] * (num_passes * RADIX)
    stats_at = len(values)
    values += [0] * (len(tensors) + 2)
    return _Plan(groups, len(repeats), first_major, num_passes, total, capacity, sampled, values,
                 repeats_at=TABLE_ROWS * len(repeats), state_at=hist_at - STATE_SIZE, hist_at=hist_at,
                 list_hist_at=list_hist_at, stats_at=stats_at)


def _aligned_like(base: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``base``, or a copy of it at ``x``'s address modulo 16 bytes when it sits elsewhere (the
    kernels read both at one offset with 16-byte vector loads): one launch, rare (views)."""
    if base.numel() == 0 or base.data_ptr() % 16 == x.data_ptr() % 16:
        return base
    head = (x.data_ptr() % 16) // x.element_size()
    storage = torch.empty(base.numel() + head, dtype=base.dtype, device=base.device)
    return storage[head:].copy_(base.reshape(-1))


def histogram_warps(dtype: torch.dtype, has_base: bool, shift: int) -> int:
    """Warps of the histogram pass with digit ``shift`` over ``dtype`` keys (with a base or not)."""
    return HISTOGRAM_PASS_WARPS.get((dtype, has_base, shift), HISTOGRAM_WARPS)


def histogram_tile(dtype: torch.dtype, has_base: bool, shift: int) -> int:
    """Elements that pass loads at once: HISTOGRAM_TILE scaled to its warps, at most a block
    (the pass scans a block in whole tiles)."""
    return min(HISTOGRAM_TILE * histogram_warps(dtype, has_base, shift) // HISTOGRAM_WARPS, BLOCK_ELEMS)


def _programs(device: torch.device, num_blocks: int, warps: int) -> int:
    """Persistent programs of a histogram launch of ``warps`` warps: a few per SM (as many warps
    per SM at every width), or a few in the interpreter."""
    if device.type == "cuda":
        return min(num_blocks, PROGRAMS_PER_SM * HISTOGRAM_WARPS // warps * _sm_count(device.index or 0))
    return min(num_blocks, INTERPRETER_PROGRAMS)


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


@dataclass(frozen=True)
class _Buffers:
    """The device memory of one call: the uploaded plan's parts and the work buffers.

    ``candidates`` (int64, list capacity) and ``list_ends`` (int64 (B,)) are the candidate
    list and its per-block inclusive ends; ``list_total`` is the partition's verdict (its
    length, or SHORT_LIST); ``samples`` (int64 (SAMPLES,), or an empty tensor when the call is
    not sampled) the sampled keys.
    """

    table: torch.Tensor
    block_column: torch.Tensor
    state: torch.Tensor
    hist: torch.Tensor
    list_hist: torch.Tensor
    nan: torch.Tensor
    block_hist: torch.Tensor
    block_above: torch.Tensor
    candidates: torch.Tensor
    list_ends: torch.Tensor
    list_total: torch.Tensor
    samples: torch.Tensor


def _buffers(plan: _Plan, buffer: torch.Tensor, num_tensors: int) -> _Buffers:
    """Views of the uploaded plan and the call's work buffers (allocated, not initialised)."""
    device = buffer.device
    samples = sum(group.samples for group in plan.groups)
    return _Buffers(
        table=buffer[: plan.repeats_at],
        block_column=torch.repeat_interleave(buffer[plan.repeats_at: plan.state_at], output_size=plan.total_blocks),
        state=buffer[plan.state_at: plan.hist_at],
        hist=buffer[plan.hist_at: plan.list_hist_at].view(plan.num_passes, len(plan.groups), RADIX),
        list_hist=buffer[plan.list_hist_at: plan.stats_at].view(plan.num_passes, RADIX),
        nan=buffer[plan.stats_at + num_tensors: plan.stats_at + num_tensors + 1],
        block_hist=torch.empty((plan.total_blocks, RADIX), dtype=torch.int32, device=device),
        block_above=torch.empty(plan.total_blocks, dtype=torch.int32, device=device),
        candidates=torch.empty(max(plan.list_capacity, 1), dtype=torch.int64, device=device),
        list_ends=torch.empty(plan.total_blocks, dtype=torch.int64, device=device),
        list_total=buffer[-1:],
        samples=torch.empty(samples, dtype=torch.int64, device=device),
    )


def _bracket(plan: _Plan, buffers: _Buffers) -> None:
    """Sample every group's keys, then place the list's lowest key (state) among them."""
    for group in plan.groups:
        _sample_kernel[(triton.cdiv(group.samples, SAMPLE_TILE),)](
            buffers.table, buffers.block_column, buffers.samples, plan.num_columns, group.first_block,
            group.first_sample, group.samples, group.num_blocks * BLOCK_ELEMS / group.samples,
            DTYPE=TL_DTYPES[group.dtype],
            HAS_BASE=group.has_base, BLOCK=BLOCK_ELEMS, TILE=SAMPLE_TILE, num_warps=SELECT_WARPS, num_stages=1,
        )
    _bracket_kernel[(1,)](buffers.samples, buffers.samples.numel(), buffers.state, plan.total,
                          SIGMAS=BRACKET_SIGMAS, TILE=BRACKET_TILE, num_warps=SELECT_WARPS, num_stages=1)


def _launch_partition(plan: _Plan, group: _Group, buffers: _Buffers, write: bool) -> None:
    """One group's count (``write=False``) or partition launch: one program per block."""
    _partition_kernel[(group.num_blocks,)](
        buffers.table, buffers.block_column, buffers.state, buffers.candidates, buffers.list_ends,
        buffers.list_total, buffers.nan, plan.list_capacity, plan.num_columns, plan.total_blocks, group.first_block,
        DTYPE=TL_DTYPES[group.dtype], HAS_BASE=group.has_base, WRITE=write, BLOCK=BLOCK_ELEMS, TILE=COMPACT_TILE,
        num_warps=COMPACT_WARPS, num_stages=COMPACT_STAGES,
    )


def _fill_list(plan: _Plan, buffers: _Buffers) -> None:
    """The candidate list: the bracket (sampled calls), then per block the count of the keys at
    or above its lowest key, their cumulative sum, and the partition that writes them
    (skipped on the device when the list is not in use)."""
    if plan.sampled:
        _bracket(plan, buffers)
    for group in plan.groups:
        _launch_partition(plan, group, buffers, write=False)
    buffers.list_ends.cumsum_(0)
    for group in plan.groups:
        _launch_partition(plan, group, buffers, write=True)


def _launch_histogram(plan: _Plan, p: int, index: int, group: _Group, buffers: _Buffers, owns_list: bool) -> None:
    """One group's histogram launch of pass ``p`` (over the list, or the group's data).

    The launch that owns the list has the programs of all the call's blocks, whatever the size
    of its own group: the list can hold entries of every group, and each program counts its
    share in int32 (the programs left over on the data path find no block of the group)."""
    warps = histogram_warps(group.dtype, group.has_base, PASS_SHIFTS[p])
    blocks = plan.total_blocks if owns_list else group.num_blocks
    _band_histogram_kernel[(_programs(buffers.table.device, blocks, warps),)](
        buffers.table, buffers.block_column, buffers.state, buffers.hist[p, index], buffers.block_hist,
        buffers.block_above, buffers.candidates, buffers.list_hist[p], buffers.list_total, plan.list_capacity,
        int(owns_list), plan.num_columns, group.first_block, group.num_blocks,
        DTYPE=TL_DTYPES[group.dtype], HAS_BASE=group.has_base, SHIFT=PASS_SHIFTS[p], STORE_BLOCKS=p == group.last_pass,
        BLOCK=BLOCK_ELEMS, TILE=histogram_tile(group.dtype, group.has_base, PASS_SHIFTS[p]), LIST_TILE=COMPACT_TILE,
        num_warps=warps, num_stages=HISTOGRAM_STAGES,
    )


def _select_digit(plan: _Plan, p: int, buffers: _Buffers) -> None:
    """The digit kernel after pass ``p``: carries the groups that end here into the next pass."""
    last = p + 1 == plan.num_passes
    carry = 0 if last else sum(1 << i for i, group in enumerate(plan.groups) if group.last_pass <= p)
    _select_digit_kernel[(1,)](
        buffers.hist[p], buffers.hist[p if last else p + 1], buffers.state, buffers.list_hist[p],
        buffers.list_total, plan.list_capacity, len(plan.groups), carry, PASS_SHIFTS[p],
        GROUPS=MAX_GROUPS, num_warps=SELECT_WARPS, num_stages=1,
    )


def _radix_select(plan: _Plan, buffers: _Buffers) -> None:
    """8-bit radix passes over the list (or the data): the threshold key and the ``== T`` keys
    to take land in the state."""
    for p in range(plan.num_passes):
        launched = [(i, group) for i, group in enumerate(plan.groups) if p <= group.last_pass]
        for order, (i, group) in enumerate(launched):
            _launch_histogram(plan, p, i, group, buffers, owns_list=order == 0)
        _select_digit(plan, p, buffers)


def _compact(plan: _Plan, buffers: _Buffers, out: torch.Tensor, stats: torch.Tensor) -> None:
    """Per block its ``> T`` / ``== T`` counts, their cumulative sums, and the compaction."""
    sums = torch.empty((2, plan.total_blocks), dtype=torch.int64, device=out.device)
    _classify_blocks_kernel[(triton.cdiv(plan.total_blocks, CLASSIFY_ROWS),)](
        buffers.table, buffers.block_column, buffers.block_hist, buffers.block_above, buffers.state, sums,
        buffers.candidates, buffers.list_ends, buffers.list_total, plan.list_capacity, plan.num_columns,
        plan.total_blocks, ROWS=CLASSIFY_ROWS, TILE=COMPACT_TILE, num_warps=SELECT_WARPS, num_stages=1,
    )
    sums = sums.cumsum(1)
    for group in plan.groups:
        _compact_indices_kernel[(group.num_blocks,)](
            buffers.table, buffers.block_column, buffers.state, sums, out, stats, buffers.candidates,
            buffers.list_ends, buffers.list_total, plan.list_capacity, plan.num_columns, plan.total_blocks,
            group.first_block, DTYPE=TL_DTYPES[group.dtype], HAS_BASE=group.has_base, BLOCK=BLOCK_ELEMS,
            TILE=COMPACT_TILE, num_warps=COMPACT_WARPS, num_stages=COMPACT_STAGES,
        )


def topk_indices(
    tensors: Sequence[torch.Tensor],
    k: int,
    bases: Sequence[torch.Tensor | None] | None = None,
    concatenated: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices of the k largest scores over all tensors, ascending within each tensor.

    Args:
        tensors: T contiguous fp32 / fp16 / bf16 tensors of any shape (dtypes may be mixed), on
            one device (CUDA, or CPU with the interpreted module).
        k: ``0 <= k <= total numel``.
        bases: None, or per tensor None or a contiguous tensor of its dtype and numel on its
            device: the score is then ``|fl32(f32(x) − f32(base))|`` instead of ``|x|``.
        concatenated: indices count positions in the concatenation of the flattened tensors
            (each tensor's start added) instead of within each tensor.

    Returns:
        indices: int64 (k,), every tensor's selected flat row-major indices in tensor order.
            Among entries equal to the k-th largest score, those with the lowest (position in
            the list, flat index) are taken.
        stats: int64 (T + 1,) on the same device: the number of indices of each tensor, then
            the number of NaN scores (when it is not 0 the selection is meaningless).

    Nothing is read back from the device.
    """
    total = sum(x.numel() for x in tensors)
    assert 0 <= k <= total, f"k={k} outside [0, {total}]"
    assert all(x.dtype in LAST_PASS and x.is_contiguous() for x in tensors)
    paired = list(bases) if bases is not None else [None] * len(tensors)
    assert len(paired) == len(tensors) and all(
        b is None or (b.dtype == x.dtype and b.numel() == x.numel() and b.is_contiguous())
        for x, b in zip(tensors, paired, strict=True))
    paired = [None if b is None else _aligned_like(b, x) for x, b in zip(tensors, paired, strict=True)]
    device = tensors[0].device if tensors else torch.device("cpu")
    plan = _plan(tensors, paired, k, concatenated)
    buffer = upload(plan.values, device)
    stats = buffer[plan.stats_at: plan.stats_at + len(tensors) + 1]
    out = torch.empty(k, dtype=torch.int64, device=device)
    if not plan.total_blocks:
        return out, stats
    buffers = _buffers(plan, buffer, len(tensors))
    _fill_list(plan, buffers)
    _radix_select(plan, buffers)
    _compact(plan, buffers, out, stats)
    return out, stats


def _single_tensor_buffers(x: torch.Tensor, k: int) -> tuple[_Plan, _Buffers]:
    """The plan and buffers of ``topk_indices([x], k)``, uploaded."""
    plan = _plan([x], [None], k, concatenated=False)
    return plan, _buffers(plan, upload(plan.values, x.device), 1)


def histogram_pass(x: torch.Tensor, shift: int, prefix: int) -> Callable[[], torch.Tensor]:
    """One launch of a radix histogram pass over the data of ``x`` (the path a call takes when
    its candidate list is not in use), for timing.

    Args:
        x: one contiguous fp32 / fp16 / bf16 tensor (CUDA, or CPU with the interpreted module).
        shift: the pass's digit shift, one of ``PASS_SHIFTS`` up to the dtype's last.
        prefix: the band, ``key >> (shift + 8)`` of the keys counted (unused by the first pass).

    Returns:
        A thunk that launches the pass once and returns the int64 (256,) histogram, which
        accumulates over calls. Everything else is prepared before it.
    """
    assert x.dtype in LAST_PASS and x.is_contiguous() and x.numel() > 0
    p = PASS_SHIFTS.index(shift)
    assert p <= LAST_PASS[x.dtype], f"{x.dtype} keys have no digit at shift {shift}"
    plan, buffers = _single_tensor_buffers(x, 0)
    buffers.state[STATE_PREFIX] = prefix
    no_list = replace(plan, list_capacity=-1)
    hist = buffers.hist[p, 0]

    def launch() -> torch.Tensor:
        _launch_histogram(no_list, p, 0, plan.groups[0], buffers, owns_list=True)
        return hist

    return launch


def full_passes(x: torch.Tensor, k: int) -> tuple[Callable[[], torch.Tensor], Callable[[], torch.Tensor]]:
    """The two passes ``topk_indices([x], k)`` makes over the data, for timing: the count of the
    keys at or above the list's lowest key (bracketed from samples as the call brackets it),
    and the partition that writes them into the list.

    Returns:
        (count, partition): thunks that launch one pass each; count returns the int64 (B,)
        per-block counts, partition the list (its first ``list_ends[-1]`` entries written).
    """
    assert x.dtype in LAST_PASS and x.is_contiguous() and x.numel() > 0 and 0 <= k <= x.numel()
    plan, buffers = _single_tensor_buffers(x, k)
    if plan.sampled:
        _bracket(plan, buffers)
    group = plan.groups[0]
    counting = replace(buffers, list_ends=torch.empty_like(buffers.list_ends))
    _launch_partition(plan, group, counting, write=False)
    torch.cumsum(counting.list_ends, 0, out=buffers.list_ends)

    def count() -> torch.Tensor:
        _launch_partition(plan, group, counting, write=False)
        return counting.list_ends

    def partition() -> torch.Tensor:
        _launch_partition(plan, group, buffers, write=True)
        return buffers.candidates

    return count, partition


SPECIALIZATIONS: list[KernelSpec] = _topk_specs.specializations(sys.modules[__name__])
"""Histogram: one per (dtype, with or without a base, pass) the launcher runs; digit selection,
bracket and block classification: one each; sample, count, partition and compaction: one per
(dtype, with or without a base)."""
