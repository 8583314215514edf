"""Public op: global magnitude top-k over many tensors (``topk_mask``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Literal

import torch

from deftx.ops import library
from deftx.ops.dispatch import common_device, requested_backend
from deftx.ops.validation import as_tensor_list, check_count, check_float_dtype, check_no_nan


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
    common_device(items, "topk_mask")
    check_count(k, sum(t.numel() for t in items), "topk_mask")
    check_no_nan(items, "topk_mask")
    contiguous = [t.detach().contiguous() for t in items]
    flat, counts = library.topk_indices(contiguous, k, requested_backend(backend))
    indices = list(flat.split(counts.tolist()))
    if output == "indices":
        return indices
    return [indices_to_mask(idx, t.shape) for idx, t in zip(indices, items, strict=True)]


def indices_to_mask(indices: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Boolean tensor of ``shape`` that is True exactly at the flat ``indices``."""
    mask = torch.zeros(shape.numel(), dtype=torch.bool, device=indices.device)
    mask[indices] = True
    return mask.view(shape)
