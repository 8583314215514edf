"""Masked AdamW step of sparse retraining: the optimizer touches only the K selected entries.

For each parameter tensor t with selected flat indices ``indices[t]`` (K_t of them), the
fp32 master values, Adam moments (and the L1 anchors θ0) live in (K_t,) tensors. One
kernel launch per parameter dtype covers all tensors: an int64 address table holds each
tensor's pointers, and a block table maps every program to (tensor, block of BLOCK
entries). A program streams its block of indices and state (contiguous, 128-bit loads
on the full blocks), gathers the gradient at the indices, applies the contract's fp32
AdamW formula and scatters the rounded master values into the parameter. Nothing outside
the indices is read or written, and no dense optimizer state exists.

Per entry j with i = indices[t][j] (all fp32, IEEE division and square root)::

    g = f32(grad[i]) (+ l1 * sign(master - base))
    m = beta1 m + (1 - beta1) g ;  v = beta2 v + (1 - beta2) g g
    master = master (1 - lr wd)
    master = master - lr (m / (1 - beta1^step)) / (sqrt(v / (1 - beta2^step)) + eps)
    param[i] = cast(master)            (round to nearest even)

Every operation is rounded on its own: the kernel is compiled without multiply-add
contraction (``enable_fp_fusion=False``), so a compiled GPU step, an interpreted CPU step
and the op-by-op fp32 formula above agree to a couple of ulps. With contraction, ``beta1 m +
(1 - beta1) g`` rounds once instead of twice, and where the two terms nearly cancel the
moments drift hundreds of ulps from the formula (measured on an H200). The step is bound by
memory traffic, so the separate multiplies cost nothing measurable.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import triton
import triton.language as tl

from . import KernelSpec, _masked_step_specs, upload
from ._common import TL_DTYPES, TableCache, interpreting, table_pointer

if TYPE_CHECKING:
    from deftx.ops.settings import AdamWSettings, MaskedStepTensors

PARAM_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16, torch.float16)
BLOCK = 1024
NUM_WARPS = 4
FP_FUSION = False
"""No multiply-add contraction: each operation of the formula rounds on its own (see above)."""

# The interpreter's fp32 -> bf16 cast truncates; round to nearest even by hand there.
_INTERPRET = interpreting()

# Columns of a tensor-table row: the tensors' addresses, then the entry count K_t.
_PARAM, _GRAD, _INDEX, _MASTER, _EXP_AVG, _EXP_AVG_SQ, _BASE, _COUNT = (tl.constexpr(c) for c in range(8))
_COLUMNS = tl.constexpr(8)


@triton.jit
def _to_param_dtype(x, P_DTYPE: tl.constexpr):
    """fp32 ``x`` rounded to nearest even in P_DTYPE (under the interpreter, whose cast
    truncates, bf16 by integer ops, NaN -> canonical NaN of its sign)."""
    if P_DTYPE.is_fp32():
        rounded = x
    elif _INTERPRET and P_DTYPE.is_bf16():
        bits = x.to(tl.uint32, bitcast=True)
        upper = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        upper = tl.where(x != x, ((bits >> 16) & 0x8000) | 0x7FC0, upper)
        rounded = upper.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        rounded = x.to(P_DTYPE)
    return rounded


@triton.jit
def _update_entries(
    param,
    grad,
    index,
    master,
    exp_avg,
    exp_avg_sq,
    base,
    offsets,
    mask,
    hyper,
    P_DTYPE: tl.constexpr,
    HAS_L1: tl.constexpr,
):
    """AdamW on the entries ``offsets`` of one tensor's K space; ``mask`` None on full blocks.

    hyper: the fp32 scalars (beta1, 1 − beta1, beta2, 1 − beta2, decay, lr, bias1, bias2, eps,
    l1) of :func:`_masked_adamw_kernel`. Masked-off lanes compute on undefined values and
    store nothing.
    """
    beta1, one_minus_beta1, beta2, one_minus_beta2, decay, lr, bias1, bias2, eps, l1 = hyper
    idx = tl.load(index + offsets, mask=mask)
    g = tl.load(grad + idx, mask=mask).to(tl.float32)
    w = tl.load(master + offsets, mask=mask)
    m = tl.load(exp_avg + offsets, mask=mask)
    v = tl.load(exp_avg_sq + offsets, mask=mask)
    if HAS_L1:
        diff = w - tl.load(base + offsets, mask=mask)
        sign = tl.where(diff > 0.0, 1.0, tl.where(diff < 0.0, -1.0, 0.0))
        g = g + l1 * sign

    m = beta1 * m + one_minus_beta1 * g
    v = beta2 * v + one_minus_beta2 * g * g
    w = w * decay
    step_size = lr * tl.div_rn(m, bias1)
    w = w - tl.div_rn(step_size, tl.sqrt_rn(tl.div_rn(v, bias2)) + eps)

    tl.store(master + offsets, w, mask=mask)
    tl.store(exp_avg + offsets, m, mask=mask)
    tl.store(exp_avg_sq + offsets, v, mask=mask)
    tl.store(param + idx, _to_param_dtype(w, P_DTYPE), mask=mask)


@triton.jit
def _masked_adamw_kernel(
    tensor_table,
    block_table,
    beta1,
    one_minus_beta1,
    beta2,
    one_minus_beta2,
    decay,
    lr,
    bias1,
    bias2,
    eps,
    l1,
    P_DTYPE: tl.constexpr,
    HAS_L1: tl.constexpr,
    ALIGNED: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """One block of BLOCK entries of one tensor per program.

    tensor_table: (T, _COLUMNS) int64 rows (param, grad, indices, master, exp_avg, exp_avg_sq,
    base, K_t) — param / grad P_DTYPE, indices int64, state fp32 (K_t,).
    block_table: (P, 2) int32 rows (tensor, block). Scalars fp32: decay = 1 − lr·wd,
    bias1 = 1 − beta1^step, bias2 = 1 − beta2^step. Grid: (P,).
    """
    pid = tl.program_id(0)
    tensor = tl.load(block_table + 2 * pid)
    block = tl.load(block_table + 2 * pid + 1)
    row = tensor_table + tensor.to(tl.int64) * _COLUMNS
    param = table_pointer(row, _PARAM, P_DTYPE, False)
    grad = table_pointer(row, _GRAD, P_DTYPE, False)
    index = table_pointer(row, _INDEX, tl.int64, ALIGNED)
    master = table_pointer(row, _MASTER, tl.float32, ALIGNED)
    exp_avg = table_pointer(row, _EXP_AVG, tl.float32, ALIGNED)
    exp_avg_sq = table_pointer(row, _EXP_AVG_SQ, tl.float32, ALIGNED)
    base = table_pointer(row, _BASE, tl.float32, ALIGNED)
    count = tl.load(row + _COUNT)

    start = block.to(tl.int64) * BLOCK
    offsets = start + tl.arange(0, BLOCK)
    hyper = (beta1, one_minus_beta1, beta2, one_minus_beta2, decay, lr, bias1, bias2, eps, l1)
    if start + BLOCK <= count:
        _update_entries(param, grad, index, master, exp_avg, exp_avg_sq, base, offsets, None, hyper, P_DTYPE, HAS_L1)
    else:
        _update_entries(param, grad, index, master, exp_avg, exp_avg_sq, base, offsets, offsets < count, hyper,
                        P_DTYPE, HAS_L1)


SCALAR_ARGS: tuple[str, ...] = tuple(
    name for name in _masked_adamw_kernel.arg_names if name.islower() and not name.endswith("_table")
)
"""The kernel's fp32 scalar arguments: ``AdamWSettings.scalars()``, in that order."""


# --------------------------------------------------------------------------- launcher

_BLOCK_TABLES: TableCache[torch.Tensor] = TableCache(16)
_ADDRESS_TABLES: TableCache[tuple[torch.Tensor, bool]] = TableCache(16)


def _block_table(counts: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """int32 (P, 2) rows (tensor, block) of every BLOCK-entry block of tensors with ``counts`` entries.

    It depends on the entry counts only, so an optimizer's steps share one (built once).
    """

    def build() -> torch.Tensor:
        rows = [v for t, count in enumerate(counts) for block in range(triton.cdiv(count, BLOCK)) for v in (t, block)]
        return upload(rows, device, torch.int32).view(-1, 2)

    return _BLOCK_TABLES.get((device, BLOCK, counts), build)


def _address_table(rows: list[tuple[torch.Tensor, ...]], device: torch.device) -> tuple[torch.Tensor, bool]:
    """(int64 (T, _COLUMNS) tensor table, aligned) for rows of (param, grad, idx, master, m, v, base|None).

    The table holds addresses and sizes only, so the cache key is exactly its content: a step
    over the same tensors (and gradients at the same addresses) uploads nothing.
    """
    entries = tuple(
        (
            param.data_ptr(),
            grad.data_ptr(),
            idx.data_ptr(),
            master.data_ptr(),
            exp_avg.data_ptr(),
            exp_avg_sq.data_ptr(),
            base.data_ptr() if base is not None else 0,
            idx.numel(),
        )
        for param, grad, idx, master, exp_avg, exp_avg_sq, base in rows
    )

    def build() -> tuple[torch.Tensor, bool]:
        aligned = all(address % 16 == 0 for entry in entries for address in entry[_INDEX:_COUNT])
        return upload([v for entry in entries for v in entry], device).view(-1, _COLUMNS), aligned

    return _ADDRESS_TABLES.get((device, entries), build)


def _launch(tensor_table: torch.Tensor, block_table: torch.Tensor, aligned: bool, dtype: torch.dtype,
            settings: AdamWSettings) -> None:
    """One launch over every block of one parameter dtype's tensors."""
    _masked_adamw_kernel[(block_table.shape[0],)](
        tensor_table,
        block_table,
        *settings.scalars(),
        TL_DTYPES[dtype],
        settings.has_l1,
        aligned,
        BLOCK,
        num_warps=NUM_WARPS,
        enable_fp_fusion=FP_FUSION,
    )


def _positions_by_dtype(params: Sequence[torch.Tensor],
                        indices: Sequence[torch.Tensor]) -> dict[torch.dtype, list[int]]:
    """The positions of the tensors with selected entries, by parameter dtype, in order: one
    launch each."""
    positions: dict[torch.dtype, list[int]] = {}
    for t, idx in enumerate(indices):
        if idx.numel():
            positions.setdefault(params[t].dtype, []).append(t)
    return positions


class PreparedMaskedStep:
    """The masked AdamW step over fixed parameters, indices and state, planned once.

    Grouped by parameter dtype when built; a step reads only the gradients' addresses and
    uploads a group's address table again only when they moved (a training loop whose
    gradients keep their storage uploads nothing), then launches once per dtype. Same
    arithmetic and launches as :func:`masked_adamw_step_`.

    Args:
        params, indices, masters, exp_avgs, exp_avg_sqs, bases: as in
            :class:`~deftx.ops.settings.MaskedStepTensors` without the gradients (``bases``
            None when the steps have no L1 pull); they must keep their storage.
    """

    def __init__(self, params: list[torch.Tensor], indices: list[torch.Tensor], masters: list[torch.Tensor],
                 exp_avgs: list[torch.Tensor], exp_avg_sqs: list[torch.Tensor],
                 bases: list[torch.Tensor] | None) -> None:
        self._groups = [
            (dtype, ts, [(params[t], indices[t], masters[t], exp_avgs[t], exp_avg_sqs[t],
                          bases[t] if bases is not None else None) for t in ts],
             _block_table(tuple(indices[t].numel() for t in ts), params[ts[0]].device))
            for dtype, ts in _positions_by_dtype(params, indices).items()
        ]
        self._tables: dict[torch.dtype, tuple[tuple[int, ...], torch.Tensor, bool]] = {}

    def step(self, grads: list[torch.Tensor], settings: AdamWSettings) -> None:
        """One step with ``grads`` (contiguous, one per parameter, in the parameters' order);
        ``settings.l1 != 0`` only when the plan has bases (checked by the caller)."""
        for dtype, ts, rows, block_table in self._groups:
            addresses = tuple(grads[t].data_ptr() for t in ts)
            known = self._tables.get(dtype)
            if known is None or known[0] != addresses:
                table, aligned = _address_table(
                    [(p, grads[t], idx, m, v1, v2, b)
                     for t, (p, idx, m, v1, v2, b) in zip(ts, rows, strict=True)], block_table.device)
                known = self._tables[dtype] = (addresses, table, aligned)
            _launch(known[1], block_table, known[2], dtype, settings)


def masked_adamw_step_(tensors: MaskedStepTensors, settings: AdamWSettings) -> None:
    """AdamW on the selected entries of each parameter, in place (the contract's formula).

    ``tensors`` (:class:`~deftx.ops.settings.MaskedStepTensors`): params and grads contiguous
    fp32 / bf16 / fp16, the state contiguous; ``bases`` used when ``settings.l1 != 0``.

    One launch per parameter dtype present, covering every tensor of that dtype; its tables
    are uploaded only when the tensors' addresses (or entry counts) change. Nothing is read
    back from the device.
    """
    params, grads, indices, masters, exp_avgs, exp_avg_sqs, bases = tensors
    count = len(params)
    assert len(grads) == len(indices) == len(masters) == len(exp_avgs) == len(exp_avg_sqs) == count
    has_l1 = settings.has_l1
    assert not has_l1 or (bases is not None and len(bases) == count), "l1 != 0 needs bases"
    for param, grad, idx in zip(params, grads, indices, strict=True):
        assert param.dtype in PARAM_DTYPES and grad.dtype == param.dtype and param.is_contiguous()
        assert grad.is_contiguous() and idx.dtype == torch.int64 and idx.is_contiguous()

    for dtype, ts in _positions_by_dtype(params, indices).items():
        rows = [(params[t], grads[t], indices[t], masters[t], exp_avgs[t], exp_avg_sqs[t],
                 bases[t] if has_l1 else None) for t in ts]
        device = params[ts[0]].device
        tensor_table, aligned = _address_table(rows, device)
        _launch(tensor_table, _block_table(tuple(indices[t].numel() for t in ts), device), aligned, dtype, settings)


SPECIALIZATIONS: list[KernelSpec] = _masked_step_specs.specializations(sys.modules[__name__])
"""The specialisations its launchers use (built in ``_masked_step_specs.py``)."""
