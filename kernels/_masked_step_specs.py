"""What the masked AdamW step (``kernels/masked_step.py``) is compiled for: its ``SPECIALIZATIONS``.

:func:`specializations` builds them from the kernel module it is given (the compiled module, or
the interpreted copy that ``kernel_module(..., interpret=True)`` loads), so each spec names that
module's own kernels.
"""

from __future__ import annotations

from types import ModuleType

from . import KernelSpec
from ._common import DTYPE_NAMES, TL_DTYPES


def specializations(m: ModuleType) -> list[KernelSpec]:
    specs = []
    for dtype in m.PARAM_DTYPES:
        for has_l1 in (False, True):
            for aligned in (True, False):
                promises = {"no_float_atomics"} | ({"vectorized_loads"} if aligned else set())
                specs.append(
                    KernelSpec(
                        name=(
                            f"masked_adamw_{DTYPE_NAMES[dtype]}"
                            f"_{'l1' if has_l1 else 'nol1'}_{'aligned' if aligned else 'unaligned'}"
                        ),
                        kernel=m._masked_adamw_kernel,
                        signature={
                            "tensor_table": "*i64", "block_table": "*i32", **dict.fromkeys(m.SCALAR_ARGS, "fp32"),
                            "P_DTYPE": "constexpr", "HAS_L1": "constexpr", "ALIGNED": "constexpr",
                            "BLOCK": "constexpr",
                        },
                        constexprs={
                            "P_DTYPE": TL_DTYPES[dtype], "HAS_L1": has_l1, "ALIGNED": aligned, "BLOCK": m.BLOCK,
                        },
                        num_warps=m.NUM_WARPS,
                        num_stages=1,
                        fp_fusion=m.FP_FUSION,
                        promises=frozenset(promises),
                    )
                )
    return specs
