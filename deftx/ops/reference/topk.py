"""Torch reference of global magnitude top-k with deftx's exact tie rule."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _magnitudes(t: torch.Tensor) -> torch.Tensor:
    """|t| as a flat fp32 tensor (exact for fp16/bf16 inputs); NaN ranks as +inf."""
    return t.detach().reshape(-1).abs().float().nan_to_num(nan=torch.inf)


def kth_largest_magnitude(tensors: Sequence[torch.Tensor], k: int) -> torch.Tensor:
    """The k-th largest |x| over all tensors (0-dim fp32 tensor); requires 1 <= k <= total."""
    everything = torch.cat([_magnitudes(t) for t in tensors])
    return torch.topk(everything, k, sorted=False).values.min()


def topk_indices(tensors: Sequence[torch.Tensor], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted flat int64 indices of the k largest |x| across ``tensors``.

    Exactly ``k`` in total: every entry above the k-th largest magnitude, then the
    entries equal to it in (tensor position, flat index) order until k are taken.

    Returns:
        indices: int64 (k,), every tensor's indices in tensor order; stats: int64 (T + 1,)
        on the same device, the number of indices of each tensor, then the number of NaN
        entries (NaN ranks as +inf here; the selection means nothing when there are some).
    """
    device = tensors[0].device if tensors else torch.device("cpu")
    nan_count = torch.stack([torch.isnan(t).sum() for t in tensors]).sum().view(1) if tensors else None
    if k == 0:
        per_tensor = [torch.empty(0, dtype=torch.int64, device=t.device) for t in tensors]
    else:
        threshold = kth_largest_magnitude(tensors, k)
        above = [(_magnitudes(t) > threshold).nonzero().flatten() for t in tensors]
        ties_left = k - sum(int(a.numel()) for a in above)
        per_tensor = []
        for t, idx_above in zip(tensors, above, strict=True):
            ties = (_magnitudes(t) == threshold).nonzero().flatten()[: max(ties_left, 0)]
            ties_left -= int(ties.numel())
            per_tensor.append(torch.cat([idx_above, ties]).sort().values)
    counts = torch.tensor([int(idx.numel()) for idx in per_tensor], dtype=torch.int64, device=device)
    stats = torch.cat([counts, nan_count]) if tensors else torch.zeros(1, dtype=torch.int64)
    indices = torch.cat(per_tensor) if per_tensor else torch.empty(0, dtype=torch.int64, device=device)
    return indices, stats
