"""Sparse diffs scattered onto dense tensors in place: apply (with saved originals) and restore.

Semantics (every backend, bit for bit)
    For diffs ``d = 0, 1, ...`` in order and every entry ``i`` of diff d on tensor t::

        w[i] = cast_to_dense_dtype(f32(w[i]) + (f32(scale_d) * f32(v)))

    with the product rounded to fp32 before the add (never a fused multiply-add) and a
    round-to-nearest-even cast. No floating-point atomics: the result does not depend on
    scheduling.

Scheme
    One launch per dense dtype covers every tensor of that dtype and every diff. Each program
    owns a *unit*: a disjoint range of dense positions of one tensor, and the segment
    ``[lo, hi)`` of every diff's (sorted, unique) indices that falls in it. A program applies
    diff 0's segment, then diff 1's, ..., with a CTA barrier between diffs, so an entry touched
    by several diffs gets them in order; no other program touches it. Within one diff the
    indices are unique, so its entries are independent.

    * one diff: units are chunks of ``UNIT_ENTRIES`` consecutive entries (perfect balance, no
      search);
    * several diffs: a tensor's positions are cut into equal spans holding about
      ``UNIT_ENTRIES`` entries on average, and a small kernel finds every diff's segment of
      every span by a vectorised binary search (lower bound) over its indices.

    ``save=True`` first gathers the original values of diffs 1.. (barrier), then stores diff
    0's originals in the same pass that adds it: every save reads the tensor before any add.

    The product is an explicit ``mul.rn.f32`` (inline PTX), which neither LLVM nor ptxas
    contracts into an FMA whatever the fp-fusion option; under the interpreter, numpy rounds
    each operation anyway. The kernel runs with ``num_stages=1`` (no software pipelining), so
    a diff's loads are issued after the barrier that follows the previous diff's stores.

Dtypes
    One specialisation per (dense dtype, value dtype in {fp32, dense dtype}, save). A group
    whose values have another or mixed dtypes is launched with fp32 values (exact upcasts).

Restore
    ``scatter_restore_`` writes saved values back, one program per chunk of one diff's entries
    of one tensor. Positions touched by several diffs receive identical values (the originals),
    so the order does not matter.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from . import KernelSpec

CHUNK = 1024
"""Entries per inner-loop step of the scatter-add kernel (8 per thread at 4 warps)."""

UNIT_ENTRIES = 4096
"""Entries per program: exactly (one diff), or on average per diff-span (several diffs)."""

RESTORE_CHUNK = 1024
"""Entries per restore program."""

SEARCH_BLOCK = 256
"""Units per program of the segment-bound search."""

SCATTER_WARPS = 4
SCATTER_STAGES = 1  # no software pipelining: loads must stay after the previous diff's stores

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_TL_DTYPE = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}
_DTYPE_NAME = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}

_INTERPRETED = tl.constexpr(triton.knobs.runtime.interpret)


@triton.jit
def _scaled_add(w, scale, v):
    """``w + (scale * v)`` in fp32, the product rounded before the add (no FMA)."""
    if _INTERPRETED:
        product = v * scale
    else:
        product = tl.inline_asm_elementwise(
            "mul.rn.f32 $0, $1, $2;", "=r,r,r", [v, scale], dtype=tl.float32, is_pure=True,
            pack=1,
        )
    return w + product


@triton.jit
def _to_float32(x, DTYPE: tl.constexpr):
    """Exact fp32 value of x (bf16 widened by a 16-bit shift of its bits)."""
    if DTYPE.is_bf16():
        y = (x.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    else:
        y = x.to(tl.float32)
    return y


@triton.jit
def _round_to(x, DTYPE: tl.constexpr):
    """fp32 x rounded to nearest even in DTYPE.

    The interpreter's own fp32 -> bf16 cast truncates, so there bf16 is rounded with integer
    ops (NaN -> canonical NaN); compiled code uses the hardware conversion (cvt.rn).
    """
    if _INTERPRETED and DTYPE.is_bf16():
        bits = x.to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        rounded = tl.where(x != x, ((bits >> 16) & 0x8000) | 0x7FC0, rounded)
        y = rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        y = x.to(DTYPE)
    return y


@triton.jit
def _diff_segment(segments_ptr, diff_table_ptr, u, t, d, num_units, num_tensors, num_diffs,
                  DENSE: tl.constexpr, VALUE: tl.constexpr):
    """Entry range [lo, hi) of diff d in unit u (tensor t), and its index / value / saved
    pointers (diff_table rows: index, value, saved addresses, each (num_diffs, num_tensors))."""
    lo = tl.load(segments_ptr + (d * num_units + u) * 2)
    hi = tl.load(segments_ptr + (d * num_units + u) * 2 + 1)
    row = d * num_tensors + t
    plane = num_diffs * num_tensors
    indices = tl.load(diff_table_ptr + row).to(tl.pointer_type(tl.int64))
    values = tl.load(diff_table_ptr + plane + row).to(tl.pointer_type(VALUE))
    saved = tl.load(diff_table_ptr + 2 * plane + row).to(tl.pointer_type(DENSE))
    return lo, hi, indices, values, saved


@triton.jit(do_not_specialize=["num_units", "num_tensors", "num_diffs"])
def _scatter_add_kernel(
    unit_tensor_ptr,
    segments_ptr,
    dense_table_ptr,
    diff_table_ptr,
    scales_ptr,
    num_units,
    num_tensors,
    num_diffs,
    DENSE: tl.constexpr,
    VALUE: tl.constexpr,
    SAVE: tl.constexpr,
    CHUNK: tl.constexpr,
):
    """Apply every diff's entries of one unit in diff order.

    unit_tensor_ptr: int32 (U,) tensor of each unit; segments_ptr: int64 (D, U, 2) entry range
    of each diff in each unit; dense_table_ptr: int64 (T,) dense base addresses;
    diff_table_ptr: int64 (3, D, T) index / value / saved base addresses; scales_ptr: fp32 (D,).
    """
    u = tl.program_id(0)
    t = tl.load(unit_tensor_ptr + u)
    dense = tl.load(dense_table_ptr + t).to(tl.pointer_type(DENSE))
    offs = tl.arange(0, CHUNK)
    if SAVE:
        for d in range(1, num_diffs):
            lo, hi, indices, values, saved = _diff_segment(
                segments_ptr, diff_table_ptr, u, t, d, num_units, num_tensors, num_diffs,
                DENSE, VALUE)
            for start in range(lo, hi, CHUNK):
                mask = start + offs < hi
                idx = tl.load(indices + start + offs, mask=mask, other=0)
                tl.store(saved + start + offs, tl.load(dense + idx, mask=mask), mask=mask)
        tl.debug_barrier()
    for d in range(num_diffs):
        scale = tl.load(scales_ptr + d)
        lo, hi, indices, values, saved = _diff_segment(
            segments_ptr, diff_table_ptr, u, t, d, num_units, num_tensors, num_diffs,
            DENSE, VALUE)
        for start in range(lo, hi, CHUNK):
            mask = start + offs < hi
            idx = tl.load(indices + start + offs, mask=mask, other=0)
            w = tl.load(dense + idx, mask=mask)
            if SAVE:
                tl.store(saved + start + offs, w, mask=mask & (d == 0))
            v = _to_float32(tl.load(values + start + offs, mask=mask), VALUE)
            updated = _scaled_add(_to_float32(w, DENSE), scale, v)
            tl.store(dense + idx, _round_to(updated, DENSE), mask=mask)
        tl.debug_barrier()


@triton.jit
def _lower_bound(ptrs, count, value, steps):
    """Per lane, the number of entries ``< value`` of the sorted int64 array at ``ptrs`` of
    length ``count`` (``steps >= bit_length(count)`` halvings)."""
    first = count * 0  # not tl.zeros_like: see kernels/topk.py on the interpreted copy
    for _ in range(steps):
        half = count // 2
        probe = first + half
        active = count > 0
        entry = tl.load(ptrs + probe, mask=active, other=0)
        right = active & (entry < value)
        first = tl.where(right, probe + 1, first)
        count = tl.where(right, count - half - 1, half)
    return first


@triton.jit(do_not_specialize=["num_units", "num_tensors", "steps"])
def _segment_bounds_kernel(
    unit_tensor_ptr,
    unit_range_ptr,
    diff_table_ptr,
    count_ptr,
    segments_ptr,
    num_units,
    num_tensors,
    steps,
    BLOCK: tl.constexpr,
):
    """segments[d, u] = entries of diff d below the start / end of unit u's position range.

    unit_range_ptr: int64 (U, 2) dense position range of each unit; diff_table_ptr: its first
    plane, int64 (D, T) index base addresses; count_ptr: int64 (D, T) entries of each diff.
    Grid: (cdiv(U, BLOCK), D).
    """
    d = tl.program_id(1)
    u = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = u < num_units
    t = tl.load(unit_tensor_ptr + u, mask=mask, other=0)
    ptrs = tl.load(diff_table_ptr + d * num_tensors + t, mask=mask, other=0)
    ptrs = ptrs.to(tl.pointer_type(tl.int64))
    count = tl.load(count_ptr + d * num_tensors + t, mask=mask, other=0)
    for side in tl.static_range(2):
        position = tl.load(unit_range_ptr + u * 2 + side, mask=mask, other=0)
        bound = _lower_bound(ptrs, count, position, steps)
        tl.store(segments_ptr + (d * num_units + u) * 2 + side, bound, mask=mask)


@triton.jit(do_not_specialize=["num_pairs"])
def _scatter_restore_kernel(
    unit_pair_ptr,
    unit_start_ptr,
    pair_table_ptr,
    num_pairs,
    DENSE: tl.constexpr,
    CHUNK: tl.constexpr,
):
    """dense[indices[j]] = saved[j] for one chunk of one (diff, tensor) pair.

    unit_pair_ptr: int32 (U,) pair of each unit; unit_start_ptr: int64 (U,) first entry;
    pair_table_ptr: int64 (4, P) dense / index / saved base addresses and entry counts.
    """
    u = tl.program_id(0)
    p = tl.load(unit_pair_ptr + u)
    dense = tl.load(pair_table_ptr + p).to(tl.pointer_type(DENSE))
    indices = tl.load(pair_table_ptr + num_pairs + p).to(tl.pointer_type(tl.int64))
    saved = tl.load(pair_table_ptr + 2 * num_pairs + p).to(tl.pointer_type(DENSE))
    count = tl.load(pair_table_ptr + 3 * num_pairs + p)
    offs = tl.load(unit_start_ptr + u) + tl.arange(0, CHUNK)
    mask = offs < count
    idx = tl.load(indices + offs, mask=mask, other=0)
    tl.store(dense + idx, tl.load(saved + offs, mask=mask), mask=mask)


def _group_by_dtype(dense: Sequence[torch.Tensor]) -> dict[torch.dtype, list[int]]:
    """Tensor positions of each dense dtype, in list order."""
    groups: dict[torch.dtype, list[int]] = {}
    for t, w in enumerate(dense):
        groups.setdefault(w.dtype, []).append(t)
    return groups


def _value_dtype(dense_dtype: torch.dtype, values: list[list[torch.Tensor]]) -> torch.dtype:
    """Value dtype a group is launched with: the values' common dtype when it is fp32 or the
    dense dtype, else fp32 (the other values are upcast, exactly)."""
    dtypes = {v.dtype for row in values for v in row if v.numel()}
    if len(dtypes) == 1 and dtypes <= {torch.float32, dense_dtype}:
        return dtypes.pop()
    return torch.float32


@dataclass(frozen=True)
class _Units:
    """Work units of one group: the tensor of each unit and every diff's segment in it."""

    unit_tensor: torch.Tensor  # int32 (U,)
    segments: torch.Tensor  # int64 (D, U, 2)

    @property
    def num_units(self) -> int:
        return self.unit_tensor.numel()


def _chunk_units(counts: torch.Tensor, device: torch.device) -> _Units:
    """Single diff: units of UNIT_ENTRIES consecutive entries of each tensor (int64 counts)."""
    per_tensor = (counts + UNIT_ENTRIES - 1) // UNIT_ENTRIES
    unit_tensor = torch.repeat_interleave(torch.arange(counts.numel()), per_tensor)
    first = torch.cumsum(per_tensor, 0) - per_tensor
    lo = (torch.arange(unit_tensor.numel()) - first[unit_tensor]) * UNIT_ENTRIES
    hi = torch.minimum(lo + UNIT_ENTRIES, counts[unit_tensor])
    segments = torch.stack([lo, hi], dim=1)[None]
    return _Units(unit_tensor.to(torch.int32).to(device), segments.to(device))


def _span_units(
    counts: torch.Tensor, numels: torch.Tensor, index_addresses: torch.Tensor,
    device: torch.device,
) -> _Units:
    """Several diffs: equal position spans per tensor holding about UNIT_ENTRIES entries of all
    diffs together on average; segments found on the device by binary search.

    counts: int64 (D, T) entries; numels: int64 (T,); index_addresses: int64 (D, T), on device.
    """
    entries = counts.sum(0)
    span = torch.where(entries > 0, -(-numels * UNIT_ENTRIES // entries.clamp(min=1)), 1)
    per_tensor = torch.where(entries > 0, -(-numels // span), 0)
    unit_tensor = torch.repeat_interleave(torch.arange(numels.numel()), per_tensor)
    first = torch.cumsum(per_tensor, 0) - per_tensor
    start = (torch.arange(unit_tensor.numel()) - first[unit_tensor]) * span[unit_tensor]
    end = torch.minimum(start + span[unit_tensor], numels[unit_tensor])
    unit_range = torch.stack([start, end], dim=1).to(device)
    unit_tensor = unit_tensor.to(torch.int32).to(device)
    num_diffs, num_tensors = counts.shape
    num_units = unit_tensor.numel()
    segments = torch.empty((num_diffs, num_units, 2), dtype=torch.int64, device=device)
    if num_units:
        _segment_bounds_kernel[(triton.cdiv(num_units, SEARCH_BLOCK), num_diffs)](
            unit_tensor, unit_range, index_addresses, counts.to(device), segments,
            num_units, num_tensors, int(counts.max()).bit_length(), BLOCK=SEARCH_BLOCK,
            num_warps=SCATTER_WARPS, num_stages=SCATTER_STAGES,
        )
    return _Units(unit_tensor, segments)


def _apply_group(
    dense: list[torch.Tensor],
    indices: list[list[torch.Tensor]],
    values: list[list[torch.Tensor]],
    saved: list[list[torch.Tensor]] | None,
    scales: torch.Tensor,
) -> None:
    """One launch applying every diff to the tensors of one dense dtype (lists are [d][t])."""
    device = dense[0].device
    dense_dtype = dense[0].dtype
    value_dtype = _value_dtype(dense_dtype, values)
    indices = [[i.contiguous() for i in row] for row in indices]
    values = [[v.to(value_dtype).contiguous() for v in row] for row in values]
    counts = torch.tensor([[i.numel() for i in row] for row in indices], dtype=torch.int64)
    if not int(counts.sum()):
        return
    num_diffs, num_tensors = counts.shape
    saved_rows = saved if saved is not None else [[None] * num_tensors] * num_diffs
    diff_table = torch.tensor(
        [[[x.data_ptr() if x is not None else 0 for x in row] for row in plane]
         for plane in (indices, values, saved_rows)],
        dtype=torch.int64,
    ).to(device)
    if num_diffs == 1:
        units = _chunk_units(counts[0], device)
    else:
        numels = torch.tensor([w.numel() for w in dense], dtype=torch.int64)
        units = _span_units(counts, numels, diff_table[0], device)
    if not units.num_units:
        return
    dense_table = torch.tensor([w.data_ptr() for w in dense], dtype=torch.int64).to(device)
    _scatter_add_kernel[(units.num_units,)](
        units.unit_tensor, units.segments, dense_table, diff_table, scales,
        units.num_units, num_tensors, num_diffs,
        DENSE=_TL_DTYPE[dense_dtype], VALUE=_TL_DTYPE[value_dtype], SAVE=saved is not None,
        CHUNK=CHUNK, num_warps=SCATTER_WARPS, num_stages=SCATTER_STAGES,
    )


def scatter_add_(
    dense: Sequence[torch.Tensor],
    indices: Sequence[Sequence[torch.Tensor]],
    values: Sequence[Sequence[torch.Tensor]],
    scales: Sequence[float],
    save: bool,
) -> list[list[torch.Tensor]] | None:
    """Apply diffs ``d = 0, 1, ...`` in order: ``w[i] = cast(f32(w[i]) + f32(scale_d) * f32(v))``.

    Args:
        dense: T contiguous fp32 / bf16 / fp16 tensors of any shape, modified in place.
        indices: [d][t] int64 (n_dt,) sorted, unique flat indices into dense[t].
        values: [d][t] fp32 / bf16 / fp16 (n_dt,) values.
        scales: D floats (rounded to fp32).
        save: also return the original values at every diff's indices.

    Returns:
        With ``save``, saved[d][t] = original dense[t] (its dtype) at indices[d][t], gathered
        before any add; otherwise None.
    """
    num_diffs = len(indices)
    assert len(values) == num_diffs == len(scales)
    assert all(len(row) == len(dense) for row in (*indices, *values))
    assert all(w.dtype in _DTYPES and w.is_contiguous() for w in dense)
    assert all(i.dtype == torch.int64 for row in indices for i in row)
    saved = None
    if save:
        saved = [[torch.empty(i.numel(), dtype=w.dtype, device=w.device)
                  for i, w in zip(row, dense, strict=True)] for row in indices]
    if not num_diffs or not dense:
        return saved
    scale_tensor = torch.tensor(list(scales), dtype=torch.float32).to(dense[0].device)
    for members in _group_by_dtype(dense).values():
        _apply_group(
            [dense[t] for t in members],
            [[row[t] for t in members] for row in indices],
            [[row[t] for t in members] for row in values],
            None if saved is None else [[row[t] for t in members] for row in saved],
            scale_tensor,
        )
    return saved


def scatter_restore_(
    dense: Sequence[torch.Tensor],
    indices: Sequence[Sequence[torch.Tensor]],
    saved: Sequence[Sequence[torch.Tensor]],
) -> None:
    """Write saved[d][t] back at indices[d][t] into dense[t] (overlaps carry equal values).

    Args:
        dense: T contiguous fp32 / bf16 / fp16 tensors, modified in place.
        indices: [d][t] int64 (n_dt,) flat indices into dense[t].
        saved: [d][t] (n_dt,) values of dense[t]'s dtype, as returned by ``scatter_add_``.
    """
    assert len(saved) == len(indices)
    assert all(len(row) == len(dense) for row in (*indices, *saved))
    for dtype, members in _group_by_dtype(dense).items():
        pairs = [(dense[t], row_i[t].contiguous(), row_s[t].contiguous())
                 for row_i, row_s in zip(indices, saved, strict=True)
                 for t in members if row_i[t].numel()]
        if not pairs:
            continue
        assert all(s.dtype == dtype for _, _, s in pairs)
        device = pairs[0][0].device
        table = torch.tensor(
            [[w.data_ptr() for w, _, _ in pairs], [i.data_ptr() for _, i, _ in pairs],
             [s.data_ptr() for _, _, s in pairs], [i.numel() for _, i, _ in pairs]],
            dtype=torch.int64,
        )
        per_pair = (table[3] + RESTORE_CHUNK - 1) // RESTORE_CHUNK
        unit_pair = torch.repeat_interleave(torch.arange(len(pairs)), per_pair)
        first = torch.cumsum(per_pair, 0) - per_pair
        unit_start = (torch.arange(unit_pair.numel()) - first[unit_pair]) * RESTORE_CHUNK
        _scatter_restore_kernel[(unit_pair.numel(),)](
            unit_pair.to(torch.int32).to(device), unit_start.to(device), table.to(device),
            len(pairs), DENSE=_TL_DTYPE[dtype], CHUNK=RESTORE_CHUNK,
            num_warps=SCATTER_WARPS, num_stages=SCATTER_STAGES,
        )


_ADD_SIGNATURE = {
    "unit_tensor_ptr": "*i32", "segments_ptr": "*i64", "dense_table_ptr": "*i64",
    "diff_table_ptr": "*i64", "scales_ptr": "*fp32", "num_units": "i32", "num_tensors": "i32",
    "num_diffs": "i32", "DENSE": "constexpr", "VALUE": "constexpr", "SAVE": "constexpr",
    "CHUNK": "constexpr",
}
_BOUNDS_SIGNATURE = {
    "unit_tensor_ptr": "*i32", "unit_range_ptr": "*i64", "diff_table_ptr": "*i64",
    "count_ptr": "*i64", "segments_ptr": "*i64", "num_units": "i32", "num_tensors": "i32",
    "steps": "i32", "BLOCK": "constexpr",
}
_RESTORE_SIGNATURE = {
    "unit_pair_ptr": "*i32", "unit_start_ptr": "*i64", "pair_table_ptr": "*i64",
    "num_pairs": "i32", "DENSE": "constexpr", "CHUNK": "constexpr",
}


def _specializations() -> list[KernelSpec]:
    promises = frozenset({"no_float_atomics"})
    specs = []
    for dense in _DTYPES:
        for value in dict.fromkeys((torch.float32, dense)):
            for save in (False, True):
                specs.append(KernelSpec(
                    name=f"scatter_add_{_DTYPE_NAME[dense]}_values_{_DTYPE_NAME[value]}"
                         f"{'_save' if save else ''}",
                    kernel=_scatter_add_kernel,
                    signature=_ADD_SIGNATURE,
                    constexprs={"DENSE": _TL_DTYPE[dense], "VALUE": _TL_DTYPE[value],
                                "SAVE": save, "CHUNK": CHUNK},
                    num_warps=SCATTER_WARPS, num_stages=SCATTER_STAGES, promises=promises,
                ))
    specs.append(KernelSpec(
        name="scatter_segment_bounds", kernel=_segment_bounds_kernel,
        signature=_BOUNDS_SIGNATURE, constexprs={"BLOCK": SEARCH_BLOCK},
        num_warps=SCATTER_WARPS, num_stages=SCATTER_STAGES, promises=promises,
    ))
    for dense in _DTYPES:
        specs.append(KernelSpec(
            name=f"scatter_restore_{_DTYPE_NAME[dense]}", kernel=_scatter_restore_kernel,
            signature=_RESTORE_SIGNATURE,
            constexprs={"DENSE": _TL_DTYPE[dense], "CHUNK": RESTORE_CHUNK},
            num_warps=SCATTER_WARPS, num_stages=SCATTER_STAGES, promises=promises,
        ))
    return specs


SPECIALIZATIONS: list[KernelSpec] = _specializations()
"""Scatter-add per (dense dtype, value dtype in {fp32, dense}, save); the segment search;
restore per dense dtype."""


SECTOR_BYTES = 32


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


def bytes_moved(
    shapes: Sequence[Sequence[int]],
    nnz: Sequence[int],
    dtype: torch.dtype,
    *,
    value_dtype: torch.dtype = torch.float32,
    num_diffs: int = 1,
    save: bool = False,
) -> int:
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
    e = torch.empty(0, dtype=dtype).element_size()
    v = torch.empty(0, dtype=value_dtype).element_size()
    total = 0.0
    for shape, entries in zip(shapes, nnz, strict=True):
        numel = math.prod(shape)
        union = _union_entries(numel, entries, num_diffs)
        total += 2 * SECTOR_BYTES * _touched_sectors(numel, round(union), e)
        total += num_diffs * entries * (8 + v + (e if save else 0))
    return round(total)


def baseline_bytes_moved(
    shapes: Sequence[Sequence[int]],
    nnz: Sequence[int],
    dtype: torch.dtype,
    *,
    value_dtype: torch.dtype = torch.float32,
    num_diffs: int = 1,
    method: str = "dense",
) -> int:
    """HBM bytes of the torch baselines, per diff and tensor (n_t elements, nnz_t entries).

    ``method="dense"`` densifies the diff and adds it::

        D * sum_t [ 4 n_t                  zeros(n_t) fp32 written
                  + nnz_t (8 + v) + 64 S1  index / value read, scattered into it
                  + 4 n_t + 4 n_t          scale * delta (read, write)
                  + 4 n_t + 2 e n_t ]      w.add_(delta): read delta, read and write w

    ``method="index_add"`` runs ``w.view(-1).index_add_(0, idx, (scale * v).to(dtype))``::

        D * sum_t [ nnz_t (8 + v)          index / value read
                  + nnz_t (v + e) * 2      scaled temporary and its cast (write, read)
                  + 64 S1 ]                read-modify-write of the touched sectors

    S1 = expected sectors touched by one diff (as in :func:`bytes_moved`).
    """
    if method not in ("dense", "index_add"):
        raise ValueError(f"method must be 'dense' or 'index_add', not {method!r}")
    e = torch.empty(0, dtype=dtype).element_size()
    v = torch.empty(0, dtype=value_dtype).element_size()
    total = 0.0
    for shape, entries in zip(shapes, nnz, strict=True):
        numel = math.prod(shape)
        payload = entries * (8 + v)
        if method == "dense":
            sectors = 2 * SECTOR_BYTES * _touched_sectors(numel, entries, 4)
            total += 4 * numel + payload + sectors + 12 * numel + 2 * e * numel
        else:
            sectors = 2 * SECTOR_BYTES * _touched_sectors(numel, entries, e)
            total += payload + 2 * entries * (v + e) + sectors
    return round(num_diffs * total)
