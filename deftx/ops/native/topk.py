"""Native CPU backend of ``topk``: global magnitude top-k over many tensors (csrc/topk.cpp)."""

from __future__ import annotations

import ctypes
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from . import check_cpu_contiguous, check_status, dtype_codes, int32_array, int64_array, library, pointer_array


@dataclass(frozen=True)
class Selection:
    """What one call of the library returns.

    Attributes:
        indices: int64 (k,), every tensor's selected flat indices, ascending, in tensor order.
        counts: how many of them belong to each tensor.
        nan_count: NaN scores found (the selection means nothing when it is not 0).
        full_passes: passes over all elements: 2, or 4 when the threshold's bin held more keys
            than the candidate lists take (see csrc/topk.cpp).
    """

    indices: torch.Tensor
    counts: list[int]
    nan_count: int
    full_passes: int


def _check_bases(tensors: Sequence[torch.Tensor], bases: Sequence[torch.Tensor | None]) -> None:
    if len(bases) != len(tensors):
        raise ValueError(f"topk_indices: {len(bases)} bases for {len(tensors)} tensors")
    for position, (tensor, base) in enumerate(zip(tensors, bases, strict=True)):
        if base is None:
            continue
        check_cpu_contiguous(base, f"topk_indices: bases[{position}]")
        if base.dtype != tensor.dtype or base.numel() != tensor.numel():
            raise ValueError(
                f"topk_indices: bases[{position}] is {base.dtype} with {base.numel()} elements, "
                f"its tensor {tensor.dtype} with {tensor.numel()}"
            )


def select(
    tensors: Sequence[torch.Tensor],
    k: int,
    bases: Sequence[torch.Tensor | None] | None = None,
    concatenated: bool = False,
    candidate_capacity: int | None = None,
) -> Selection:
    """One call of ``deftx_topk_select``: see :func:`topk_indices` for the arguments.

    ``candidate_capacity``: the most keys of the threshold's bin kept in lists (default
    ``max(2^22, k // 2)``); above it the selection makes four full passes instead of two.
    """
    codes = dtype_codes(tensors, "topk_indices: tensors")
    if bases is not None:
        _check_bases(tensors, bases)
    numels = [tensor.numel() for tensor in tensors]
    total = sum(numels)
    if not 0 <= k <= total:
        raise ValueError(f"topk_indices: k = {k} is outside [0, {total}]")

    n_tensors = len(tensors)
    base_pointers = (ctypes.c_void_p * n_tensors)(*(None if b is None else b.data_ptr() for b in bases or ()))
    starts = int64_array(list(itertools.accumulate(numels, initial=0))[:-1]) if concatenated else None
    indices = torch.empty(k, dtype=torch.int64)
    counts = (ctypes.c_int64 * n_tensors)()
    nan_count, full_passes = ctypes.c_int64(), ctypes.c_int64()
    status = library().deftx_topk_select(
        n_tensors, pointer_array(tensors), base_pointers if bases is not None else None, int32_array(codes),
        int64_array(numels), starts, k,
        -1 if candidate_capacity is None else candidate_capacity, indices.data_ptr(), counts, ctypes.byref(nan_count),
        ctypes.byref(full_passes),
    )
    check_status(status, "deftx_topk_select")
    return Selection(indices, list(counts), nan_count.value, full_passes.value)


def topk_indices(
    tensors: Sequence[torch.Tensor], k: int, bases: Sequence[torch.Tensor | None] | None = None,
    concatenated: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices of the ``k`` entries of largest score over all ``tensors`` together.

    Args:
        tensors: contiguous CPU tensors of any shape, fp32 / bf16 / fp16 (mixed dtypes
            compare by exact value).
        k: number of entries to select, ``0 <= k <= sum(t.numel() for t in tensors)``.
        bases: None, or per tensor None or a contiguous tensor of its dtype and numel: the
            score is then ``|fl32(f32(x) − f32(base))|`` (the difference is never stored).
        concatenated: count indices in the concatenation of all flattened tensors (tensor
            t's start added) instead of within each tensor.

    Returns:
        indices: int64 (k,), each input's selected flat (row-major) indices in ascending
            order, concatenated in input order. Among entries whose score equals the
            k-th largest, those with the lowest (position in the list, flat index) are taken.
        stats: int64 (T + 1,): the number of indices of each input, then the number of NaN
            scores (a NaN ranks above +inf; the selection means nothing when there are some).
    """
    selection = select(tensors, k, bases, concatenated)
    return selection.indices, torch.tensor([*selection.counts, selection.nan_count], dtype=torch.int64)
