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
* :func:`reconstruct_abs` ``|US @ Vh|`` with the absolute value in the epilogue: the
  denoised magnitudes are the only (m, n) buffer written.

:func:`randomized_svd` follows the contract's sequence exactly, with the small QR and SVD
steps in torch (batched over the group)::

    Y = Δ Ω ; Q = qr(Y).Q
    repeat n_iter: Z = qr(Δᵀ Q).Q ; Q = qr(Δ Z).Q
    B = Qᵀ Δ ; Ub, S, Vh = svd(B) ; U = Q Ub

Precision: ``"fp32"`` (default) multiplies in IEEE fp32 (``input_precision="ieee"``);
``"bf16"`` rounds the fp32 Δ tile and the sketch tile to bf16 and accumulates in fp32 on
the tensor cores (HMMA / HGMMA).

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

from collections.abc import Sequence

import torch
import triton
import triton.language as tl
from triton import knobs

from . import KernelSpec

PRECISIONS: tuple[str, ...] = ("fp32", "bf16")
WEIGHT_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16, torch.float16)
ALIGNMENT = 16
"""Elements per row (and bytes per base address) that select the ``ALIGN=16`` specialisation."""
TARGET_PROGRAMS = 512
"""Programs a launch should have before the reduction is split (several waves on 132 SMs)."""
MIN_SPLIT_BLOCKS = 8
"""A split covers at least this many BLOCK_K blocks of the reduction."""

# The interpreter's fp32 -> bf16 cast truncates and its tl.dot multiplies bf16 bit patterns
# as integers, so under the interpreter the bf16 product is emulated exactly in fp32.
# (The kernels also avoid triton.language's own @jit helpers such as tl.zeros, which a
# module copy loaded by kernel_module(interpret=True) cannot call.)
_INTERPRET = tl.constexpr(bool(knobs.runtime.interpret))

_TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}
_SIGNATURE_DTYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


# --------------------------------------------------------------------------- device helpers


@triton.jit
def _table_pointer(table, index, DTYPE: tl.constexpr, ALIGNED: tl.constexpr):
    """Entry ``index`` of an int64 address table as a ``DTYPE`` pointer (16-byte aligned if ALIGNED)."""
    pointer = tl.load(table + index).to(tl.pointer_type(DTYPE))
    if ALIGNED:
        pointer = tl.multiple_of(pointer, 16)
    return pointer


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
def _dot_accumulate(a, b, acc, DOT_BF16: tl.constexpr):
    """``acc + a @ b`` with fp32 accumulation; bf16 operands when DOT_BF16, else IEEE fp32."""
    if DOT_BF16:
        if _INTERPRET:
            acc = tl.dot(_round_to_bf16(a), _round_to_bf16(b), acc, input_precision="ieee")
        else:
            acc = tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), acc)
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
    split_blocks,
    row_tiles,
    q_tiles,
    W_DTYPE: tl.constexpr,
    HAS_W0: tl.constexpr,
    ALIGN: tl.constexpr,
    DOT_BF16: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_Q: tl.constexpr,
):
    """Partial products ``out[b, s] = Δ_b[:, K_s] @ X_b[K_s, :]``.

    Shapes: Δ_b (m, n) from the address tables (W_DTYPE, row-major, n = n_div * ALIGN);
    x (G, n, q) fp32; out (G, splits, m, q) fp32; K_s = columns
    [s * split_blocks * BLOCK_K, (s + 1) * split_blocks * BLOCK_K) of Δ.
    Grid: (G * row_tiles * q_tiles, splits).
    """
    matrix, row_tile, q_tile = _tile_coordinates(tl.program_id(0), row_tiles, q_tiles)
    split = tl.program_id(1)
    n = n_div * ALIGN
    w1 = _table_pointer(w1_table, matrix, W_DTYPE, ALIGN > 1)
    w0 = _table_pointer(w0_table, matrix, W_DTYPE, ALIGN > 1)

    rows = row_tile * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    cols = q_tile * BLOCK_Q + tl.arange(0, BLOCK_Q)
    row_mask = rows < m
    col_mask = cols < q
    row_offsets = rows.to(tl.int64) * n
    x_matrix = x_ptr + matrix.to(tl.int64) * n * q

    k_begin = split * split_blocks * BLOCK_K
    k_end = tl.minimum(k_begin + split_blocks * BLOCK_K, n)
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
        acc = _dot_accumulate(delta, x, acc, DOT_BF16)

    out_matrix = out_ptr + (matrix.to(tl.int64) * tl.num_programs(1) + split) * m * q
    tl.store(
        out_matrix + rows[:, None].to(tl.int64) * q + cols[None, :],
        acc,
        mask=row_mask[:, None] & col_mask[None, :],
    )


@triton.jit
def _sketch_t_delta_kernel(
    w1_table,
    w0_table,
    x_ptr,
    out_ptr,
    m,
    n_div,
    q,
    split_blocks,
    col_tiles,
    q_tiles,
    W_DTYPE: tl.constexpr,
    HAS_W0: tl.constexpr,
    ALIGN: tl.constexpr,
    DOT_BF16: tl.constexpr,
    BLOCK_COLS: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_Q: tl.constexpr,
):
    """Partial products ``out[b, s] = X_b[K_s, :]ᵀ @ Δ_b[K_s, :]`` (= (Δ_bᵀ X_b)ᵀ over K_s).

    Shapes: Δ_b (m, n) from the address tables (W_DTYPE, row-major, n = n_div * ALIGN);
    x (G, m, q) fp32; out (G, splits, q, n) fp32; K_s = rows
    [s * split_blocks * BLOCK_K, (s + 1) * split_blocks * BLOCK_K) of Δ.
    Grid: (G * col_tiles * q_tiles, splits).
    """
    matrix, col_tile, q_tile = _tile_coordinates(tl.program_id(0), col_tiles, q_tiles)
    split = tl.program_id(1)
    n = n_div * ALIGN
    w1 = _table_pointer(w1_table, matrix, W_DTYPE, ALIGN > 1)
    w0 = _table_pointer(w0_table, matrix, W_DTYPE, ALIGN > 1)

    cols = col_tile * BLOCK_COLS + tl.arange(0, BLOCK_COLS)
    qs = q_tile * BLOCK_Q + tl.arange(0, BLOCK_Q)
    col_mask = cols < n
    q_mask = qs < q
    x_matrix = x_ptr + matrix.to(tl.int64) * m * q

    k_begin = split * split_blocks * BLOCK_K
    k_end = tl.minimum(k_begin + split_blocks * BLOCK_K, m)
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
        acc = _dot_accumulate(x_t, delta, acc, DOT_BF16)

    out_matrix = out_ptr + (matrix.to(tl.int64) * tl.num_programs(1) + split) * q * n
    tl.store(
        out_matrix + qs[:, None].to(tl.int64) * n + cols[None, :],
        acc,
        mask=q_mask[:, None] & col_mask[None, :],
    )


@triton.jit
def _reconstruct_abs_kernel(
    us_table,
    vh_table,
    out_table,
    rank_table,
    m,
    n_div,
    row_tiles,
    col_tiles,
    ALIGN: tl.constexpr,
    DOT_BF16: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_COLS: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    """``out_b = |us_b @ vh_b|`` for each matrix b of the tables.

    Shapes: us_b (m, r_b) fp32, vh_b (r_b, n) fp32, out_b (m, n) fp32, all row-major,
    n = n_div * ALIGN, r_b = rank_table[b] (int32, may be 0).
    Grid: (G * row_tiles * col_tiles,).
    """
    matrix, row_tile, col_tile = _tile_coordinates(tl.program_id(0), row_tiles, col_tiles)
    n = n_div * ALIGN
    rank = tl.load(rank_table + matrix)
    us = _table_pointer(us_table, matrix, tl.float32, False)
    vh = _table_pointer(vh_table, matrix, tl.float32, ALIGN > 1)
    out = _table_pointer(out_table, matrix, tl.float32, ALIGN > 1)

    rows = row_tile * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    cols = col_tile * BLOCK_COLS + tl.arange(0, BLOCK_COLS)
    row_mask = rows < m
    col_mask = cols < n
    acc = tl.full((BLOCK_ROWS, BLOCK_COLS), 0.0, dtype=tl.float32)
    for r0 in range(0, rank, BLOCK_R):
        rs = r0 + tl.arange(0, BLOCK_R)
        r_mask = rs < rank
        a = tl.load(
            us + rows[:, None].to(tl.int64) * rank + rs[None, :],
            mask=row_mask[:, None] & r_mask[None, :],
            other=0.0,
        )
        b = tl.load(
            vh + rs[:, None].to(tl.int64) * n + cols[None, :],
            mask=r_mask[:, None] & col_mask[None, :],
            other=0.0,
        )
        acc = _dot_accumulate(a, b, acc, DOT_BF16)
    tl.store(
        out + rows[:, None].to(tl.int64) * n + cols[None, :],
        tl.abs(acc),
        mask=row_mask[:, None] & col_mask[None, :],
    )


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
}
"""(kernel, precision, BLOCK_Q) -> tile sizes and launch options of the aligned Δ products.

BLOCK_ROWS tiles the output's long dimension (rows of Δ for Δ@X, columns of Δ for Xᵀ@Δ).
Chosen so that no specialisation spills registers on sm_80 or sm_90, compiled by Triton 3.6 or
3.9 (at 4 warps, the bf16 q128 Δ@X takes 255 registers and spills under 3.6). The IEEE fp32 path
multiplies on the FMA units, whose operand tiles live in registers: it stops at BLOCK_Q = 64
(wider sketches take more column tiles, adjacent in launch order so Δ is re-read from L2).
Unaligned matrices load element by element; see :func:`matmul_config`.
"""

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


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


_ADDRESS_TABLES: dict[tuple, torch.Tensor] = {}
_ADDRESS_TABLE_CACHE_SIZE = 64


def _address_table(tensors: Sequence[torch.Tensor], device: torch.device) -> torch.Tensor:
    """int64 tensor of the tensors' addresses on ``device``.

    Cached by the addresses themselves (the key is the table's content), so the
    2 + 2 n_iter products of a group copy their tables to the device once.
    """
    addresses = tuple(t.data_ptr() for t in tensors)
    key = (device, addresses)
    table = _ADDRESS_TABLES.get(key)
    if table is None:
        if len(_ADDRESS_TABLES) >= _ADDRESS_TABLE_CACHE_SIZE:
            _ADDRESS_TABLES.pop(next(iter(_ADDRESS_TABLES)))
        table = torch.tensor(addresses, dtype=torch.int64).to(device)
        _ADDRESS_TABLES[key] = table
    return table


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
        x: (G, n, q) fp32, or (G, m, q) when ``transpose``.
        transpose: multiply by Δᵀ instead of Δ.
        precision: ``"fp32"`` (IEEE products) or ``"bf16"`` (bf16 operands, fp32 sums).

    Returns:
        (G, m, q) fp32, or (G, n, q) when ``transpose`` (then the transposed view of a
        contiguous (G, q, n) tensor: ``.mT`` of it is ``x[g]ᵀ Δ_g``, row-major).
    """
    _check_precision(precision)
    _check_group(w1s, w0s)
    m, n = w1s[0].shape
    rows, reduction = (n, m) if transpose else (m, n)
    batch, q = len(w1s), x.shape[-1]
    assert x.shape == (batch, reduction, q) and x.dtype == torch.float32, (x.shape, x.dtype)
    device = w1s[0].device
    if batch == 0 or rows == 0 or q == 0 or reduction == 0:
        return torch.zeros(batch, rows, q, dtype=torch.float32, device=device)

    x = x.contiguous()
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
        split_blocks,
        row_tiles,
        q_tiles,
        _TL_DTYPES[w1s[0].dtype],
        w0s is not None,
        align,
        precision == "bf16",
        config["BLOCK_ROWS"],
        config["BLOCK_K"],
        block_q,
        num_warps=config["num_warps"],
        num_stages=config["num_stages"],
    )
    total = out[:, 0] if splits == 1 else out.sum(dim=1)
    return total.mT if transpose else total


def _orthonormal_basis(y: torch.Tensor) -> torch.Tensor:
    """Q of the reduced QR of each (rows, q) matrix of ``y``, row-major for the kernels."""
    return torch.linalg.qr(y, mode="reduced").Q.contiguous()


def _randomized_svd_group(
    w1s: list[torch.Tensor],
    w0s: list[torch.Tensor] | None,
    omega: torch.Tensor,
    n_iter: int,
    precision: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The contract's sequence for G same-shape matrices; omega (G, n, q) -> U, S, Vh batched."""
    q = _orthonormal_basis(delta_matmul(w1s, w0s, omega, precision=precision))
    for _ in range(n_iter):
        z = _orthonormal_basis(delta_matmul(w1s, w0s, q, transpose=True, precision=precision))
        q = _orthonormal_basis(delta_matmul(w1s, w0s, z, precision=precision))
    b = delta_matmul(w1s, w0s, q, transpose=True, precision=precision).mT
    u_small, s, vh = torch.linalg.svd(b, full_matrices=False)
    return q @ u_small, s, vh


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
    """:func:`randomized_svd` of many matrices; same-shape matrices share each launch.

    Matrices are grouped by (shape, dtype, whether w0 is given, device, q); each group
    runs the contract's sequence with one kernel launch per product and batched torch
    QR / SVD. ``w0s`` may be None or hold None entries.

    Returns:
        One ``(U (m, k), S (k,), Vh (k, n))`` fp32 tuple per matrix, in input order, with
        k = q when q <= min(m, n) (torch's reduced QR / SVD shapes otherwise).
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
        precision: ``"fp32"`` or ``"bf16"`` products (see the module docstring).

    Returns:
        U (m, q), S (q,), Vh (q, n), fp32 (for q <= min(m, n)).
    """
    return randomized_svd_batched([w1], [w0], [omega], n_iter, precision=precision)[0]


def reconstruct_abs_batched(
    us: Sequence[torch.Tensor], vhs: Sequence[torch.Tensor], *, precision: str = "fp32"
) -> list[torch.Tensor]:
    """``|us[i] @ vhs[i]|`` for many factor pairs; same-shape outputs share one launch.

    Args:
        us: (m_i, r_i) fp32 tensors (U scaled by S); ranks may differ within a shape.
        vhs: (r_i, n_i) fp32 tensors.
        precision: ``"fp32"`` or ``"bf16"`` products.

    Returns:
        One (m_i, n_i) fp32 tensor per pair.
    """
    _check_precision(precision)
    assert len(us) == len(vhs), (len(us), len(vhs))
    groups: dict[tuple, list[int]] = {}
    for i, (a, b) in enumerate(zip(us, vhs, strict=True)):
        assert a.dtype == b.dtype == torch.float32 and a.dim() == b.dim() == 2
        assert a.shape[1] == b.shape[0] and a.device == b.device, (a.shape, b.shape)
        groups.setdefault((a.shape[0], b.shape[1], a.device), []).append(i)

    outputs: list[torch.Tensor | None] = [None] * len(us)
    for (m, n, device), members in groups.items():
        group_us = [us[i].contiguous() for i in members]
        group_vh = [vhs[i].contiguous() for i in members]
        group_out = [torch.empty(m, n, dtype=torch.float32, device=device) for _ in members]
        for j, i in enumerate(members):
            outputs[i] = group_out[j]
        if m == 0 or n == 0:
            continue
        align = ALIGNMENT if _is_aligned(group_vh + group_out, n) else 1
        config = RECONSTRUCT_CONFIG
        row_tiles = triton.cdiv(m, config["BLOCK_ROWS"])
        col_tiles = triton.cdiv(n, config["BLOCK_COLS"])
        ranks = torch.tensor([a.shape[1] for a in group_us], dtype=torch.int32).to(device)
        _reconstruct_abs_kernel[(len(members) * row_tiles * col_tiles,)](
            _address_table(group_us, device),
            _address_table(group_vh, device),
            _address_table(group_out, device),
            ranks,
            m,
            n // align,
            row_tiles,
            col_tiles,
            align,
            precision == "bf16",
            config["BLOCK_ROWS"],
            config["BLOCK_COLS"],
            config["BLOCK_R"],
            num_warps=config["num_warps"],
            num_stages=config["num_stages"],
        )
    return outputs


def reconstruct_abs(us: torch.Tensor, vh: torch.Tensor, *, precision: str = "fp32") -> torch.Tensor:
    """``|us @ vh|``: us (m, r) fp32, vh (r, n) fp32 -> (m, n) fp32, abs fused in the epilogue."""
    return reconstruct_abs_batched([us], [vh], precision=precision)[0]


# --------------------------------------------------------------------------- specialisations


def _matmul_spec(
    name: str, dtype: torch.dtype, has_w0: bool, align: int, precision: str, block_q: int
) -> KernelSpec:
    kernel = _sketch_t_delta_kernel if name == "sketch_t_delta" else _delta_matmul_kernel
    tile_arg, tiles_arg = ("BLOCK_COLS", "col_tiles") if name == "sketch_t_delta" else ("BLOCK_ROWS", "row_tiles")
    config = matmul_config(name, precision, block_q, align)
    dt = _SIGNATURE_DTYPES[dtype]
    return KernelSpec(
        name=f"rsvd_{name}_{dt}_{'diff' if has_w0 else 'single'}_align{align}_{precision}_q{block_q}",
        kernel=kernel,
        signature={
            "w1_table": "*i64",
            "w0_table": "*i64",
            "x_ptr": "*fp32",
            "out_ptr": "*fp32",
            "m": "i32",
            "n_div": "i32",
            "q": "i32",
            "split_blocks": "i32",
            tiles_arg: "i32",
            "q_tiles": "i32",
            "W_DTYPE": "constexpr",
            "HAS_W0": "constexpr",
            "ALIGN": "constexpr",
            "DOT_BF16": "constexpr",
            tile_arg: "constexpr",
            "BLOCK_K": "constexpr",
            "BLOCK_Q": "constexpr",
        },
        constexprs={
            "W_DTYPE": _TL_DTYPES[dtype],
            "HAS_W0": has_w0,
            "ALIGN": align,
            "DOT_BF16": precision == "bf16",
            tile_arg: config["BLOCK_ROWS"],
            "BLOCK_K": config["BLOCK_K"],
            "BLOCK_Q": block_q,
        },
        num_warps=config["num_warps"],
        num_stages=config["num_stages"],
        promises=_promises(precision, align),
    )


def _matmul_specs() -> list[KernelSpec]:
    return [
        _matmul_spec(name, dtype, has_w0, align, precision, block_q)
        for (name, precision, block_q) in MATMUL_CONFIGS
        for dtype in WEIGHT_DTYPES
        for has_w0 in (True, False)
        for align in (ALIGNMENT, 1)
    ]


def _promises(precision: str, align: int) -> frozenset[str]:
    promises = {"no_float_atomics"}
    if precision == "bf16":
        promises.add("tensor_cores")
    if align > 1:
        promises.add("vectorized_loads")
    return frozenset(promises)


def _reconstruct_specs() -> list[KernelSpec]:
    config = RECONSTRUCT_CONFIG
    specs = []
    for align in (ALIGNMENT, 1):
        for precision in PRECISIONS:
            specs.append(
                KernelSpec(
                    name=f"rsvd_reconstruct_abs_align{align}_{precision}",
                    kernel=_reconstruct_abs_kernel,
                    signature={
                        "us_table": "*i64",
                        "vh_table": "*i64",
                        "out_table": "*i64",
                        "rank_table": "*i32",
                        "m": "i32",
                        "n_div": "i32",
                        "row_tiles": "i32",
                        "col_tiles": "i32",
                        "ALIGN": "constexpr",
                        "DOT_BF16": "constexpr",
                        "BLOCK_ROWS": "constexpr",
                        "BLOCK_COLS": "constexpr",
                        "BLOCK_R": "constexpr",
                    },
                    constexprs={
                        "ALIGN": align,
                        "DOT_BF16": precision == "bf16",
                        "BLOCK_ROWS": config["BLOCK_ROWS"],
                        "BLOCK_COLS": config["BLOCK_COLS"],
                        "BLOCK_R": config["BLOCK_R"],
                    },
                    num_warps=config["num_warps"],
                    num_stages=config["num_stages"],
                    promises=_promises(precision, align),
                )
            )
    return specs


SPECIALIZATIONS: list[KernelSpec] = _matmul_specs() + _reconstruct_specs()


# --------------------------------------------------------------------------- cost models


def _passes(n_iter: int) -> int:
    """Products with Δ in the sequence: the sketch, 2 per power iteration, and B = Qᵀ Δ."""
    return 2 + 2 * n_iter


def bytes_moved(m: int, n: int, q: int, n_iter: int, *, weight_bytes: int, has_base: bool = True) -> int:
    """HBM bytes of :func:`randomized_svd`'s kernels (the torch QR / SVD of small matrices excluded).

    Each of the ``P = 2 + 2 n_iter`` products reads W1 (and W0) once and the fp32 sketch
    once, and writes an fp32 (rows, q) result::

        P * (1 + has_base) * m * n * weight_bytes + (P / 2) * 4 * q * 2 * (m + n)

    (half of the products read an (n, q) and write an (m, q) matrix, half the reverse).
    Split partial sums add ``4 * splits * rows * q`` per split launch and are ignored.
    """
    passes = _passes(n_iter)
    weights = passes * (2 if has_base else 1) * m * n * weight_bytes
    sketches = passes // 2 * 4 * q * 2 * (m + n)
    return weights + sketches


def baseline_bytes_moved(
    m: int, n: int, q: int, n_iter: int, *, weight_bytes: int, has_base: bool = True
) -> int:
    """HBM bytes of the torch baseline ``torch.svd_lowrank(w1.float() - w0.float(), q, n_iter)``.

    Materialising Δ: each ``.float()`` of a bf16 / fp16 weight reads it and writes an fp32
    copy (a no-op for fp32), and the subtraction reads two fp32 matrices and writes one::

        materialise = (1 + has_base) * m * n * (weight_bytes + 4 * (weight_bytes != 4))
                      + has_base * 12 * m * n

    (without a base and with fp32 weights nothing is materialised). Then the same
    ``P = 2 + 2 n_iter`` products over the fp32 Δ as :func:`bytes_moved`::

        P * 4 * m * n + (P / 2) * 4 * q * 2 * (m + n)
    """
    passes = _passes(n_iter)
    count = 2 if has_base else 1
    widened = 4 if weight_bytes != 4 else 0
    materialise = count * m * n * (weight_bytes + widened) if widened else 0
    if has_base:
        materialise += 12 * m * n
    return materialise + passes * 4 * m * n + passes // 2 * 4 * q * 2 * (m + n)


def reconstruct_bytes_moved(m: int, n: int, r: int) -> int:
    """HBM bytes of :func:`reconstruct_abs`: read US and Vh, write |US Vh| once::

        4 * (m * r + r * n + m * n)
    """
    return 4 * (m * r + r * n + m * n)


def baseline_reconstruct_bytes_moved(m: int, n: int, r: int) -> int:
    """HBM bytes of the torch baseline ``(us @ vh).abs()``: the matmul writes the
    reconstruction, ``abs`` reads it and writes the magnitudes::

        4 * (m * r + r * n + m * n) + 8 * m * n
    """
    return 4 * (m * r + r * n + m * n) + 8 * m * n


def _qr_flops(rows: int, cols: int) -> float:
    """Householder QR with the thin Q formed: ``4 rows cols² − 4 cols³ / 3`` (rows >= cols)."""
    k = min(rows, cols)
    return 4 * max(rows, cols) * k * k - 4 * k**3 / 3


def _svd_flops(rows: int, cols: int) -> float:
    """Thin SVD (R-SVD) with U and V: ``6 big small² + 20 small³`` (Golub & Van Loan)."""
    small, big = min(rows, cols), max(rows, cols)
    return 6 * big * small * small + 20 * small**3


def _small_flops(m: int, n: int, q: int, n_iter: int) -> float:
    """QRs, the SVD of B and U = Q Ub (same in deftx and the baseline)."""
    qrs = (1 + n_iter) * _qr_flops(m, q) + n_iter * _qr_flops(n, q)
    return qrs + _svd_flops(q, n) + 2 * m * q * q


def flops(m: int, n: int, q: int, n_iter: int, *, has_base: bool = True) -> float:
    """Floating-point operations of :func:`randomized_svd`::

        P * (2 m n q + has_base * m n)                       (products, fused subtraction)
        + (1 + n_iter) * qr(m, q) + n_iter * qr(n, q)        (Householder QR + thin Q)
        + svd(q, n) + 2 m q²                                 (small SVD and U = Q Ub)

    with ``P = 2 + 2 n_iter``, ``qr(r, c) = 4 r c² − 4 c³/3`` and
    ``svd(r, c) = 6 max(r, c) min(r, c)² + 20 min(r, c)³``. The fused subtraction is
    recomputed in every product.
    """
    products = _passes(n_iter) * (2 * m * n * q + (m * n if has_base else 0))
    return products + _small_flops(m, n, q, n_iter)


def baseline_flops(m: int, n: int, q: int, n_iter: int, *, has_base: bool = True) -> float:
    """Floating-point operations of ``torch.svd_lowrank(w1.float() - w0.float(), q, n_iter)``:
    one materialised subtraction, then the same products, QRs and SVD::

        has_base * m n + P * 2 m n q + (the QR / SVD terms of :func:`flops`)
    """
    products = _passes(n_iter) * 2 * m * n * q
    return (m * n if has_base else 0) + products + _small_flops(m, n, q, n_iter)


def reconstruct_flops(m: int, n: int, r: int) -> float:
    """Floating-point operations of :func:`reconstruct_abs`: ``2 m n r`` (the abs is free)."""
    return 2.0 * m * n * r


def baseline_reconstruct_flops(m: int, n: int, r: int) -> float:
    """Floating-point operations of ``(us @ vh).abs()``: ``2 m n r + m n``."""
    return 2.0 * m * n * r + m * n
