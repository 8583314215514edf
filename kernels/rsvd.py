"""Randomized SVD of a weight difference Δ = W1 − W0 with the subtraction fused into the matmuls.

The products with Δ are Triton kernels that load a tile of W1 and of W0, subtract them in
fp32 registers and feed the difference to ``tl.dot``, so Δ is never written to memory:

* :func:`delta_matmul` ``Δ @ X`` (m, n)·(n, q) and ``Δᵀ @ X`` (n, m)·(m, q), for a group
  of same-shape matrices in one launch. The matrices' addresses come from an int64
  pointer table (one entry per matrix, program ids run over the batch), so all the
  q/k/v/o/FFN matrices of a transformer take one launch per shape and product.
  ``Δᵀ @ X`` is computed as ``(Xᵀ @ Δ)ᵀ``: Δ stays the row-contiguous right operand of
  ``tl.dot`` (no transposed tile), and ``B = Qᵀ Δ`` comes out row-major. When the output
  has too few tiles to fill the GPU (a tall Δᵀ@X), the reduction is split across programs
  and the fp32 partial products are summed by torch (deterministic, no atomics).
* :func:`reconstruct_magnitudes` ``|U diag(S) Vh|`` of many factor triples, one launch per
  output shape, with S applied to the U tile in registers and the absolute value in the
  epilogue: the denoised magnitudes are the only (m, n) buffer written.
* :func:`difference_energy` ``||Δ||_F²`` of a group of same-shape matrices in one launch
  (fp64 squares and sums: an fp32 square overflows from |Δ| = 2⁶⁴), again without forming Δ.

:func:`randomized_svd` follows the contract's sequence exactly::

    Y = Δ Ω ; Q = qr(Y).Q
    repeat n_iter: Z = qr(Δᵀ Q).Q ; Q = qr(Δ Z).Q
    B = Qᵀ Δ ; Ub, S, Vh = svd(B) ; U = Q Ub

The small steps are batched over the group and kept off cuSOLVER's per-matrix loops (on an
H200, ``torch.linalg.qr`` / ``svd`` over a group made ~230 kernel launches per matrix, 17,230
for XLM-R's scores): the orthonormal bases are shifted Cholesky-QR in fp64 on the device
(:func:`_orthonormal_basis`), and the SVD of the small B comes from an ``eigh`` of the (q, q)
Gram matrices on the host, spread over its threads (:func:`_small_svd`, :func:`host_eigh`; one
small copy each way per group).

:func:`randomized_svd_group` runs it for a shape group with one shared sketch Ω (n, q):
the sketch is read through a batch stride of 0, never copied per matrix.

Precision of the products (:data:`PRECISIONS`):

* ``"fp32"`` (default): IEEE fp32 (``input_precision="ieee"``, CUDA cores).
* ``"tf32x3"``: three TF32 tensor-core products per tile (a = a_hi + a_lo with a_hi the
  TF32 rounding of a; a_hi b_hi + a_hi b_lo + a_lo b_hi, the a_lo b_lo term dropped), for
  fp32 weights only. Each product term is within 2⁻¹⁹ of a·b (two truncated low parts of
  2⁻²¹ and the dropped 2⁻²² term; IEEE fp32: 2⁻²⁴), so the reconstruction error stays
  that of fp32 products (tested under the interpreter, which emulates the decomposition
  with explicitly rounded operands). Plain single-pass TF32 (2⁻¹¹ per operand) is not
  offered: it perturbs every product by about 5·10⁻⁴ of ‖Δ‖, and (predicted, not measured)
  3xTF32 already suffices for the memory roofline: an fp32-weight product does 2q FLOPs per
  8 bytes of W1 and W0, 18 FLOP/B at q = 72, ≈ 77 TFLOP/s at 4.3 TB/s.
* ``"bf16"``: rounds the fp32 Δ tile and the sketch tile to bf16 and accumulates in fp32
  on the tensor cores (HMMA / HGMMA).

Alignment: when every matrix of a launch starts on a 16-byte boundary and its row length
is a multiple of 16 elements, the ``ALIGN=16`` specialisation tells the compiler so (the
row length is passed as ``n // 16`` and the loaded addresses carry ``tl.multiple_of``),
which lets it issue 128-bit loads (``cp.async`` / ``LDGSTS.128``) of W1 and W0.

Traffic: every product re-reads W1 and W0. For bf16 / fp16 weights that is the same as
reading one fp32 Δ, so fusing always saves the materialisation. For fp32 weights it reads
8 bytes per entry per product instead of 4, so with ``n_iter >= 1`` fusing moves more bytes
than materialising Δ once (see :func:`bytes_moved` and :func:`baseline_bytes_moved`).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
import triton
import triton.language as tl

from . import KernelSpec, _rsvd_specs
from ._common import TL_DTYPES, TableCache, interpreting, table_pointer

PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "tf32x3")
TENSOR_CORE_PRECISIONS: frozenset[str] = frozenset({"bf16", "tf32x3"})
WEIGHT_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16, torch.float16)
ALIGNMENT = 16
"""Elements per row (and bytes per base address) that select the ``ALIGN=16`` specialisation."""
TARGET_PROGRAMS = 512
"""Programs a launch should have before the reduction is split (several waves on 132 SMs)."""
MIN_SPLIT_BLOCKS = 8
"""A split covers at least this many BLOCK_K blocks of the reduction."""

# The interpreter's fp32 -> bf16 cast truncates and its tl.dot multiplies bf16 bit patterns
# as integers, so under the interpreter the bf16 product is emulated exactly in fp32; it
# also ignores input_precision, so the TF32 roundings of "tf32x3" are applied explicitly.
_INTERPRET = interpreting()


# --------------------------------------------------------------------------- device helpers


@triton.jit
def _load_delta(w1, w0, offsets, mask, HAS_W0: tl.constexpr):
    """fp32 tile of Δ = f32(w1) − f32(w0) (or f32(w1)) at ``offsets``; 0 where masked."""
    delta = tl.load(w1 + offsets, mask=mask, other=0.0).to(tl.float32)
    if HAS_W0:
        delta -= tl.load(w0 + offsets, mask=mask, other=0.0).to(tl.float32)
    return delta


@triton.jit
def _round_to_bf16(x):
    """fp32 ``x`` rounded to the nearest bf16 value (ties to even), kept in fp32 (finite x)."""
    bits = x.to(tl.uint32, bitcast=True)
    rounded = bits + 0x7FFF + ((bits >> 16) & 1)
    return ((rounded >> 16) << 16).to(tl.float32, bitcast=True)


@triton.jit
def _round_to_tf32(x):
    """fp32 ``x`` rounded to the nearest TF32 value (10 mantissa bits, ties away from zero,
    as ``cvt.rna.tf32.f32``), kept in fp32 (finite x)."""
    bits = x.to(tl.uint32, bitcast=True)
    return ((bits + 0x1000) & 0xFFFFE000).to(tl.float32, bitcast=True)


@triton.jit
def _truncate_to_tf32(x):
    """fp32 ``x`` with its 13 low mantissa bits cleared: what a TF32 MMA reads of an fp32 operand."""
    return (x.to(tl.uint32, bitcast=True) & 0xFFFFE000).to(tl.float32, bitcast=True)


@triton.jit
def _tf32x3_emulated(a, b, acc):
    """``acc + a @ b`` by the 3xTF32 decomposition, each term an exact fp32 product of TF32 values."""
    a_hi = _round_to_tf32(a)
    b_hi = _round_to_tf32(b)
    a_lo = _truncate_to_tf32(a - a_hi)
    b_lo = _truncate_to_tf32(b - b_hi)
    small = tl.dot(a_lo, b_hi, input_precision="ieee") + tl.dot(a_hi, b_lo, input_precision="ieee")
    return tl.dot(a_hi, b_hi, acc + small, input_precision="ieee")


@triton.jit
def _dot_accumulate(a, b, acc, PRECISION: tl.constexpr):
    """``acc + a @ b`` of fp32 tiles with fp32 accumulation, at ``PRECISION`` (see :data:`PRECISIONS`)."""
    if PRECISION == "bf16":
        if _INTERPRET:
            acc = tl.dot(_round_to_bf16(a), _round_to_bf16(b), acc, input_precision="ieee")
        else:
            acc = tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), acc)
    elif PRECISION == "tf32x3":
        acc = _tf32x3_emulated(a, b, acc) if _INTERPRET else tl.dot(a, b, acc, input_precision="tf32x3")
    else:
        acc = tl.dot(a, b, acc, input_precision="ieee")
    return acc


@triton.jit
def _tile_coordinates(pid, row_tiles, col_tiles):
    """(matrix, row tile, column tile) of a program; column tiles vary fastest."""
    col_tile = pid % col_tiles
    row_tile = (pid // col_tiles) % row_tiles
    matrix = pid // (col_tiles * row_tiles)
    return matrix, row_tile, col_tile


@triton.jit
def _delta_operands(w1_table, w0_table, x_ptr, x_batch_stride, n_div, tiles, q_tiles,
                    W_DTYPE: tl.constexpr, ALIGN: tl.constexpr):
    """What a program of the Δ-product kernels works on: (matrix, tile, q tile) of its
    ``program_id(0)`` (:func:`_tile_coordinates`), n, the typed bases w1 and w0 of its Δ
    and x_matrix, its X."""
    matrix, tile, q_tile = _tile_coordinates(tl.program_id(0), tiles, q_tiles)
    w1 = table_pointer(w1_table, matrix, W_DTYPE, ALIGN > 1)
    w0 = table_pointer(w0_table, matrix, W_DTYPE, ALIGN > 1)
    x_matrix = x_ptr + matrix.to(tl.int64) * x_batch_stride
    return matrix, tile, q_tile, n_div * ALIGN, w1, w0, x_matrix


@triton.jit
def _split_range(split_blocks, extent, BLOCK_K: tl.constexpr):
    """[k_begin, k_end): the reduction range of this program's split (``program_id(1)``),
    ``split_blocks`` blocks of BLOCK_K clipped to ``extent``."""
    k_begin = tl.program_id(1) * split_blocks * BLOCK_K
    k_end = tl.minimum(k_begin + split_blocks * BLOCK_K, extent)
    return k_begin, k_end


@triton.jit
def _store_split_tile(out_ptr, matrix, acc, rows, cols, row_mask, col_mask, height, width):
    """Store ``acc`` (len(rows), len(cols)) fp32 at [rows, cols] of this program's partial
    product, the (height, width) row-major matrix ``[matrix, program_id(1)]`` of out
    (G, splits, height, width)."""
    out = out_ptr + (matrix.to(tl.int64) * tl.num_programs(1) + tl.program_id(1)) * height * width
    tl.store(out + rows[:, None].to(tl.int64) * width + cols[None, :], acc, mask=row_mask[:, None] & col_mask[None, :])


# --------------------------------------------------------------------------- kernels


@triton.jit
def _delta_matmul_kernel(
    w1_table,
    w0_table,
    x_ptr,
    out_ptr,
    m,
    n_div,
    q,
    x_batch_stride,
    split_blocks,
    row_tiles,
    q_tiles,
    W_DTYPE: tl.constexpr,
    HAS_W0: tl.constexpr,
    ALIGN: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_Q: tl.constexpr,
):
    """Partial products ``out[b, s] = Δ_b[:, K_s] @ X_b[K_s, :]``.

    Shapes: Δ_b (m, n) from the address tables (W_DTYPE, row-major, n = n_div * ALIGN);
    x (G, n, q) fp32, each (n, q) row-major, X_b at ``x_ptr + b * x_batch_stride``
    (0: one X shared by the group); out (G, splits, m, q) fp32; K_s = columns
    [s * split_blocks * BLOCK_K, (s + 1) * split_blocks * BLOCK_K) of Δ.
    Grid: (G * row_tiles * q_tiles, splits).
    """
    matrix, row_tile, q_tile, n, w1, w0, x_matrix = _delta_operands(
        w1_table, w0_table, x_ptr, x_batch_stride, n_div, row_tiles, q_tiles, W_DTYPE, ALIGN
    )
    rows = row_tile * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    cols = q_tile * BLOCK_Q + tl.arange(0, BLOCK_Q)
    row_mask = rows < m
    col_mask = cols < q
    row_offsets = rows.to(tl.int64) * n

    k_begin, k_end = _split_range(split_blocks, n, BLOCK_K)
    acc = tl.full((BLOCK_ROWS, BLOCK_Q), 0.0, dtype=tl.float32)
    for k0 in range(k_begin, k_end, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_mask = ks < n
        delta = _load_delta(
            w1, w0, row_offsets[:, None] + ks[None, :], row_mask[:, None] & k_mask[None, :], HAS_W0
        )
        x = tl.load(
            x_matrix + ks[:, None].to(tl.int64) * q + cols[None, :],
            mask=k_mask[:, None] & col_mask[None, :],
            other=0.0,
        )
        acc = _dot_accumulate(delta, x, acc, PRECISION)

    _store_split_tile(out_ptr, matrix, acc, rows, cols, row_mask, col_mask, m, q)


@triton.jit
def _sketch_t_delta_kernel(
    w1_table,
    w0_table,
    x_ptr,
    out_ptr,
    m,
    n_div,
    q,
    x_batch_stride,
    split_blocks,
    col_tiles,
    q_tiles,
    W_DTYPE: tl.constexpr,
    HAS_W0: tl.constexpr,
    ALIGN: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_COLS: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_Q: tl.constexpr,
):
    """Partial products ``out[b, s] = X_b[K_s, :]ᵀ @ Δ_b[K_s, :]`` (= (Δ_bᵀ X_b)ᵀ over K_s).

    Shapes as in :func:`_delta_matmul_kernel`, but x (G, m, q) fp32 (each (m, q) row-major),
    out (G, splits, q, n) fp32 and K_s a range of Δ's rows.
    Grid: (G * col_tiles * q_tiles, splits).
    """
    matrix, col_tile, q_tile, n, w1, w0, x_matrix = _delta_operands(
        w1_table, w0_table, x_ptr, x_batch_stride, n_div, col_tiles, q_tiles, W_DTYPE, ALIGN
    )
    cols = col_tile * BLOCK_COLS + tl.arange(0, BLOCK_COLS)
    qs = q_tile * BLOCK_Q + tl.arange(0, BLOCK_Q)
    col_mask = cols < n
    q_mask = qs < q

    k_begin, k_end = _split_range(split_blocks, m, BLOCK_K)
    acc = tl.full((BLOCK_Q, BLOCK_COLS), 0.0, dtype=tl.float32)
    for k0 in range(k_begin, k_end, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_mask = ks < m
        x_t = tl.load(
            x_matrix + ks[None, :].to(tl.int64) * q + qs[:, None],
            mask=q_mask[:, None] & k_mask[None, :],
            other=0.0,
        )
        delta = _load_delta(
            w1,
            w0,
            ks[:, None].to(tl.int64) * n + cols[None, :],
            k_mask[:, None] & col_mask[None, :],
            HAS_W0,
        )
        acc = _dot_accumulate(x_t, delta, acc, PRECISION)

    _store_split_tile(out_ptr, matrix, acc, qs, cols, q_mask, col_mask, q, n)


@triton.jit
def _reconstruct_abs_kernel(
    u_table,
    s_table,
    vh_table,
    out_table,
    rank_table,
    u_stride_table,
    m,
    n_div,
    row_tiles,
    col_tiles,
    ALIGN: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_COLS: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    """``out_b = |u_b diag(s_b) vh_b|`` for each matrix b of the tables.

    Shapes: u_b (m, r_b) fp32 with rows u_stride_table[b] apart (int32, unit column
    stride), s_b (r_b,) fp32, vh_b (r_b, n) fp32 row-major, out_b (m, n) fp32 row-major,
    n = n_div * ALIGN, r_b = rank_table[b] (int32, may be 0). The U tile is scaled by S
    in registers (one fp32 rounding, as ``u * s`` in torch).
    Grid: (G * row_tiles * col_tiles,).
    """
    matrix, row_tile, col_tile = _tile_coordinates(tl.program_id(0), row_tiles, col_tiles)
    n = n_div * ALIGN
    rank = tl.load(rank_table + matrix)
    u_row_stride = tl.load(u_stride_table + matrix)
    u = table_pointer(u_table, matrix, tl.float32, False)
    s = table_pointer(s_table, matrix, tl.float32, False)
    vh = table_pointer(vh_table, matrix, tl.float32, ALIGN > 1)
    out = table_pointer(out_table, matrix, tl.float32, ALIGN > 1)

    rows = row_tile * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    cols = col_tile * BLOCK_COLS + tl.arange(0, BLOCK_COLS)
    row_mask = rows < m
    col_mask = cols < n
    acc = tl.full((BLOCK_ROWS, BLOCK_COLS), 0.0, dtype=tl.float32)
    for r0 in range(0, rank, BLOCK_R):
        rs = r0 + tl.arange(0, BLOCK_R)
        r_mask = rs < rank
        a = tl.load(
            u + rows[:, None].to(tl.int64) * u_row_stride + rs[None, :],
            mask=row_mask[:, None] & r_mask[None, :],
            other=0.0,
        )
        scale = tl.load(s + rs, mask=r_mask, other=0.0)
        b = tl.load(
            vh + rs[:, None].to(tl.int64) * n + cols[None, :],
            mask=r_mask[:, None] & col_mask[None, :],
            other=0.0,
        )
        acc = _dot_accumulate(a * scale[None, :], b, acc, PRECISION)
    tl.store(
        out + rows[:, None].to(tl.int64) * n + cols[None, :],
        tl.abs(acc),
        mask=row_mask[:, None] & col_mask[None, :],
    )


@triton.jit
def _difference_energy_kernel(
    w1_table,
    w0_table,
    partial_ptr,
    numel_div,
    chunks,
    W_DTYPE: tl.constexpr,
    HAS_W0: tl.constexpr,
    ALIGN: tl.constexpr,
    BLOCK: tl.constexpr,
    CHUNK_BLOCKS: tl.constexpr,
):
    """``partial[b, c] = Σ Δ_b²`` over the flat entries ``[c * CHUNK, (c + 1) * CHUNK)`` of Δ_b.

    Shapes: Δ_b (numel,) flat from the address tables (W_DTYPE, contiguous, numel =
    numel_div * ALIGN); partial (G, chunks) fp64; CHUNK = BLOCK * CHUNK_BLOCKS. Each lane
    squares and sums CHUNK_BLOCKS entries in fp64 (an fp32 square overflows from |Δ| = 2⁶⁴),
    then the block is reduced once.
    Grid: (G * chunks,).
    """
    pid = tl.program_id(0)
    matrix = pid // chunks
    numel = numel_div.to(tl.int64) * ALIGN
    w1 = table_pointer(w1_table, matrix, W_DTYPE, ALIGN > 1)
    w0 = table_pointer(w0_table, matrix, W_DTYPE, ALIGN > 1)
    start = (pid % chunks).to(tl.int64) * (BLOCK * CHUNK_BLOCKS)
    acc = tl.full((BLOCK,), 0.0, dtype=tl.float64)
    for block in range(CHUNK_BLOCKS):
        offsets = start + block * BLOCK + tl.arange(0, BLOCK)
        delta = _load_delta(w1, w0, offsets, offsets < numel, HAS_W0).to(tl.float64)
        acc += delta * delta
    tl.store(partial_ptr + pid, tl.sum(acc, axis=0))


# --------------------------------------------------------------------------- launch plans

def _config(rows: int, block_k: int, num_warps: int, num_stages: int = 3) -> dict[str, int]:
    return {"BLOCK_ROWS": rows, "BLOCK_K": block_k, "num_warps": num_warps, "num_stages": num_stages}


MATMUL_CONFIGS: dict[tuple[str, str, int], dict[str, int]] = {
    ("delta_matmul", "fp32", 32): _config(64, 32, 4),
    ("delta_matmul", "fp32", 64): _config(128, 16, 8),
    ("delta_matmul", "bf16", 32): _config(64, 64, 4),
    ("delta_matmul", "bf16", 64): _config(64, 64, 4),
    ("delta_matmul", "bf16", 128): _config(64, 32, 8),
    ("sketch_t_delta", "fp32", 32): _config(64, 16, 4),
    ("sketch_t_delta", "fp32", 64): _config(128, 16, 8),
    ("sketch_t_delta", "bf16", 32): _config(64, 64, 4),
    ("sketch_t_delta", "bf16", 64): _config(64, 64, 4),
    ("sketch_t_delta", "bf16", 128): _config(64, 32, 8),
    ("delta_matmul", "tf32x3", 32): _config(64, 32, 4),
    ("delta_matmul", "tf32x3", 64): _config(64, 32, 4),
    ("sketch_t_delta", "tf32x3", 32): _config(64, 32, 4),
    ("sketch_t_delta", "tf32x3", 64): _config(64, 32, 4),
}
"""(kernel, precision, BLOCK_Q) -> tile sizes and launch options of the aligned Δ products.

BLOCK_ROWS tiles the output's long dimension (rows of Δ for Δ@X, columns of Δ for Xᵀ@Δ).
Chosen so that no specialisation spills registers on sm_80 or sm_90, compiled by Triton 3.6 or
3.9 (at 4 warps, the bf16 q128 Δ@X takes 255 registers and spills under 3.6). The IEEE fp32 path
multiplies on the FMA units, whose operand tiles live in registers: it stops at BLOCK_Q = 64
(wider sketches take more column tiles, adjacent in launch order so Δ is re-read from L2).
The tf32x3 path splits every fp32 operand tile into two: it stops at BLOCK_Q = 64 too.
Unaligned matrices load element by element; see :func:`matmul_config`.
"""

PRECISION_WEIGHT_DTYPES: dict[str, tuple[torch.dtype, ...]] = {
    "fp32": WEIGHT_DTYPES,
    "bf16": WEIGHT_DTYPES,
    "tf32x3": (torch.float32,),
}
"""Weight dtypes each product precision is specialised for (tf32x3: fp32 weights only;
bf16 / fp16 weights take ``"bf16"``, whose operands are as wide as theirs)."""

def matmul_config(name: str, precision: str, block_q: int, align: int) -> dict[str, int]:
    """Launch configuration of a Δ product kernel (``name`` in ``"delta_matmul"``,
    ``"sketch_t_delta"``). Unaligned matrices (``align == 1``) are loaded one element at a
    time, each with its own 64-bit address: they get BLOCK_ROWS <= 64, BLOCK_K = 16,
    8 warps, and 2 stages for fp32 products or 1 for bf16 ones, which keeps them free of
    register spills under Triton 3.6 and 3.9 (2 stages spill the bf16 q128 Xᵀ@Δ under 3.6,
    1 stage the fp32 q64 one under 3.9).
    """
    config = dict(MATMUL_CONFIGS[name, precision, block_q])
    if align == 1:
        stages = 1 if precision == "bf16" else 2
        config.update(BLOCK_ROWS=min(config["BLOCK_ROWS"], 64), BLOCK_K=16, num_warps=8, num_stages=stages)
    return config


RECONSTRUCT_CONFIG: dict[str, int] = {
    "BLOCK_ROWS": 64,
    "BLOCK_COLS": 64,
    "BLOCK_R": 16,
    "num_warps": 4,
    "num_stages": 3,
}

ENERGY_CONFIG: dict[str, int] = {"BLOCK": 1024, "CHUNK_BLOCKS": 16, "num_warps": 4, "num_stages": 3}
"""Launch options of :func:`difference_energy`: 16 Ki entries per program, 8 per thread per block."""


def block_qs(precision: str) -> tuple[int, ...]:
    """The BLOCK_Q values the Δ products are specialised for at ``precision``."""
    return tuple(sorted({bq for (_, p, bq) in MATMUL_CONFIGS if p == precision}))


def block_q_for(q: int, precision: str) -> int:
    """The BLOCK_Q a sketch of q columns is launched with (wider sketches take more tiles)."""
    sizes = block_qs(precision)
    return min(max(triton.next_power_of_2(max(q, 1)), sizes[0]), sizes[-1])


def split_blocks_for(reduction: int, block_k: int, programs: int) -> int:
    """BLOCK_K blocks of the reduction per split, for a launch of ``programs`` output tiles.

    The reduction is split only when the output tiles alone cannot fill the GPU
    (fewer than :data:`TARGET_PROGRAMS`), and each split keeps at least
    :data:`MIN_SPLIT_BLOCKS` blocks. Returns >= 1.
    """
    blocks = max(triton.cdiv(reduction, block_k), 1)
    splits = min(triton.cdiv(TARGET_PROGRAMS, max(programs, 1)), triton.cdiv(blocks, MIN_SPLIT_BLOCKS))
    return triton.cdiv(blocks, max(splits, 1))


def _check_precision(precision: str, weight_dtype: torch.dtype | None = None) -> None:
    """ValueError unless ``precision`` is known (and specialised for ``weight_dtype``, if given)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if weight_dtype is not None and weight_dtype not in PRECISION_WEIGHT_DTYPES[precision]:
        raise ValueError(f"precision {precision!r} is for fp32 weights, got {weight_dtype}; use 'bf16' or 'fp32'")


def host_to_device(values: Sequence[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``values`` as a 1-D ``dtype`` tensor on ``device``, copied without a host sync.

    On CUDA the host tensor is pinned and copied with ``non_blocking=True`` (the pinned
    block stays reserved until the copy has run); elsewhere the host tensor is returned.
    """
    host = torch.tensor(list(values), dtype=dtype)
    if device.type != "cuda":
        return host
    return host.pin_memory().to(device, non_blocking=True)


_ADDRESS_TABLES: TableCache[torch.Tensor] = TableCache(64)


def _address_table(tensors: Sequence[torch.Tensor], device: torch.device) -> torch.Tensor:
    """int64 tensor of the tensors' addresses on ``device`` (copied without a host sync).

    Cached by the addresses themselves (the key is the table's content), so the
    2 + 2 n_iter products of a group copy their tables to the device once.
    """
    addresses = tuple(t.data_ptr() for t in tensors)
    return _ADDRESS_TABLES.get((device, addresses), lambda: host_to_device(addresses, torch.int64, device))


def _is_aligned(tensors: Sequence[torch.Tensor], row_length: int) -> bool:
    """Whether the ``ALIGN=16`` specialisation applies: 16-element rows on 16-byte bases."""
    return row_length % ALIGNMENT == 0 and all(t.data_ptr() % 16 == 0 for t in tensors)


def _check_group(w1s: Sequence[torch.Tensor], w0s: Sequence[torch.Tensor] | None) -> None:
    first = w1s[0]
    assert first.dim() == 2 and first.dtype in WEIGHT_DTYPES, (first.shape, first.dtype)
    for w in [*w1s, *(w0s or ())]:
        assert w.shape == first.shape and w.dtype == first.dtype and w.device == first.device
        assert w.is_contiguous()


# --------------------------------------------------------------------------- launchers


def _row_major_batches(x: torch.Tensor) -> torch.Tensor:
    """``x`` (G, rows, q) itself when each batch is row-major (any batch stride, 0 included), else a copy."""
    rows, q = x.shape[1:]
    if (x.stride(2) == 1 or q <= 1) and (x.stride(1) == q or rows <= 1):
        return x
    return x.contiguous()


def delta_matmul(
    w1s: Sequence[torch.Tensor],
    w0s: Sequence[torch.Tensor] | None,
    x: torch.Tensor,
    *,
    transpose: bool = False,
    precision: str = "fp32",
) -> torch.Tensor:
    """``Δ_g @ x[g]`` (or ``Δ_gᵀ @ x[g]``) for G same-shape matrices, Δ_g never materialised.

    Args:
        w1s: G contiguous (m, n) tensors, one dtype (fp32 / bf16 / fp16), one device.
        w0s: None (Δ_g = f32(w1s[g])) or G tensors like ``w1s`` (Δ_g = f32(w1) − f32(w0)).
        x: (G, n, q) fp32, or (G, m, q) when ``transpose``; its batch stride may be 0
            (``omega.expand(G, n, q)``: one sketch read by every matrix, never copied).
        transpose: multiply by Δᵀ instead of Δ.
        precision: one of :data:`PRECISIONS` (``"tf32x3"`` for fp32 weights only).

    Returns:
        (G, m, q) fp32, or (G, n, q) when ``transpose`` (then the transposed view of a
        contiguous (G, q, n) tensor: ``.mT`` of it is ``x[g]ᵀ Δ_g``, row-major).
    """
    _check_group(w1s, w0s)
    _check_precision(precision, w1s[0].dtype)
    m, n = w1s[0].shape
    rows, reduction = (n, m) if transpose else (m, n)
    batch, q = len(w1s), x.shape[-1]
    assert x.shape == (batch, reduction, q) and x.dtype == torch.float32, (x.shape, x.dtype)
    device = w1s[0].device
    if batch == 0 or rows == 0 or q == 0 or reduction == 0:
        return torch.zeros(batch, rows, q, dtype=torch.float32, device=device)

    x = _row_major_batches(x)
    all_weights = [*w1s, *(w0s or ())]
    align = ALIGNMENT if _is_aligned(all_weights, n) else 1
    block_q = block_q_for(q, precision)
    config = matmul_config("sketch_t_delta" if transpose else "delta_matmul", precision, block_q, align)
    row_tiles, q_tiles = triton.cdiv(rows, config["BLOCK_ROWS"]), triton.cdiv(q, block_q)
    programs = batch * row_tiles * q_tiles
    split_blocks = split_blocks_for(reduction, config["BLOCK_K"], programs)
    splits = triton.cdiv(reduction, split_blocks * config["BLOCK_K"])
    out_shape = (batch, splits, q, rows) if transpose else (batch, splits, rows, q)
    out = torch.empty(out_shape, dtype=torch.float32, device=device)

    w1_table = _address_table(w1s, device)
    w0_table = _address_table(w0s, device) if w0s is not None else w1_table
    kernel = _sketch_t_delta_kernel if transpose else _delta_matmul_kernel
    kernel[(programs, splits)](
        w1_table,
        w0_table,
        x,
        out,
        m,
        n // align,
        q,
        x.stride(0),
        split_blocks,
        row_tiles,
        q_tiles,
        TL_DTYPES[w1s[0].dtype],
        w0s is not None,
        align,
        precision,
        config["BLOCK_ROWS"],
        config["BLOCK_K"],
        block_q,
        num_warps=config["num_warps"],
        num_stages=config["num_stages"],
    )
    total = out[:, 0] if splits == 1 else out.sum(dim=1)
    return total.mT if transpose else total


CHOLESKY_PASSES = 3
"""Shifted Cholesky-QR passes of :func:`_orthonormal_basis` (sCholeskyQR3: the first makes the
basis well conditioned whatever the sketch's conditioning, the next two make it orthonormal)."""


def _cholesky_qr_pass(y: torch.Tensor) -> torch.Tensor:
    """One shifted Cholesky-QR step on fp64 (G, rows, c), rows > c: ``Y L⁻ᵀ`` with ``L Lᵀ = YᵀY + s I``.

    The shift ``s = 11 (rows c + c (c + 1)) u ‖Y‖_F²`` (u = 2⁻⁵³, Fukaya et al.'s bound with
    the Frobenius norm) keeps the factorisation defined for any Y, rank-deficient or zero
    (the smallest normal number is added for Y = 0, whose basis is then 0). Four batched
    torch calls: no per-matrix solver loop and no host synchronisation.
    """
    rows, c = y.shape[-2:]
    gram = y.mT @ y
    diagonal = gram.diagonal(dim1=-2, dim2=-1)
    unit = torch.finfo(torch.float64).eps / 2
    shift = 11.0 * (rows * c + c * (c + 1)) * unit * diagonal.sum(-1) + torch.finfo(torch.float64).tiny
    diagonal.add_(shift[..., None])
    lower = torch.linalg.cholesky_ex(gram).L
    return torch.linalg.solve_triangular(lower, y.mT, upper=False).mT


def _orthonormal_basis(y: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis of the range of each (rows, q) fp32 matrix of ``y`` (G, rows, q), row-major.

    ``(G, rows, min(rows, q))`` fp32. Shifted Cholesky-QR in fp64 on the device, batched over
    the group: orthonormal to within fp32 rounding for any conditioning; columns of a
    rank-deficient Y beyond its rank are other unit directions or 0 (either leaves the
    products ``Q Qᵀ Δ`` of the sequence unchanged). ``rows <= q``: the identity, a basis of
    the whole space.
    """
    groups, rows, q = y.shape
    if rows <= q:
        return torch.eye(rows, dtype=torch.float32, device=y.device).expand(groups, rows, rows).contiguous()
    basis = y.double()
    for _ in range(CHOLESKY_PASSES):
        basis = _cholesky_qr_pass(basis)
    return basis.float().contiguous()


MIN_EIGH_CHUNK = 8
"""Fewest matrices one host thread of :func:`host_eigh` decomposes (a 40 x 40 ``eigh`` takes
~0.13 ms, a thread hand-off tens of microseconds)."""


@functools.lru_cache(maxsize=4)
def _eigh_pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(workers, thread_name_prefix="deftx-eigh")


def host_eigh(grams: torch.Tensor, workers: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.linalg.eigh`` of (G, c, c) symmetric CPU matrices, spread over host threads.

    torch decomposes a CPU batch one matrix after another on one thread (the GPU waits for it:
    at Llama-7B shapes ~224 matrices of 40 x 40, about 30 ms), so the batch is cut into up to
    ``workers`` (default ``torch.get_num_threads()``) chunks of at least :data:`MIN_EIGH_CHUNK`
    matrices, decomposed at once (torch releases the GIL) and joined. Each matrix is
    decomposed by the same LAPACK call either way: the result equals one batched call, bit
    for bit. Returns eigenvalues (G, c) ascending and eigenvectors (G, c, c).
    """
    workers = torch.get_num_threads() if workers is None else workers
    chunks = min(workers, grams.shape[0] // MIN_EIGH_CHUNK)
    if chunks < 2:
        return torch.linalg.eigh(grams)
    parts = list(_eigh_pool(workers).map(torch.linalg.eigh, grams.tensor_split(chunks)))
    return torch.cat([values for values, _ in parts]), torch.cat([vectors for _, vectors in parts])


def _small_svd(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SVD of each (c, n) fp32 matrix of ``b`` (G, c, n), singular values descending.

    Returns Ub (G, c, k), S (G, k), Vh (G, k, n) fp32, k = min(c, n). The (c, c) Gram
    matrices ``B Bᵀ`` are formed in fp64 on the device and decomposed on the host
    (:func:`host_eigh`): one small copy each way for the whole group, instead of a solver
    loop per matrix on the GPU. ``S_i = ‖u_iᵀ B‖`` and ``Vh_i = u_iᵀ B / S_i`` (0 where
    ``S_i = 0``), all in fp64.
    """
    groups, c, n = b.shape
    k = min(c, n)
    b64 = b.double()
    eigenvalues, vectors = host_eigh((b64 @ b64.mT).cpu())
    order = eigenvalues.argsort(dim=-1, descending=True)[..., :k]
    ub = vectors.gather(-1, order[..., None, :].expand(groups, c, k)).to(b.device)
    projected = ub.mT @ b64
    s = torch.linalg.vector_norm(projected, dim=-1)
    vh = projected / torch.where(s > 0, s, 1.0)[..., None]
    return ub.float(), s.float(), vh.float().contiguous()


def _randomized_svd_group(
    w1s: list[torch.Tensor],
    w0s: list[torch.Tensor] | None,
    omega: torch.Tensor,
    n_iter: int,
    precision: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The contract's sequence for G same-shape matrices; omega (G, n, q) -> U, S, Vh batched.

    Returns U (G, m, k), S (G, k), Vh (G, k, n), fp32 and contiguous, k = min(m, n, q).
    """
    q = _orthonormal_basis(delta_matmul(w1s, w0s, omega, precision=precision))
    for _ in range(n_iter):
        z = _orthonormal_basis(delta_matmul(w1s, w0s, q, transpose=True, precision=precision))
        q = _orthonormal_basis(delta_matmul(w1s, w0s, z, precision=precision))
    b = delta_matmul(w1s, w0s, q, transpose=True, precision=precision).mT
    u_small, s, vh = _small_svd(b)
    return q @ u_small, s.contiguous(), vh


def randomized_svd_group(
    w1s: Sequence[torch.Tensor],
    w0s: Sequence[torch.Tensor] | None,
    omega: torch.Tensor,
    n_iter: int,
    *,
    precision: str = "fp32",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Randomized SVD of G same-shape differences Δ_g = f32(w1s[g]) − f32(w0s[g]), one sketch.

    Every product of the sequence is one launch for the whole group; the sketch
    ``omega`` is shared (read through a batch stride of 0, never copied per matrix).

    Args:
        w1s: G >= 1 (m, n) tensors of one dtype (fp32 / bf16 / fp16) on one device.
        w0s: None or G tensors like ``w1s``.
        omega: (n, q) fp32 Gaussian test matrix on the same device.
        n_iter: power iterations (>= 0).
        precision: one of :data:`PRECISIONS`.

    Returns:
        U (G, m, k), S (G, k), Vh (G, k, n), fp32, contiguous, k = min(m, n, q).
    """
    assert n_iter >= 0 and len(w1s) >= 1, (n_iter, len(w1s))
    n, q = omega.shape
    assert omega.dtype == torch.float32 and n == w1s[0].shape[1], (omega.shape, w1s[0].shape)
    group_w1 = [w.contiguous() for w in w1s]
    group_w0 = [w.contiguous() for w in w0s] if w0s is not None else None
    return _randomized_svd_group(group_w1, group_w0, omega.expand(len(w1s), n, q), n_iter, precision)


def _group_key(w1: torch.Tensor, w0: torch.Tensor | None, omega: torch.Tensor) -> tuple:
    return (tuple(w1.shape), w1.dtype, w0 is not None, w1.device, omega.shape[1])


def randomized_svd_batched(
    w1s: Sequence[torch.Tensor],
    w0s: Sequence[torch.Tensor | None] | None,
    omegas: Sequence[torch.Tensor],
    n_iter: int,
    *,
    precision: str = "fp32",
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """:func:`randomized_svd` of many matrices, each with its own sketch; same-shape
    matrices share each launch.

    Matrices are grouped by (shape, dtype, whether w0 is given, device, q); each group
    runs the contract's sequence with one kernel launch per product and batched torch
    QR / SVD. ``w0s`` may be None or hold None entries. (With one sketch per shape,
    :func:`randomized_svd_group` avoids stacking the sketches.)

    Returns:
        One ``(U (m, k), S (k,), Vh (k, n))`` fp32 tuple per matrix, in input order, with
        k = min(m, n, q).
    """
    _check_precision(precision)
    assert n_iter >= 0, n_iter
    w0_list = list(w0s) if w0s is not None else [None] * len(w1s)
    assert len(w0_list) == len(w1s) == len(omegas), (len(w1s), len(w0_list), len(omegas))
    groups: dict[tuple, list[int]] = {}
    for i, (w1, w0, omega) in enumerate(zip(w1s, w0_list, omegas, strict=True)):
        assert omega.dtype == torch.float32 and omega.shape[0] == w1.shape[1], (omega.shape, w1.shape)
        groups.setdefault(_group_key(w1, w0, omega), []).append(i)

    results: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None] = [None] * len(w1s)
    for members in groups.values():
        group_w1 = [w1s[i].contiguous() for i in members]
        has_w0 = w0_list[members[0]] is not None
        group_w0 = [w0_list[i].contiguous() for i in members] if has_w0 else None
        omega = torch.stack([omegas[i] for i in members])
        u, s, vh = _randomized_svd_group(group_w1, group_w0, omega, n_iter, precision)
        for j, i in enumerate(members):
            results[i] = (u[j], s[j], vh[j])
    return results


def randomized_svd(
    w1: torch.Tensor,
    w0: torch.Tensor | None,
    omega: torch.Tensor,
    n_iter: int,
    *,
    precision: str = "fp32",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Randomized SVD of Δ = f32(w1) − f32(w0) (or f32(w1)) with sketch ``omega``.

    Args:
        w1, w0: (m, n) fp32 / bf16 / fp16 (same dtype), w0 may be None.
        omega: (n, q) fp32 Gaussian test matrix.
        n_iter: power iterations (>= 0).
        precision: one of :data:`PRECISIONS` (see the module docstring).

    Returns:
        U (m, q), S (q,), Vh (q, n), fp32 (for q <= min(m, n)).
    """
    return randomized_svd_batched([w1], [w0], [omega], n_iter, precision=precision)[0]


def difference_energy(w1s: Sequence[torch.Tensor], w0s: Sequence[torch.Tensor] | None) -> torch.Tensor:
    """``||Δ_g||_F²`` of G same-shape differences in one launch, Δ never materialised.

    Args:
        w1s: G (m, n) tensors of one dtype (fp32 / bf16 / fp16) on one device.
        w0s: None (Δ_g = f32(w1s[g])) or G tensors like ``w1s``.

    Returns:
        (G,) fp64 on the tensors' device: fp64 squares of the fp32 differences, summed in fp64.
    """
    device = w1s[0].device if w1s else torch.device("cpu")
    if not w1s:
        return torch.zeros(0, dtype=torch.float64, device=device)
    group_w1 = [w.contiguous() for w in w1s]
    group_w0 = [w.contiguous() for w in w0s] if w0s is not None else None
    _check_group(group_w1, group_w0)
    numel = group_w1[0].numel()
    if numel == 0:
        return torch.zeros(len(w1s), dtype=torch.float64, device=device)
    config = ENERGY_CONFIG
    align = ALIGNMENT if _is_aligned([*group_w1, *(group_w0 or ())], numel) else 1
    chunks = triton.cdiv(numel, config["BLOCK"] * config["CHUNK_BLOCKS"])
    partial = torch.empty(len(w1s), chunks, dtype=torch.float64, device=device)
    w1_table = _address_table(group_w1, device)
    w0_table = _address_table(group_w0, device) if group_w0 is not None else w1_table
    _difference_energy_kernel[(len(w1s) * chunks,)](
        w1_table,
        w0_table,
        partial,
        numel // align,
        chunks,
        TL_DTYPES[group_w1[0].dtype],
        group_w0 is not None,
        align,
        config["BLOCK"],
        config["CHUNK_BLOCKS"],
        num_warps=config["num_warps"],
        num_stages=config["num_stages"],
    )
    return partial.sum(dim=1, dtype=torch.float64)


def _reconstruct_operands(
    u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(u, s, vh) as the kernel reads them: u with unit column stride (any row stride),
    s contiguous, vh row-major; views are kept, other layouts copied."""
    rank, n = vh.shape
    if u.stride(1) != 1 and rank > 1:
        u = u.contiguous()
    if s.stride(0) != 1 and rank > 1:
        s = s.contiguous()
    if (vh.stride(1) != 1 and n > 1) or (vh.stride(0) != n and rank > 1):
        vh = vh.contiguous()
    return u, s, vh


def reconstruct_magnitudes(
    us: Sequence[torch.Tensor],
    ss: Sequence[torch.Tensor],
    vhs: Sequence[torch.Tensor],
    *,
    precision: str = "fp32",
) -> list[torch.Tensor]:
    """``|u_i diag(s_i) vh_i|`` for many factor triples; same-shape outputs share one launch.

    The ranks r_i and U's row strides may differ within a launch (tables hold them). Views are read in
    place: the columns ``[:, :r]`` of a wider U (rows ``u.stride(0)`` apart), a prefix of
    S and the rows ``[:r]`` of a row-major Vh, so a shape group's factors cost no copy.

    Args:
        us: (m_i, r_i) fp32 tensors.
        ss: (r_i,) fp32 tensors.
        vhs: (r_i, n_i) fp32 tensors.
        precision: one of :data:`PRECISIONS`.

    Returns:
        One new (m_i, n_i) fp32 tensor per triple (zeros where r_i = 0).
    """
    _check_precision(precision)
    assert len(us) == len(ss) == len(vhs), (len(us), len(ss), len(vhs))
    operands = []
    groups: dict[tuple, list[int]] = {}
    for i, (u, s, vh) in enumerate(zip(us, ss, vhs, strict=True)):
        assert u.dtype == s.dtype == vh.dtype == torch.float32, (u.dtype, s.dtype, vh.dtype)
        assert u.dim() == vh.dim() == 2 and s.shape == (u.shape[1],) == (vh.shape[0],), (u.shape, s.shape, vh.shape)
        assert u.device == s.device == vh.device, (u.device, s.device, vh.device)
        operands.append(_reconstruct_operands(u, s, vh))
        u = operands[-1][0]
        groups.setdefault((u.shape[0], vh.shape[1], u.device), []).append(i)

    outputs: list[torch.Tensor | None] = [None] * len(us)
    for (m, n, device), members in groups.items():
        group_out = [torch.empty(m, n, dtype=torch.float32, device=device) for _ in members]
        for j, i in enumerate(members):
            outputs[i] = group_out[j]
        if m == 0 or n == 0:
            continue
        group_u, group_s, group_vh = ([operands[i][part] for i in members] for part in range(3))
        align = ALIGNMENT if _is_aligned(group_vh + group_out, n) else 1
        config = RECONSTRUCT_CONFIG
        row_tiles = triton.cdiv(m, config["BLOCK_ROWS"])
        col_tiles = triton.cdiv(n, config["BLOCK_COLS"])
        ranks = [vh.shape[0] for vh in group_vh]
        layout = host_to_device(ranks + [u.stride(0) for u in group_u], torch.int32, device)
        _reconstruct_abs_kernel[(len(members) * row_tiles * col_tiles,)](
            _address_table(group_u, device),
            _address_table(group_s, device),
            _address_table(group_vh, device),
            _address_table(group_out, device),
            layout,
            layout[len(members) :],
            m,
            n // align,
            row_tiles,
            col_tiles,
            align,
            precision,
            config["BLOCK_ROWS"],
            config["BLOCK_COLS"],
            config["BLOCK_R"],
            num_warps=config["num_warps"],
            num_stages=config["num_stages"],
        )
    return outputs


def reconstruct_abs_batched(
    us: Sequence[torch.Tensor], vhs: Sequence[torch.Tensor], *, precision: str = "fp32"
) -> list[torch.Tensor]:
    """``|us[i] @ vhs[i]|`` for many factor pairs; same-shape outputs share one launch.

    Args:
        us: (m_i, r_i) fp32 tensors (U scaled by S); ranks may differ within a shape.
        vhs: (r_i, n_i) fp32 tensors.
        precision: one of :data:`PRECISIONS`.

    Returns:
        One (m_i, n_i) fp32 tensor per pair.
    """
    assert len(us) == len(vhs), (len(us), len(vhs))
    widths: dict[torch.device, int] = {}
    for u in us:
        widths[u.device] = max(widths.get(u.device, 0), u.shape[1])
    ones = {device: torch.ones(width, dtype=torch.float32, device=device) for device, width in widths.items()}
    ss = [ones[u.device][: u.shape[1]] for u in us]
    return reconstruct_magnitudes(us, ss, vhs, precision=precision)


def reconstruct_abs(us: torch.Tensor, vh: torch.Tensor, *, precision: str = "fp32") -> torch.Tensor:
    """``|us @ vh|``: us (m, r) fp32, vh (r, n) fp32 -> (m, n) fp32, abs fused in the epilogue."""
    return reconstruct_abs_batched([us], [vh], precision=precision)[0]


SPECIALIZATIONS: list[KernelSpec] = _rsvd_specs.specializations(sys.modules[__name__])
"""The specialisations its launchers use (built in ``_rsvd_specs.py``)."""
