"""Input checks shared by the public ops: clear messages that name the offending tensor."""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence

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
    """Raise TypeError unless ``t`` is fp32, bf16 or fp16."""
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{what} has dtype {t.dtype}; expected float32, bfloat16 or float16")


def check_not_meta(t: torch.Tensor, what: str) -> None:
    """ValueError for a meta tensor, in ops whose result depends on the values (top-k, the SVD).

    Ops that only move data (scatter, the masked step) run on meta tensors through their
    fake kernels, reading nothing.
    """
    if t.is_meta:
        raise ValueError(f"{what} is a meta tensor (it holds no data: materialise it first)")


def named_tensors(name: str, tensors: Sequence[torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:
    """``(f"{name} {t}", tensor)`` of each tensor (for :func:`check_no_grad`'s messages)."""
    return ((f"{name} {t}", x) for t, x in enumerate(tensors))


def check_no_grad(written: Iterable[tuple[str, torch.Tensor]], read: Iterable[tuple[str, torch.Tensor]],
                  what: str) -> None:
    """RuntimeError when grad mode is on and autograd would get an in-place op's gradients wrong.

    The in-place ops (scatter, the masked step) write raw memory and have no derivative. A
    ``written`` tensor with autograd history (a non-leaf that requires grad) would keep its old
    history, so gradients would flow through the overwritten entries; a ``read`` tensor that
    requires grad would get no gradient. A written leaf (an ``nn.Parameter``) has no history to
    get wrong: it is written as a plain tensor. The ``(name in messages, tensor)`` pairs are read
    only in grad mode (pass generators: nothing is built under ``torch.no_grad()``).
    """
    if not torch.is_grad_enabled():
        return
    advice = "call it under torch.no_grad(), or pass a detached tensor"
    for name, t in written:
        if t.grad_fn is not None:
            raise RuntimeError(f"{what}: {name} has autograd history and the op writes it in place with no "
                               f"derivative (autograd would not see the write: wrong gradients); {advice}")
    for name, t in read:
        if t.requires_grad:
            raise RuntimeError(f"{what}: {name} requires grad, and the op has no derivative (it would get no "
                               f"gradient); {advice}")


def check_finite(t: torch.Tensor, what: str) -> None:
    """Raise ValueError naming ``what`` when ``t`` holds NaN or ±Inf (one pass, one host sync)."""
    bad = int((~torch.isfinite(t)).sum())
    if bad:
        raise ValueError(f"{what} (shape {tuple(t.shape)}) contains {bad} NaN/Inf value(s)")


def check_disjoint(tensors: Sequence[torch.Tensor], what: str) -> None:
    """ValueError if two of the contiguous ``tensors`` share memory (one tensor passed twice, or views)."""
    spans = sorted(
        (t.data_ptr(), t.data_ptr() + t.numel() * t.element_size(), i)
        for i, t in enumerate(tensors)
        if t.numel() and not t.is_meta
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


class _VerifiedIndices:
    """Index tensors already proven valid: tensor identity -> (weak reference, version, bound).

    An entry holds while the very tensor is alive, has not been written in place since
    (its version counter is unchanged; views share it) and is used with the same bound.
    """

    def __init__(self) -> None:
        self._entries: dict[int, tuple[weakref.ref, int, int]] = {}

    @staticmethod
    def _version(idx: torch.Tensor) -> int | None:
        try:
            return idx._version
        except RuntimeError:  # inference tensors have no version counter: never trusted
            return None

    def bound(self, idx: torch.Tensor) -> int | None:
        """The bound ``idx`` was verified for, if that still holds; else None."""
        entry = self._entries.get(id(idx))
        if entry is None:
            return None
        ref, version, bound = entry
        if ref() is not idx or self._version(idx) != version:
            return None
        return bound

    def add(self, idx: torch.Tensor, bound: int) -> None:
        version = self._version(idx)
        if version is None:
            return
        key = id(idx)

        def forget(dead: weakref.ref, entries=self._entries, key=key) -> None:
            if entries.get(key, (None,))[0] is dead:
                del entries[key]

        self._entries[key] = (weakref.ref(idx, forget), version, bound)


_VERIFIED = _VerifiedIndices()


def indices_verified(idx: torch.Tensor, bound: int) -> bool:
    """Whether ``idx`` passed :func:`check_indices` for ``bound`` and is unchanged since."""
    return _VERIFIED.bound(idx) == bound


def move_indices(idx: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``idx`` on ``device``; the copy of verified indices counts as verified (no re-check)."""
    moved = idx.to(device)
    bound = _VERIFIED.bound(idx)
    if moved is not idx and bound is not None:
        _VERIFIED.add(moved, bound)
    return moved


def _check_index_metadata(idx: torch.Tensor, what: str) -> None:
    if idx.dtype != torch.int64:
        raise TypeError(f"{what}: indices have dtype {idx.dtype}; expected int64")
    if idx.dim() != 1:
        raise ValueError(f"{what}: indices must be 1-D, got shape {tuple(idx.shape)}")


def _raise_for_values(idx: torch.Tensor, numel: int, what: str) -> None:
    """The error for indices found invalid (reads them again, for the message)."""
    low, high = int(idx.min()), int(idx.max())
    if low < 0 or high >= numel:
        raise IndexError(f"{what}: index range [{low}, {high}] is outside [0, {numel})")
    raise ValueError(f"{what}: indices must be sorted ascending and unique")


def _value_checks(indices: list[torch.Tensor]) -> list[int]:
    """Per tensor (non-empty, one device): first entry, last entry, 1 if not strictly
    ascending — read with one host transfer for all of them."""
    firsts = torch.stack([idx[0] for idx in indices])
    lasts = torch.stack([idx[-1] for idx in indices])
    disorder = torch.stack([(idx[1:] <= idx[:-1]).any() for idx in indices]).long()
    return torch.cat([firsts, lasts, disorder]).tolist()


def check_indices(
    indices: Sequence[torch.Tensor], bounds: Sequence[int], what: Callable[[int], str]
) -> None:
    """Raise unless every ``indices[i]`` is 1-D int64, sorted ascending, unique, in ``[0, bounds[i])``.

    dtype and shape are checked on the host. The values of tensors not verified before
    (the same tensor object, not written since, same bound) are checked on their device
    with one host read for all of them, and the tensors are then recorded as verified: a
    caller that passes the same index tensors on every step pays for the check once.
    Meta tensors have no values to check.

    Args:
        indices: T index tensors, any devices.
        bounds: T exclusive upper bounds (the numel of the tensor each one indexes).
        what: position -> the name used in error messages (``"masked_adamw_step_: param 3"``).

    Raises:
        TypeError / ValueError: dtype or shape; ValueError: not sorted or not unique;
        IndexError: an index out of range (the message gives the range found).
    """
    pending: dict[torch.device, list[int]] = {}
    for i, (idx, bound) in enumerate(zip(indices, bounds, strict=True)):
        _check_index_metadata(idx, what(i))
        if idx.numel() and idx.device.type != "meta" and _VERIFIED.bound(idx) != bound:
            pending.setdefault(idx.device, []).append(i)
    for positions in pending.values():
        values = _value_checks([indices[i] for i in positions])
        count = len(positions)
        for j, i in enumerate(positions):
            first, last, disorder = values[j], values[count + j], values[2 * count + j]
            if first < 0 or last >= bounds[i] or disorder:
                _raise_for_values(indices[i], bounds[i], what(i))
        for i in positions:
            _VERIFIED.add(indices[i], bounds[i])


def check_index_tensor(idx: torch.Tensor, numel: int, what: str) -> None:
    """:func:`check_indices` for one tensor: 1-D int64, sorted unique, in ``[0, numel)``."""
    check_indices([idx], [numel], lambda _: what)


def check_same_devices(
    tensors: Sequence[torch.Tensor], owners: Sequence[torch.Tensor], what: str, owner_name: str
) -> None:
    """ValueError unless ``tensors[t]`` is on ``owners[t]``'s device, for every t (a kernel given
    an address on another device reads or writes memory that is not the tensor's).

    ``what`` names the list (``"masked_adamw_step_: masters"``), ``owner_name`` one owner (``"param"``).
    """
    for t, (tensor, owner) in enumerate(zip(tensors, owners, strict=True)):
        if tensor.device != owner.device:
            raise ValueError(f"{what}[{t}] is on {tensor.device}, {owner_name} {t} on {owner.device}")


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
