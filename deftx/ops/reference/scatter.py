"""Torch reference of sparse scatter-add (compose) and its exact restore (revert)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _gather(w: torch.Tensor, idx: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """The flat values of ``w`` at ``idx`` (into ``out`` when given)."""
    return torch.index_select(w.view(-1), 0, idx, out=out) if out is not None else w.view(-1)[idx]


@torch.no_grad()
def scatter_add_(
    dense: Sequence[torch.Tensor],
    indices: Sequence[Sequence[torch.Tensor]],
    values: Sequence[Sequence[torch.Tensor]],
    scales: Sequence[float],
    save: bool,
    out: Sequence[Sequence[torch.Tensor]] | None = None,
) -> list[list[torch.Tensor]] | None:
    """Add diffs in order: ``w[i] = cast(f32(w[i]) + f32(scale) * f32(v))``, two roundings.

    Outside autograd, as the other backends write through raw pointers: dense tensors that
    require grad are written like detached ones.

    Args:
        dense: T contiguous float tensors, modified in place.
        indices: D x T int64 sorted unique flat indices.
        values: D x T float values, same lengths as ``indices``.
        scales: D floats.
        save: gather the original values at every diff's indices first and return them.
        out: with ``save``, D x T tensors of the dense dtypes to gather them into
            (allocated when None).
    """
    saved = None
    if save:
        outs = out if out is not None else [[None] * len(dense) for _ in indices]
        saved = [
            [_gather(w, idx, o) for w, idx, o in zip(dense, row, out_row, strict=True)]
            for row, out_row in zip(indices, outs, strict=True)
        ]
    for row_idx, row_val, scale in zip(indices, values, scales, strict=True):
        factor = torch.tensor(scale, dtype=torch.float32)
        for w, idx, val in zip(dense, row_idx, row_val, strict=True):
            if idx.numel() == 0:
                continue
            flat = w.view(-1)
            step = val.float() * factor.to(val.device)
            flat[idx] = (flat[idx].float() + step).to(w.dtype)
    return saved


@torch.no_grad()
def scatter_restore_(
    dense: Sequence[torch.Tensor],
    indices: Sequence[Sequence[torch.Tensor]],
    saved: Sequence[Sequence[torch.Tensor]],
) -> None:
    """Write ``saved[d][t]`` back at ``indices[d][t]`` (undoes :func:`scatter_add_` exactly), outside
    autograd."""
    for row_idx, row_saved in zip(indices, saved, strict=True):
        for w, idx, old in zip(dense, row_idx, row_saved, strict=True):
            if idx.numel():
                w.view(-1)[idx] = old
