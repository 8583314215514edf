"""Torch reference of global magnitude top-k with deftx's exact tie rule."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _magnitudes(t: torch.Tensor) -> torch.Tensor:
    """|t| as a flat fp32 tensor (exact for fp16/bf16 inputs)."""
    return t.detach().reshape(-1).abs().float()


def kth_largest_magnitude(tensors: Sequence[torch.Tensor], k: int) -> torch.Tensor:
    """The k-th largest |x| over all tensors (0-dim fp32 tensor); requires 1 <= k <= total."""
    everything = torch.cat([_magnitudes(t) for t in tensors])
    return torch.topk(everything, k, sorted=False).values.min()


def topk_indices(tensors: Sequence[torch.Tensor], k: int) -> list[torch.Tensor]:
    """Sorted flat int64 indices of the k largest |x| across ``tensors``.

    Exactly ``k`` in total: every entry above the k-th largest magnitude, then the
    entries equal to it in (tensor position, flat index) order until k are taken.
    """
    if k == 0:
        return [torch.empty(0, dtype=torch.int64, device=t.device) for t in tensors]
    threshold = kth_largest_magnitude(tensors, k)
    above = [(_magnitudes(t) > threshold).nonzero().flatten() for t in tensors]
    ties_left = k - sum(int(a.numel()) for a in above)
    result = []
    for t, idx_above in zip(tensors, above, strict=True):
        ties = (_magnitudes(t) == threshold).nonzero().flatten()[: max(ties_left, 0)]
        ties_left -= int(ties.numel())
        result.append(torch.cat([idx_above, ties]).sort().values)
    return result
