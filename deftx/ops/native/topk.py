"""Native CPU backend of ``topk``: global magnitude top-k over many tensors (csrc/topk.cpp)."""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

import torch

from . import (
    check_cpu_contiguous,
    check_status,
    dtype_code,
    int32_array,
    int64_array,
    library,
    pointer_array,
)


def topk_indices(tensors: Sequence[torch.Tensor], k: int) -> list[torch.Tensor]:
    """Flat indices of the ``k`` entries of largest ``|x|`` over all ``tensors`` together.

    Args:
        tensors: contiguous CPU tensors of any shape, fp32 / bf16 / fp16 (mixed dtypes
            compare by exact value), no NaN.
        k: number of entries to select, ``0 <= k <= sum(t.numel() for t in tensors)``.

    Returns:
        One int64 1-D tensor per input with its selected flat (row-major) indices in
        ascending order; the lengths sum to ``k``. Among entries whose magnitude equals the
        k-th largest, those with the lowest (position in the list, flat index) are taken.
    """
    for position, tensor in enumerate(tensors):
        check_cpu_contiguous(tensor, f"topk_indices: tensors[{position}]")
    codes = [dtype_code(tensor, f"topk_indices: tensors[{position}]") for position, tensor in enumerate(tensors)]
    total = sum(tensor.numel() for tensor in tensors)
    if not 0 <= k <= total:
        raise ValueError(f"topk_indices: k = {k} is outside [0, {total}]")

    lib = library()
    n_tensors = len(tensors)
    data = pointer_array(tensors)
    dtypes = int32_array(codes)
    numels = int64_array([tensor.numel() for tensor in tensors])
    workspace_size = lib.deftx_topk_workspace_size(n_tensors, numels)
    if workspace_size < 0:
        raise ValueError("topk_indices: invalid tensor sizes")
    workspace = (ctypes.c_int64 * workspace_size)()
    counts = (ctypes.c_int64 * n_tensors)()
    status = lib.deftx_topk_select(n_tensors, data, dtypes, numels, k, workspace, workspace_size, counts)
    check_status(status, "deftx_topk_select")

    outputs = [torch.empty(count, dtype=torch.int64) for count in counts]
    status = lib.deftx_topk_write(n_tensors, data, dtypes, numels, workspace, workspace_size, pointer_array(outputs))
    check_status(status, "deftx_topk_write")
    return outputs
