"""Public op: global magnitude top-k over many tensors (``topk_mask``)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Literal

import torch

from deftx.ops import library
from deftx.ops.dispatch import BackendUnavailableError, common_device, requested_backend
from deftx.ops.extensions import subclass_handler
from deftx.ops.validation import as_tensor_list, check_count, check_float_dtype, check_not_meta


def topk_mask(
    tensors: Sequence[torch.Tensor],
    k: int,
    *,
    base: Sequence[torch.Tensor | None] | None = None,
    score: Literal["abs"] = "abs",
    output: Literal["mask", "indices"] = "mask",
    backend: str | None = None,
) -> list[torch.Tensor]:
    """The ``k`` entries of largest ``|value|`` (or ``|value − base|``) across all ``tensors``
    (one global threshold).

    Exactly ``k`` entries are selected, always: among entries tied at the threshold score,
    those with the lowest (position in ``tensors``, flat row-major index) win, so the result
    is deterministic (unlike ``torch.topk``'s tie choice, and unlike a ``>= threshold``
    test, which can return more than ``k``).

    Args:
        tensors: float32 / bfloat16 / float16 tensors of any shapes on one device (θ1 for
            LT-SFT, with ``base``).
        k: number of entries to select, ``0 <= k <= total numel``.
        base: None, or one item per tensor: None (that tensor is ranked by ``|x|``) or a
            tensor of its shape, dtype and device (θ0). Tensor t is then ranked by ``|d|``
            with ``d = fl32(f32(x) − f32(base))``: both widened exactly to fp32, one IEEE
            fp32 subtraction rounded to nearest even, subnormals kept. That is
            ``(x.float() - base.float()).abs()`` (``(x - base).abs()`` for fp32), and the
            selection equals ``topk_mask`` of those materialised differences entry for entry
            and tie for tie, but no difference is ever stored: every backend computes it
            inside each pass over the data.
        score: ``"abs"``: rank by magnitude (the only score).
        output: ``"mask"``: one bool tensor per input, same shape; ``"indices"``: one
            int64 1-D tensor per input, sorted ascending flat indices.
        backend: ``"auto" | "triton" | "native" | "torch"`` (default ``$DEFTX_BACKEND`` or auto).
            DTensor inputs (sharded parameters) go to the handler ``deftx.distributed``
            registers (:mod:`deftx.ops.extensions`): histograms are all-reduced, nothing is
            gathered, and the masks are DTensors; that handler runs torch ops, so an explicit
            ``"native"`` or ``"triton"`` raises :class:`~deftx.ops.BackendUnavailableError` there.

    Raises:
        ValueError: empty list, NaN scores (names the tensor), k out of range, bad options,
            a base of another shape or device, or a base list of another length.
        TypeError: non-floating tensors, a base of another dtype.

    NaN scores are found by the selection itself (in its first pass over the data), which is
    read back once with the per-tensor counts: on CUDA a call makes one host sync, and a
    fixed number of launches whatever the number of tensors (see :mod:`deftx.kernels.topk`).
    The masks are views of one buffer. An eager call runs the backend directly (no
    ``torch._dynamo`` import, see :mod:`deftx.ops.library`).
    """
    items = as_tensor_list(tensors, "topk_mask")
    if not items:
        raise ValueError("topk_mask: the list of tensors is empty")
    bases = _base_list(base, len(items))
    if score != "abs":
        raise ValueError(f"topk_mask: score must be 'abs', got {score!r}")
    if output not in ("mask", "indices"):
        raise ValueError(f"topk_mask: output must be 'mask' or 'indices', got {output!r}")
    wanted = requested_backend(backend)
    sharded = subclass_handler("topk", [*items, *bases])
    if sharded is not None:
        _check_subclass_backend(backend, [*items, *(b for b in bases if b is not None)])
        return sharded(items, k, output=output, base=bases)
    for i, t in enumerate(items):
        check_float_dtype(t, f"topk_mask: tensor {i}")
        check_not_meta(t, f"topk_mask: tensor {i}")
    _check_bases(items, bases)
    common_device(items, "topk_mask")
    check_count(k, sum(t.numel() for t in items), "topk_mask")
    contiguous = [t.detach().contiguous() for t in items]
    contiguous_bases = [None if b is None else b.detach().contiguous() for b in bases]
    flat, stats = library.topk_indices(contiguous, contiguous_bases, k, output == "mask", wanted)
    *counts, nan_count = stats.tolist()
    if nan_count:
        raise nan_error(items, "topk_mask", bases)
    if output == "indices":
        return list(flat.split(counts))
    return positions_to_masks(flat, [t.shape for t in items])


def _check_subclass_backend(backend: str | None, tensors: Sequence[torch.Tensor]) -> None:
    """Tensor-subclass inputs (DTensor) run their registered handler, torch ops on the local data:
    an explicit ``backend`` argument other than auto or torch raises :class:`BackendUnavailableError`
    (``$DEFTX_BACKEND`` is a preference for every op and gives way)."""
    if backend is None or requested_backend(backend) in ("auto", "torch"):
        return
    kind = next(type(t).__name__ for t in tensors if type(t) not in (torch.Tensor, torch.nn.Parameter))
    raise BackendUnavailableError(f"topk_mask: backend {backend!r} cannot run on {kind} inputs: they go to their "
                                  "registered handler (deftx.distributed for DTensor), which runs torch ops on the "
                                  "local shards; pass backend='auto' or 'torch'")


def _base_list(base: Sequence[torch.Tensor | None] | None, count: int) -> list[torch.Tensor | None]:
    """``base`` as a list of ``count`` items (all None when ``base`` is None)."""
    if base is None:
        return [None] * count
    if isinstance(base, torch.Tensor):
        raise TypeError("topk_mask: base must be a list (one item per tensor), got a single tensor (wrap it in [...])")
    bases = list(base)
    if len(bases) != count:
        raise ValueError(f"topk_mask: base has {len(bases)} items for {count} tensors")
    for i, b in enumerate(bases):
        if b is not None and not isinstance(b, torch.Tensor):
            raise TypeError(f"topk_mask: base {i} is {type(b).__name__}, not a torch.Tensor or None")
    return bases


def _check_bases(tensors: Sequence[torch.Tensor], bases: Sequence[torch.Tensor | None]) -> None:
    """Every base has its tensor's shape, dtype and device, and data."""
    for i, (t, b) in enumerate(zip(tensors, bases, strict=True)):
        if b is None:
            continue
        check_not_meta(b, f"topk_mask: base {i}")
        if b.dtype != t.dtype:
            raise TypeError(f"topk_mask: base {i} has dtype {b.dtype}, its tensor {t.dtype}; cast one of them")
        if b.shape != t.shape:
            raise ValueError(f"topk_mask: base {i} has shape {tuple(b.shape)}, its tensor {tuple(t.shape)}")
        if b.device != t.device:
            raise ValueError(f"topk_mask: base {i} is on {b.device}, its tensor on {t.device}")


def nan_error(tensors: Sequence[torch.Tensor], what: str,
              bases: Sequence[torch.Tensor | None] | None = None) -> ValueError:
    """The error for NaN scores, naming the first tensor (or difference to its base) that holds
    one and how many (reads them)."""
    paired = bases if bases is not None else [None] * len(tensors)
    for position, (t, b) in enumerate(zip(tensors, paired, strict=True)):
        count = int(torch.isnan(t if b is None else t.float() - b.float()).sum())
        if count:
            subject = f"tensor {position} (shape {tuple(t.shape)})" + ("" if b is None else " minus its base")
            return ValueError(f"{what}: {subject} contains {count} NaN value(s); magnitudes of NaN have no order")
    return ValueError(f"{what}: the selection reported NaN values, but none is found in the inputs")


def indices_to_mask(indices: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Boolean tensor of ``shape`` that is True exactly at the flat ``indices`` (int, any order).

    Raises:
        IndexError: an index outside ``[0, numel)`` (a negative one would count from the end).
    """
    if indices.numel():
        low, high = torch.stack([indices.min(), indices.max()]).tolist()
        if low < 0 or high >= shape.numel():
            raise IndexError(f"indices_to_mask: indices span [{low}, {high}], outside [0, {shape.numel()}) "
                             f"of shape {tuple(shape)}")
    mask = torch.zeros(shape.numel(), dtype=torch.bool, device=indices.device)
    mask[indices] = True
    return mask.view(shape)


def positions_to_masks(positions: torch.Tensor, shapes: Sequence[torch.Size]) -> list[torch.Tensor]:
    """One boolean mask per shape, True exactly at the selected ``positions``.

    Args:
        positions: int64 (K,) positions in the concatenation of the flattened tensors.
        shapes: the tensors' shapes.

    The masks are views of one buffer filled by one scatter: two launches whatever the
    number of tensors.
    """
    numels = [shape.numel() for shape in shapes]
    starts = [0, *itertools.accumulate(numels)]
    buffer = torch.zeros(starts[-1], dtype=torch.bool, device=positions.device)
    buffer.index_fill_(0, positions, True)
    spans = zip(starts[:-1], numels, shapes, strict=True)
    return [buffer[start: start + numel].view(shape) for start, numel, shape in spans]
