"""Apply SparseDiffs onto a model in place (one fused scatter-add) and revert them bit-exactly.

Applying diffs together equals applying them one after another: for each parameter, the
last diff that ships it as a dense tensor replaces it, sparse entries of earlier diffs on
it are overwritten by that replacement (so they are skipped), and sparse entries of later
diffs are added on top. In one call the replacements are written first, then the sparse
entries of every diff in one fused scatter-add.

Revert does not subtract ((w + d) − d ≠ w in floating point): what each write overwrites
is saved before it, and revert writes it back in the reverse order (the sparse entries,
then the dense tensors), so the original bits come back whatever the diffs touch. Diffs
applied to one model form a stack: revert the latest first. Applies and reverts on one
model are serialised by a per-model lock, so threads sharing a model cannot interleave
their writes.

An entry whose change rounds away in the parameter's dtype (a small fp32 difference added
onto a bf16 or fp16 weight) is lost: it is counted before anything is written, reported in
the handle (:attr:`AppliedDiffs.rounding_loss`) and, by default, in a
:class:`RoundingLossWarning`; ``on_rounding_loss="error"`` refuses such an apply instead.
"""

from __future__ import annotations

import math
import threading
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch

from deftx.ops import scatter_add_, scatter_restore_
from deftx.ops.validation import move_indices

if TYPE_CHECKING:
    from deftx.sft.diff import SparseDiff

OnRoundingLoss = Literal["warn", "error", "ignore"]
ROUNDING_POLICIES: tuple[str, ...] = ("warn", "error", "ignore")

_APPLIED: weakref.WeakKeyDictionary[torch.nn.Module, list[AppliedDiffs]] = weakref.WeakKeyDictionary()
_LOCKS: weakref.WeakKeyDictionary[torch.nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


class RoundingLossWarning(UserWarning):
    """Some diff entries round to no change in their parameter's dtype (they are lost)."""


class RoundingLossError(ValueError):
    """Raised instead of :class:`RoundingLossWarning` with ``on_rounding_loss="error"``."""


def model_lock(model: torch.nn.Module) -> threading.RLock:
    """The lock serialising applies and reverts on ``model`` (one per model, re-entrant)."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


def base_model_id(model: torch.nn.Module) -> str | None:
    """The identifier a model reports for its base weights (config ``deftx_base_model`` or name)."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    return getattr(config, "deftx_base_model", None) or getattr(config, "_name_or_path", None) or None


def resolve_parameter(model: torch.nn.Module, params: Mapping[str, torch.Tensor], name: str) -> str:
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


def check_scales(scales: Sequence[float] | None, count: int, what: str) -> list[float]:
    """``count`` finite floats (default all 1.0); ValueError for a wrong count, NaN or Inf."""
    if scales is None:
        return [1.0] * count
    values = []
    for scale in scales:
        try:
            value = float(scale) if not isinstance(scale, (bool, str, bytes)) else math.nan
        except (TypeError, ValueError):
            value = math.nan
        if not math.isfinite(value):
            raise ValueError(f"{what}: scales must be finite numbers, got {scale!r}")
        values.append(value)
    if len(values) != count:
        raise ValueError(f"{what}: {len(values)} scales for {count} diffs")
    return values


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
        ValueError: a shape differs, one diff names a parameter twice (e.g. with and
            without the model's prefix), a parameter is a meta tensor, or the diff was
            made for another base model.
        TypeError: a dtype differs and ``strict_dtype`` is set.
    """
    resolved: dict[str, str] = {}
    model_id = base_model_id(model)
    for position, diff in enumerate(diffs):
        if check_base and diff.base_model and model_id and diff.base_model != model_id:
            raise ValueError(
                f"SparseDiff was made for base model {diff.base_model!r}, the model is {model_id!r} "
                "(pass check_base=False to apply anyway)"
            )
        named: dict[str, str] = {}
        for name in diff.names:
            target_name = resolved.setdefault(name, resolve_parameter(model, params, name))
            if named.setdefault(target_name, name) != name:
                raise ValueError(
                    f"SparseDiff {position} names parameter {target_name!r} twice: as {named[target_name]!r} "
                    f"and as {name!r}"
                )
            target = params[target_name]
            if target.is_meta:
                raise ValueError(
                    f"SparseDiff[{name!r}]: the model parameter {target_name!r} is a meta tensor "
                    "(not materialised: load its weights first)"
                )
        for name, info in diff.params.items():
            if name not in diff.indices:
                continue
            target = params[resolved[name]]
            if tuple(target.shape) != info.shape:
                raise ValueError(f"SparseDiff[{name!r}]: shape {info.shape} != model shape {tuple(target.shape)}")
            if strict_dtype and target.dtype != info.dtype:
                raise TypeError(
                    f"SparseDiff[{name!r}]: made for {info.dtype}, model parameter is {target.dtype} "
                    "(pass strict_dtype=False to apply across dtypes)"
                )
        for name, tensor in diff.dense.items():
            target = params[resolved[name]]
            if target.shape != tensor.shape:
                raise ValueError(
                    f"SparseDiff dense[{name!r}]: shape {tuple(tensor.shape)} != model shape {tuple(target.shape)}"
                )
    return resolved


@dataclass(frozen=True)
class ApplyPlan:
    """What one application of several diffs writes, in the order of applying them one by one.

    Attributes:
        dense: model parameter -> (diff position, the diff's name) of the dense tensor it
            ends up holding: the last diff that ships it.
        entries: per diff, its name -> model parameter of the sparse entries that take
            effect (those not overwritten by a later dense replacement).
        sparse: the model parameters receiving sparse entries, sorted.
    """

    dense: dict[str, tuple[int, str]]
    entries: list[dict[str, str]]
    sparse: list[str]


def plan_application(diffs: Sequence[SparseDiff], resolved: Mapping[str, str]) -> ApplyPlan:
    """The :class:`ApplyPlan` of ``diffs`` whose names resolve to model parameters by ``resolved``."""
    dense: dict[str, tuple[int, str]] = {}
    for position, diff in enumerate(diffs):
        for name in diff.dense:
            dense[resolved[name]] = (position, name)
    entries = [
        {
            name: resolved[name]
            for name in diff.indices
            if dense.get(resolved[name], (-1, ""))[0] < position
        }
        for position, diff in enumerate(diffs)
    ]
    sparse = sorted({target for row in entries for target in row.values()})
    return ApplyPlan(dense=dense, entries=entries, sparse=sparse)


Localize = Callable[[int, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def entries_per_target(
    diffs: Sequence[SparseDiff],
    plan: ApplyPlan,
    targets: Sequence[torch.Tensor],
    localize: Localize | None = None,
) -> tuple[list[list[torch.Tensor]], list[list[torch.Tensor]]]:
    """The scatter operands: per diff, per target tensor, its (int64 indices, fp32 values).

    ``targets[t]`` is the tensor of model parameter ``plan.sparse[t]``; a diff without
    entries for a target gets empty tensors. ``localize(t, indices, values)`` maps a diff's
    global entries to those ``targets[t]`` holds (a rank's shard); by default they are
    taken whole.
    """
    position = {n: i for i, n in enumerate(plan.sparse)}
    indices, values = [], []
    for diff, row in zip(diffs, plan.entries, strict=True):
        row_idx = [torch.empty(0, dtype=torch.int64, device=t.device) for t in targets]
        row_val = [torch.empty(0, dtype=torch.float32, device=t.device) for t in targets]
        for name, target_name in row.items():
            slot = position[target_name]
            idx, val = diff.indices[name], diff.values[name]
            if localize is not None:
                idx, val = localize(slot, idx, val)
            row_idx[slot] = move_indices(idx, targets[slot].device)
            row_val[slot] = val.to(targets[slot].device)
        indices.append(row_idx)
        values.append(row_val)
    return indices, values


def lost_entries(
    originals: Sequence[torch.Tensor],
    indices: Sequence[Sequence[torch.Tensor]],
    values: Sequence[Sequence[torch.Tensor]],
    scales: Sequence[float],
) -> list[list[int]]:
    """Per diff, per target: entries whose change rounds away in the target's dtype.

    ``originals[t]``: the values target ``t`` holds before the sparse add (any float
    dtype, any shape); an entry is lost when ``cast(f32(w) + f32(scale)·v) == w`` although
    ``f32(scale)·v != 0`` — the scatter-add's arithmetic, judged against the value before
    any diff (overlapping diffs are each judged alone).
    """
    counts: list[torch.Tensor] = []
    for row_idx, row_val, scale in zip(indices, values, scales, strict=True):
        factor = torch.tensor(scale, dtype=torch.float32)
        for original, idx, val in zip(originals, row_idx, row_val, strict=True):
            before = original.reshape(-1)[idx]
            step = factor.to(val.device) * val.float()
            after = (before.float() + step).to(before.dtype)
            counts.append(((after == before) & (step != 0)).sum())
    flat = torch.stack([c.to(counts[0].device) for c in counts]).tolist() if counts else []  # one host sync
    width = len(originals)
    return [flat[d * width : (d + 1) * width] for d in range(len(indices))]


def rounding_report(lost: Sequence[Sequence[int]], names: Sequence[str]) -> list[dict[str, int]]:
    """Per diff: model parameter -> entries lost (parameters with none left out)."""
    return [{name: n for name, n in zip(names, row, strict=True) if n} for row in lost]


def handle_rounding_loss(
    report: Sequence[Mapping[str, int]],
    diffs: Sequence[SparseDiff],
    dtypes: Mapping[str, torch.dtype],
    policy: OnRoundingLoss,
) -> None:
    """Warn about (``"warn"``), refuse (``"error"``) or ignore entries lost to rounding."""
    if policy == "ignore" or not any(report):
        return
    parts = []
    low_precision = False
    for position, (lost, diff) in enumerate(zip(report, diffs, strict=True)):
        if not lost:
            continue
        by_dtype: dict[torch.dtype, int] = {}
        for name, count in lost.items():
            by_dtype[dtypes[name]] = by_dtype.get(dtypes[name], 0) + count
        low_precision |= any(dtype.itemsize < 4 for dtype in by_dtype)
        detail = ", ".join(f"{count} in {str(dtype).removeprefix('torch.')}" for dtype, count in by_dtype.items())
        parts.append(f"diff {position} ({diff.method}): {sum(lost.values())} of {diff.nnz} entries ({detail})")
    message = (
        "SparseDiff entries round to no change in their parameter's dtype and are lost: " + "; ".join(parts)
        + ("; float32 weights would keep them" if low_precision else "")
        + ". Counts per parameter are in the handle's rounding_loss"
    )
    if policy == "error":
        raise RoundingLossError(message + " (on_rounding_loss='error': nothing was written)")
    warnings.warn(message, RoundingLossWarning, stacklevel=3)


class AppliedDiffs:
    """Handle of diffs applied to a model: what is needed to revert them exactly.

    Attributes:
        diffs: the diffs, in the order given.
        rounding_loss: per diff, model parameter -> number of its entries whose change
            rounded away in the parameter's dtype (parameters with none left out).
        reverted: whether :meth:`revert` ran.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        diffs: list[SparseDiff],
        targets: list[torch.Tensor],
        indices: list[list[torch.Tensor]],
        saved: list[list[torch.Tensor]],
        dense_saved: list[tuple[torch.Tensor, torch.Tensor]],
        rounding_loss: list[dict[str, int]],
    ) -> None:
        self._model = weakref.ref(model)
        self.diffs = diffs
        self._targets = targets
        self._indices = indices
        self._saved = saved
        self._dense_saved = dense_saved
        self.rounding_loss = rounding_loss
        self.reverted = False

    @property
    def lost_entries(self) -> int:
        """Entries of all diffs whose change rounded away (see :attr:`rounding_loss`)."""
        return sum(sum(lost.values()) for lost in self.rounding_loss)

    def revert(self) -> None:
        """Restore every overwritten value; must be the latest diffs applied to the model."""
        model = self._model()
        if model is None:
            raise RuntimeError("the model these diffs were applied to no longer exists")
        with model_lock(model):
            if self.reverted:
                raise RuntimeError("these diffs were already reverted")
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
    """Undo an apply in reverse order: the sparse entries' saved values, then the dense originals."""
    with torch.no_grad():
        if targets:
            scatter_restore_(targets, indices, saved)
        for target, original in reversed(dense_saved):
            target.copy_(original)


def replace_dense(
    diffs: Sequence[SparseDiff],
    plan: ApplyPlan,
    targets: Mapping[str, torch.Tensor],
    rows: Callable[[str, torch.Tensor], torch.Tensor] = lambda name, tensor: tensor,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Write each planned dense tensor into its target (``targets``: model name -> tensor).

    ``rows(name, tensor)`` picks the part of a full tensor the target holds (a shard).
    Returns (target, copy of its previous value) pairs in writing order.
    """
    saved = []
    with torch.no_grad():
        for target_name, (position, name) in plan.dense.items():
            target = targets[target_name]
            saved.append((target, target.clone()))
            target.copy_(rows(target_name, diffs[position].dense[name]).to(target.device, target.dtype))
    return saved


def values_before_sparse(
    diffs: Sequence[SparseDiff],
    plan: ApplyPlan,
    targets: Sequence[torch.Tensor],
    rows: Callable[[str, torch.Tensor], torch.Tensor] = lambda name, tensor: tensor,
) -> list[torch.Tensor]:
    """What each sparse target holds when the scatter-add starts: its planned dense tensor, else itself."""
    before = []
    for target_name, target in zip(plan.sparse, targets, strict=True):
        if target_name in plan.dense:
            position, name = plan.dense[target_name]
            target = rows(target_name, diffs[position].dense[name]).to(target.device, target.dtype)
        before.append(target)
    return before


def check_policy(on_rounding_loss: str) -> None:
    """ValueError unless ``on_rounding_loss`` is one of :data:`ROUNDING_POLICIES`."""
    if on_rounding_loss not in ROUNDING_POLICIES:
        raise ValueError(f"on_rounding_loss must be one of {ROUNDING_POLICIES}, got {on_rounding_loss!r}")


def count_rounding_loss(
    model: torch.nn.Module,
    diffs: Sequence[SparseDiff],
    scales: Sequence[float] | None = None,
    *,
    strict_dtype: bool = True,
    check_base: bool = True,
) -> list[dict[str, int]]:
    """Per diff, model parameter -> entries that :func:`apply_diffs` would lose to rounding.

    Writes nothing; validates like :func:`apply_diffs`.
    """
    diffs = list(diffs)
    scales = check_scales(scales, len(diffs), "count_rounding_loss")
    params = dict(model.named_parameters())
    plan = plan_application(diffs, check_compatible(model, params, diffs, strict_dtype, check_base))
    targets = [params[n].detach() for n in plan.sparse]
    indices, values = entries_per_target(diffs, plan, targets)
    with torch.no_grad():
        lost = lost_entries(values_before_sparse(diffs, plan, targets), indices, values, scales)
    return rounding_report(lost, plan.sparse)


def apply_diffs(
    model: torch.nn.Module,
    diffs: Sequence[SparseDiff],
    scales: Sequence[float] | None = None,
    *,
    strict_dtype: bool = True,
    check_base: bool = True,
    on_rounding_loss: OnRoundingLoss = "warn",
    backend: str | None = None,
) -> AppliedDiffs:
    """Add ``diffs`` (times ``scales``) onto ``model``'s parameters in place, in one launch.

    Every diff is validated against the model first (names, shapes, dtypes, base model,
    finite scales); nothing is written if any check fails. Dense tensors of the diffs
    replace the model's (see the module docstring for the order). Entries whose change
    rounds away in the parameter's dtype are reported per ``on_rounding_loss``: ``"warn"``
    (a :class:`RoundingLossWarning`), ``"error"`` (:class:`RoundingLossError`, nothing
    written) or ``"ignore"``; the counts are in the handle's ``rounding_loss`` either way.
    Returns a handle whose :meth:`AppliedDiffs.revert` restores the exact original bits.
    """
    diffs = list(diffs)
    scales = check_scales(scales, len(diffs), "apply_diffs")
    check_policy(on_rounding_loss)
    with model_lock(model):
        params = dict(model.named_parameters())
        plan = plan_application(diffs, check_compatible(model, params, diffs, strict_dtype, check_base))
        targets = [params[n].detach() for n in plan.sparse]
        indices, values = entries_per_target(diffs, plan, targets)
        with torch.no_grad():
            lost = lost_entries(values_before_sparse(diffs, plan, targets), indices, values, scales)
        report = rounding_report(lost, plan.sparse)
        handle_rounding_loss(report, diffs, {n: params[n].dtype for n in plan.sparse}, on_rounding_loss)
        dense_saved = replace_dense(diffs, plan, {n: params[n].detach() for n in plan.dense})
        with torch.no_grad():
            saved = scatter_add_(targets, indices, values, scales, save=True, backend=backend) or []
        handle = AppliedDiffs(model, diffs, targets, indices, saved, dense_saved, report)
        _APPLIED.setdefault(model, []).append(handle)
        return handle


def applied(model: torch.nn.Module) -> list[AppliedDiffs]:
    """The handles of the diffs applied to ``model`` and not reverted, oldest first (revert the last first)."""
    with model_lock(model):
        return list(_APPLIED.get(model, []))


def revert_diff(model: torch.nn.Module, diff: SparseDiff) -> None:
    """Revert the latest application of ``diff`` on ``model`` (it must be on top of the stack)."""
    with model_lock(model):
        stack = _APPLIED.get(model, [])
        for handle in reversed(stack):
            if any(d is diff for d in handle.diffs):
                handle.revert()
                return
    raise RuntimeError("this SparseDiff is not applied to this model")
