"""Public op: global magnitude top-k over many tensors (``topk_mask``)."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Sequence
from typing import Literal

import torch

from deftx.kernels import upload
from deftx.ops import library
from deftx.ops.dispatch import common_device, requested_backend
from deftx.ops.validation import as_tensor_list, check_count, check_float_dtype, check_not_meta


def topk_mask(
    tensors: Sequence[torch.Tensor],
    k: int,
    *,
    score: Literal["abs"] = "abs",
    output: Literal["mask", "indices"] = "mask",
    backend: str | None = None,
) -> list[torch.Tensor]:
    """The ``k`` entries of largest ``|value|`` across all ``tensors`` (one global threshold).

    Exactly ``k`` entries are selected, always: among entries tied at the threshold
    magnitude, those with the lowest (position in ``tensors``, flat row-major index) win,
    so the result is deterministic (unlike ``torch.topk``'s tie choice, and unlike a
    ``>= threshold`` test, which can return more than ``k``).

    Args:
        tensors: float32 / bfloat16 / float16 tensors of any shapes on one device.
        k: number of entries to select, ``0 <= k <= total numel``.
        score: ``"abs"``: rank by magnitude (the only score).
        output: ``"mask"``: one bool tensor per input, same shape; ``"indices"``: one
            int64 1-D tensor per input, sorted ascending flat indices.
        backend: ``"auto" | "triton" | "native" | "torch"`` (default ``$DEFTX_BACKEND`` or auto).
            DTensor inputs (sharded parameters) go to :mod:`deftx.distributed` instead:
            histograms are all-reduced, nothing is gathered, and the masks are DTensors.

    Raises:
        ValueError: empty list, NaN values (names the tensor), k out of range, bad options.
        TypeError: non-floating tensors.

    NaN values are found by the selection itself (the Triton kernel counts them in its first
    pass), which is read back once with the per-tensor counts: on CUDA a call makes one host
    sync, and a fixed number of launches whatever the number of tensors (see
    :mod:`deftx.kernels.topk`). The masks are views of one buffer.
    """
    items = as_tensor_list(tensors, "topk_mask")
    if not items:
        raise ValueError("topk_mask: the list of tensors is empty")
    if score != "abs":
        raise ValueError(f"topk_mask: score must be 'abs', got {score!r}")
    if output not in ("mask", "indices"):
        raise ValueError(f"topk_mask: output must be 'mask' or 'indices', got {output!r}")
    dtensor = sys.modules.get("torch.distributed.tensor")
    if dtensor is not None and any(isinstance(t, dtensor.DTensor) for t in items):
        from deftx.distributed.topk import topk_mask_dtensor

        return topk_mask_dtensor(items, k, output=output)
    for i, t in enumerate(items):
        check_float_dtype(t, f"topk_mask: tensor {i}")
        check_not_meta(t, f"topk_mask: tensor {i}")
    common_device(items, "topk_mask")
    check_count(k, sum(t.numel() for t in items), "topk_mask")
    contiguous = [t.detach().contiguous() for t in items]
    flat, stats = library.topk_indices(contiguous, k, requested_backend(backend))
    *counts, nan_count = stats.tolist()
    if nan_count:
        raise nan_error(items, "topk_mask")
    if output == "indices":
        return list(flat.split(counts))
    return indices_to_masks(flat, counts, [t.shape for t in items])


def nan_error(tensors: Sequence[torch.Tensor], what: str) -> ValueError:
    """The error for NaN inputs, naming the first tensor that holds one and how many (reads them)."""
    for position, t in enumerate(tensors):
        count = int(torch.isnan(t).sum())
        if count:
            return ValueError(
                f"{what}: tensor {position} (shape {tuple(t.shape)}) contains {count} NaN value(s); "
                "magnitudes of NaN have no order"
            )
    return ValueError(f"{what}: the selection reported NaN values, but none is found in the inputs")


def indices_to_mask(indices: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Boolean tensor of ``shape`` that is True exactly at the flat ``indices``."""
    mask = torch.zeros(shape.numel(), dtype=torch.bool, device=indices.device)
    mask[indices] = True
    return mask.view(shape)


def indices_to_masks(flat: torch.Tensor, counts: Sequence[int], shapes: Sequence[torch.Size]) -> list[torch.Tensor]:
    """One boolean mask per shape, True exactly at that tensor's flat indices.

    Args:
        flat: int64 (sum(counts),) every tensor's flat indices, in tensor order.
        counts: how many of them belong to each tensor.
        shapes: the tensors' shapes.

    The masks are views of one buffer filled by one scatter: a fixed number of launches
    whatever the number of tensors.
    """
    numels = [shape.numel() for shape in shapes]
    starts = [0, *itertools.accumulate(numels)]
    buffer = torch.zeros(starts[-1], dtype=torch.bool, device=flat.device)
    table = upload(starts[:-1] + list(counts), flat.device)
    offsets = torch.repeat_interleave(table[: len(shapes)], table[len(shapes):], output_size=flat.numel())
    buffer.index_fill_(0, flat + offsets, True)
    spans = zip(starts[:-1], numels, shapes, strict=True)
    return [buffer[start: start + numel].view(shape) for start, numel, shape in spans]
