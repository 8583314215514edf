"""Global top-k by magnitude over many tensors, without concatenating them.

Keys
    An entry's score ``|x|`` is compared through its *key*: the fp32 bit pattern of ``|x|``
    (sign bit cleared) read as an unsigned integer. On non-negative floats the key order is the
    value order, and every fp16 / bf16 value is an exact fp32 value, so one key space serves
    mixed-dtype lists. ``-0.0`` and ``+0.0`` share key 0; ``+inf`` has the largest key of any
    number. A NaN ranks above ``+inf``; the first pass counts the NaN keys, and the caller is
    told how many there were (the selection is then meaningless).

Radix select (8-bit digits, most significant first)
    Pass ``p`` counts, for the keys whose higher digits equal the threshold prefix found so far
    (the *band*), the digit ``(key >> SHIFT_p) & 255`` with ``SHIFT = 24, 16, 8, 0``. After each
    pass one small kernel sums the dtype groups' 256-bin histograms, picks the digit that holds
    the k-th largest key and updates the number still to take, on the device (no host sync).
    bf16 keys have 16 zero low bits and fp16 keys 13, so a bf16 tensor is read in 2 passes,
    fp16 in 3 and fp32 in 4; in the passes after a group's last one its band keys all have
    digit 0, which the digit kernel carries into bin 0 without reading them again.

    Each histogram program is persistent: it strides over the blocks of every tensor of one
    dtype (a device table of base addresses, one launch per dtype), builds a block-local
    histogram with ``tl.histogram`` from contiguous 16-byte vector loads, and issues ONE global
    integer atomic per non-empty bin at its end (and one for its NaN count in the first pass,
    when there are any). In a tensor's last pass it also stores its per-block histogram and the
    count of keys above the band (1 KiB per block of 16384 elements).

Compaction
    With the exact threshold key ``T`` and ``r`` (how many keys equal to ``T`` to take), one
    kernel derives per block the count of keys ``> T`` and ``== T`` from its histogram; one
    cumulative sum over the blocks in (tensor position, flat index) order gives every block its
    output offset and how many of its ``== T`` keys it takes (the lowest positions win ties).
    One program per block then writes its selected flat indices, ascending, with in-block
    scans, and the last block of each tensor writes the tensor's count. Blocks selecting
    nothing skip their read. Everything is integer arithmetic: exact and deterministic.

Host work
    The launcher plans on the host from shapes and addresses only and moves the plan — tensor
    table, initial state, zeroed histograms and counters — to the device in one copy. A call
    with a single dtype makes ``2 * passes + 5`` launches (fp32: 13, bf16: 9) whatever the
    number of tensors, and reads nothing back: the caller reads the per-tensor counts and the
    NaN count together, once.

Alignment
    A tensor's base address is rounded down to 16 bytes and its first ``head`` elements
    masked off, so full tiles are 16-byte aligned and loaded unmasked with vector loads.

Extra memory: per block of 16384 elements, 1 KiB of histogram and a few counters, about
0.07 byte per parameter, plus the int64 output.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from . import KernelSpec, upload

RADIX_BITS = 8
RADIX = 1 << RADIX_BITS
PASS_SHIFTS: tuple[int, ...] = (24, 16, 8, 0)
"""Digit shifts of the radix passes; pass p reads digit ``(key >> PASS_SHIFTS[p]) & 255``."""

LAST_PASS: dict[torch.dtype, int] = {torch.float32: 3, torch.float16: 2, torch.bfloat16: 1}
"""Index of the last pass whose digit can be non-zero in keys of each dtype."""

BLOCK_ELEMS = 16384
"""Elements per block, the unit of the per-block bookkeeping (1 KiB histogram per block)."""

HISTOGRAM_TILE = 1024
"""Elements a histogram program loads at once: 8 per thread at 4 warps (two fp32 / one 16-bit
16-byte vector load). Triton 3.6 lowers ``tl.histogram`` to warp ballots whose registers grow
with the elements per thread (up to 152 per thread at 16); at 8 every pass fits in at most 80
registers there (one pass excepted, see WIDE_TILE_PASSES) and 50 under Triton 3.9."""

WIDE_TILE_PASSES: frozenset[tuple[torch.dtype, int]] = frozenset({(torch.float16, 8)})
"""(dtype, shift) of the passes that load 2 * HISTOGRAM_TILE at once: at 8 elements per thread
ptxas (Triton 3.6, sm_90) spills in fp16's last pass to keep 7 programs per SM instead of 6; at
16 it does not (152 registers)."""

COMPACT_TILE = 1024
"""Elements the compaction scans at once (8 per thread: keeps its two scans in registers)."""

PROGRAMS_PER_SM = 8
"""Persistent histogram programs per SM (4 warps, 1 KiB shared each; all 8 are resident at up
to 64 registers per thread: Triton 3.9 compiles the passes to 21-50, Triton 3.6 to 56-80; the
wide fp16 pass takes 74 / 152)."""

INTERPRETER_PROGRAMS = 3
HISTOGRAM_WARPS = 4
HISTOGRAM_STAGES = 1
COMPACT_WARPS = 4
COMPACT_STAGES = 1
SELECT_WARPS = 4

_TL_DTYPE = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}

_RADIX = tl.constexpr(RADIX)
_RADIX_BITS = tl.constexpr(RADIX_BITS)
_TOP_SHIFT = tl.constexpr(PASS_SHIFTS[0])

MAX_GROUPS = 4
"""Dtype groups the digit kernel can sum (3 dtypes exist), a power of two."""

CLASSIFY_ROWS = 16
"""Blocks per program of the block classification (16 x 256 bins)."""

# Rows of the tensor table (int64, shape (TABLE_ROWS, num_columns)); a column per tensor with
# at least one block, grouped by dtype: aligned base address, head, end (= head + numel), first
# block in the group-major block order, first global block, position in the input list, shift
# of its dtype's last pass.
TABLE_ROWS = 7
_ROW_BASE = tl.constexpr(0)
_ROW_HEAD = tl.constexpr(1)
_ROW_END = tl.constexpr(2)
_ROW_FIRST_MAJOR = tl.constexpr(3)
_ROW_FIRST_GLOBAL = tl.constexpr(4)
_ROW_POSITION = tl.constexpr(5)
_ROW_SHIFT = tl.constexpr(6)

# The state vector (int64): keys still to take, digits found so far, threshold key so far.
STATE_SIZE = 3
STATE_PREFIX = 1
_STATE_REMAINING = tl.constexpr(0)
_STATE_PREFIX = tl.constexpr(STATE_PREFIX)
_STATE_THRESHOLD = tl.constexpr(2)

_INF_KEY = tl.constexpr(0x7F800000)


# The interpreted copy of this module (``kernel_module(..., interpret=True)``) cannot call
# triton.language's own ``@jit`` helpers (tl.sum, tl.cumsum, tl.zeros, tl.cdiv, ...): they were
# decorated for compilation. Sums and scans therefore call the builtins tl.reduce /
# tl.associative_scan with triton's ``_sum_combine``, which the interpreter runs with numpy.
_SUM = tl.standard._sum_combine


@triton.jit
def _total(x):
    """Sum of a 1-D block, in its own dtype."""
    return tl.reduce(x, 0, _SUM)


@triton.jit
def _exclusive_cumsum(x):
    """Exclusive prefix sum of a 1-D block, in its own dtype."""
    return tl.associative_scan(x, 0, _SUM) - x


@triton.jit
def _magnitude_key(x, DTYPE: tl.constexpr):
    """uint32 key of |x|: the fp32 bit pattern with the sign cleared."""
    if DTYPE.is_bf16():
        key = (x.to(tl.uint16, bitcast=True).to(tl.uint32) & 0x7FFF) << 16
    elif DTYPE.is_fp16():
        key = x.to(tl.float32).to(tl.uint32, bitcast=True) & 0x7FFFFFFF
    else:
        key = x.to(tl.uint32, bitcast=True) & 0x7FFFFFFF
    return key


@triton.jit
def _tensor_row(table_ptr, num_columns, c, DTYPE: tl.constexpr):
    """(16-byte aligned base pointer, head, end, first group-major block, first global block)
    of column c of the tensor table.

    Element ``v`` of the aligned base is flat index ``v - head``; valid ``v`` lie in
    ``[head, end)``.
    """
    base = tl.load(table_ptr + _ROW_BASE * num_columns + c).to(tl.pointer_type(DTYPE))
    base = tl.multiple_of(base, 16)
    head = tl.load(table_ptr + _ROW_HEAD * num_columns + c)
    end = tl.load(table_ptr + _ROW_END * num_columns + c)
    first_major = tl.load(table_ptr + _ROW_FIRST_MAJOR * num_columns + c)
    first_global = tl.load(table_ptr + _ROW_FIRST_GLOBAL * num_columns + c)
    return base, head, end, first_major, first_global


@triton.jit
def _load_tile_keys(base, tile_start, head, end, DTYPE: tl.constexpr, TILE: tl.constexpr):
    """Keys (uint32, [TILE]) and validity mask of elements ``tile_start + [0, TILE)``.

    Tiles inside ``[head, end)`` are loaded unmasked (16-byte vector loads); the first and
    last tile of a tensor are masked.
    """
    offs = tl.arange(0, TILE)
    ptrs = base + tile_start + offs
    if (tile_start >= head) & (tile_start + TILE <= end):
        x = tl.load(ptrs)
        valid = offs < TILE
    else:
        pos = tile_start + offs
        valid = (pos >= head) & (pos < end)
        x = tl.load(ptrs, mask=valid, other=0.0)
    return _magnitude_key(x, DTYPE), valid


@triton.jit(do_not_specialize=["num_columns", "first_block", "num_blocks"])
def _digit_histogram_kernel(
    table_ptr,
    block_column_ptr,
    prefix_ptr,
    hist_ptr,
    nan_ptr,
    block_hist_ptr,
    block_above_ptr,
    num_columns,
    first_block,
    num_blocks,
    DTYPE: tl.constexpr,
    SHIFT: tl.constexpr,
    STORE_BLOCKS: tl.constexpr,
    BLOCK: tl.constexpr,
    TILE: tl.constexpr,
):
    """Histogram of digit ``(key >> SHIFT) & 255`` over the band keys of one dtype group.

    table_ptr: int64 (TABLE_ROWS, num_columns) tensor table; block_column_ptr: int64 column of
    every block in group-major order, this group's blocks at ``[first_block, first_block +
    num_blocks)``; prefix_ptr: int64 (1,) band prefix ``key >> (SHIFT + 8)`` (unused in the
    first pass); hist_ptr: int64 (256,) global histogram, atomically added to once per bin per
    program; nan_ptr: int64 (1,), receives the NaN keys counted in the first pass. With
    STORE_BLOCKS, block_hist_ptr (int32 (B, 256)) and block_above_ptr (int32 (B,), keys above
    the band) receive each block's counts at its global block id.
    """
    bins = tl.arange(0, _RADIX)
    totals = tl.full([_RADIX], 0, dtype=tl.int32)
    nans = 0
    if SHIFT != _TOP_SHIFT:
        prefix = tl.load(prefix_ptr).to(tl.uint32)
    for q in range(first_block + tl.program_id(0), first_block + num_blocks, tl.num_programs(0)):
        c = tl.load(block_column_ptr + q)
        base, head, end, first_major, first_global = _tensor_row(table_ptr, num_columns, c, DTYPE)
        j = q - first_major
        block_start = j * BLOCK
        num_tiles = tl.minimum((end - block_start + TILE - 1) // TILE, BLOCK // TILE)
        block_hist = tl.full([_RADIX], 0, dtype=tl.int32)
        above = 0
        for s in range(num_tiles):
            keys, valid = _load_tile_keys(base, block_start + s * TILE, head, end, DTYPE, TILE)
            digits = (keys >> SHIFT) & (_RADIX - 1)
            if SHIFT == _TOP_SHIFT:
                in_band = valid
                nans += _total((keys > _INF_KEY).to(tl.int32))
            else:
                high = (keys >> SHIFT) >> _RADIX_BITS
                in_band = valid & (high == prefix)
                above += _total((valid & (high > prefix)).to(tl.int32))
            block_hist += tl.histogram(digits, _RADIX, mask=in_band)
        totals += block_hist
        if STORE_BLOCKS:
            g = first_global + j
            tl.store(block_hist_ptr + g * _RADIX + bins, block_hist)
            tl.store(block_above_ptr + g, above)
    tl.atomic_add(hist_ptr + bins, totals.to(tl.int64), mask=totals > 0, sem="relaxed")
    if SHIFT == _TOP_SHIFT:
        tl.atomic_add(nan_ptr, nans.to(tl.int64), mask=nans > 0, sem="relaxed")


@triton.jit(do_not_specialize=["num_groups", "carry_mask", "shift"])
def _select_digit_kernel(hist_ptr, next_hist_ptr, state_ptr, num_groups, carry_mask, shift, GROUPS: tl.constexpr):
    """One program: the digit of this pass that holds the k-th largest key.

    hist_ptr: int64 (num_groups, 256) this pass's band histograms; state_ptr: int64
    (STATE_SIZE,) — keys still to take r (``1 <= r <= band size``, or 0 for k = 0: digit 255,
    nothing above it), the digits so far, and the threshold key (``prefix << shift``) updated
    in place. Groups whose bit is set in ``carry_mask`` have no histogram pass next: their band
    count at the chosen digit goes to bin 0 of their row at next_hist_ptr (int64
    (num_groups, 256)).
    """
    bins = tl.arange(0, _RADIX)
    groups = tl.arange(0, GROUPS)
    present = groups < num_groups
    rows = tl.load(hist_ptr + groups[:, None] * _RADIX + bins[None, :], mask=present[:, None], other=0)
    hist = tl.reduce(rows, 0, _SUM)
    remaining = tl.load(state_ptr + _STATE_REMAINING)
    at_or_above = _total(hist) - tl.associative_scan(hist, 0, _SUM) + hist
    digit = _total((at_or_above >= remaining).to(tl.int64)) - 1
    chosen = bins == digit
    above = _total(tl.where(chosen, at_or_above - hist, 0))
    prefix = tl.load(state_ptr + _STATE_PREFIX) * _RADIX + digit
    tl.store(state_ptr + _STATE_REMAINING, remaining - above)
    tl.store(state_ptr + _STATE_PREFIX, prefix)
    tl.store(state_ptr + _STATE_THRESHOLD, prefix << shift)
    band = tl.reduce(tl.where(chosen[None, :], rows, 0), 1, _SUM)
    carry = present & (((carry_mask >> groups) & 1) != 0)
    tl.store(next_hist_ptr + groups * _RADIX, band, mask=carry)


@triton.jit(do_not_specialize=["num_columns", "num_blocks"])
def _classify_blocks_kernel(
    table_ptr,
    block_column_ptr,
    block_hist_ptr,
    block_above_ptr,
    state_ptr,
    sums_ptr,
    num_columns,
    num_blocks,
    ROWS: tl.constexpr,
):
    """Per block: how many of its keys are ``> T`` and ``== T`` (T the threshold key).

    A block's last-pass digit of T is ``d = (T >> s) & 255`` (s: its dtype's last shift); its
    keys ``> T`` are those above that pass's band plus its bins above d, and its keys ``== T``
    are bin d when T has no bits below s (otherwise none of its keys can equal T).
    block_hist_ptr: int32 (B, 256), block_above_ptr: int32 (B,) by global block; sums_ptr:
    int64 (2, B) receives (greater, equal) by global block. Blocks in group-major order, ROWS
    per program.
    """
    q = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    valid = q < num_blocks
    c = tl.load(block_column_ptr + q, mask=valid, other=0)
    first_major = tl.load(table_ptr + _ROW_FIRST_MAJOR * num_columns + c, mask=valid, other=0)
    first_global = tl.load(table_ptr + _ROW_FIRST_GLOBAL * num_columns + c, mask=valid, other=0)
    shift = tl.load(table_ptr + _ROW_SHIFT * num_columns + c, mask=valid, other=0)
    g = first_global + q - first_major
    threshold = tl.load(state_ptr + _STATE_THRESHOLD)
    digit = (threshold >> shift) & (_RADIX - 1)
    exact = (threshold & ((1 << shift) - 1)) == 0
    bins = tl.arange(0, _RADIX)
    hist = tl.load(block_hist_ptr + g[:, None] * _RADIX + bins[None, :], mask=valid[:, None], other=0)
    equal = tl.reduce(tl.where(bins[None, :] == digit[:, None], hist, 0), 1, _SUM).to(tl.int64)
    higher = tl.reduce(tl.where(bins[None, :] > digit[:, None], hist, 0), 1, _SUM).to(tl.int64)
    above = tl.load(block_above_ptr + g, mask=valid, other=0).to(tl.int64)
    tl.store(sums_ptr + g, above + higher, mask=valid)
    tl.store(sums_ptr + num_blocks + g, tl.where(exact, equal, 0), mask=valid)


@triton.jit
def _selected_through(sums_ptr, num_blocks, g, remaining):
    """Entries selected in global blocks ``[0, g]`` (0 for g < 0), from the inclusive sums."""
    before = g >= 0
    greater = tl.load(sums_ptr + g, mask=before, other=0)
    equal = tl.load(sums_ptr + num_blocks + g, mask=before, other=0)
    return greater + tl.minimum(equal, remaining)


@triton.jit(do_not_specialize=["num_columns", "num_blocks", "first_block"])
def _compact_indices_kernel(
    table_ptr,
    block_column_ptr,
    state_ptr,
    sums_ptr,
    out_ptr,
    counts_ptr,
    num_columns,
    num_blocks,
    first_block,
    DTYPE: tl.constexpr,
    BLOCK: tl.constexpr,
    TILE: tl.constexpr,
):
    """Write the selected flat indices of one block, ascending, at its output offset.

    Program i handles group-major block ``first_block + i``. sums_ptr: int64 (2, num_blocks)
    inclusive cumulative sums over global blocks of the keys ``> T`` and ``== T``; with r the
    ``== T`` keys to take, the entries selected through block g are
    ``greater[g] + min(equal[g], r)`` (the lowest blocks take the ties), which gives the
    block's output offset and how many of its ``== T`` keys it takes. out_ptr: int64 (k,); the
    last block of a tensor writes the tensor's count at counts_ptr[position].
    """
    q = first_block + tl.program_id(0)
    c = tl.load(block_column_ptr + q)
    base, head, end, first_major, first_global = _tensor_row(table_ptr, num_columns, c, DTYPE)
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
        threshold = tl.load(state_ptr + _STATE_THRESHOLD).to(tl.uint32)
        equal_before = tl.load(sums_ptr + num_blocks + g - 1, mask=g > 0, other=0)
        take_equal = tl.minimum(tl.load(sums_ptr + num_blocks + g), remaining)
        take_equal -= tl.minimum(equal_before, remaining)
        block_start = j * BLOCK
        num_tiles = tl.minimum((end - block_start + TILE - 1) // TILE, BLOCK // TILE)
        equal_seen = 0
        for s in range(num_tiles):
            tile_start = block_start + s * TILE
            keys, valid = _load_tile_keys(base, tile_start, head, end, DTYPE, TILE)
            equal = (valid & (keys == threshold)).to(tl.int32)
            equal_rank = equal_seen + _exclusive_cumsum(equal)
            chosen = ((valid & (keys > threshold)) | ((equal != 0) & (equal_rank < take_equal)))
            chosen = chosen.to(tl.int32)
            slots = slot + _exclusive_cumsum(chosen)
            flat = tile_start - head + tl.arange(0, TILE)
            tl.store(out_ptr + slots, flat, mask=chosen != 0)
            slot += _total(chosen)
            equal_seen += _total(equal)


@dataclass(frozen=True)
class _Group:
    """The tensors of one dtype: their columns of the table and blocks in group-major order."""

    dtype: torch.dtype
    first_block: int
    num_blocks: int

    @property
    def last_pass(self) -> int:
        return LAST_PASS[self.dtype]


@dataclass(frozen=True)
class _Plan:
    """Everything a call needs, planned on the host from shapes and addresses.

    ``values`` is the one int64 buffer uploaded to the device, laid out as the ``*_at``
    offsets say: the tensor table (TABLE_ROWS, C), blocks per column (C,), the state
    (STATE_SIZE,), zeroed histograms (passes, groups, 256) and zeroed stats (T + 1,): the
    per-tensor counts, then the NaN count.
    """

    groups: list[_Group]
    num_columns: int
    total_blocks: int
    num_passes: int
    values: list[int]
    repeats_at: int
    state_at: int
    hist_at: int
    stats_at: int


def _plan(tensors: Sequence[torch.Tensor], k: int) -> _Plan:
    """Split every tensor into 16-byte aligned blocks, numbered globally in (tensor, block)
    order, and lay the tensors out in one table grouped by dtype."""
    columns: dict[torch.dtype, list[tuple[int, int, int, int, int, int]]] = {}
    next_global = 0
    for position, x in enumerate(tensors):
        numel = x.numel()
        head = (x.data_ptr() % 16) // x.element_size() if numel else 0
        blocks = -(-(numel + head) // BLOCK_ELEMS)
        if blocks:
            columns.setdefault(x.dtype, []).append(
                (x.data_ptr() - head * x.element_size(), head, head + numel, next_global, position, blocks))
        next_global += blocks
    groups, table, repeats, first_major = [], [[] for _ in range(TABLE_ROWS)], [], 0
    for dtype, rows in columns.items():
        group_blocks = sum(row[5] for row in rows)
        groups.append(_Group(dtype, first_major, group_blocks))
        for base, head, end, first_global, position, blocks in rows:
            for row, value in enumerate((base, head, end, first_major, first_global, position,
                                         PASS_SHIFTS[LAST_PASS[dtype]])):
                table[row].append(value)
            repeats.append(blocks)
            first_major += blocks
    num_passes = max((group.last_pass + 1 for group in groups), default=0)
    state = [k, 0, 0]
    values = [v for row in table for v in row] + repeats + state
    hist_at = len(values)
    values += [0] * (num_passes * len(groups) * RADIX)
    stats_at = len(values)
    values += [0] * (len(tensors) + 1)
    return _Plan(groups, len(repeats), first_major, num_passes, values,
                 repeats_at=TABLE_ROWS * len(repeats), state_at=hist_at - STATE_SIZE,
                 hist_at=hist_at, stats_at=stats_at)


def histogram_tile(dtype: torch.dtype, shift: int) -> int:
    """Elements the histogram pass with digit ``shift`` over ``dtype`` keys loads at once."""
    return 2 * HISTOGRAM_TILE if (dtype, shift) in WIDE_TILE_PASSES else HISTOGRAM_TILE


def _programs(device: torch.device, num_blocks: int) -> int:
    """Persistent programs of a histogram launch: a few per SM, or a few in the interpreter."""
    if device.type == "cuda":
        return min(num_blocks, PROGRAMS_PER_SM * _sm_count(device.index or 0))
    return min(num_blocks, INTERPRETER_PROGRAMS)


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _radix_select(plan: _Plan, buffer: torch.Tensor, block_column: torch.Tensor, block_hist: torch.Tensor,
                  block_above: torch.Tensor) -> None:
    """8-bit radix passes: the threshold key and the ``== T`` keys to take land in the state;
    every group's last pass stores its per-block histograms and above-band counts."""
    num_groups = len(plan.groups)
    table = buffer[: plan.repeats_at]
    state = buffer[plan.state_at: plan.hist_at]
    hist = buffer[plan.hist_at: plan.stats_at].view(plan.num_passes, num_groups, RADIX)
    nan = buffer[-1:]
    for p in range(plan.num_passes):
        for i, group in enumerate(plan.groups):
            if p <= group.last_pass:
                _digit_histogram_kernel[(_programs(buffer.device, group.num_blocks),)](
                    table, block_column, state[STATE_PREFIX:], hist[p, i], nan, block_hist, block_above,
                    plan.num_columns, group.first_block, group.num_blocks,
                    DTYPE=_TL_DTYPE[group.dtype], SHIFT=PASS_SHIFTS[p],
                    STORE_BLOCKS=p == group.last_pass, BLOCK=BLOCK_ELEMS,
                    TILE=histogram_tile(group.dtype, PASS_SHIFTS[p]),
                    num_warps=HISTOGRAM_WARPS,
                    num_stages=HISTOGRAM_STAGES,
                )
        last = p + 1 == plan.num_passes
        carry = 0 if last else sum(1 << i for i, group in enumerate(plan.groups) if group.last_pass <= p)
        _select_digit_kernel[(1,)](
            hist[p], hist[p if last else p + 1], state, num_groups, carry, PASS_SHIFTS[p],
            GROUPS=MAX_GROUPS, num_warps=SELECT_WARPS, num_stages=1,
        )


def topk_indices(tensors: Sequence[torch.Tensor], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices of the k largest |x| over all tensors, ascending within each tensor.

    Args:
        tensors: T contiguous fp32 / fp16 / bf16 tensors of any shape (dtypes may be mixed), on
            one device (CUDA, or CPU with the interpreted module).
        k: ``0 <= k <= total numel``.

    Returns:
        indices: int64 (k,), every tensor's selected flat row-major indices in tensor order.
            Among entries equal to the k-th largest magnitude, those with the lowest (position
            in the list, flat index) are taken.
        stats: int64 (T + 1,) on the same device: the number of indices of each tensor, then
            the number of NaN entries (when it is not 0 the selection is meaningless).

    Nothing is read back from the device.
    """
    total = sum(x.numel() for x in tensors)
    assert 0 <= k <= total, f"k={k} outside [0, {total}]"
    assert all(x.dtype in LAST_PASS and x.is_contiguous() for x in tensors)
    device = tensors[0].device if tensors else torch.device("cpu")
    plan = _plan(tensors, k)
    buffer = upload(plan.values, device)
    stats = buffer[plan.stats_at:]
    out = torch.empty(k, dtype=torch.int64, device=device)
    if not plan.total_blocks:
        return out, stats
    table = buffer[: plan.repeats_at]
    block_column = torch.repeat_interleave(buffer[plan.repeats_at: plan.state_at], output_size=plan.total_blocks)
    block_hist = torch.empty((plan.total_blocks, RADIX), dtype=torch.int32, device=device)
    block_above = torch.empty(plan.total_blocks, dtype=torch.int32, device=device)
    _radix_select(plan, buffer, block_column, block_hist, block_above)
    state = buffer[plan.state_at: plan.hist_at]
    sums = torch.empty((2, plan.total_blocks), dtype=torch.int64, device=device)
    _classify_blocks_kernel[(triton.cdiv(plan.total_blocks, CLASSIFY_ROWS),)](
        table, block_column, block_hist, block_above, state, sums, plan.num_columns, plan.total_blocks,
        ROWS=CLASSIFY_ROWS, num_warps=SELECT_WARPS, num_stages=1,
    )
    sums = sums.cumsum(1)
    for group in plan.groups:
        _compact_indices_kernel[(group.num_blocks,)](
            table, block_column, state, sums, out, stats, plan.num_columns, plan.total_blocks, group.first_block,
            DTYPE=_TL_DTYPE[group.dtype], BLOCK=BLOCK_ELEMS, TILE=COMPACT_TILE,
            num_warps=COMPACT_WARPS, num_stages=COMPACT_STAGES,
        )
    return out, stats


def histogram_pass(x: torch.Tensor, shift: int, prefix: int) -> Callable[[], torch.Tensor]:
    """One launch of the radix histogram over ``x`` as :func:`topk_indices` makes it, for timing.

    Args:
        x: one contiguous fp32 / fp16 / bf16 tensor (CUDA, or CPU with the interpreted module).
        shift: the pass's digit shift, one of ``PASS_SHIFTS`` that ``x``'s dtype runs.
        prefix: the band, ``key >> (shift + 8)`` of the keys counted (unused by the first pass).

    Returns:
        A thunk that launches the pass once and returns the int64 (256,) histogram, which
        accumulates over calls. Everything else is prepared before it: the GPU check times it
        against the copy bandwidth.
    """
    assert x.dtype in LAST_PASS and x.is_contiguous() and x.numel() > 0
    assert shift in PASS_SHIFTS[: LAST_PASS[x.dtype] + 1], f"{x.dtype} has no pass at shift {shift}"
    device = x.device
    plan = _plan([x], 0)
    buffer = upload(plan.values, device)
    group = plan.groups[0]
    table = buffer[: plan.repeats_at]
    block_column = torch.repeat_interleave(buffer[plan.repeats_at: plan.state_at], output_size=plan.total_blocks)
    block_hist = torch.empty((plan.total_blocks, RADIX), dtype=torch.int32, device=device)
    block_above = torch.empty(plan.total_blocks, dtype=torch.int32, device=device)
    prefix_t = torch.tensor([prefix], dtype=torch.int64, device=device)
    hist = torch.zeros(RADIX, dtype=torch.int64, device=device)
    nan = torch.zeros(1, dtype=torch.int64, device=device)
    grid = (_programs(device, group.num_blocks),)

    def launch() -> torch.Tensor:
        _digit_histogram_kernel[grid](
            table, block_column, prefix_t, hist, nan, block_hist, block_above,
            plan.num_columns, group.first_block, group.num_blocks,
            DTYPE=_TL_DTYPE[x.dtype], SHIFT=shift, STORE_BLOCKS=PASS_SHIFTS.index(shift) == group.last_pass,
            BLOCK=BLOCK_ELEMS, TILE=histogram_tile(x.dtype, shift),
            num_warps=HISTOGRAM_WARPS, num_stages=HISTOGRAM_STAGES,
        )
        return hist

    return launch


_HISTOGRAM_SIGNATURE = {
    "table_ptr": "*i64", "block_column_ptr": "*i64", "prefix_ptr": "*i64", "hist_ptr": "*i64",
    "nan_ptr": "*i64", "block_hist_ptr": "*i32", "block_above_ptr": "*i32", "num_columns": "i32",
    "first_block": "i32", "num_blocks": "i32", "DTYPE": "constexpr", "SHIFT": "constexpr",
    "STORE_BLOCKS": "constexpr", "BLOCK": "constexpr", "TILE": "constexpr",
}
_SELECT_SIGNATURE = {
    "hist_ptr": "*i64", "next_hist_ptr": "*i64", "state_ptr": "*i64", "num_groups": "i32",
    "carry_mask": "i32", "shift": "i32", "GROUPS": "constexpr",
}
_CLASSIFY_SIGNATURE = {
    "table_ptr": "*i64", "block_column_ptr": "*i64", "block_hist_ptr": "*i32",
    "block_above_ptr": "*i32", "state_ptr": "*i64", "sums_ptr": "*i64", "num_columns": "i32",
    "num_blocks": "i32", "ROWS": "constexpr",
}
_COMPACT_SIGNATURE = {
    "table_ptr": "*i64", "block_column_ptr": "*i64", "state_ptr": "*i64", "sums_ptr": "*i64",
    "out_ptr": "*i64", "counts_ptr": "*i64", "num_columns": "i32", "num_blocks": "i32",
    "first_block": "i32", "DTYPE": "constexpr", "BLOCK": "constexpr", "TILE": "constexpr",
}
_DTYPE_NAME = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def _specializations() -> list[KernelSpec]:
    specs = []
    for dtype, last in LAST_PASS.items():
        for p in range(last + 1):
            specs.append(KernelSpec(
                name=f"topk_histogram_{_DTYPE_NAME[dtype]}_shift{PASS_SHIFTS[p]}",
                kernel=_digit_histogram_kernel,
                signature=_HISTOGRAM_SIGNATURE,
                constexprs={"DTYPE": _TL_DTYPE[dtype], "SHIFT": PASS_SHIFTS[p],
                            "STORE_BLOCKS": p == last, "BLOCK": BLOCK_ELEMS,
                            "TILE": histogram_tile(dtype, PASS_SHIFTS[p])},
                num_warps=HISTOGRAM_WARPS,
                num_stages=HISTOGRAM_STAGES,
                promises=frozenset({"block_local_histogram", "vectorized_loads"}),
            ))
    specs.append(KernelSpec(
        name="topk_select_digit", kernel=_select_digit_kernel, signature=_SELECT_SIGNATURE,
        constexprs={"GROUPS": MAX_GROUPS}, num_warps=SELECT_WARPS, num_stages=1,
        promises=frozenset({"vectorized_loads"}),
    ))
    specs.append(KernelSpec(
        name="topk_classify_blocks", kernel=_classify_blocks_kernel, signature=_CLASSIFY_SIGNATURE,
        constexprs={"ROWS": CLASSIFY_ROWS}, num_warps=SELECT_WARPS, num_stages=1,
        promises=frozenset({"vectorized_loads"}),
    ))
    for dtype in LAST_PASS:
        specs.append(KernelSpec(
            name=f"topk_compact_{_DTYPE_NAME[dtype]}",
            kernel=_compact_indices_kernel,
            signature=_COMPACT_SIGNATURE,
            constexprs={"DTYPE": _TL_DTYPE[dtype], "BLOCK": BLOCK_ELEMS,
                        "TILE": COMPACT_TILE},
            num_warps=COMPACT_WARPS,
            num_stages=COMPACT_STAGES,
            promises=frozenset({"vectorized_loads"}),
        ))
    return specs


SPECIALIZATIONS: list[KernelSpec] = _specializations()
"""Histogram: one per (dtype, pass) the launcher runs; digit selection and block
classification: one each; compaction: one per dtype."""


_BLOCK_BOOKKEEPING_BYTES = 3 * RADIX * 4 + 128
"""Per block: its last-pass histogram written once and read once by the classification, plus
its counters (above, greater / equal and their cumulative sums, read by the compaction): about
2 KiB + 100 B, counted as 3 KiB + 128 B (an upper bound; under 1% of a block's input bytes)."""


def bytes_moved(shapes: Sequence[Sequence[int]], k: int, dtype: torch.dtype) -> int:
    """HBM bytes ``topk_indices`` moves for tensors of ``shapes`` and one ``dtype``.

    With N the total numel, e the element size, P = LAST_PASS[dtype] + 1 radix passes (fp32 4,
    fp16 3, bf16 2) and B = sum over tensors of ceil(numel / 16384) blocks::

        P * N * e                  histogram passes, each reads every element once
      + N * e                      compaction read (an upper bound: blocks selecting nothing
                                   skip it)
      + 8 * k                      int64 indices written
      + B * (3 * 256 * 4 + 128)    per-block histograms and counters (an upper bound)
    """
    numels = [math.prod(shape) for shape in shapes]
    n, e = sum(numels), torch.empty(0, dtype=dtype).element_size()
    blocks = sum(-(-numel // BLOCK_ELEMS) for numel in numels)
    return (LAST_PASS[dtype] + 2) * n * e + 8 * k + blocks * _BLOCK_BOOKKEEPING_BYTES


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
    e = torch.empty(0, dtype=dtype).element_size()
    return (2 + e + 1) * n * e + k * (e + 8) + 32 * k
