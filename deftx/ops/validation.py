"""Input checks shared by the public ops: clear messages that name the offending tensor."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch

FLOAT_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16, torch.float16)


def as_tensor_list(tensors: Sequence[torch.Tensor], what: str) -> list[torch.Tensor]:
    """``tensors`` as a list; rejects a bare tensor and non-tensor items."""
    if isinstance(tensors, torch.Tensor):
        raise TypeError(f"{what}: expected a list of tensors, got a single tensor (wrap it in [...])")
    items = list(tensors)
    for i, t in enumerate(items):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{what}: item {i} is {type(t).__name__}, not a torch.Tensor")
    return items


def check_float_dtype(t: torch.Tensor, what: str) -> None:
    """Raise TypeError unless ``t`` is fp32, bf16 or fp16; ValueError for a meta tensor (it holds no data)."""
    if t.is_meta:
        raise ValueError(f"{what} is a meta tensor (it holds no data: materialise it first)")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{what} has dtype {t.dtype}; expected float32, bfloat16 or float16")


def check_no_nan(tensors: Sequence[torch.Tensor], what: str) -> None:
    """Raise ValueError naming the first tensor that holds a NaN (one host sync in all)."""
    if not tensors:
        return
    flags = torch.stack([torch.isnan(t).any() for t in tensors]).cpu()
    if bool(flags.any()):
        first = int(flags.nonzero()[0])
        bad = tensors[first]
        count = int(torch.isnan(bad).sum())
        raise ValueError(
            f"{what}: tensor {first} (shape {tuple(bad.shape)}) contains {count} NaN value(s); "
            "magnitudes of NaN have no order"
        )


def check_finite(t: torch.Tensor, what: str) -> None:
    """Raise ValueError naming ``what`` when ``t`` holds NaN or ±Inf (one pass, one host sync)."""
    bad = int((~torch.isfinite(t)).sum())
    if bad:
        raise ValueError(f"{what} (shape {tuple(t.shape)}) contains {bad} NaN/Inf value(s)")


def check_disjoint(tensors: Sequence[torch.Tensor], what: str) -> None:
    """ValueError if two of the contiguous ``tensors`` share memory (one tensor passed twice, or views)."""
    spans = sorted(
        (t.data_ptr(), t.data_ptr() + t.numel() * t.element_size(), i) for i, t in enumerate(tensors) if t.numel()
    )
    for (_, end, first), (start, _, second) in itertools.pairwise(spans):
        if start < end:
            raise ValueError(f"{what}: tensors {first} and {second} overlap in memory (pass each tensor once)")


def check_count(k: object, total: int, what: str) -> int:
    """``k`` as an int in [0, total]; rejects bools, floats and out-of-range values."""
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"{what}: k must be an int, got {type(k).__name__}")
    if k < 0 or k > total:
        raise ValueError(f"{what}: k = {k} is out of range [0, {total}] (total entries)")
    return k


def check_index_tensor(idx: torch.Tensor, numel: int, what: str) -> None:
    """Raise unless ``idx`` is a 1-D int64 tensor of sorted unique indices in [0, numel)."""
    if idx.is_meta:
        raise ValueError(f"{what}: indices are a meta tensor (they hold no data)")
    if idx.dtype != torch.int64:
        raise TypeError(f"{what}: indices have dtype {idx.dtype}; expected int64")
    if idx.dim() != 1:
        raise ValueError(f"{what}: indices must be 1-D, got shape {tuple(idx.shape)}")
    if idx.numel() == 0:
        return
    low, high = int(idx.min()), int(idx.max())
    if low < 0 or high >= numel:
        raise IndexError(f"{what}: index range [{low}, {high}] is outside [0, {numel})")
    if idx.numel() > 1 and not bool((idx[1:] > idx[:-1]).all()):
        raise ValueError(f"{what}: indices must be sorted ascending and unique")


def check_state_tensors(states: Sequence[torch.Tensor], indices: Sequence[torch.Tensor], what: str) -> None:
    """ValueError unless ``states[t]`` is a contiguous fp32 tensor of ``indices[t]``'s shape, for every t.

    ``what`` names the list in messages, e.g. ``"masked_adamw_step_: masters"``.
    """
    if len(states) != len(indices):
        raise ValueError(f"{what}: {len(states)} tensors for {len(indices)} index tensors")
    for t, (state, index) in enumerate(zip(states, indices, strict=True)):
        if state.dtype != torch.float32 or state.shape != index.shape or not state.is_contiguous():
            raise ValueError(
                f"{what}[{t}] must be a contiguous float32 tensor of shape {tuple(index.shape)}, "
                f"got {'' if state.is_contiguous() else 'non-contiguous '}{state.dtype} {tuple(state.shape)}"
            )
