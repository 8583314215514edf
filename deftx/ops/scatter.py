"""Public ops: sparse scatter-add of several diffs onto dense tensors, and its exact undo; and the
same composition prepared once for repeated apply / restore (:func:`prepare_scatter`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import Protocol

import torch
from torch.autograd.graph import increment_version

from deftx.ops import library
from deftx.ops.dispatch import backend_for, common_device, device_guard, requested_backend
from deftx.ops.validation import (
    as_tensor_list,
    check_disjoint,
    check_float_dtype,
    check_indices,
    check_no_grad,
    named_tensors,
)

FP32_OVERFLOW = 2.0**128 - 2.0**103
"""The least magnitude that rounds to Inf in fp32 (the scales are applied as fp32); NaN compares false."""


def _check_dense(dense: list[torch.Tensor], what: str) -> None:
    for t, w in enumerate(dense):
        check_float_dtype(w, f"{what}: dense tensor {t}")
        if not w.is_contiguous():
            raise ValueError(f"{what}: dense tensor {t} is not contiguous (it is updated in place)")
    common_device(dense, what)
    check_disjoint(dense, f"{what}: dense")


def _check_rows(
    dense: list[torch.Tensor],
    indices: Sequence[Sequence[torch.Tensor]],
    payload: Sequence[Sequence[torch.Tensor]],
    payload_name: str,
    what: str,
) -> None:
    """Every diff row matches the dense tensors; indices are checked together, once per tensor."""
    if len(indices) != len(payload):
        raise ValueError(f"{what}: {len(indices)} index rows but {len(payload)} {payload_name} rows")
    for name, rows in (("indices", indices), (payload_name, payload)):
        if any(isinstance(row, torch.Tensor) for row in rows):
            raise TypeError(f"{what}: {name} must be one list of tensors per diff (D rows of T tensors: "
                            f"[[t0, t1, ...]] for one diff), got a list of tensors")
    width = len(dense)
    for d, (row_idx, row_val) in enumerate(zip(indices, payload, strict=True)):
        if len(row_idx) != width or len(row_val) != width:
            raise ValueError(
                f"{what}: diff {d} has {len(row_idx)} index and {len(row_val)} {payload_name} "
                f"tensors for {width} dense tensors"
            )
        for t, (w, idx, val) in enumerate(zip(dense, row_idx, row_val, strict=True)):
            where = f"{what}: diff {d}, tensor {t}"
            check_float_dtype(val, f"{where} {payload_name}")
            if val.dim() != 1 or val.numel() != idx.numel():
                raise ValueError(
                    f"{where}: {payload_name} shape {tuple(val.shape)} does not match {idx.numel()} indices"
                )
            if idx.device != w.device or val.device != w.device:
                raise ValueError(f"{where}: indices/{payload_name} must be on {w.device}")
    check_indices(
        [idx for row in indices for idx in row],
        [w.numel() for _ in indices for w in dense],
        lambda i: f"{what}: diff {i // width}, tensor {i % width}",
    )


def _checked(
    dense: Sequence[torch.Tensor],
    indices: Sequence[Sequence[torch.Tensor]],
    values: Sequence[Sequence[torch.Tensor]],
    scales: Sequence[float] | None,
    what: str,
) -> tuple[list[torch.Tensor], list[float]]:
    """The dense tensors as a list and the D scales (default all 1.0), everything checked."""
    items = as_tensor_list(dense, what)
    _check_dense(items, what)
    scales = [1.0] * len(indices) if scales is None else [float(s) for s in scales]
    if len(scales) != len(indices):
        raise ValueError(f"{what}: {len(scales)} scales for {len(indices)} diffs")
    if not all(abs(s) < FP32_OVERFLOW for s in scales):
        raise ValueError(f"{what}: scales must be finite in fp32, got {scales} (a NaN or Inf scale would be "
                         "written into every entry of its diff)")
    _check_rows(items, indices, values, "values", what)
    check_no_grad(named_tensors("dense tensor", items), _named_rows(values, "values"), what)
    return items, scales


def _named_rows(rows: Sequence[Sequence[torch.Tensor]], payload_name: str) -> Iterator[tuple[str, torch.Tensor]]:
    """``(f"diff {d}, tensor {t} {payload_name}", tensor)`` of each diff's payload tensors."""
    for d, row in enumerate(rows):
        yield from ((f"diff {d}, tensor {t} {payload_name}", v) for t, v in enumerate(row))


def scatter_add_(
    dense: Sequence[torch.Tensor],
    indices: Sequence[Sequence[torch.Tensor]],
    values: Sequence[Sequence[torch.Tensor]],
    scales: Sequence[float] | None = None,
    *,
    save: bool = False,
    backend: str | None = None,
) -> list[list[torch.Tensor]] | None:
    """Add D sparse diffs onto T dense tensors in place, in one pass.

    For each diff ``d`` in order and each entry ``i = indices[d][t][j]``:
    ``dense[t].flat[i] = cast(f32(dense[t].flat[i]) + f32(scales[d]) * f32(values[d][t][j]))``
    (two roundings, no fused multiply-add), so applying diffs together equals applying
    them one after another, bit for bit, on every backend. Deterministic: no float atomics.

    Args:
        dense: T contiguous fp32/bf16/fp16 tensors (updated in place).
        indices: D rows of T int64 1-D tensors, sorted ascending, unique, in range.
        values: D rows of T 1-D float tensors matching ``indices``.
        scales: D floats (default all 1.0), each finite in fp32 (checked: ValueError).
        save: also return the original values at every diff's indices (dense dtype),
            gathered before anything is added; pass them to :func:`scatter_restore_`.

    Overflow is not checked: with finite scales, a product beyond fp32's range, or a sum beyond
    the dense dtype's (65504 in fp16), rounds to ±Inf and is written, as ``Tensor.to(dtype)``
    rounds (checking would be another pass over every entry). :func:`scatter_restore_` still
    writes the saved originals back exactly.

    Not differentiable: with grad mode on, a dense tensor with autograd history (a non-leaf that
    requires grad) or a value tensor that requires grad raises RuntimeError (autograd would not
    see the write); call it under ``torch.no_grad()``. ``nn.Parameter`` s are written as plain
    tensors.

    The index values are checked once per index tensor (see
    :func:`~deftx.ops.validation.check_indices`): :func:`deftx.sft.apply_diffs` passes
    indices checked when its SparseDiffs were loaded, and reverting passes the same tensors,
    so neither reads anything back from the device.
    """
    items, scales = _checked(dense, indices, values, scales, "scatter_add_")
    if not items or not indices:
        return [[] for _ in indices] if save else None
    saved = (
        [[idx.new_empty(idx.shape, dtype=w.dtype) for w, idx in zip(items, row, strict=True)] for row in indices]
        if save
        else []
    )
    library.scatter_add(
        items,
        [t for row in indices for t in row],
        [t for row in values for t in row],
        scales,
        [t for row in saved for t in row],
        requested_backend(backend),
    )
    return saved if save else None


def scatter_restore_(
    dense: Sequence[torch.Tensor],
    indices: Sequence[Sequence[torch.Tensor]],
    saved: Sequence[Sequence[torch.Tensor]],
    *,
    backend: str | None = None,
) -> None:
    """Write the values saved by :func:`scatter_add_` back: the exact inverse, bit for bit."""
    items = as_tensor_list(dense, "scatter_restore_")
    _check_dense(items, "scatter_restore_")
    _check_rows(items, indices, saved, "saved", "scatter_restore_")
    for row_saved in saved:
        for t, (w, old) in enumerate(zip(items, row_saved, strict=True)):
            if old.dtype != w.dtype:
                raise TypeError(f"scatter_restore_: saved tensor {t} is {old.dtype}, dense is {w.dtype}")
    check_no_grad(named_tensors("dense tensor", items), _named_rows(saved, "saved"), "scatter_restore_")
    if items and indices:
        library.scatter_restore(
            items, [t for row in indices for t in row], [t for row in saved for t in row], requested_backend(backend)
        )


class _Runner(Protocol):
    """What a backend's prepared composition offers (Triton's ``PreparedScatter``, or :class:`_Unplanned`)."""

    saved: list[list[torch.Tensor]]

    def apply(self) -> None: ...

    def restore(self) -> None: ...


class _Unplanned:
    """A prepared composition for the backends without a planned one (native, torch): the
    checked lists, each call straight to the backend with the saved buffers allocated once."""

    def __init__(self, module: ModuleType, dense: list[torch.Tensor], indices: list[list[torch.Tensor]],
                 values: list[list[torch.Tensor]], scales: list[float]) -> None:
        self._module = module
        self._lists = (dense, indices, values, scales)
        self.saved = [[i.new_empty(i.shape, dtype=w.dtype) for w, i in zip(dense, row, strict=True)] for row in indices]

    def apply(self) -> None:
        self._module.scatter_add_(*self._lists, True, self.saved)

    def restore(self) -> None:
        dense, indices, _, _ = self._lists
        self._module.scatter_restore_(dense, indices, self.saved)


class PreparedScatter:
    """D diffs prepared once for repeated, exact composition onto T dense tensors.

    Built by :func:`prepare_scatter`, which checks everything and plans once; then
    :meth:`apply` adds the diffs in place, saving the originals in :attr:`saved`, and
    :meth:`restore` writes them back, with results bit-identical to :func:`scatter_add_`
    (``save=True``) and :func:`scatter_restore_`. On the Triton backend each is one launch per
    dense dtype, with no per-tensor work, no allocation and no host sync. Apply and restore
    alternate, starting with apply. Eager only (not for ``torch.compile`` tracing).

    The dense tensors must keep their storage, and the index / value tensors their contents,
    while the object is used.
    """

    def __init__(self, dense: list[torch.Tensor], values: list[list[torch.Tensor]], runner: _Runner) -> None:
        self._dense = dense
        self._values = values
        self._runner = runner
        self.applied = False

    @property
    def saved(self) -> list[list[torch.Tensor]]:
        """saved[d][t]: (K_dt,) of dense[t]'s dtype, the originals at indices[d][t] of the last apply."""
        return self._runner.saved

    def apply(self) -> list[list[torch.Tensor]]:
        """Add every diff in place (originals saved first); returns :attr:`saved`."""
        if self.applied:
            raise RuntimeError("PreparedScatter.apply: already applied (restore first)")
        check_no_grad(named_tensors("dense tensor", self._dense), _named_rows(self._values, "values"),
                      "PreparedScatter.apply")
        if self._dense:
            with device_guard(self._dense[0].device):
                self._runner.apply()
            increment_version(self._dense)
        self.applied = True
        return self.saved

    def restore(self) -> None:
        """Write the saved originals back: the exact inverse of :meth:`apply`, bit for bit."""
        if not self.applied:
            raise RuntimeError("PreparedScatter.restore: nothing applied")
        check_no_grad(named_tensors("dense tensor", self._dense), [], "PreparedScatter.restore")
        if self._dense:
            with device_guard(self._dense[0].device):
                self._runner.restore()
            increment_version(self._dense)
        self.applied = False


def prepare_scatter(
    dense: Sequence[torch.Tensor],
    indices: Sequence[Sequence[torch.Tensor]],
    values: Sequence[Sequence[torch.Tensor]],
    scales: Sequence[float] | None = None,
    *,
    backend: str | None = None,
) -> PreparedScatter:
    """Check and plan the composition of D diffs onto T dense tensors once (see :func:`scatter_add_`
    for the arguments and the arithmetic); returns a :class:`PreparedScatter` to apply and
    restore repeatedly. On Triton the address tables are uploaded and the work units searched
    here (a few launches), the saved buffers allocated here."""
    items, scales = _checked(dense, indices, values, scales, "prepare_scatter")
    rows_idx = [list(row) for row in indices]
    rows_val = [list(row) for row in values]
    device = common_device(items, "prepare_scatter")
    module = backend_for("scatter", device, requested_backend(backend))
    planned = getattr(module, "PreparedScatter", None)
    with device_guard(device):
        runner = (planned(items, rows_idx, rows_val, scales) if planned is not None
                  else _Unplanned(module, items, rows_idx, rows_val, scales))
    return PreparedScatter(items, rows_val, runner)
