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

Prepared
    ``PreparedScatter`` does the host planning, the one upload (add and restore tables
    together), the segment search and the unit -> pair expansion once; its ``apply`` and
    ``restore`` are then one launch per dense dtype each, with the same kernels and bits.
"""

from __future__ import annotations

import array
import itertools
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from . import KernelSpec, _scatter_specs, upload
from ._common import TL_DTYPES, interpreting

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

_INTERPRETED = interpreting()


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


@triton.jit
def _chunk_indices(indices, start, offs, hi):
    """(mask, indices) of the chunk at ``start`` of a segment ending at ``hi``."""
    mask = start + offs < hi
    return mask, tl.load(indices + start + offs, mask=mask, other=0)


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
    diff_table_ptr: int64 (3, D, T) index / value / saved base addresses; scales_ptr: int64
    (D,) fp32 bit patterns of the scales.
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
                mask, idx = _chunk_indices(indices, start, offs, hi)
                tl.store(saved + start + offs, tl.load(dense + idx, mask=mask), mask=mask)
        tl.debug_barrier()
    for d in range(num_diffs):
        scale = tl.load(scales_ptr + d).to(tl.int32).to(tl.float32, bitcast=True)
        lo, hi, indices, values, saved = _diff_segment(
            segments_ptr, diff_table_ptr, u, t, d, num_units, num_tensors, num_diffs,
            DENSE, VALUE)
        for start in range(lo, hi, CHUNK):
            mask, idx = _chunk_indices(indices, start, offs, hi)
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
    first = tl.zeros_like(count)
    for _ in range(steps):
        half = count // 2
        probe = first + half
        active = count > 0
        entry = tl.load(ptrs + probe, mask=active, other=0)
        right = active & (entry < value)
        first = tl.where(right, probe + 1, first)
        count = tl.where(right, count - half - 1, half)
    return first


@triton.jit(do_not_specialize=["num_units", "num_tensors", "tensor_steps", "steps", "chunked"])
def _segment_bounds_kernel(
    unit_table_ptr,
    diff_table_ptr,
    count_ptr,
    unit_tensor_ptr,
    segments_ptr,
    num_units,
    num_tensors,
    tensor_steps,
    steps,
    chunked,
    BLOCK: tl.constexpr,
):
    """The work units: unit_tensor[u] = its tensor t, segments[d, u] = diff d's entry range in it.

    unit_table_ptr: int64 (3, T) per tensor: first unit, span, limit. Unit u is number
    ``i = u - first[t]`` of tensor t (t found by binary search over the first units). With
    ``chunked`` (one diff) it is entries ``[i * span, min((i + 1) * span, limit))`` of that diff;
    otherwise it is dense positions ``[i * span, min((i + 1) * span, limit))`` and diff d's
    segment is found by binary search (lower bound) over its indices. diff_table_ptr: its first
    plane, int64 (D, T) index base addresses; count_ptr: int64 (D, T) entries of each diff.
    Grid: (cdiv(U, BLOCK), D).
    """
    d = tl.program_id(1)
    u = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = u < num_units
    lanes = u.to(tl.int64) * 0
    t = _lower_bound(unit_table_ptr + lanes, lanes + num_tensors, u + 1, tensor_steps) - 1
    t = tl.where(mask, t, 0)
    first = tl.load(unit_table_ptr + t, mask=mask, other=0)
    span = tl.load(unit_table_ptr + num_tensors + t, mask=mask, other=0)
    limit = tl.load(unit_table_ptr + 2 * num_tensors + t, mask=mask, other=0)
    start = (u - first) * span
    end = tl.minimum(start + span, limit)
    if d == 0:
        tl.store(unit_tensor_ptr + u, t.to(tl.int32), mask=mask)
    if chunked:
        tl.store(segments_ptr + u * 2, start, mask=mask)
        tl.store(segments_ptr + u * 2 + 1, end, mask=mask)
    else:
        ptrs = tl.load(diff_table_ptr + d * num_tensors + t, mask=mask, other=0)
        ptrs = ptrs.to(tl.pointer_type(tl.int64))
        count = tl.load(count_ptr + d * num_tensors + t, mask=mask, other=0)
        for side in tl.static_range(2):
            position = tl.where(side == 0, start, end)
            bound = _lower_bound(ptrs, count, position, steps)
            tl.store(segments_ptr + (d * num_units + u) * 2 + side, bound, mask=mask)


@triton.jit(do_not_specialize=["num_pairs"])
def _scatter_restore_kernel(
    unit_pair_ptr,
    pair_table_ptr,
    num_pairs,
    DENSE: tl.constexpr,
    CHUNK: tl.constexpr,
):
    """dense[indices[j]] = saved[j] for one chunk of one (diff, tensor) pair.

    unit_pair_ptr: int64 (U,) pair of each unit; pair_table_ptr: int64 (5, P) dense / index /
    saved base addresses, entry counts and first unit of each pair.
    """
    u = tl.program_id(0)
    p = tl.load(unit_pair_ptr + u)
    dense = tl.load(pair_table_ptr + p).to(tl.pointer_type(DENSE))
    indices = tl.load(pair_table_ptr + num_pairs + p).to(tl.pointer_type(tl.int64))
    saved = tl.load(pair_table_ptr + 2 * num_pairs + p).to(tl.pointer_type(DENSE))
    count = tl.load(pair_table_ptr + 3 * num_pairs + p)
    first_unit = tl.load(pair_table_ptr + 4 * num_pairs + p)
    offs = (u - first_unit) * CHUNK + tl.arange(0, CHUNK)
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


def _float32_bits(values: Sequence[float]) -> list[int]:
    """Each value rounded to fp32 (nearest even), as its signed 32-bit pattern."""
    return list(array.array("i", array.array("f", values).tobytes()))


@dataclass(frozen=True)
class _GroupPlan:
    """One dense dtype's launch, planned on the host: its tables' place in the call's upload.

    At ``at`` the upload holds dense addresses (T,), index / value / saved addresses
    (3, D, T), entry counts (D, T) and the unit table (3, T): first unit, span, limit.
    """

    dense_dtype: torch.dtype
    value_dtype: torch.dtype
    num_tensors: int
    num_units: int
    max_count: int
    at: int

    def views(self, buffer: torch.Tensor, num_diffs: int) -> tuple[torch.Tensor, ...]:
        """(dense table, diff table, counts, unit table) views of the uploaded buffer."""
        t, d = self.num_tensors, num_diffs
        sizes = (t, 3 * d * t, d * t, 3 * t)
        starts = [self.at + sum(sizes[:i]) for i in range(len(sizes))]
        return tuple(buffer[a: a + n] for a, n in zip(starts, sizes, strict=True))


def _unit_table(counts: list[list[int]], numels: list[int]) -> tuple[list[int], int]:
    """(first unit, span, limit) per tensor, flattened row by row, and the number of units.

    One diff: units of UNIT_ENTRIES consecutive entries (span counts entries, limit is the
    entry count). Several diffs: equal position spans per tensor holding about UNIT_ENTRIES
    entries of all diffs together on average (limit is the numel).
    """
    firsts, spans, limits, next_unit = [], [], [], 0
    for t, numel in enumerate(numels):
        entries = sum(row[t] for row in counts)
        if len(counts) == 1:
            span, limit = UNIT_ENTRIES, entries
            units = -(-entries // UNIT_ENTRIES)
        else:
            span = -(-numel * UNIT_ENTRIES // entries) if entries else 1
            limit = numel
            units = -(-numel // span) if entries else 0
        firsts.append(next_unit)
        spans.append(span)
        limits.append(limit)
        next_unit += units
    return firsts + spans + limits, next_unit


def _plan_group(
    dense: list[torch.Tensor],
    indices: list[list[torch.Tensor]],
    values: list[list[torch.Tensor]],
    saved: list[list[torch.Tensor]] | None,
    value_dtype: torch.dtype,
    at: int,
) -> tuple[_GroupPlan, list[int]]:
    """The plan of one dense dtype's tensors (lists are [d][t], values already of
    ``value_dtype``) and its upload values, to be placed at offset ``at``."""
    counts = [[i.numel() for i in row] for row in indices]
    saved_rows = saved if saved is not None else [[None] * len(dense)] * len(indices)
    addresses = [x.data_ptr() if x is not None else 0
                 for plane in (indices, values, saved_rows) for row in plane for x in row]
    units, num_units = _unit_table(counts, [w.numel() for w in dense])
    plan = _GroupPlan(dense[0].dtype, value_dtype, len(dense), num_units, max(max(row) for row in counts), at)
    flat_counts = [c for row in counts for c in row]
    return plan, [w.data_ptr() for w in dense] + addresses + flat_counts + units


def _search(plan: _GroupPlan, tables: tuple[torch.Tensor, ...], num_diffs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The segment search of one dense dtype (one launch): (unit tensor (U,), segments (D, U, 2))."""
    dense_table, diff_table, counts, unit_table = tables
    device = dense_table.device
    unit_tensor = torch.empty(plan.num_units, dtype=torch.int32, device=device)
    segments = torch.empty((num_diffs, plan.num_units, 2), dtype=torch.int64, device=device)
    _segment_bounds_kernel[(triton.cdiv(plan.num_units, SEARCH_BLOCK), num_diffs)](
        unit_table, diff_table, counts, unit_tensor, segments,
        plan.num_units, plan.num_tensors, plan.num_tensors.bit_length(), plan.max_count.bit_length(),
        int(num_diffs == 1), BLOCK=SEARCH_BLOCK, num_warps=SCATTER_WARPS, num_stages=SCATTER_STAGES,
    )
    return unit_tensor, segments


@dataclass(frozen=True)
class _AddLaunch:
    """One dense dtype's scatter-add, ready to launch: its plan, uploaded tables and searched units."""

    plan: _GroupPlan
    tables: tuple[torch.Tensor, ...]
    unit_tensor: torch.Tensor
    segments: torch.Tensor
    scales: torch.Tensor
    num_diffs: int

    def launch(self, save: bool) -> None:
        """The scatter-add kernel (one launch)."""
        dense_table, diff_table, _, _ = self.tables
        _scatter_add_kernel[(self.plan.num_units,)](
            self.unit_tensor, self.segments, dense_table, diff_table, self.scales,
            self.plan.num_units, self.plan.num_tensors, self.num_diffs,
            DENSE=TL_DTYPES[self.plan.dense_dtype], VALUE=TL_DTYPES[self.plan.value_dtype], SAVE=save,
            CHUNK=CHUNK, num_warps=SCATTER_WARPS, num_stages=SCATTER_STAGES,
        )


@dataclass(frozen=True)
class _RestoreLaunch:
    """One dense dtype's restore, ready to launch: its pair table and the pair of every unit."""

    dtype: torch.dtype
    table: torch.Tensor
    num_pairs: int
    unit_pair: torch.Tensor

    def launch(self) -> None:
        """The restore kernel (one launch)."""
        _scatter_restore_kernel[(self.unit_pair.numel(),)](
            self.unit_pair, self.table, self.num_pairs, DENSE=TL_DTYPES[self.dtype], CHUNK=RESTORE_CHUNK,
            num_warps=SCATTER_WARPS, num_stages=SCATTER_STAGES,
        )


def _saved_buffers(
    dense: Sequence[torch.Tensor],
    indices: Sequence[Sequence[torch.Tensor]],
    out: Sequence[Sequence[torch.Tensor]] | None,
) -> list[list[torch.Tensor]]:
    """Where the originals are saved: ``out`` (checked), or new [d][t] tensors of the dense dtypes."""
    if out is None:
        return [[torch.empty(i.numel(), dtype=w.dtype, device=w.device)
                 for i, w in zip(row, dense, strict=True)] for row in indices]
    saved = [list(row) for row in out]
    assert all(s.dtype == w.dtype and s.is_contiguous() and s.numel() == i.numel()
               for s_row, i_row in zip(saved, indices, strict=True)
               for s, i, w in zip(s_row, i_row, dense, strict=True))
    return saved


def _add_tables(
    dense: Sequence[torch.Tensor],
    indices: Sequence[Sequence[torch.Tensor]],
    values: Sequence[Sequence[torch.Tensor]],
    saved: list[list[torch.Tensor]] | None,
) -> tuple[list[_GroupPlan], list[int], list[object]]:
    """The scatter-add plans of every dense dtype with units, their upload values (from offset 0)
    and the converted operands, which must live until the kernels have run."""
    plans, upload_values, operands = [], [], []
    for members in _group_by_dtype(dense).values():
        group_values = [[row[t] for t in members] for row in values]
        value_dtype = _value_dtype(dense[members[0]].dtype, group_values)
        group_indices = [[row[t].contiguous() for t in members] for row in indices]
        group_values = [[v.to(value_dtype).contiguous() for v in row] for row in group_values]
        operands.append((group_indices, group_values))
        plan, group_upload = _plan_group(
            [dense[t] for t in members],
            group_indices,
            group_values,
            None if saved is None else [[row[t] for t in members] for row in saved],
            value_dtype,
            len(upload_values),
        )
        if plan.num_units:
            plans.append(plan)
            upload_values += group_upload
    return plans, upload_values, operands


def _restore_tables(
    dense: Sequence[torch.Tensor],
    indices: Sequence[Sequence[torch.Tensor]],
    saved: Sequence[Sequence[torch.Tensor]],
    at: int,
) -> tuple[list[tuple[torch.dtype, int, int, int]], list[int], list[object]]:
    """Per dense dtype with entries (dtype, pairs, units, offset of its pair table), the upload
    values (placed from offset ``at``) and the contiguous operands, which must live until launched.

    A pair table is int64 (6, P): dense / index / saved addresses, entry counts, first unit and
    units of each (diff, tensor) pair."""
    groups, upload_values, operands = [], [], []
    for dtype, members in _group_by_dtype(dense).items():
        pairs = [(dense[t], row_i[t].contiguous(), row_s[t].contiguous())
                 for row_i, row_s in zip(indices, saved, strict=True)
                 for t in members if row_i[t].numel()]
        if not pairs:
            continue
        assert all(s.dtype == dtype for _, _, s in pairs)
        operands.append(pairs)
        units = [-(-i.numel() // RESTORE_CHUNK) for _, i, _ in pairs]
        firsts = [0, *itertools.accumulate(units)][:-1]
        groups.append((dtype, len(pairs), sum(units), at + len(upload_values)))
        upload_values += ([w.data_ptr() for w, _, _ in pairs] + [i.data_ptr() for _, i, _ in pairs]
                          + [s.data_ptr() for _, _, s in pairs] + [i.numel() for _, i, _ in pairs]
                          + firsts + units)
    return groups, upload_values, operands


def _restore_launches(groups: list[tuple[torch.dtype, int, int, int]], buffer: torch.Tensor) -> list[_RestoreLaunch]:
    """The restore of each group: its pair table in ``buffer`` and one ``repeat_interleave`` (unit -> pair)."""
    launches = []
    for dtype, num_pairs, num_units, at in groups:
        units = buffer[at + 5 * num_pairs: at + 6 * num_pairs]
        unit_pair = torch.repeat_interleave(units, output_size=num_units)
        launches.append(_RestoreLaunch(dtype, buffer[at: at + 5 * num_pairs], num_pairs, unit_pair))
    return launches


def _add_launches(plans: list[_GroupPlan], buffer: torch.Tensor, scales_at: int, num_diffs: int) -> list[_AddLaunch]:
    """The scatter-add of each plan, its units searched (one launch each)."""
    launches = []
    for plan in plans:
        tables = plan.views(buffer, num_diffs)
        unit_tensor, segments = _search(plan, tables, num_diffs)
        launches.append(_AddLaunch(plan, tables, unit_tensor, segments,
                                   buffer[scales_at: scales_at + num_diffs], num_diffs))
    return launches


def scatter_add_(
    dense: Sequence[torch.Tensor],
    indices: Sequence[Sequence[torch.Tensor]],
    values: Sequence[Sequence[torch.Tensor]],
    scales: Sequence[float],
    save: bool,
    out: Sequence[Sequence[torch.Tensor]] | None = None,
) -> list[list[torch.Tensor]] | None:
    """Apply diffs ``d = 0, 1, ...`` in order: ``w[i] = cast(f32(w[i]) + f32(scale_d) * f32(v))``.

    Args:
        dense: T contiguous fp32 / bf16 / fp16 tensors of any shape, modified in place.
        indices: [d][t] int64 (n_dt,) sorted, unique flat indices into dense[t].
        values: [d][t] fp32 / bf16 / fp16 (n_dt,) values.
        scales: D floats (rounded to fp32).
        save: also return the original values at every diff's indices.
        out: with ``save``, [d][t] contiguous (n_dt,) tensors of dense[t]'s dtype that receive
            them (allocated when None).

    Returns:
        With ``save``, saved[d][t] = original dense[t] (its dtype) at indices[d][t], gathered
        before any add; otherwise None.

    One upload of the tables planned on the host, then two launches per dense dtype; nothing
    is read back from the device.
    """
    num_diffs = len(indices)
    assert len(values) == num_diffs == len(scales)
    assert all(len(row) == len(dense) for row in (*indices, *values))
    assert all(w.dtype in _DTYPES and w.is_contiguous() for w in dense)
    assert all(i.dtype == torch.int64 for row in indices for i in row)
    saved = _saved_buffers(dense, indices, out) if save else None
    if not num_diffs or not dense:
        return saved
    plans, upload_values, _operands = _add_tables(dense, indices, values, saved)
    if plans:
        buffer = upload(upload_values + _float32_bits(scales), dense[0].device)
        for launch in _add_launches(plans, buffer, len(upload_values), num_diffs):
            launch.launch(save)
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

    One upload of the pair tables, then per dense dtype one ``repeat_interleave`` (unit ->
    pair) and one launch.
    """
    assert len(saved) == len(indices)
    assert all(len(row) == len(dense) for row in (*indices, *saved))
    groups, upload_values, _operands = _restore_tables(dense, indices, saved, 0)
    if groups:
        for launch in _restore_launches(groups, upload(upload_values, dense[0].device)):
            launch.launch()


class PreparedScatter:
    """A composition planned once: its tables uploaded, units searched, saved buffers allocated.

    :meth:`apply` is one scatter-add launch per dense dtype (originals saved into
    :attr:`saved`), :meth:`restore` one restore launch per dense dtype; neither plans, checks,
    allocates or reads anything back. The index, value and saved tensors (converted copies
    included) are held, so their addresses in the tables stay valid; the dense tensors must
    keep their storage.

    Args: as :func:`scatter_add_` (``save`` always; ``out`` the saved buffers or None).
    """

    def __init__(
        self,
        dense: Sequence[torch.Tensor],
        indices: Sequence[Sequence[torch.Tensor]],
        values: Sequence[Sequence[torch.Tensor]],
        scales: Sequence[float],
        out: Sequence[Sequence[torch.Tensor]] | None = None,
    ) -> None:
        num_diffs = len(indices)
        assert len(values) == num_diffs == len(scales)
        assert all(len(row) == len(dense) for row in (*indices, *values))
        assert all(w.dtype in _DTYPES and w.is_contiguous() for w in dense)
        assert all(i.dtype == torch.int64 for row in indices for i in row)
        self.saved = _saved_buffers(dense, indices, out)
        self._adds: list[_AddLaunch] = []
        self._restores: list[_RestoreLaunch] = []
        if not num_diffs or not dense:
            return
        plans, add_values, add_operands = _add_tables(dense, indices, values, self.saved)
        restore_at = len(add_values) + num_diffs
        groups, restore_values, restore_operands = _restore_tables(dense, indices, self.saved, restore_at)
        self._operands = (add_operands, restore_operands)
        if plans or groups:
            buffer = upload(add_values + _float32_bits(scales) + restore_values, dense[0].device)
            self._adds = _add_launches(plans, buffer, len(add_values), num_diffs)
            self._restores = _restore_launches(groups, buffer)

    def apply(self) -> None:
        """Add every diff, saving the originals into :attr:`saved` (one launch per dense dtype)."""
        for launch in self._adds:
            launch.launch(True)

    def restore(self) -> None:
        """Write :attr:`saved` back (one launch per dense dtype)."""
        for launch in self._restores:
            launch.launch()


SPECIALIZATIONS: list[KernelSpec] = _scatter_specs.specializations(sys.modules[__name__])
"""Scatter-add per (dense dtype, value dtype in {fp32, dense}, save); the segment search;
restore per dense dtype."""
