"""Native CPU backend of ``scatter``: sparse add of diffs into dense tensors (csrc/scatter.cpp)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from deftx.ops.validation import check_disjoint

from . import (
    check_cpu_contiguous,
    check_status,
    dtype_code,
    dtype_codes,
    float32_array,
    int32_array,
    int64_array,
    library,
    pointer_array,
    read_operand,
)


def _check_dense(dense: Sequence[torch.Tensor], function: str) -> list[int]:
    """Validate the dense tensors; return their dtype codes."""
    codes = dtype_codes(dense, f"{function}: dense")
    check_disjoint(dense, function)
    return codes


def _layout(dense: Sequence[torch.Tensor], dense_codes: list[int], num_diffs: int,
            flat_indices: list[torch.Tensor]) -> tuple[object, ...]:
    """The C ABI's leading arguments: dense tensors (count, addresses, dtype codes, sizes), then
    the diffs (count, index addresses, entry counts)."""
    return (
        len(dense),
        pointer_array(dense),
        int32_array(dense_codes),
        int64_array([tensor.numel() for tensor in dense]),
        num_diffs,
        pointer_array(flat_indices),
        int64_array([index.numel() for index in flat_indices]),
    )


def _flat_lists(
    dense: Sequence[torch.Tensor],
    indices: Sequence[Sequence[torch.Tensor]],
    payload: Sequence[Sequence[torch.Tensor]],
    function: str,
    payload_name: str,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Validate the (diff, tensor) lists; return indices and payload flattened as d * n + t (each
    a dense buffer: a strided one is copied)."""
    if len(payload) != len(indices):
        raise ValueError(f"{function}: {len(indices)} index lists but {len(payload)} {payload_name} lists")
    flat_indices: list[torch.Tensor] = []
    flat_payload: list[torch.Tensor] = []
    for d, (diff_indices, diff_payload) in enumerate(zip(indices, payload, strict=True)):
        if len(diff_indices) != len(dense) or len(diff_payload) != len(dense):
            raise ValueError(
                f"{function}: diff {d} has {len(diff_indices)} index and {len(diff_payload)} "
                f"{payload_name} tensors, expected {len(dense)} (one per dense tensor)"
            )
        for t, (index, item) in enumerate(zip(diff_indices, diff_payload, strict=True)):
            where = f"{function}: diff {d}, tensor {t}"
            index = read_operand(index, f"{where}: indices")
            item = read_operand(item, f"{where}: {payload_name}")
            if index.dtype != torch.int64 or index.dim() != 1:
                raise ValueError(f"{where}: indices must be int64 1-D, got {index.dtype} {index.dim()}-D")
            if item.dim() != 1 or item.numel() != index.numel():
                raise ValueError(
                    f"{where}: {payload_name} must be 1-D with {index.numel()} entries, got shape {tuple(item.shape)}"
                )
            flat_indices.append(index)
            flat_payload.append(item)
    return flat_indices, flat_payload


def _saved_buffers(
    dense: Sequence[torch.Tensor],
    indices: Sequence[Sequence[torch.Tensor]],
    out: Sequence[Sequence[torch.Tensor]] | None,
    function: str,
) -> list[list[torch.Tensor]]:
    """Where the library writes the saved originals: ``out`` checked, or new tensors."""
    if out is None:
        return [[torch.empty(i.numel(), dtype=w.dtype) for i, w in zip(diff, dense, strict=True)] for diff in indices]
    for d, (diff, out_row) in enumerate(zip(indices, out, strict=True)):
        for t, (index, tensor, item) in enumerate(zip(diff, dense, out_row, strict=True)):
            check_cpu_contiguous(item, f"{function}: out[{d}][{t}]")
            if item.dtype != tensor.dtype or item.shape != (index.numel(),):
                raise ValueError(f"{function}: out[{d}][{t}] must be {tensor.dtype} ({index.numel()},)")
    return [list(row) for row in out]


def scatter_add_(
    dense: Sequence[torch.Tensor],
    indices: Sequence[Sequence[torch.Tensor]],
    values: Sequence[Sequence[torch.Tensor]],
    scales: Sequence[float],
    save: bool,
    out: Sequence[Sequence[torch.Tensor]] | None = None,
) -> list[list[torch.Tensor]] | None:
    """Add scaled sparse diffs to dense tensors in place, diff after diff.

    For d = 0, 1, ... and every entry j, with ``i = indices[d][t][j]``:
    ``dense[t].view(-1)[i] = cast(f32(dense[t][i]) + (f32(scales[d]) * f32(values[d][t][j])))``
    with two separately rounded fp32 operations and a round-to-nearest-even cast.

    Args:
        dense: contiguous CPU tensors (fp32 / bf16 / fp16), any shape; modified in place.
        indices: ``indices[d][t]`` int64 (K_dt,), sorted, unique, in ``[0, dense[t].numel())``.
        values: ``values[d][t]`` (K_dt,) fp32 / bf16 / fp16.
        scales: one multiplier per diff (rounded to fp32).
        save: also return the original entries the diffs overwrite.
        out: with ``save``, ``out[d][t]`` contiguous CPU (K_dt,) tensors of dense[t]'s dtype
            that receive them (allocated when None).

    Returns:
        ``saved[d][t]`` (K_dt,) of dense[t]'s dtype, the entries at ``indices[d][t]`` before
        this call, when ``save`` is true; otherwise None.
    """
    function = "scatter_add_"
    dense_codes = _check_dense(dense, function)
    flat_indices, flat_values = _flat_lists(dense, indices, values, function, "values")
    if len(scales) != len(indices):
        raise ValueError(f"{function}: {len(indices)} diffs but {len(scales)} scales")
    value_codes = [
        dtype_code(value, f"{function}: values[{position // len(dense)}][{position % len(dense)}]")
        for position, value in enumerate(flat_values)
    ]
    saved = _saved_buffers(dense, indices, out, function) if save else None
    status = library().deftx_scatter_add(
        *_layout(dense, dense_codes, len(indices), flat_indices),
        pointer_array(flat_values),
        int32_array(value_codes),
        float32_array(scales),
        pointer_array([item for diff in saved for item in diff]) if saved is not None else None,
    )
    check_status(status, "deftx_scatter_add")
    return saved


def scatter_restore_(
    dense: Sequence[torch.Tensor],
    indices: Sequence[Sequence[torch.Tensor]],
    saved: Sequence[Sequence[torch.Tensor]],
) -> None:
    """Write ``saved[d][t]`` back at ``indices[d][t]`` of ``dense[t]``, undoing :func:`scatter_add_`.

    Args:
        dense: the tensors :func:`scatter_add_` modified; restored in place.
        indices: the same ``indices[d][t]`` as given to :func:`scatter_add_`.
        saved: the lists :func:`scatter_add_` returned with ``save=True`` (dense dtypes).
    """
    function = "scatter_restore_"
    dense_codes = _check_dense(dense, function)
    flat_indices, flat_saved = _flat_lists(dense, indices, saved, function, "saved")
    n_tensors = len(dense)
    for position, item in enumerate(flat_saved):
        expected = dense[position % n_tensors].dtype
        if item.dtype != expected:
            raise ValueError(
                f"{function}: saved[{position // n_tensors}][{position % n_tensors}] has dtype "
                f"{item.dtype}, expected the dense dtype {expected}"
            )
    status = library().deftx_scatter_restore(
        *_layout(dense, dense_codes, len(indices), flat_indices),
        pointer_array(flat_saved),
    )
    check_status(status, "deftx_scatter_restore")
