"""What the randomized-SVD kernels (``kernels/rsvd.py``) are compiled for: its ``SPECIALIZATIONS``.

:func:`specializations` builds them from the kernel module it is given (the compiled module, or
the interpreted copy that ``kernel_module(..., interpret=True)`` loads), so each spec names that
module's own kernels.
"""

from __future__ import annotations

from types import ModuleType

import torch

from . import KernelSpec
from ._common import DTYPE_NAMES, TL_DTYPES


def _matmul_spec(
    m: ModuleType, name: str, dtype: torch.dtype, has_w0: bool, align: int, precision: str, block_q: int
) -> KernelSpec:
    kernel = m._sketch_t_delta_kernel if name == "sketch_t_delta" else m._delta_matmul_kernel
    tile_arg, tiles_arg = ("BLOCK_COLS", "col_tiles") if name == "sketch_t_delta" else ("BLOCK_ROWS", "row_tiles")
    config = m.matmul_config(name, precision, block_q, align)
    dt = DTYPE_NAMES[dtype]
    return KernelSpec(
        name=f"rsvd_{name}_{dt}_{'diff' if has_w0 else 'single'}_align{align}_{precision}_q{block_q}",
        kernel=kernel,
        signature={
            "w1_table": "*i64", "w0_table": "*i64", "x_ptr": "*fp32", "out_ptr": "*fp32", "m": "i32", "n_div": "i32",
            "q": "i32", "x_batch_stride": "i32", "split_blocks": "i32", tiles_arg: "i32", "q_tiles": "i32",
            "W_DTYPE": "constexpr", "HAS_W0": "constexpr", "ALIGN": "constexpr", "PRECISION": "constexpr",
            tile_arg: "constexpr", "BLOCK_K": "constexpr", "BLOCK_Q": "constexpr",
        },
        constexprs={
            "W_DTYPE": TL_DTYPES[dtype], "HAS_W0": has_w0, "ALIGN": align, "PRECISION": precision,
            tile_arg: config["BLOCK_ROWS"], "BLOCK_K": config["BLOCK_K"], "BLOCK_Q": block_q,
        },
        num_warps=config["num_warps"],
        num_stages=config["num_stages"],
        promises=_promises(m, precision, align),
    )


def _matmul_specs(m: ModuleType) -> list[KernelSpec]:
    return [
        _matmul_spec(m, name, dtype, has_w0, align, precision, block_q)
        for (name, precision, block_q) in m.MATMUL_CONFIGS
        for dtype in m.PRECISION_WEIGHT_DTYPES[precision]
        for has_w0 in (True, False)
        for align in (m.ALIGNMENT, 1)
    ]


def _promises(m: ModuleType, precision: str, align: int) -> frozenset[str]:
    promises = {"no_float_atomics"}
    if precision in m.TENSOR_CORE_PRECISIONS:
        promises.add("tensor_cores")
    if align > 1:
        promises.add("vectorized_loads")
    return frozenset(promises)


def _reconstruct_specs(m: ModuleType) -> list[KernelSpec]:
    config = m.RECONSTRUCT_CONFIG
    specs = []
    for align in (m.ALIGNMENT, 1):
        for precision in m.PRECISIONS:
            specs.append(
                KernelSpec(
                    name=f"rsvd_reconstruct_abs_align{align}_{precision}",
                    kernel=m._reconstruct_abs_kernel,
                    signature={
                        "u_table": "*i64", "s_table": "*i64", "vh_table": "*i64", "out_table": "*i64",
                        "rank_table": "*i32", "u_stride_table": "*i32", "m": "i32", "n_div": "i32", "row_tiles": "i32",
                        "col_tiles": "i32", "ALIGN": "constexpr", "PRECISION": "constexpr", "BLOCK_ROWS": "constexpr",
                        "BLOCK_COLS": "constexpr", "BLOCK_R": "constexpr",
                    },
                    constexprs={
                        "ALIGN": align, "PRECISION": precision, "BLOCK_ROWS": config["BLOCK_ROWS"],
                        "BLOCK_COLS": config["BLOCK_COLS"], "BLOCK_R": config["BLOCK_R"],
                    },
                    num_warps=config["num_warps"],
                    num_stages=config["num_stages"],
                    promises=_promises(m, precision, align),
                )
            )
    return specs


def _energy_spec(m: ModuleType, dtype: torch.dtype, has_w0: bool, align: int) -> KernelSpec:
    config = m.ENERGY_CONFIG
    return KernelSpec(
        name=f"rsvd_difference_energy_{DTYPE_NAMES[dtype]}_{'diff' if has_w0 else 'single'}_align{align}",
        kernel=m._difference_energy_kernel,
        signature={
            "w1_table": "*i64", "w0_table": "*i64", "partial_ptr": "*fp64", "numel_div": "i32", "chunks": "i32",
            "W_DTYPE": "constexpr", "HAS_W0": "constexpr", "ALIGN": "constexpr", "BLOCK": "constexpr",
            "CHUNK_BLOCKS": "constexpr",
        },
        constexprs={
            "W_DTYPE": TL_DTYPES[dtype], "HAS_W0": has_w0, "ALIGN": align, "BLOCK": config["BLOCK"],
            "CHUNK_BLOCKS": config["CHUNK_BLOCKS"],
        },
        num_warps=config["num_warps"],
        num_stages=config["num_stages"],
        promises=_promises(m, "fp32", align),
    )


def _energy_specs(m: ModuleType) -> list[KernelSpec]:
    return [
        _energy_spec(m, dtype, has_w0, align)
        for dtype in m.WEIGHT_DTYPES
        for has_w0 in (True, False)
        for align in (m.ALIGNMENT, 1)
    ]




def specializations(m: ModuleType) -> list[KernelSpec]:
    return _matmul_specs(m) + _reconstruct_specs(m) + _energy_specs(m)
