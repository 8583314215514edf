"""Apply SparseDiffs onto a model in place (one fused scatter-add) and revert them bit-exactly.

Revert does not subtract ((w + d) − d ≠ w in floating point): the values a diff
overwrites are gathered before the add and written back on revert. Diffs applied to one
model form a stack: revert the latest first.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import torch

from deftx.ops import scatter_add_, scatter_restore_
from deftx.ops.validation import move_indices

if TYPE_CHECKING:
    from deftx.sft.diff import SparseDiff

_APPLIED: weakref.WeakKeyDictionary[torch.nn.Module, list[AppliedDiffs]] = weakref.WeakKeyDictionary()


def base_model_id(model: torch.nn.Module) -> str | None:
    """The identifier a model reports for its base weights (config ``deftx_base_model`` or name)."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    return getattr(config, "deftx_base_model", None) or getattr(config, "_name_or_path", None) or None


def resolve_parameter(model: torch.nn.Module, params: dict[str, torch.nn.Parameter], name: str) -> str:
    """The model's parameter name for a diff entry ``name``.

    Accepts the exact name, or the name with/without the model's ``base_model_prefix``
    (so a diff trained on ``BertForMaskedLM`` applies to ``BertForSequenceClassification``
    and to a bare ``BertModel``).
    """
    prefix = getattr(model, "base_model_prefix", "") or ""
    candidates = [name]
    if prefix:
        candidates += [f"{prefix}.{name}", name.removeprefix(f"{prefix}.")]
    for candidate in candidates:
        if candidate in params:
            return candidate
    raise KeyError(f"SparseDiff parameter {name!r} is not in the model ({type(model).__name__})")


class AppliedDiffs:
    """Handle of diffs applied to a model: what is needed to revert them exactly."""

    def __init__(
        self,
        model: torch.nn.Module,
        diffs: list[SparseDiff],
        targets: list[torch.Tensor],
        indices: list[list[torch.Tensor]],
        saved: list[list[torch.Tensor]],
        dense_saved: list[tuple[torch.Tensor, torch.Tensor]],
    ) -> None:
        self._model = weakref.ref(model)
        self.diffs = diffs
        self._targets = targets
        self._indices = indices
        self._saved = saved
        self._dense_saved = dense_saved
        self.reverted = False

    def revert(self) -> None:
        """Restore every overwritten value; must be the latest diffs applied to the model."""
        model = self._model()
        if self.reverted:
            raise RuntimeError("these diffs were already reverted")
        if model is None:
            raise RuntimeError("the model these diffs were applied to no longer exists")
        stack = _APPLIED.get(model, [])
        if not stack or stack[-1] is not self:
            raise RuntimeError("revert the diffs applied after these first (reverts go in reverse order)")
        restore_saved(self._targets, self._indices, self._saved, self._dense_saved)
        stack.pop()
        self.reverted = True


def restore_saved(
    targets: list[torch.Tensor],
    indices: list[list[torch.Tensor]],
    saved: list[list[torch.Tensor]],
    dense_saved: list[tuple[torch.Tensor, torch.Tensor]],
) -> None:
    """Write back what an apply overwrote: the gathered sparse values, then the dense tensors' copies."""
    with torch.no_grad():
        if targets:
            scatter_restore_(targets, indices, saved)
        for target, original in dense_saved:
            target.copy_(original)


def check_compatible(
    model: torch.nn.Module,
    params: Mapping[str, torch.Tensor],
    diffs: Sequence[SparseDiff],
    strict_dtype: bool,
    check_base: bool,
) -> dict[str, str]:
    """Validate every diff against the model before anything is written; diff name -> model name.

    ``params``: the model's named parameters (global shapes for DTensors).

    Raises:
        KeyError: a diff entry names no parameter of the model.
        ValueError: a shape differs, or the diff was made for another base model.
        TypeError: a dtype differs and ``strict_dtype`` is set.
    """
    resolved: dict[str, str] = {}
    model_id = base_model_id(model)
    for diff in diffs:
        if check_base and diff.base_model and model_id and diff.base_model != model_id:
            raise ValueError(
                f"SparseDiff was made for base model {diff.base_model!r}, the model is {model_id!r} "
                "(pass check_base=False to apply anyway)"
            )
        for name, info in diff.params.items():
            target = params[resolved.setdefault(name, resolve_parameter(model, params, name))]
            if tuple(target.shape) != info.shape:
                raise ValueError(f"SparseDiff[{name!r}]: shape {info.shape} != model shape {tuple(target.shape)}")
            if strict_dtype and target.dtype != info.dtype:
                raise TypeError(
                    f"SparseDiff[{name!r}]: made for {info.dtype}, model parameter is {target.dtype} "
                    "(pass strict_dtype=False to apply across dtypes)"
                )
        for name, tensor in diff.dense.items():
            target = params[resolved.setdefault(name, resolve_parameter(model, params, name))]
            if target.shape != tensor.shape:
                raise ValueError(
                    f"SparseDiff dense[{name!r}]: shape {tuple(tensor.shape)} != model shape {tuple(target.shape)}"
                )
    return resolved


Localize = Callable[[int, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def entries_per_target(
    diffs: Sequence[SparseDiff],
    resolved: Mapping[str, str],
    names: Sequence[str],
    targets: Sequence[torch.Tensor],
    localize: Localize | None = None,
) -> tuple[list[list[torch.Tensor]], list[list[torch.Tensor]]]:
    """The scatter operands: per diff, per target tensor, its (int64 indices, fp32 values).

    ``names[t]`` is the model parameter behind ``targets[t]``; a diff without entries for a
    target gets empty tensors. ``localize(t, indices, values)`` maps a diff's global entries
    to those ``targets[t]`` holds (a rank's shard); by default they are taken whole.
    """
    position = {n: i for i, n in enumerate(names)}
    indices, values = [], []
    for diff in diffs:
        row_idx = [torch.empty(0, dtype=torch.int64, device=t.device) for t in targets]
        row_val = [torch.empty(0, dtype=torch.float32, device=t.device) for t in targets]
        for name, idx in diff.indices.items():
            slot = position[resolved[name]]
            idx, val = (idx, diff.values[name]) if localize is None else localize(slot, idx, diff.values[name])
            row_idx[slot] = move_indices(idx, targets[slot].device)
            row_val[slot] = val.to(targets[slot].device)
        indices.append(row_idx)
        values.append(row_val)
    return indices, values


def apply_diffs(
    model: torch.nn.Module,
    diffs: Sequence[SparseDiff],
    scales: Sequence[float] | None = None,
    *,
    strict_dtype: bool = True,
    check_base: bool = True,
    backend: str | None = None,
) -> AppliedDiffs:
    """Add ``diffs`` (times ``scales``) onto ``model``'s parameters in place, in one launch.

    Every diff is validated against the model first (names, shapes, dtypes, base model);
    nothing is written if any check fails. Dense tensors of the diffs replace the model's.
    Returns a handle whose :meth:`AppliedDiffs.revert` restores the exact original bits.
    """
    diffs = list(diffs)
    scales = [1.0] * len(diffs) if scales is None else [float(s) for s in scales]
    if len(scales) != len(diffs):
        raise ValueError(f"apply_diffs: {len(scales)} scales for {len(diffs)} diffs")
    params = dict(model.named_parameters())
    resolved = check_compatible(model, params, diffs, strict_dtype, check_base)
    sparse_names = sorted({resolved[n] for d in diffs for n in d.indices})
    targets = [params[n].detach() for n in sparse_names]
    indices, values = entries_per_target(diffs, resolved, sparse_names, targets)
    dense_saved = []
    with torch.no_grad():
        saved = scatter_add_(targets, indices, values, scales, save=True, backend=backend) or []
        for diff in diffs:
            for name, tensor in diff.dense.items():
                target = params[resolved[name]].detach()
                dense_saved.append((target, target.clone()))
                target.copy_(tensor.to(target.device, target.dtype))
    handle = AppliedDiffs(model, diffs, targets, indices, saved, dense_saved)
    _APPLIED.setdefault(model, []).append(handle)
    return handle


def revert_diff(model: torch.nn.Module, diff: SparseDiff) -> None:
    """Revert the latest application of ``diff`` on ``model`` (it must be on top of the stack)."""
    stack = _APPLIED.get(model, [])
    for handle in reversed(stack):
        if any(d is diff for d in handle.diffs):
            handle.revert()
            return
    raise RuntimeError("this SparseDiff is not applied to this model")
