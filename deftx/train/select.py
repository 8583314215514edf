"""Phase 2: the global top-K selection and the reports about what it selected.

One threshold over all eligible parameters (not one per tensor), exactly K entries
(ties broken by position, see :func:`deftx.ops.topk_mask`), indices as sorted flat
row-major int64 per parameter: the layout of :class:`deftx.sft.SparseDiff`.

LT-SFT's score ``|θ1 − θ0|`` is never stored: a :class:`Difference` hands the pair to
``topk_mask(..., base=θ0)``, which subtracts inside its passes over the data (no buffer of
the model's size; at multilingual-e5-small size 470 MB less and no pass to write it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from deftx.ops import topk_mask
from deftx.train.params import PARAMETER_GROUPS


@dataclass(frozen=True, eq=False)
class Difference:
    """LT-SFT's score of one parameter, ``|θ1 − θ0|`` computed in fp32 (``(θ1.float() −
    θ0.float()).abs()``), ranked by :func:`select_top_k` without being materialised.

    Attributes:
        theta1: the fine-tuned values.
        theta0: the pretrained values, same shape, dtype and device.
    """

    theta1: torch.Tensor
    theta0: torch.Tensor

    def __post_init__(self) -> None:
        if self.theta1.shape != self.theta0.shape:
            raise ValueError(f"θ1 shape {tuple(self.theta1.shape)} != θ0 shape {tuple(self.theta0.shape)}")


Score = torch.Tensor | Difference
"""What the selection ranks for one parameter: a score tensor (DeFT-X's denoised magnitudes)
or the pair whose absolute difference is the score (LT-SFT)."""


def select_top_k(scores: Mapping[str, Score], k: int) -> dict[str, torch.Tensor]:
    """The ``k`` entries of largest score over all tensors, per parameter name.

    Args:
        scores: name -> non-negative float scores shaped like the parameter, or a
            :class:`Difference` (ranked by ``|θ1 − θ0|``, fused into the selection).
        k: entries to select, ``1 <= k <= total numel``.

    Returns:
        name -> int64 (K_t,) sorted unique flat indices; ``sum K_t == k``.
    """
    names = list(scores)
    if not names:
        raise ValueError("select_top_k: no scores given")
    ranked = [scores[name] for name in names]
    values = [s.theta1 if isinstance(s, Difference) else s for s in ranked]
    bases = [s.theta0 if isinstance(s, Difference) else None for s in ranked]
    indices = topk_mask(values, k, base=bases, output="indices")
    return dict(zip(names, indices, strict=True))


def group_counts(indices: Mapping[str, torch.Tensor], groups: Mapping[str, str]) -> dict[str, int]:
    """Selected entries per parameter group (groups in :data:`PARAMETER_GROUPS` order)."""
    totals = dict.fromkeys(PARAMETER_GROUPS, 0)
    for name, idx in indices.items():
        totals[groups[name]] += int(idx.numel())
    return {group: count for group, count in totals.items() if count}


def group_share_report(
    indices: Mapping[str, torch.Tensor],
    groups: Mapping[str, str],
    eligible_sizes: Mapping[str, int],
) -> list[dict[str, float | int | str]]:
    """One row per group: selected entries, eligible entries, share of K, density.

    Args:
        indices: the selection (name -> flat indices).
        groups: name -> group.
        eligible_sizes: name -> numel of every eligible parameter.
    """
    selected = group_counts(indices, groups)
    eligible = dict.fromkeys(PARAMETER_GROUPS, 0)
    for name, size in eligible_sizes.items():
        eligible[groups[name]] += int(size)
    k = sum(selected.values())
    rows = []
    for group in PARAMETER_GROUPS:
        if not eligible[group]:
            continue
        count = selected.get(group, 0)
        rows.append({
            "group": group,
            "selected": count,
            "eligible": eligible[group],
            "share_of_k": count / k if k else 0.0,
            "density": count / eligible[group],
        })
    return rows


def intersection_size(a: torch.Tensor, b: torch.Tensor) -> int:
    """``|a ∩ b|`` of two sorted unique int64 index tensors (searchsorted, no mask)."""
    if a.numel() == 0 or b.numel() == 0:
        return 0
    pos = torch.searchsorted(b, a).clamp_(max=b.numel() - 1)
    return int((b[pos] == a).sum())


def mask_overlap(
    first: Mapping[str, torch.Tensor],
    second: Mapping[str, torch.Tensor],
    groups: Mapping[str, str],
) -> list[dict[str, float | int | str]]:
    """Per-group overlap of two selections over the same parameters.

    Returns:
        Rows ``{group, first, second, shared, jaccard, shared_of_first}``, one per group
        with selected entries, then a row for ``"all"``.
    """
    if set(first) != set(second):
        raise ValueError("mask_overlap: the two selections cover different parameters")
    acc: dict[str, list[int]] = {}
    for name in first:
        row = acc.setdefault(groups[name], [0, 0, 0])
        row[0] += int(first[name].numel())
        row[1] += int(second[name].numel())
        row[2] += intersection_size(first[name], second[name])
    ordered = [g for g in PARAMETER_GROUPS if g in acc and (acc[g][0] or acc[g][1])]
    totals = [sum(acc[g][i] for g in acc) for i in range(3)]
    rows = []
    for group, (n_a, n_b, shared) in [(g, acc[g]) for g in ordered] + [("all", totals)]:
        union = n_a + n_b - shared
        rows.append({
            "group": group,
            "first": n_a,
            "second": n_b,
            "shared": shared,
            "jaccard": shared / union if union else 1.0,
            "shared_of_first": shared / n_a if n_a else 0.0,
        })
    return rows
