"""Global top-k by magnitude over many tensors, without concatenating them.

Keys
    An entry's score ``|x|`` is compared through its *key*: the fp32 bit pattern of ``|x|``
    (sign bit cleared) read as an unsigned integer. On non-negative floats the key order is the
    value order, and every fp16 / bf16 value is an exact fp32 value, so one key space serves
    mixed-dtype lists. ``-0.0`` and ``+0.0`` share key 0; ``+inf`` has the largest key of any
    number. A NaN (the public layer rejects them) would rank above ``+inf``.

Radix select (8-bit digits, most significant first)
    Pass ``p`` counts, for the keys whose higher digits equal the threshold prefix found so far
    (the *band*), the digit ``(key >> SHIFT_p) & 255`` with ``SHIFT = 24, 16, 8, 0``. From the
    summed 256-bin histogram, torch ops on the device (no host sync) pick the digit that holds
    the k-th largest key and update the number still to take. bf16 keys have 16 zero low bits
    and fp16 keys 13, so a bf16 tensor is read in 2 passes, fp16 in 3 and fp32 in 4; in the
    passes after a tensor's last one its band keys all have digit 0, which is added to bin 0
    without reading it again.

    Each histogram program is persistent: it strides over the blocks of every tensor of one
    dtype (a device table of base addresses, one launch per dtype), builds a block-local
    histogram with ``tl.histogram`` from contiguous 16-byte vector loads, and issues ONE global
    integer atomic per non-empty bin at its end. In a tensor's last pass it also stores its
    per-block histogram and the count of keys above the band (1 KiB per block of 16384
    elements).

Compaction
    With the exact threshold key ``T`` and ``r`` (how many keys equal to ``T`` to take), torch
    ops derive per block the count of keys ``> T`` and ``== T``; exclusive prefix sums in
    (tensor position, flat index) order give every block its output offset and how many of its
    ``== T`` keys it takes (the lowest positions win ties). One program per block then writes
    its selected flat indices, ascending, with in-block scans. Blocks selecting nothing skip
    their read. Everything is integer arithmetic: the result is exact and deterministic.

Alignment
    A tensor's base address is rounded down to 16 bytes and its first ``head`` elements
    masked off, so full tiles are 16-byte aligned and loaded unmasked with vector loads.

Extra memory: per block of 16384 elements, 1 KiB of histogram and a few counters, about
0.07 byte per parameter (twice that while the selection ops run), plus the int64 output.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from . import KernelSpec

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

_TL_DTYPE = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}

_RADIX = tl.constexpr(RADIX)
_RADIX_BITS = tl.constexpr(RADIX_BITS)
_TOP_SHIFT = tl.constexpr(PASS_SHIFTS[0])

# Rows of the per-dtype tensor table (int64, shape (5, num_tensors)): aligned base address,
# head, end (= head + numel), first block in the group, first global block.
_ROW_BASE = tl.constexpr(0)
_ROW_HEAD = tl.constexpr(1)
_ROW_END = tl.constexpr(2)
_ROW_FIRST_LOCAL = tl.constexpr(3)
_ROW_FIRST_GLOBAL = tl.constexpr(4)


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
def _tensor_row(table_ptr, num_tensors, t, DTYPE: tl.constexpr):
    """(16-byte aligned base pointer, head, end, first local block, first global block) of t.

    Element ``v`` of the aligned base is flat index ``v - head``; valid ``v`` lie in
    ``[head, end)``.
    """
    base = tl.load(table_ptr + _ROW_BASE * num_tensors + t).to(tl.pointer_type(DTYPE))
    base = tl.multiple_of(base, 16)
    head = tl.load(table_ptr + _ROW_HEAD * num_tensors + t)
    end = tl.load(table_ptr + _ROW_END * num_tensors + t)
    first_local = tl.load(table_ptr + _ROW_FIRST_LOCAL * num_tensors + t)
    first_global = tl.load(table_ptr + _ROW_FIRST_GLOBAL * num_tensors + t)
    return base, head, end, first_local, first_global


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


@triton.jit(do_not_specialize=["num_tensors", "num_blocks"])
def _digit_histogram_kernel(
    table_ptr,
    block_tensor_ptr,
    prefix_ptr,
    hist_ptr,
    block_hist_ptr,
    block_above_ptr,
    num_tensors,
    num_blocks,
    DTYPE: tl.constexpr,
    SHIFT: tl.constexpr,
    STORE_BLOCKS: tl.constexpr,
    BLOCK: tl.constexpr,
    TILE: tl.constexpr,
):
    """Histogram of digit ``(key >> SHIFT) & 255`` over the band keys of one dtype group.

    table_ptr: int64 (5, num_tensors) tensor table; block_tensor_ptr: int32 (num_blocks,) tensor
    of each block; prefix_ptr: int64 (1,) band prefix ``key >> (SHIFT + 8)`` (unused in the
    first pass); hist_ptr: int64 (256,) global histogram, atomically added to once per bin per
    program. With STORE_BLOCKS, block_hist_ptr (int32 (B, 256)) and block_above_ptr (int32
    (B,), keys above the band) receive each block's counts at its global block id.
    """
    bins = tl.arange(0, _RADIX)
    totals = tl.full([_RADIX], 0, dtype=tl.int32)
    if SHIFT != _TOP_SHIFT:
        prefix = tl.load(prefix_ptr).to(tl.uint32)
    for q in range(tl.program_id(0), num_blocks, tl.num_programs(0)):
        t = tl.load(block_tensor_ptr + q)
        base, head, end, first_local, first_global = _tensor_row(table_ptr, num_tensors, t, DTYPE)
        j = q - first_local
        block_start = j * BLOCK
        num_tiles = tl.minimum((end - block_start + TILE - 1) // TILE, BLOCK // TILE)
        block_hist = tl.full([_RADIX], 0, dtype=tl.int32)
        above = 0
        for s in range(num_tiles):
            keys, valid = _load_tile_keys(base, block_start + s * TILE, head, end, DTYPE, TILE)
            digits = (keys >> SHIFT) & (_RADIX - 1)
            if SHIFT == _TOP_SHIFT:
                in_band = valid
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


@triton.jit(do_not_specialize=["num_tensors"])
def _compact_indices_kernel(
    table_ptr,
    block_tensor_ptr,
    threshold_ptr,
    block_selected_ptr,
    block_take_equal_ptr,
    block_offset_ptr,
    out_ptr,
    num_tensors,
    DTYPE: tl.constexpr,
    BLOCK: tl.constexpr,
    TILE: tl.constexpr,
):
    """Write the selected flat indices of one block, ascending, at its output offset.

    threshold_ptr: int64 (1,) threshold key T. Per global block: block_selected_ptr int32
    (entries it selects), block_take_equal_ptr int32 (how many of its ``key == T`` entries, the
    first ones, it takes), block_offset_ptr int64 (first output slot). out_ptr: int64 (k,).
    """
    t = tl.load(block_tensor_ptr + tl.program_id(0))
    base, head, end, first_local, first_global = _tensor_row(table_ptr, num_tensors, t, DTYPE)
    j = tl.program_id(0) - first_local
    g = first_global + j
    if tl.load(block_selected_ptr + g) > 0:
        threshold = tl.load(threshold_ptr).to(tl.uint32)
        take_equal = tl.load(block_take_equal_ptr + g)
        slot = tl.load(block_offset_ptr + g)
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
    """The tensors of one dtype: their device table and block -> tensor map."""

    dtype: torch.dtype
    table: torch.Tensor  # int64 (5, num_tensors)
    block_tensor: torch.Tensor  # int32 (num_blocks,)
    num_tensors: int
    num_blocks: int

    @property
    def last_pass(self) -> int:
        return LAST_PASS[self.dtype]


@dataclass(frozen=True)
class _Plan:
    """Block layout of all tensors: blocks numbered globally in (tensor, block) order."""

    groups: list[_Group]
    first_block: list[int]  # per tensor, global id of its first block
    num_blocks: list[int]  # per tensor
    block_shift: torch.Tensor  # int64 (B,): shift of the last pass of the block's dtype

    @property
    def total_blocks(self) -> int:
        return sum(self.num_blocks)


def _plan(tensors: Sequence[torch.Tensor], device: torch.device) -> _Plan:
    """Split every tensor into 16-byte aligned blocks and build one tensor table per dtype."""
    first_block: list[int] = []
    num_blocks: list[int] = []
    rows: dict[torch.dtype, list[tuple[int, int, int, int, int]]] = {}
    blocks_of: dict[torch.dtype, list[int]] = {}
    group_total: dict[torch.dtype, int] = {}
    next_block = 0
    for x in tensors:
        numel = x.numel()
        head = (x.data_ptr() % 16) // x.element_size() if numel else 0
        blocks = -(-(numel + head) // BLOCK_ELEMS)
        first_block.append(next_block)
        num_blocks.append(blocks)
        if blocks:
            rows.setdefault(x.dtype, []).append((
                x.data_ptr() - head * x.element_size(), head, head + numel,
                group_total.get(x.dtype, 0), next_block,
            ))
            blocks_of.setdefault(x.dtype, []).append(blocks)
            group_total[x.dtype] = group_total.get(x.dtype, 0) + blocks
        next_block += blocks
    groups = [
        _Group(
            dtype=dtype,
            table=torch.tensor(group_rows, dtype=torch.int64).T.contiguous().to(device),
            block_tensor=torch.repeat_interleave(
                torch.arange(len(group_rows), dtype=torch.int32),
                torch.tensor(blocks_of[dtype]),
            ).to(device),
            num_tensors=len(group_rows),
            num_blocks=group_total[dtype],
        )
        for dtype, group_rows in rows.items()
    ]
    shifts = torch.tensor([PASS_SHIFTS[LAST_PASS[x.dtype]] for x in tensors], dtype=torch.int64)
    block_shift = torch.repeat_interleave(shifts, torch.tensor(num_blocks, dtype=torch.int64))
    return _Plan(groups, first_block, num_blocks, block_shift.to(device))


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


def _select_digit(hist: torch.Tensor, remaining: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Digit of the ``remaining``-th largest band key, and how many keys remain to take in it.

    hist: int64 (256,) band histogram; remaining: int64 0-d, ``1 <= remaining <= hist.sum()``.
    Returns (digit, remaining - #keys with a larger digit), both int64 0-d, on the device.
    """
    at_or_above = hist.flip(0).cumsum(0).flip(0)
    digit = (at_or_above >= remaining).sum() - 1
    above = at_or_above.gather(0, digit.view(1)) - hist.gather(0, digit.view(1))
    return digit, remaining - above.squeeze(0)


def _radix_select(
    plan: _Plan, k: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Threshold key T of the k-th largest key, by 8-bit radix passes over the groups.

    Returns threshold (int64 (1,)), remaining (int64 0-d: how many ``key == T`` entries to
    take), and the per-block histograms (int32 (B, 256)) and above-band counts (int32 (B,))
    of every group's last pass.
    """
    block_hist = torch.empty((plan.total_blocks, RADIX), dtype=torch.int32, device=device)
    block_above = torch.empty(plan.total_blocks, dtype=torch.int32, device=device)
    remaining = torch.tensor(k, dtype=torch.int64, device=device)
    prefix = torch.zeros(1, dtype=torch.int64, device=device)
    num_passes = max(group.last_pass for group in plan.groups) + 1
    previous = digit = None
    for p in range(num_passes):
        hist = torch.zeros((len(plan.groups), RADIX), dtype=torch.int64, device=device)
        for i, group in enumerate(plan.groups):
            if p <= group.last_pass:
                _digit_histogram_kernel[(_programs(device, group.num_blocks),)](
                    group.table, group.block_tensor, prefix, hist[i], block_hist, block_above,
                    group.num_tensors, group.num_blocks,
                    DTYPE=_TL_DTYPE[group.dtype], SHIFT=PASS_SHIFTS[p],
                    STORE_BLOCKS=p == group.last_pass, BLOCK=BLOCK_ELEMS,
                    TILE=histogram_tile(group.dtype, PASS_SHIFTS[p]),
                    num_warps=HISTOGRAM_WARPS,
                    num_stages=HISTOGRAM_STAGES,
                )
            else:
                hist[i, :1] = previous[i].gather(0, digit.view(1))
        digit, remaining = _select_digit(hist.sum(0), remaining)
        prefix = prefix * RADIX + digit
        previous = hist
    return prefix << PASS_SHIFTS[num_passes - 1], remaining, block_hist, block_above


def _block_selection(
    plan: _Plan,
    threshold: torch.Tensor,
    remaining: torch.Tensor,
    block_hist: torch.Tensor,
    block_above: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per global block: entries selected, ``key == T`` entries taken, first output slot.

    A block's last-pass digit of T is ``d = (T >> s) & 255`` (s: its dtype's last shift); its
    keys ``> T`` are those above that pass's band plus its bins above d, and its keys ``== T``
    are bin d when T has no bits below s (otherwise none of its keys can equal T). The
    ``remaining`` equal keys go to the lowest blocks, in (tensor, block) order.
    """
    shift = plan.block_shift
    digit = (threshold >> shift) & (RADIX - 1)
    equal = block_hist.gather(1, digit[:, None]).squeeze(1).long()
    equal = equal * ((threshold & ((1 << shift) - 1)) == 0)
    above_digit = torch.arange(RADIX, device=digit.device) > digit[:, None]
    greater = block_above.long() + (block_hist * above_digit).sum(1)
    equal_before = equal.cumsum(0) - equal
    take_equal = (remaining - equal_before).clamp(min=0).minimum(equal)
    selected = greater + take_equal
    offset = selected.cumsum(0) - selected
    return selected.to(torch.int32), take_equal.to(torch.int32), offset


def topk_indices(tensors: Sequence[torch.Tensor], k: int) -> list[torch.Tensor]:
    """Flat indices of the k largest |x| over all tensors, per tensor, ascending.

    Args:
        tensors: contiguous fp32 / fp16 / bf16 tensors of any shape (dtypes may be mixed), on
            one device (CUDA, or CPU with the interpreted module), without NaN.
        k: ``0 <= k <= total numel``.

    Returns:
        One int64 1-D tensor per input (views of one (k,) buffer) of ascending flat row-major
        indices, k entries in total. Among entries equal to the k-th largest magnitude, those
        with the lowest (position in the list, flat index) are taken.
    """
    total = sum(x.numel() for x in tensors)
    assert 0 <= k <= total, f"k={k} outside [0, {total}]"
    assert all(x.dtype in LAST_PASS and x.is_contiguous() for x in tensors)
    if k == 0:
        return [torch.empty(0, dtype=torch.int64, device=x.device) for x in tensors]
    device = tensors[0].device
    plan = _plan(tensors, device)
    threshold, remaining, block_hist, block_above = _radix_select(plan, k, device)
    selected, take_equal, offset = _block_selection(
        plan, threshold, remaining, block_hist, block_above
    )
    out = torch.empty(k, dtype=torch.int64, device=device)
    for group in plan.groups:
        _compact_indices_kernel[(group.num_blocks,)](
            group.table, group.block_tensor, threshold, selected, take_equal, offset, out,
            group.num_tensors, DTYPE=_TL_DTYPE[group.dtype], BLOCK=BLOCK_ELEMS, TILE=COMPACT_TILE,
            num_warps=COMPACT_WARPS, num_stages=COMPACT_STAGES,
        )
    ends = torch.cat([selected.new_zeros(1, dtype=torch.int64), selected.long().cumsum(0)])
    bounds = torch.tensor([[f, f + n] for f, n in zip(plan.first_block, plan.num_blocks, strict=True)],
                          dtype=torch.int64, device=device)
    counts = (ends[bounds[:, 1]] - ends[bounds[:, 0]]).tolist()
    return list(out.split(counts))


_HISTOGRAM_SIGNATURE = {
    "table_ptr": "*i64", "block_tensor_ptr": "*i32", "prefix_ptr": "*i64", "hist_ptr": "*i64",
    "block_hist_ptr": "*i32", "block_above_ptr": "*i32", "num_tensors": "i32",
    "num_blocks": "i32", "DTYPE": "constexpr", "SHIFT": "constexpr", "STORE_BLOCKS": "constexpr",
    "BLOCK": "constexpr", "TILE": "constexpr",
}
_COMPACT_SIGNATURE = {
    "table_ptr": "*i64", "block_tensor_ptr": "*i32", "threshold_ptr": "*i64",
    "block_selected_ptr": "*i32", "block_take_equal_ptr": "*i32", "block_offset_ptr": "*i64",
    "out_ptr": "*i64", "num_tensors": "i32", "DTYPE": "constexpr", "BLOCK": "constexpr",
    "TILE": "constexpr",
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
"""Histogram: one per (dtype, pass) the launcher runs; compaction: one per dtype."""


_BLOCK_BOOKKEEPING_BYTES = 3 * RADIX * 4 + 128
"""Per block: its last-pass histogram written once and read twice by the selection ops, plus
its counters (above, selected, take-equal, offset and their temporaries)."""


def bytes_moved(shapes: Sequence[Sequence[int]], k: int, dtype: torch.dtype) -> int:
    """HBM bytes ``topk_indices`` moves for tensors of ``shapes`` and one ``dtype``.

    With N the total numel, e the element size, P = LAST_PASS[dtype] + 1 radix passes (fp32 4,
    fp16 3, bf16 2) and B = sum over tensors of ceil(numel / 16384) blocks::

        P * N * e                  histogram passes, each reads every element once
      + N * e                      compaction read (an upper bound: blocks selecting nothing
                                   skip it)
      + 8 * k                      int64 indices written
      + B * (3 * 256 * 4 + 128)    per-block histograms and counters
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
