"""Torch reference of global magnitude top-k with deftx's exact tie rule."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch


def differences(t: torch.Tensor, base: torch.Tensor | None = None) -> torch.Tensor:
    """``t`` flattened to fp32, minus ``base`` when one is given: ``fl32(f32(t) − f32(base))``
    (exact widening, one fp32 subtraction rounded to nearest even)."""
    values = t.detach().reshape(-1).float()
    return values if base is None else values - base.detach().reshape(-1).float()


def scores(t: torch.Tensor, base: torch.Tensor | None = None) -> torch.Tensor:
    """The flat fp32 scores ``|differences(t, base)|``; NaN ranks as +inf."""
    return differences(t, base).abs().nan_to_num(nan=torch.inf)


def kth_largest_score(scored: Sequence[torch.Tensor], k: int) -> torch.Tensor:
    """The k-th largest of the flat ``scored`` tensors (0-dim fp32 tensor); requires 1 <= k <= total."""
    return torch.topk(torch.cat(list(scored)), k, sorted=False).values.min()


def topk_indices(
    tensors: Sequence[torch.Tensor], k: int, bases: Sequence[torch.Tensor | None] | None = None,
    concatenated: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted flat int64 indices of the k largest scores across ``tensors``.

    Exactly ``k`` in total: every entry above the k-th largest score, then the entries equal
    to it in (tensor position, flat index) order until k are taken. The score is ``|x|``, or
    with ``bases[t]`` set ``|fl32(f32(x) − f32(bases[t]))|``. With ``concatenated`` the indices
    count positions in the concatenation of the flattened tensors.

    Returns:
        indices: int64 (k,), every tensor's indices in tensor order; stats: int64 (T + 1,)
        on the same device, the number of indices of each tensor, then the number of NaN
        scores (NaN ranks as +inf here; the selection means nothing when there are some).
    """
    device = tensors[0].device if tensors else torch.device("cpu")
    paired = bases if bases is not None else [None] * len(tensors)
    raw = [differences(t, b) for t, b in zip(tensors, paired, strict=True)]
    nan_count = torch.stack([torch.isnan(r).sum() for r in raw]).sum().view(1) if tensors else None
    scored = [r.abs().nan_to_num_(nan=torch.inf) for r in raw]
    if k == 0:
        per_tensor = [torch.empty(0, dtype=torch.int64, device=t.device) for t in tensors]
    else:
        threshold = kth_largest_score(scored, k)
        above = [(s > threshold).nonzero().flatten() for s in scored]
        ties_left = k - sum(int(a.numel()) for a in above)
        per_tensor = []
        for s, idx_above in zip(scored, above, strict=True):
            ties = (s == threshold).nonzero().flatten()[: max(ties_left, 0)]
            ties_left -= int(ties.numel())
            per_tensor.append(torch.cat([idx_above, ties]).sort().values)
    if concatenated:
        starts = itertools.accumulate((t.numel() for t in tensors), initial=0)
        per_tensor = [idx + start for idx, start in zip(per_tensor, starts, strict=False)]
    counts = torch.tensor([int(idx.numel()) for idx in per_tensor], dtype=torch.int64, device=device)
    stats = torch.cat([counts, nan_count]) if tensors else torch.zeros(1, dtype=torch.int64)
    indices = torch.cat(per_tensor) if per_tensor else torch.empty(0, dtype=torch.int64, device=device)
    return indices, stats
