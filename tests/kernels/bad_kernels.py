"""Deliberately bad kernels (and good controls) that prove the static checks bite.

Each ``BAD`` entry pairs a :class:`~deftx.kernels.KernelSpec` with the check it must fail;
each ``GOOD`` spec must pass every check, so the checker is shown not to flag everything.
They are compiled for sm_80 and sm_90 by ``test_static_compile.py`` like the real kernels.
"""

from __future__ import annotations

import triton
import triton.language as tl

from deftx.kernels import KernelSpec

HISTOGRAM_BINS = tl.constexpr(256)
"""Bins of the histogram kernels below (read by the block_local_histogram check)."""


@triton.jit
def spilling_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    """An 8192-element fp32 accumulator held by one warp: 256 live values per thread."""
    offs = tl.arange(0, BLOCK)
    acc = tl.load(x_ptr + offs)
    for i in range(n):
        acc = acc * 1.0001 + tl.load(x_ptr + offs + i)
    tl.store(out_ptr + offs, acc)


@triton.jit
def float_atomic_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    """Adds x into out with a floating-point atomic (non-deterministic order)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n, other=0.0)
    tl.atomic_add(out_ptr + offs, x, mask=offs < n)


@triton.jit
def integer_atomic_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    """Control: an integer atomic add is allowed by ``no_float_atomics``."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n, other=0)
    tl.atomic_add(out_ptr + offs, x, mask=offs < n)


@triton.jit
def per_element_histogram_kernel(x_ptr, hist_ptr, n, TILE: tl.constexpr):
    """One global atomic per element: each loaded key increments its bin in global memory."""
    for start in range(tl.program_id(0) * TILE, n, tl.num_programs(0) * TILE):
        offs = start + tl.arange(0, TILE)
        key = tl.load(x_ptr + offs, mask=offs < n, other=0)
        tl.atomic_add(hist_ptr + (key & (HISTOGRAM_BINS - 1)), 1, mask=offs < n)


@triton.jit
def unlooped_per_element_histogram_kernel(x_ptr, hist_ptr, n, TILE: tl.constexpr):
    """One global atomic per element, one tile per program (no loop to detect)."""
    offs = tl.program_id(0) * TILE + tl.arange(0, TILE)
    key = tl.load(x_ptr + offs, mask=offs < n, other=0)
    tl.atomic_add(hist_ptr + (key & (HISTOGRAM_BINS - 1)), 1, mask=offs < n)


@triton.jit
def block_local_histogram_kernel(x_ptr, hist_ptr, n, TILE: tl.constexpr):
    """Control: a per-program histogram in registers / shared memory, flushed once."""
    totals = tl.zeros([HISTOGRAM_BINS], dtype=tl.int32)
    for start in range(tl.program_id(0) * TILE, n, tl.num_programs(0) * TILE):
        offs = start + tl.arange(0, TILE)
        key = tl.load(x_ptr + offs, mask=offs < n, other=0)
        totals += tl.histogram(key & (HISTOGRAM_BINS - 1), HISTOGRAM_BINS, mask=offs < n)
    bins = tl.arange(0, HISTOGRAM_BINS)
    tl.atomic_add(hist_ptr + bins, totals, mask=totals > 0, sem="relaxed")


@triton.jit
def scalar_copy_kernel(x_ptr, out_ptr, n, STRIDE: tl.constexpr, BLOCK: tl.constexpr):
    """Strided loads: no 128-bit vector load is possible."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs * STRIDE, mask=offs < n, other=0.0)
    tl.store(out_ptr + offs, x, mask=offs < n)


@triton.jit
def vector_copy_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    """Control: aligned, contiguous, unmasked full tiles give 128-bit loads."""
    start = tl.program_id(0) * BLOCK
    offs = start + tl.arange(0, BLOCK)
    if start + BLOCK <= n:
        tl.store(out_ptr + offs, tl.load(x_ptr + offs))
    else:
        mask = offs < n
        tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=mask, other=0.0), mask=mask)


@triton.jit
def matmul_kernel(a_ptr, b_ptr, c_ptr, K: tl.constexpr, BLOCK: tl.constexpr, IEEE: tl.constexpr):
    """(BLOCK, K) @ (K, BLOCK) tile; IEEE fp32 products (no tensor cores) or bf16 operands."""
    rows = tl.arange(0, BLOCK)
    ks = tl.arange(0, K)
    a = tl.load(a_ptr + rows[:, None] * K + ks[None, :])
    b = tl.load(b_ptr + ks[:, None] * BLOCK + rows[None, :])
    c = tl.dot(a, b, input_precision="ieee") if IEEE else tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16))
    tl.store(c_ptr + rows[:, None] * BLOCK + rows[None, :], c)


@triton.jit
def huge_shared_kernel(a_ptr, b_ptr, c_ptr, k, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_K: tl.constexpr):
    """A pipelined bf16 matmul whose staged tiles need more shared memory than a block gets."""
    rows = tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    ks = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, k, BLOCK_K):
        a = tl.load(a_ptr + rows[:, None] * k + (k0 + ks)[None, :])
        b = tl.load(b_ptr + (k0 + ks)[:, None] * BLOCK_N + cols[None, :])
        acc = tl.dot(a, b, acc)
    tl.store(c_ptr + rows[:, None] * BLOCK_N + cols[None, :], acc)


_COPY = {"x_ptr": "*fp32", "out_ptr": "*fp32", "n": "i32"}
_HIST = {"x_ptr": "*i32", "hist_ptr": "*i32", "n": "i32", "TILE": "constexpr"}
_MATMUL = {"a_ptr": "*fp32", "b_ptr": "*fp32", "c_ptr": "*fp32", "K": "constexpr", "BLOCK": "constexpr",
           "IEEE": "constexpr"}

BAD: list[tuple[KernelSpec, str]] = [
    (
        KernelSpec("bad_spill", spilling_kernel, {**_COPY, "BLOCK": "constexpr"}, {"BLOCK": 8192},
                   num_warps=1, num_stages=1),
        "spill",
    ),
    (
        KernelSpec("bad_float_atomic_fp32", float_atomic_kernel, {**_COPY, "BLOCK": "constexpr"},
                   {"BLOCK": 1024}, num_stages=1, promises=frozenset({"no_float_atomics"})),
        "no_float_atomics",
    ),
    (
        KernelSpec("bad_float_atomic_bf16", float_atomic_kernel,
                   {"x_ptr": "*bf16", "out_ptr": "*bf16", "n": "i32", "BLOCK": "constexpr"},
                   {"BLOCK": 1024}, num_stages=1, promises=frozenset({"no_float_atomics"})),
        "no_float_atomics",
    ),
    (
        KernelSpec("bad_per_element_histogram", per_element_histogram_kernel, _HIST, {"TILE": 1024},
                   num_stages=1, promises=frozenset({"block_local_histogram"})),
        "block_local_histogram",
    ),
    (
        KernelSpec("bad_unlooped_per_element_histogram", unlooped_per_element_histogram_kernel, _HIST,
                   {"TILE": 4096}, num_stages=1, promises=frozenset({"block_local_histogram"})),
        "block_local_histogram",
    ),
    (
        KernelSpec("bad_scalar_loads", scalar_copy_kernel, {**_COPY, "STRIDE": "constexpr", "BLOCK": "constexpr"},
                   {"STRIDE": 2, "BLOCK": 1024}, num_stages=1, promises=frozenset({"vectorized_loads"})),
        "vectorized_loads",
    ),
    (
        KernelSpec("bad_no_tensor_cores", matmul_kernel, _MATMUL, {"K": 32, "BLOCK": 64, "IEEE": True},
                   num_stages=1, promises=frozenset({"tensor_cores"})),
        "tensor_cores",
    ),
    (
        KernelSpec("bad_huge_shared", huge_shared_kernel,
                   {"a_ptr": "*bf16", "b_ptr": "*bf16", "c_ptr": "*fp32", "k": "i32", "BLOCK_M": "constexpr",
                    "BLOCK_N": "constexpr", "BLOCK_K": "constexpr"},
                   {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 256}, num_warps=4, num_stages=8),
        "shared_memory",
    ),
]

GOOD: list[KernelSpec] = [
    KernelSpec("good_integer_atomic", integer_atomic_kernel,
               {"x_ptr": "*i32", "out_ptr": "*i32", "n": "i32", "BLOCK": "constexpr"}, {"BLOCK": 1024},
               num_stages=1, promises=frozenset({"no_float_atomics"})),
    KernelSpec("good_block_local_histogram", block_local_histogram_kernel, _HIST, {"TILE": 1024}, num_stages=1,
               promises=frozenset({"block_local_histogram", "no_float_atomics"})),
    KernelSpec("good_vector_loads", vector_copy_kernel, {**_COPY, "BLOCK": "constexpr"}, {"BLOCK": 1024},
               num_stages=1, promises=frozenset({"vectorized_loads", "no_float_atomics"})),
    KernelSpec("good_tensor_cores", matmul_kernel, _MATMUL, {"K": 32, "BLOCK": 64, "IEEE": False}, num_stages=1,
               promises=frozenset({"tensor_cores"})),
]
