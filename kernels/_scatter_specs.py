"""What the scatter kernels (``kernels/scatter.py``) are compiled for: its ``SPECIALIZATIONS``.

:func:`specializations` builds them from the kernel module it is given (the compiled module, or
the interpreted copy that ``kernel_module(..., interpret=True)`` loads), so each spec names that
module's own kernels.
"""

from __future__ import annotations

from types import ModuleType

import torch

from . import KernelSpec
from ._common import DTYPE_NAMES, TL_DTYPES

_ADD_SIGNATURE = {
    "unit_tensor_ptr": "*i32", "segments_ptr": "*i64", "dense_table_ptr": "*i64",
    "diff_table_ptr": "*i64", "scales_ptr": "*i64", "num_units": "i32", "num_tensors": "i32",
    "num_diffs": "i32", "DENSE": "constexpr", "VALUE": "constexpr", "SAVE": "constexpr",
    "CHUNK": "constexpr",
}
_BOUNDS_SIGNATURE = {
    "unit_table_ptr": "*i64", "diff_table_ptr": "*i64", "count_ptr": "*i64",
    "unit_tensor_ptr": "*i32", "segments_ptr": "*i64", "num_units": "i32", "num_tensors": "i32",
    "tensor_steps": "i32", "steps": "i32", "chunked": "i32", "BLOCK": "constexpr",
}
_RESTORE_SIGNATURE = {
    "unit_pair_ptr": "*i64", "pair_table_ptr": "*i64", "num_pairs": "i32",
    "DENSE": "constexpr", "CHUNK": "constexpr",
}


def specializations(m: ModuleType) -> list[KernelSpec]:
    promises = frozenset({"no_float_atomics"})
    specs = []
    for dense in m._DTYPES:
        for value in dict.fromkeys((torch.float32, dense)):
            for save in (False, True):
                specs.append(KernelSpec(
                    name=f"scatter_add_{DTYPE_NAMES[dense]}_values_{DTYPE_NAMES[value]}"
                         f"{'_save' if save else ''}",
                    kernel=m._scatter_add_kernel,
                    signature=_ADD_SIGNATURE,
                    constexprs={"DENSE": TL_DTYPES[dense], "VALUE": TL_DTYPES[value],
                                "SAVE": save, "CHUNK": m.CHUNK},
                    num_warps=m.SCATTER_WARPS, num_stages=m.SCATTER_STAGES, promises=promises,
                ))
    specs.append(KernelSpec(
        name="scatter_segment_bounds", kernel=m._segment_bounds_kernel,
        signature=_BOUNDS_SIGNATURE, constexprs={"BLOCK": m.SEARCH_BLOCK},
        num_warps=m.SCATTER_WARPS, num_stages=m.SCATTER_STAGES, promises=promises,
    ))
    for dense in m._DTYPES:
        specs.append(KernelSpec(
            name=f"scatter_restore_{DTYPE_NAMES[dense]}", kernel=m._scatter_restore_kernel,
            signature=_RESTORE_SIGNATURE,
            constexprs={"DENSE": TL_DTYPES[dense], "CHUNK": m.RESTORE_CHUNK},
            num_warps=m.SCATTER_WARPS, num_stages=m.SCATTER_STAGES, promises=promises,
        ))
    return specs
