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


def _nan_count(tensors: Sequence[torch.Tensor], selected: Sequence[torch.Tensor], k: int) -> int:
    """NaN entries over all ``tensors``, given the top-k ``selected`` flat indices per tensor.

    A NaN's key ranks above every number's, so when there is any NaN one is among the
    k >= 1 selected entries: only those are read, unless one is found (or k = 0).
    """
    if k and not any(
        bool(torch.isnan(tensor.view(-1)[idx]).any()) for tensor, idx in zip(tensors, selected, strict=True)
    ):
        return 0
    return sum(int(torch.isnan(tensor).sum()) for tensor in tensors)


def topk_indices(tensors: Sequence[torch.Tensor], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices of the ``k`` entries of largest ``|x|`` over all ``tensors`` together.

    Args:
        tensors: contiguous CPU tensors of any shape, fp32 / bf16 / fp16 (mixed dtypes
            compare by exact value).
        k: number of entries to select, ``0 <= k <= sum(t.numel() for t in tensors)``.

    Returns:
        indices: int64 (k,), each input's selected flat (row-major) indices in ascending
            order, concatenated in input order. Among entries whose magnitude equals the
            k-th largest, those with the lowest (position in the list, flat index) are taken.
        stats: int64 (T + 1,): the number of indices of each input, then the number of NaN
            entries (a NaN ranks above +inf; the selection means nothing when there are some).
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

    indices = torch.empty(k, dtype=torch.int64)
    outputs = indices.split(list(counts))
    status = lib.deftx_topk_write(n_tensors, data, dtypes, numels, workspace, workspace_size, pointer_array(outputs))
    check_status(status, "deftx_topk_write")
    return indices, torch.tensor([*counts, _nan_count(tensors, outputs, k)], dtype=torch.int64)
