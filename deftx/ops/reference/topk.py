"""Torch reference of global magnitude top-k with deftx's exact tie rule."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch

INF_KEY = 0x7F800000
"""The key of +inf; every key above it is a NaN's."""


def differences(t: torch.Tensor, base: torch.Tensor | None = None) -> torch.Tensor:
    """``t`` flattened to fp32, minus ``base`` when one is given: ``fl32(f32(t) − f32(base))``
    (exact widening, one fp32 subtraction rounded to nearest even)."""
    values = t.detach().reshape(-1).float()
    return values if base is None else values - base.detach().reshape(-1).float()


def keys(t: torch.Tensor, base: torch.Tensor | None = None) -> torch.Tensor:
    """The flat int32 keys of the scores ``|differences(t, base)|``: their fp32 bit patterns
    with the sign cleared. Integer order is score order for every non-NaN score (``-0.0`` and
    ``+0.0`` share key 0, subnormals keep their order whatever the CPU's denormal mode) and a
    NaN ranks above ``+inf``."""
    return differences(t, base).view(torch.int32) & 0x7FFFFFFF


def kth_largest_key(keyed: Sequence[torch.Tensor], k: int) -> torch.Tensor:
    """The k-th largest of the flat ``keyed`` tensors (0-dim int32 tensor); requires 1 <= k <= total."""
    return torch.topk(torch.cat(list(keyed)), k, sorted=False).values.min()


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
        scores (NaN ranks above +inf; the selection means nothing when there are some).
    """
    device = tensors[0].device if tensors else torch.device("cpu")
    paired = bases if bases is not None else [None] * len(tensors)
    keyed = [keys(t, b) for t, b in zip(tensors, paired, strict=True)]
    nan_count = torch.stack([(key > INF_KEY).sum() for key in keyed]).sum().view(1) if tensors else None
    if k == 0:
        per_tensor = [torch.empty(0, dtype=torch.int64, device=t.device) for t in tensors]
    else:
        threshold = kth_largest_key(keyed, k)
        above = [(key > threshold).nonzero().flatten() for key in keyed]
        ties_left = k - sum(int(a.numel()) for a in above)
        per_tensor = []
        for key, idx_above in zip(keyed, above, strict=True):
            ties = (key == threshold).nonzero().flatten()[: max(ties_left, 0)]
            ties_left -= int(ties.numel())
            per_tensor.append(torch.cat([idx_above, ties]).sort().values)
    if concatenated:
        starts = itertools.accumulate((t.numel() for t in tensors), initial=0)
        per_tensor = [idx + start for idx, start in zip(per_tensor, starts, strict=False)]
    counts = torch.tensor([int(idx.numel()) for idx in per_tensor], dtype=torch.int64, device=device)
    stats = torch.cat([counts, nan_count]) if tensors else torch.zeros(1, dtype=torch.int64)
    indices = torch.cat(per_tensor) if per_tensor else torch.empty(0, dtype=torch.int64, device=device)
    return indices, stats
