"""What the top-k kernels (``kernels/topk.py``) are compiled for: its ``SPECIALIZATIONS``.

:func:`specializations` builds them from the kernel module it is given (the compiled module, or
the interpreted copy that ``kernel_module(..., interpret=True)`` loads), so each spec names that
module's own kernels.
"""

from __future__ import annotations

from types import ModuleType

import torch

from . import KernelSpec
from ._common import DTYPE_NAMES, TL_DTYPES
from ._topk_plan import LAST_PASS, PASS_SHIFTS, last_pass

_TABLE = {"table_ptr": "*i64", "block_column_ptr": "*i64"}
_SAMPLE_SIGNATURE = {
    **_TABLE, "sample_ptr": "*i64", "num_columns": "i32", "first_block": "i32", "sample_first": "i32",
    "num_samples": "i32", "stride": "fp64", "DTYPE": "constexpr", "HAS_BASE": "constexpr", "BLOCK": "constexpr",
    "TILE": "constexpr",
}
_BRACKET_SIGNATURE = {
    "sample_ptr": "*i64", "num_samples": "i32", "state_ptr": "*i64", "total": "i64", "SIGMAS": "constexpr",
    "TILE": "constexpr",
}
_BAND_SIGNATURE = {
    **_TABLE, "state_ptr": "*i64", "hist_ptr": "*i64", "block_hist_ptr": "*i32", "block_above_ptr": "*i32",
    "list_ptr": "*i64", "list_hist_ptr": "*i64", "list_total_ptr": "*i64", "capacity": "i64", "owns_list": "i32",
    "num_columns": "i32", "first_block": "i32", "num_blocks": "i32", "DTYPE": "constexpr", "HAS_BASE": "constexpr",
    "SHIFT": "constexpr", "STORE_BLOCKS": "constexpr", "BLOCK": "constexpr", "TILE": "constexpr",
    "LIST_TILE": "constexpr",
}
_SELECT_SIGNATURE = {
    "hist_ptr": "*i64", "next_hist_ptr": "*i64", "state_ptr": "*i64", "list_hist_ptr": "*i64",
    "list_total_ptr": "*i64", "capacity": "i64", "num_groups": "i32", "carry_mask": "i32", "shift": "i32",
    "GROUPS": "constexpr",
}
_CLASSIFY_SIGNATURE = {
    **_TABLE, "block_hist_ptr": "*i32", "block_above_ptr": "*i32", "state_ptr": "*i64", "sums_ptr": "*i64",
    "list_ptr": "*i64", "list_ends_ptr": "*i64", "list_total_ptr": "*i64", "capacity": "i64",
    "num_columns": "i32", "num_blocks": "i32", "ROWS": "constexpr", "TILE": "constexpr",
}
_PARTITION_SIGNATURE = {
    **_TABLE, "state_ptr": "*i64", "list_ptr": "*i64", "list_ends_ptr": "*i64", "list_total_ptr": "*i64",
    "nan_ptr": "*i64",
    "capacity": "i64", "num_columns": "i32", "num_blocks": "i32", "first_block": "i32", "DTYPE": "constexpr",
    "HAS_BASE": "constexpr", "WRITE": "constexpr", "BLOCK": "constexpr", "TILE": "constexpr",
}
_COMPACT_SIGNATURE = {
    **_TABLE, "state_ptr": "*i64", "sums_ptr": "*i64", "out_ptr": "*i64", "counts_ptr": "*i64", "list_ptr": "*i64",
    "list_ends_ptr": "*i64", "list_total_ptr": "*i64", "capacity": "i64", "num_columns": "i32", "num_blocks": "i32",
    "first_block": "i32", "DTYPE": "constexpr", "HAS_BASE": "constexpr", "BLOCK": "constexpr", "TILE": "constexpr",
}


def _group_name(dtype: torch.dtype, has_base: bool) -> str:
    return DTYPE_NAMES[dtype] + ("_base" if has_base else "")


def _histogram_specs(m: ModuleType, dtype: torch.dtype, has_base: bool) -> list[KernelSpec]:
    """The radix pass launches of one group (list or data), up to the dtype's last."""
    specs = []
    for p in range(last_pass(dtype, has_base) + 1):
        shift = PASS_SHIFTS[p]
        specs.append(KernelSpec(
            name=f"topk_histogram_{_group_name(dtype, has_base)}_shift{shift}", kernel=m._band_histogram_kernel,
            signature=_BAND_SIGNATURE,
            constexprs={"DTYPE": TL_DTYPES[dtype], "HAS_BASE": has_base, "SHIFT": shift,
                        "STORE_BLOCKS": p == last_pass(dtype, has_base), "BLOCK": m.BLOCK_ELEMS,
                        "TILE": m.histogram_tile(dtype, has_base, shift), "LIST_TILE": m.COMPACT_TILE},
            num_warps=m.histogram_warps(dtype, has_base, shift), num_stages=m.HISTOGRAM_STAGES,
            promises=frozenset({"block_local_histogram", "vectorized_loads"}),
        ))
    return specs


def _per_block_specs(m: ModuleType, dtype: torch.dtype, has_base: bool) -> list[KernelSpec]:
    """The sample, the count, the partition and the compaction of one group."""
    group = _group_name(dtype, has_base)
    common = {"DTYPE": TL_DTYPES[dtype], "HAS_BASE": has_base, "BLOCK": m.BLOCK_ELEMS}
    specs = [KernelSpec(name=f"topk_sample_{group}", kernel=m._sample_kernel, signature=_SAMPLE_SIGNATURE,
                        constexprs={**common, "TILE": m.SAMPLE_TILE}, num_warps=m.SELECT_WARPS, num_stages=1)]
    specs += [
        KernelSpec(name=f"topk_{step}_{group}", kernel=m._partition_kernel, signature=_PARTITION_SIGNATURE,
                   constexprs={"DTYPE": TL_DTYPES[dtype], "HAS_BASE": has_base, "WRITE": write,
                               "BLOCK": m.BLOCK_ELEMS, "TILE": m.COMPACT_TILE},
                   num_warps=m.COMPACT_WARPS, num_stages=m.COMPACT_STAGES, promises=frozenset({"vectorized_loads"}))
        for step, write in (("count", False), ("partition", True))
    ]
    specs.append(KernelSpec(
        name=f"topk_compact_{group}", kernel=m._compact_indices_kernel, signature=_COMPACT_SIGNATURE,
        constexprs={**common, "TILE": m.COMPACT_TILE}, num_warps=m.COMPACT_WARPS, num_stages=m.COMPACT_STAGES,
        promises=frozenset({"vectorized_loads"})))
    return specs


def specializations(m: ModuleType) -> list[KernelSpec]:
    groups = [(dtype, has_base) for dtype in LAST_PASS for has_base in (False, True)]
    specs = [spec for group in groups for spec in _histogram_specs(m, *group)]
    specs.append(KernelSpec(
        name="topk_select_digit", kernel=m._select_digit_kernel, signature=_SELECT_SIGNATURE,
        constexprs={"GROUPS": m.MAX_GROUPS}, num_warps=m.SELECT_WARPS, num_stages=1,
        promises=frozenset({"vectorized_loads"}),
    ))
    specs.append(KernelSpec(
        name="topk_bracket", kernel=m._bracket_kernel, signature=_BRACKET_SIGNATURE,
        constexprs={"SIGMAS": m.BRACKET_SIGMAS, "TILE": m.BRACKET_TILE}, num_warps=m.SELECT_WARPS, num_stages=1,
    ))
    specs.append(KernelSpec(
        name="topk_classify", kernel=m._classify_blocks_kernel, signature=_CLASSIFY_SIGNATURE,
        constexprs={"ROWS": m.CLASSIFY_ROWS, "TILE": m.COMPACT_TILE}, num_warps=m.SELECT_WARPS, num_stages=1,
        promises=frozenset({"vectorized_loads"}),
    ))
    specs += [spec for group in groups for spec in _per_block_specs(m, *group)]
    return specs
