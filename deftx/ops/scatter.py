"""Public ops: sparse scatter-add of several diffs onto dense tensors, and its exact undo."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from deftx.ops import library
from deftx.ops.dispatch import common_device, requested_backend
from deftx.ops.validation import as_tensor_list, check_disjoint, check_float_dtype, check_indices


def _check_dense(dense: list[torch.Tensor], what: str) -> None:
    for t, w in enumerate(dense):
        check_float_dtype(w, f"{what}: dense tensor {t}")
        if not w.is_contiguous():
            raise ValueError(f"{what}: dense tensor {t} is not contiguous (it is updated in place)")
    common_device(dense, what)
    check_disjoint(dense, f"{what}: dense")


def _check_rows(
    dense: list[torch.Tensor],
    indices: Sequence[Sequence[torch.Tensor]],
    payload: Sequence[Sequence[torch.Tensor]],
    payload_name: str,
    what: str,
) -> None:
    """Every diff row matches the dense tensors; indices are checked together, once per tensor."""
    if len(indices) != len(payload):
        raise ValueError(f"{what}: {len(indices)} index rows but {len(payload)} {payload_name} rows")
    width = len(dense)
    for d, (row_idx, row_val) in enumerate(zip(indices, payload, strict=True)):
        if len(row_idx) != width or len(row_val) != width:
            raise ValueError(
                f"{what}: diff {d} has {len(row_idx)} index and {len(row_val)} {payload_name} "
                f"tensors for {width} dense tensors"
            )
        for t, (w, idx, val) in enumerate(zip(dense, row_idx, row_val, strict=True)):
            where = f"{what}: diff {d}, tensor {t}"
            check_float_dtype(val, f"{where} {payload_name}")
            if val.dim() != 1 or val.numel() != idx.numel():
                raise ValueError(
                    f"{where}: {payload_name} shape {tuple(val.shape)} does not match {idx.numel()} indices"
                )
            if idx.device != w.device or val.device != w.device:
                raise ValueError(f"{where}: indices/{payload_name} must be on {w.device}")
    check_indices(
        [idx for row in indices for idx in row],
        [w.numel() for _ in indices for w in dense],
        lambda i: f"{what}: diff {i // width}, tensor {i % width}",
    )


def scatter_add_(
    dense: Sequence[torch.Tensor],
    indices: Sequence[Sequence[torch.Tensor]],
    values: Sequence[Sequence[torch.Tensor]],
    scales: Sequence[float] | None = None,
    *,
    save: bool = False,
    backend: str | None = None,
) -> list[list[torch.Tensor]] | None:
    """Add D sparse diffs onto T dense tensors in place, in one pass.

    For each diff ``d`` in order and each entry ``i = indices[d][t][j]``:
    ``dense[t].flat[i] = cast(f32(dense[t].flat[i]) + f32(scales[d]) * f32(values[d][t][j]))``
    (two roundings, no fused multiply-add), so applying diffs together equals applying
    them one after another, bit for bit, on every backend. Deterministic: no float atomics.

    Args:
        dense: T contiguous fp32/bf16/fp16 tensors (updated in place).
        indices: D rows of T int64 1-D tensors, sorted ascending, unique, in range.
        values: D rows of T 1-D float tensors matching ``indices``.
        scales: D floats (default all 1.0).
        save: also return the original values at every diff's indices (dense dtype),
            gathered before anything is added; pass them to :func:`scatter_restore_`.

    The index values are checked once per index tensor (see
    :func:`~deftx.ops.validation.check_indices`): :func:`deftx.sft.apply_diffs` passes
    indices checked when its SparseDiffs were loaded, and reverting passes the same tensors,
    so neither reads anything back from the device.
    """
    items = as_tensor_list(dense, "scatter_add_")
    _check_dense(items, "scatter_add_")
    scales = [1.0] * len(indices) if scales is None else [float(s) for s in scales]
    if len(scales) != len(indices):
        raise ValueError(f"scatter_add_: {len(scales)} scales for {len(indices)} diffs")
    _check_rows(items, indices, values, "values", "scatter_add_")
    if not items or not indices:
        return [[] for _ in indices] if save else None
    saved = (
        [[idx.new_empty(idx.shape, dtype=w.dtype) for w, idx in zip(items, row, strict=True)] for row in indices]
        if save
        else []
    )
    library.scatter_add(
        items,
        [t for row in indices for t in row],
        [t for row in values for t in row],
        scales,
        [t for row in saved for t in row],
        requested_backend(backend),
    )
    return saved if save else None


def scatter_restore_(
    dense: Sequence[torch.Tensor],
    indices: Sequence[Sequence[torch.Tensor]],
    saved: Sequence[Sequence[torch.Tensor]],
    *,
    backend: str | None = None,
) -> None:
    """Write the values saved by :func:`scatter_add_` back: the exact inverse, bit for bit."""
    items = as_tensor_list(dense, "scatter_restore_")
    _check_dense(items, "scatter_restore_")
    _check_rows(items, indices, saved, "saved", "scatter_restore_")
    for row_saved in saved:
        for t, (w, old) in enumerate(zip(items, row_saved, strict=True)):
            if old.dtype != w.dtype:
                raise TypeError(f"scatter_restore_: saved tensor {t} is {old.dtype}, dense is {w.dtype}")
    if items and indices:
        library.scatter_restore(
            items, [t for row in indices for t in row], [t for row in saved for t in row], requested_backend(backend)
        )
