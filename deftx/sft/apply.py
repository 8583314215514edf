"""Apply SparseDiffs onto a model in place (one fused scatter-add) and revert them bit-exactly.

Applying diffs together equals applying them one after another: for each parameter, the
last diff that ships it as a dense tensor replaces it, sparse entries of earlier diffs on
it are overwritten by that replacement (so they are skipped), and sparse entries of later
diffs are added on top. In one call the replacements are written first, then the sparse
entries of every diff in one fused scatter-add.

Revert does not subtract ((w + d) − d ≠ w in floating point): what each write overwrites
is saved before it, and revert writes it back in the reverse order (the sparse entries,
then the dense tensors), so the original bits come back whatever the diffs touch. Diffs
applied to one model form a stack: revert the latest first (a later application through another
module holding the same tensors, the model and its body ``model.bert``, counts too). Applies and reverts on one
model are serialised by a per-model lock, so threads sharing a model cannot interleave
their writes. A diff is found on the stack by content (:attr:`SparseDiff.content_hash`), so
the same file loaded again reverts exactly too. A model the diff was merged into elsewhere
(saved, then loaded) has no saved originals: ``revert(model, exact=False)`` subtracts the
diff instead and says it is inexact (:class:`InexactRevertWarning`, :class:`RevertReport`).

An entry whose change rounds away in the parameter's dtype (a small fp32 difference added
onto a bf16 or fp16 weight) is lost: it is counted before anything is written, reported in
the handle (:attr:`AppliedDiffs.rounding_loss`) and, by default, in a
:class:`RoundingLossWarning`; ``on_rounding_loss="error"`` refuses such an apply instead.
"""

from __future__ import annotations

import itertools
import math
import threading
import warnings
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any, Literal

import torch

from deftx.models.parameters import named_parameter_map, parameter_aliases
from deftx.ops import PreparedScatter, prepare_scatter, scatter_add_, scatter_restore_
from deftx.ops.scatter import FP32_OVERFLOW
from deftx.ops.validation import FLOAT_DTYPES, move_indices

if TYPE_CHECKING:
    from deftx.sft.diff import SparseDiff

OnRoundingLoss = Literal["warn", "error", "ignore"]
ROUNDING_POLICIES: tuple[str, ...] = ("warn", "error", "ignore")

_APPLIED: weakref.WeakKeyDictionary[torch.nn.Module, list[Application]] = weakref.WeakKeyDictionary()
_LOCKS: weakref.WeakKeyDictionary[torch.nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()
_ORDER = itertools.count()


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


class BaseModelMismatchError(ValueError):
    """A SparseDiff made for another base model than the model's (``check_base=False`` skips the check)."""

    def __init__(self, recorded: str, model_id: str, action: str) -> None:
        super().__init__(
            f"SparseDiff was made for base model {recorded!r}, the model is {model_id!r} "
            f"(pass check_base=False to {action} anyway)"
        )
        self.recorded = recorded
        self.model_id = model_id


class ClassifierMismatchError(ValueError):
    """A task SFT's head applied to a classifier it was not trained in: another class (so another pooling),
    another ``deftx_pooling``, or label names in another order (``check_base=False`` skips the check)."""


def real_label_names(names: Sequence[object]) -> list[str] | None:
    """``names`` (label names in class-id order) as strings; None where they name nothing: transformers'
    placeholders ``LABEL_0, LABEL_1, …`` (a config's default)."""
    names = [str(name) for name in names]
    return None if names == [f"LABEL_{i}" for i in range(len(names))] else names


def _label_names(config: Any) -> list[str] | None:
    """The model's label names in class-id order (:func:`real_label_names`)."""
    id2label = getattr(config, "id2label", None) or {}
    return real_label_names([id2label.get(i, i) for i in range(int(getattr(config, "num_labels", len(id2label))))])


def check_classifier(model: torch.nn.Module, diff: SparseDiff, position: int, action: str = "apply") -> None:
    """Refuse a diff that ships a classifier head (dense tensors, ``info["num_labels"]``) onto a model whose
    class, pooling or label names differ from those the head was trained with (its ``info``): the head
    would read other features, or its classes would carry other names.

    Raises:
        ClassifierMismatchError: naming what differs and how to load the right classifier.
    """
    info = diff.info
    if not diff.dense or "num_labels" not in info:
        return
    config = getattr(model, "config", None)
    classes = {cls.__name__ for cls in type(model).__mro__}
    recorded = info.get("architecture")
    problems = []
    if recorded and recorded not in classes and recorded.removeprefix("FSDP") not in classes:
        problems.append(f"it was trained in {recorded}, the model is {type(model).__name__}")
    pooling = getattr(config, "deftx_pooling", None)
    if info.get("pooling") and pooling and info["pooling"] != pooling:
        problems.append(f"it was trained with {info['pooling']} pooling, the model pools by {pooling}")
    names = _label_names(config)
    if info.get("labels") and names is not None and list(info["labels"]) != names:
        problems.append(f"its classes are {list(info['labels'])} in id order, the model's {names}")
    if problems:
        raise ClassifierMismatchError(
            f"SparseDiff {position} ships a classifier head, but {'; '.join(problems)}: load the base model as "
            "the classifier the SFT records (deftx.train.architecture.build_from_spec, as deftx compose and "
            f"evaluate do), or pass check_base=False to {action} anyway"
        )


def base_model_id(model: torch.nn.Module) -> str | None:
    """The identifier a model reports for its base weights (config ``deftx_base_model`` or name)."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    return getattr(config, "deftx_base_model", None) or getattr(config, "_name_or_path", None) or None


def _is_local_path(identifier: str) -> bool:
    """Whether ``identifier`` names a folder on this machine rather than a Hub id: absolute, ``.``- or
    ``~``-relative, or an existing directory."""
    return (identifier.startswith((".", "~", "/")) or Path(identifier).is_absolute()
            or Path(identifier).expanduser().is_dir())


def same_base_model(recorded: str, model_id: str) -> bool:
    """Whether a diff recorded for base ``recorded`` fits a model named ``model_id``.

    Equal names fit. A local folder's path depends on the machine and the working directory
    (``my-model`` saved here is ``runs/my-model`` from the parent folder; a model cache moves
    with the home folder), so where either name is a local path, the last path components are
    compared: ``/root/.cache/deftx/models/multilingual-e5-small`` fits the same folder under
    another home. Two Hub ids (``org/name``) must be equal.
    """
    if recorded == model_id:
        return True
    if not (_is_local_path(recorded) or _is_local_path(model_id)):
        return False
    return PurePath(recorded.rstrip("/\\")).name == PurePath(model_id.rstrip("/\\")).name


def remember_base_model(model: torch.nn.Module) -> None:
    """Record the model's base identifier in its config (``deftx_base_model``) where none is, so a
    model saved with diffs applied still names the base its weights came from (a later apply or an
    inexact revert on the saved copy checks against it, not against the save folder)."""
    config = getattr(model, "config", None)
    model_id = base_model_id(model)
    if config is not None and model_id and not getattr(config, "deftx_base_model", None):
        config.deftx_base_model = model_id


def prefix_forms(name: str, prefix: str) -> list[str]:
    """The names a diff entry ``name`` may mean in a model whose body is ``prefix`` (its ``base_model_prefix``;
    "" for none): ``name`` as given, with the prefix, without it (each once, in that order). Every entry point
    matches diff names through it (:func:`resolve_parameter` against a model, :func:`deftx.sft.compose`
    between diffs)."""
    if not prefix:
        return [name]
    return list(dict.fromkeys([name, f"{prefix}.{name}", name.removeprefix(f"{prefix}.")]))


def resolve_parameter(model: torch.nn.Module, params: Mapping[str, torch.Tensor], name: str) -> str:
    """The model's parameter name for a diff entry ``name``.

    Accepts the exact name, or the name with/without the model's ``base_model_prefix``
    (so a diff trained on ``BertForMaskedLM`` applies to ``BertForSequenceClassification``
    and to a bare ``BertModel``), or another name of a tied parameter (``lm_head.decoder.weight``
    of an XLM-R masked LM is its word embeddings: :func:`~deftx.models.parameters.parameter_aliases`).
    """
    candidates = prefix_forms(name, getattr(model, "base_model_prefix", "") or "")
    for candidate in candidates:
        if candidate in params:
            return candidate
    aliases = parameter_aliases(model)
    for candidate in candidates:
        if aliases.get(candidate) in params:
            return aliases[candidate]
    raise KeyError(f"SparseDiff parameter {name!r} is not in the model ({type(model).__name__})")


def check_scales(scales: Sequence[float] | None, diffs: Sequence[SparseDiff], what: str) -> list[float]:
    """One float per diff, finite in fp32 as the scatter applies them (default all 1.0), and 1 for a diff
    that ships dense tensors (a replacement, which no scale can apply to).

    Raises:
        ValueError: a wrong count, NaN, Inf, a magnitude that rounds to Inf in fp32, or a scale other
            than 1 on a diff with dense tensors.
    """
    if scales is None:
        return [1.0] * len(diffs)
    values = []
    for scale in scales:
        try:
            value = float(scale) if not isinstance(scale, (bool, str, bytes)) else math.nan
        except (TypeError, ValueError):
            value = math.nan
        if not abs(value) < FP32_OVERFLOW:
            raise ValueError(f"{what}: scales must be finite numbers (in fp32), got {scale!r}")
        values.append(value)
    if len(values) != len(diffs):
        raise ValueError(f"{what}: {len(values)} scales for {len(diffs)} diffs")
    for position, (diff, value) in enumerate(zip(diffs, values, strict=True)):
        if value != 1.0 and diff.dense:
            raise ValueError(
                f"{what}: SparseDiff {position} ships dense tensors ({', '.join(sorted(diff.dense))}), which replace "
                f"the model's and cannot be scaled, but its scale is {value:g}: give it scale 1, or scale a diff "
                "without them"
            )
    return values


def check_compatible(
    model: torch.nn.Module,
    params: Mapping[str, torch.Tensor],
    diffs: Sequence[SparseDiff],
    strict_dtype: bool,
    check_base: bool,
    action: str = "apply",
) -> dict[str, str]:
    """Validate every diff against the model before anything is written; diff name -> model name.

    ``params``: the model's named parameters (global shapes for DTensors); ``action`` names what
    the caller does, in the base-model error. The base model is checked by :func:`same_base_model`.

    Raises:
        KeyError: a diff entry names no parameter of the model.
        ValueError: a shape differs, one diff names a parameter twice (e.g. with and
            without the model's prefix), or a parameter is a meta tensor.
        BaseModelMismatchError: the diff was made for another base model (a ValueError).
        ClassifierMismatchError: the diff's head was trained in another classifier (a ValueError).
        TypeError: a dtype differs and ``strict_dtype`` is set.
    """
    resolved: dict[str, str] = {}
    model_id = base_model_id(model)
    for position, diff in enumerate(diffs):
        if check_base and diff.base_model and model_id and not same_base_model(diff.base_model, model_id):
            raise BaseModelMismatchError(diff.base_model, model_id, action)
        if check_base:
            check_classifier(model, diff, position, action)
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
            if strict_dtype and target.dtype != tensor.dtype:
                raise TypeError(
                    f"SparseDiff dense[{name!r}]: {tensor.dtype}, model parameter is {target.dtype} "
                    "(pass strict_dtype=False to apply across dtypes)"
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
        overwritten: what a later dense tensor discards of earlier diffs' writes, a sentence per
            parameter (:func:`overwritten_by_dense`; warned by the appliers, :func:`warn_overwritten`).
    """

    dense: dict[str, tuple[int, str]]
    entries: list[dict[str, str]]
    sparse: list[str]
    overwritten: list[str]


def overwritten_by_dense(diffs: Sequence[SparseDiff], resolved: Mapping[str, str],
                         dense: Mapping[str, tuple[int, str]]) -> list[str]:
    """One sentence per model parameter that a later diff's dense tensor replaces after an earlier diff
    wrote to it (sparse entries or a dense tensor of its own): what applying ``diffs`` in order discards."""
    lost: dict[str, list[str]] = {}
    for position, diff in enumerate(diffs):
        for name, idx in diff.indices.items():
            final = dense.get(resolved[name])
            if final is not None and final[0] > position and idx.numel():
                lost.setdefault(resolved[name], []).append(f"{idx.numel()} entries of SparseDiff {position}")
        for name in diff.dense:
            if dense[resolved[name]][0] > position:
                lost.setdefault(resolved[name], []).append(f"the dense tensor of SparseDiff {position}")
    return [f"{target!r}: SparseDiff {dense[target][0]}'s dense tensor replaces {', '.join(what)}"
            for target, what in lost.items()]


class OverwrittenByDenseWarning(UserWarning):
    """A diff's dense tensor replaces a parameter an earlier diff of the same application wrote to: the
    earlier diff's change there is discarded (e.g. a task SFT exported with whole modules, composed after
    a language SFT that changes those modules)."""


def warn_overwritten(overwritten: Sequence[str], stacklevel: int) -> None:
    """Warn (:class:`OverwrittenByDenseWarning`) about the sentences of :func:`overwritten_by_dense`, if any."""
    if overwritten:
        shown = "; ".join(overwritten[:3]) + (f"; and {len(overwritten) - 3} more" if len(overwritten) > 3 else "")
        warnings.warn(f"applied in order, a later dense tensor discards what earlier diffs wrote to "
                      f"{len(overwritten)} parameter(s): {shown}", OverwrittenByDenseWarning, stacklevel=stacklevel)


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
    return ApplyPlan(dense=dense, entries=entries, sparse=sparse,
                     overwritten=overwritten_by_dense(diffs, resolved, dense))


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
    stacklevel: int = 3,
) -> None:
    """Warn about (``"warn"``), refuse (``"error"``) or ignore entries lost to rounding; the warning names
    the caller ``stacklevel`` frames up (3: the caller of this function's caller)."""
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
    warnings.warn(message, RoundingLossWarning, stacklevel=stacklevel)


class WrittenEntries:
    """What one apply overwrote, to write it back bit-exactly (:meth:`revert`), and what rounded away.

    Attributes:
        rounding_loss: per diff, model parameter -> number of its entries whose change
            rounded away in the parameter's dtype (parameters with none left out).
        reverted: whether :meth:`revert` ran.
    """

    def __init__(self, writes: PlannedWrites, saved: list[list[torch.Tensor]],
                 dense_saved: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """``writes``: what was written (:func:`plan_writes`); ``saved`` / ``dense_saved``: what it overwrote
        (:func:`write_planned`)."""
        self._targets = writes.targets
        self._indices = writes.indices
        self._saved = saved
        self._dense_saved = dense_saved
        self.rounding_loss = writes.rounding_loss
        self.reverted = False

    @property
    def lost_entries(self) -> int:
        """Entries of all diffs whose change rounded away (see :attr:`rounding_loss`)."""
        return sum(sum(lost.values()) for lost in self.rounding_loss)

    def written_tensors(self) -> list[torch.Tensor]:
        """The tensors the apply wrote: the sparse targets, then the dense ones."""
        return [*self._targets, *(target for target, _ in self._dense_saved)]

    def revert(self) -> None:
        """Write back every overwritten value (once)."""
        if self.reverted:
            raise RuntimeError("these diffs were already reverted")
        restore_saved(self._targets, self._indices, self._saved, self._dense_saved)
        self.reverted = True


class StackEntry:
    """Diffs of one application on a model's stack (:func:`applied`), found by object or by content."""

    def __init__(self, model: torch.nn.Module, diffs: list[SparseDiff]) -> None:
        self._model = weakref.ref(model)
        self.diffs = diffs
        self._content_hashes: frozenset[str] | None = None
        self.order = -1

    def content_hashes(self) -> frozenset[str]:
        """The :attr:`~deftx.sft.SparseDiff.content_hash` of each diff (computed once, on first use)."""
        if self._content_hashes is None:
            self._content_hashes = frozenset(diff.content_hash for diff in self.diffs)
        return self._content_hashes

    def live_model(self) -> torch.nn.Module:
        """The model of the application; RuntimeError when it no longer exists."""
        model = self._model()
        if model is None:
            raise RuntimeError("the model these diffs were applied to no longer exists")
        return model


class AppliedDiffs(WrittenEntries, StackEntry):
    """Handle of diffs applied to a model: what is needed to revert them exactly.

    Attributes:
        diffs: the diffs, in the order given.
        rounding_loss: per diff, model parameter -> number of its entries whose change
            rounded away in the parameter's dtype (parameters with none left out).
        reverted: whether :meth:`revert` ran.
    """

    def __init__(self, model: torch.nn.Module, diffs: list[SparseDiff], writes: PlannedWrites,
                 saved: list[list[torch.Tensor]], dense_saved: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        WrittenEntries.__init__(self, writes, saved, dense_saved)
        StackEntry.__init__(self, model, diffs)

    def revert(self) -> None:
        """Restore every overwritten value; must be the latest diffs applied to the model."""
        model = self.live_model()
        with model_lock(model):
            stack = _APPLIED.get(model, [])
            if not self.reverted and (not stack or stack[-1] is not self):
                raise RuntimeError("revert the diffs applied after these first (reverts go in reverse order)")
            if not self.reverted:
                check_latest_writer(self)
            WrittenEntries.revert(self)
            stack.pop()

    def __enter__(self) -> AppliedDiffs:
        return self

    def __exit__(self, *exc: object) -> None:
        """Revert on leaving a ``with apply_diffs(...):`` block (unless already reverted inside it)."""
        if not self.reverted:
            self.revert()


@dataclass
class PlannedWrites:
    """What applying diffs will write: per diff and sparse target its entries, and what rounds away."""

    plan: ApplyPlan
    targets: list[torch.Tensor]
    indices: list[list[torch.Tensor]]
    values: list[list[torch.Tensor]]
    rounding_loss: list[dict[str, int]]


Rows = Callable[[str, torch.Tensor], torch.Tensor]


def _whole(name: str, tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def check_scatter_targets(names: Sequence[str], targets: Sequence[torch.Tensor]) -> None:
    """Refuse, naming the model parameter, a sparse target the scatter-add cannot write in place, before the
    dense replacements are written.

    Raises:
        ValueError: a target is not contiguous, or the targets lie on several devices.
        TypeError: a target is not float32, bfloat16 or float16.
    """
    for name, target in zip(names, targets, strict=True):
        if target.dtype not in FLOAT_DTYPES:
            raise TypeError(f"SparseDiff entries for {name!r}: the model parameter is {target.dtype}; sparse "
                            "entries are added to float32, bfloat16 or float16 parameters only")
        if not target.is_contiguous():
            raise ValueError(f"SparseDiff entries for {name!r}: the model parameter is not contiguous (the entries "
                             "are written in place at flat row-major positions): make it contiguous first")
    devices = {str(target.device) for target in targets}
    if len(devices) > 1:
        by_device = {device: next(n for n, t in zip(names, targets, strict=True) if str(t.device) == device)
                     for device in sorted(devices)}
        raise ValueError("SparseDiff entries go to parameters on several devices, which one apply cannot write: "
                         + ", ".join(f"{name!r} on {device}" for device, name in by_device.items()))


def plan_writes(
    diffs: Sequence[SparseDiff],
    plan: ApplyPlan,
    targets: list[torch.Tensor],
    scales: Sequence[float],
    localize: Localize | None = None,
    rows: Rows = _whole,
) -> PlannedWrites:
    """The entries each sparse target gets and the per-diff count of those that round away (nothing written).

    ``localize`` / ``rows`` pick the part of a diff's entries / of a dense tensor a target holds (a shard).

    Raises:
        ValueError / TypeError: a target the scatter-add cannot write (:func:`check_scatter_targets`).
    """
    check_scatter_targets(plan.sparse, targets)
    indices, values = entries_per_target(diffs, plan, targets, localize)
    with torch.no_grad():
        lost = lost_entries(values_before_sparse(diffs, plan, targets, rows), indices, values, scales)
    return PlannedWrites(plan, targets, indices, values, rounding_report(lost, plan.sparse))


def write_planned(
    diffs: Sequence[SparseDiff],
    writes: PlannedWrites,
    dense_targets: Mapping[str, torch.Tensor],
    scales: Sequence[float],
    backend: str | None,
    rows: Rows = _whole,
) -> tuple[list[list[torch.Tensor]], list[tuple[torch.Tensor, torch.Tensor]]]:
    """Write the dense replacements, then every sparse entry in one scatter-add; returns what they overwrote
    (per diff, per target the saved entries; the dense (target, original) pairs)."""
    dense_saved = replace_dense(diffs, writes.plan, dense_targets, rows)
    with torch.no_grad():
        saved = scatter_add_(writes.targets, writes.indices, writes.values, scales, save=True, backend=backend)
    return saved or [], dense_saved


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
    rows: Rows = _whole,
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
    rows: Rows = _whole,
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


def _planned(model: torch.nn.Module, params: Mapping[str, torch.Tensor], diffs: list[SparseDiff],
             scales: Sequence[float], strict_dtype: bool, check_base: bool) -> PlannedWrites:
    """The checked plan of applying ``diffs`` onto ``model``'s whole parameters."""
    plan = plan_application(diffs, check_compatible(model, params, diffs, strict_dtype, check_base))
    return plan_writes(diffs, plan, [params[n].detach() for n in plan.sparse], scales)


def _arguments(diffs: Sequence[SparseDiff], scales: Sequence[float] | None, on_rounding_loss: str,
               what: str) -> tuple[list[SparseDiff], list[float]]:
    """The diffs as a list and their checked scales; ValueError for bad scales or an unknown policy."""
    diffs = list(diffs)
    scales = check_scales(scales, diffs, what)
    check_policy(on_rounding_loss)
    return diffs, scales


def _reported(model: torch.nn.Module, params: Mapping[str, torch.Tensor], diffs: list[SparseDiff],
              scales: Sequence[float], strict_dtype: bool, check_base: bool,
              on_rounding_loss: OnRoundingLoss) -> PlannedWrites:
    """:func:`_planned`, its rounding loss handled per ``on_rounding_loss`` and what a dense tensor discards
    warned (:func:`warn_overwritten`), both at the public caller's caller."""
    writes = _planned(model, params, diffs, scales, strict_dtype, check_base)
    warn_overwritten(writes.plan.overwritten, stacklevel=4)
    handle_rounding_loss(writes.rounding_loss, diffs, {n: params[n].dtype for n in writes.plan.sparse},
                         on_rounding_loss, stacklevel=4)
    return writes


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
    scales = check_scales(scales, diffs, "count_rounding_loss")
    params = named_parameter_map(model)
    return _planned(model, params, diffs, scales, strict_dtype, check_base).rounding_loss


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
    Returns a handle whose :meth:`AppliedDiffs.revert` restores the exact original bits; as a
    context manager (``with apply_diffs(model, diffs): ...``) it reverts on leaving the block.
    The model's config keeps the name of its base (:func:`remember_base_model`), so a copy
    saved with the diffs applied is still checked as that base.
    """
    diffs, scales = _arguments(diffs, scales, on_rounding_loss, "apply_diffs")
    with model_lock(model):
        params = named_parameter_map(model)
        writes = _reported(model, params, diffs, scales, strict_dtype, check_base, on_rounding_loss)
        saved, dense_saved = write_planned(diffs, writes, {n: params[n].detach() for n in writes.plan.dense},
                                           scales, backend)
        handle = AppliedDiffs(model, diffs, writes, saved, dense_saved)
        record_application(model, handle)
        remember_base_model(model)
        return handle


def record_application(model: torch.nn.Module, handle: Application) -> None:
    """Put ``handle`` on top of ``model``'s stack of applications (:func:`applied`), numbered after every earlier
    application on any module; the caller holds :func:`model_lock`."""
    handle.order = next(_ORDER)
    _APPLIED.setdefault(model, []).append(handle)


def storage_keys(tensors: Iterable[torch.Tensor]) -> set[tuple[str, int]]:
    """(device, storage address) of each non-empty tensor: tensors that share memory share a key."""
    return {(str(t.device), t.untyped_storage().data_ptr()) for t in tensors if t.numel()}


def check_latest_writer(handle: Application) -> None:
    """RuntimeError when an application made after ``handle`` and not reverted, on any module, wrote memory
    ``handle`` wrote: a model and its body (``model.bert``) have stacks of their own but share their tensors,
    so reverting ``handle`` first would write its originals under the later diff."""
    mine = storage_keys(handle.written_tensors())
    with _LOCKS_GUARD:
        stacks = [list(stack) for stack in _APPLIED.values()]
    later = [other for stack in stacks for other in stack
             if other.order > handle.order and storage_keys(other.written_tensors()) & mine]
    if later:
        raise RuntimeError(
            "revert the diffs applied after these first (reverts go in reverse order): "
            f"{len(later)} later application(s) wrote the same parameters through another module holding them "
            "(a model and its body share their tensors)"
        )


def applied(model: torch.nn.Module) -> list[Application]:
    """The handles of the diffs applied to ``model`` and not reverted, oldest first (revert the last first):
    :class:`AppliedDiffs`, and :class:`PreparedComposition` while applied."""
    with model_lock(model):
        return list(_APPLIED.get(model, []))


class DenseSwap:
    """The planned dense replacements, prepared once: the new tensors on the targets' device and dtype
    and buffers for the originals, each apply / restore one batched copy per direction."""

    def __init__(self, diffs: Sequence[SparseDiff], plan: ApplyPlan, targets: Mapping[str, torch.Tensor]) -> None:
        self.targets = [targets[name] for name in plan.dense]
        self._new = [diffs[position].dense[name].to(target.device, target.dtype)
                     for target, (position, name) in zip(self.targets, plan.dense.values(), strict=True)]
        self._saved = [torch.empty_like(target) for target in self.targets]

    def apply(self) -> None:
        """Save the targets, then write the new tensors into them."""
        if self.targets:
            torch._foreach_copy_(self._saved, self.targets)
            torch._foreach_copy_(self.targets, self._new)

    def restore(self) -> None:
        """Write the saved targets back."""
        if self.targets:
            torch._foreach_copy_(self.targets, self._saved)


class PreparedComposition(StackEntry):
    """Diffs checked, planned and copied to the model's device once, for repeated exact apply / revert.

    Built by :func:`prepare_composition`. :meth:`apply` writes what :func:`apply_diffs` writes
    (bit for bit: the dense replacements, then every sparse entry in one prepared scatter-add,
    :func:`deftx.ops.prepare_scatter`) and :meth:`revert` writes the originals back exactly;
    ``with prepared:`` applies and reverts around a block. On the Triton backend an apply or
    a revert is one launch per parameter dtype (plus one batched copy per direction when the
    diffs ship dense tensors), with no host sync.

    Stack rule: an applied composition is on the model's stack (:func:`applied`) like an
    :func:`apply_diffs` handle, and applies and reverts take the model's lock. It applies only
    onto the stack it was prepared on (the same applications, in the same order), so the
    weights it adds to are those it was checked and counted against; reverts go in reverse
    order, and ``revert_diff`` / :meth:`SparseDiff.revert <deftx.sft.SparseDiff.revert>` of
    one of its diffs reverts it. The model's parameters must keep their storage, and the
    diffs their contents, while it is used.

    Attributes:
        diffs: the diffs, in the order given.
        rounding_loss: per diff, model parameter -> entries whose change rounds away in the
            parameter's dtype, counted once when prepared (see :func:`prepare_composition`).
    """

    def __init__(self, model: torch.nn.Module, diffs: list[SparseDiff], scatter: PreparedScatter,
                 dense: DenseSwap, rounding_loss: list[dict[str, int]], targets: list[torch.Tensor]) -> None:
        """``targets``: the tensors the scatter writes (the dense ones are ``dense``'s)."""
        super().__init__(model, diffs)
        self._scatter = scatter
        self._dense = dense
        self._written = [*targets, *dense.targets]
        self._under = list(_APPLIED.get(model, []))
        self.rounding_loss = rounding_loss

    def written_tensors(self) -> list[torch.Tensor]:
        """The tensors an apply writes: the sparse targets, then the dense ones."""
        return self._written

    @property
    def applied(self) -> bool:
        """Whether the composition is applied now."""
        return self._scatter.applied

    def apply(self) -> PreparedComposition:
        """Write the diffs onto the model (originals saved); returns ``self``.

        Raises:
            RuntimeError: already applied, or the model's stack differs from when it was prepared.
        """
        model = self.live_model()
        with model_lock(model):
            stack = _APPLIED.setdefault(model, [])
            if self.applied:
                raise RuntimeError("PreparedComposition.apply: already applied (revert first)")
            if len(stack) != len(self._under) or any(a is not b for a, b in zip(stack, self._under, strict=True)):
                raise RuntimeError(
                    "PreparedComposition.apply: the diffs applied to the model differ from those applied when it "
                    "was prepared (apply it onto the same stack, or prepare it again)"
                )
            with torch.no_grad():
                self._dense.apply()
                self._scatter.apply()
            record_application(model, self)
        return self

    def revert(self) -> None:
        """Write the originals back, bit for bit; must be the latest application on the model.

        Raises:
            RuntimeError: not applied, or diffs were applied after it (revert those first).
        """
        model = self.live_model()
        with model_lock(model):
            stack = _APPLIED.get(model, [])
            if not self.applied:
                raise RuntimeError("PreparedComposition.revert: not applied")
            if not stack or stack[-1] is not self:
                raise RuntimeError("revert the diffs applied after these first (reverts go in reverse order)")
            check_latest_writer(self)
            with torch.no_grad():
                self._scatter.restore()
                self._dense.restore()
            stack.pop()

    def __enter__(self) -> PreparedComposition:
        return self.apply()

    def __exit__(self, *exc: object) -> None:
        self.revert()


Application = AppliedDiffs | PreparedComposition
"""An entry of a model's applied stack."""


def prepare_composition(
    model: torch.nn.Module,
    diffs: Sequence[SparseDiff],
    scales: Sequence[float] | None = None,
    *,
    strict_dtype: bool = True,
    check_base: bool = True,
    on_rounding_loss: OnRoundingLoss = "warn",
    backend: str | None = None,
) -> PreparedComposition:
    """Prepare ``diffs`` (times ``scales``) for repeated exact composition onto ``model``; nothing is written.

    Does once what every :func:`apply_diffs` call does: validates the diffs against the
    model (the same checks and errors), plans the writes, copies the indices, values and
    dense tensors to the parameters' device, and plans the scatter
    (:func:`deftx.ops.prepare_scatter`). The returned :class:`PreparedComposition`'s
    ``apply()`` / ``revert()`` then only launch the writes.

    Rounding loss is counted here, once (one host sync), against the weights the model holds
    now, and reported per ``on_rounding_loss`` like :func:`apply_diffs` (``"error"`` refuses
    to prepare); the counts are in ``rounding_loss``. They are exact for every apply as long
    as the weights hold the same values then: a composition applies only onto the stack it
    was prepared on and a revert restores the bits, so only writes outside deftx (training
    the model in between) make them stale.
    """
    diffs, scales = _arguments(diffs, scales, on_rounding_loss, "prepare_composition")
    with model_lock(model):
        params = named_parameter_map(model)
        writes = _reported(model, params, diffs, scales, strict_dtype, check_base, on_rounding_loss)
        dense = DenseSwap(diffs, writes.plan, {n: params[n].detach() for n in writes.plan.dense})
        scatter = prepare_scatter(writes.targets, writes.indices, writes.values, scales, backend=backend)
        remember_base_model(model)
        return PreparedComposition(model, diffs, scatter, dense, writes.rounding_loss, writes.targets)


class InexactRevertWarning(UserWarning):
    """A diff was reverted by subtraction (its originals were not saved): the weights may differ from the base."""


@dataclass(frozen=True)
class RevertReport:
    """How a :meth:`SparseDiff.revert <deftx.sft.SparseDiff.revert>` went.

    Attributes:
        exact: True when the saved originals were written back (bit-exact).
        entries: sparse entries reverted.
        mismatched: entries that differ from the original after an inexact revert (0 when
            exact; None when the original is unknown).
        dense_kept: dense tensors of the diff an inexact revert could not undo (no original given).
    """

    exact: bool
    entries: int
    mismatched: int | None = 0
    dense_kept: tuple[str, ...] = ()


def _holds(handle: Application, diff: SparseDiff, content: Callable[[], str]) -> bool:
    return any(d is diff for d in handle.diffs) or content() in handle.content_hashes()


def applied_handle(model: torch.nn.Module, diff: SparseDiff) -> Application | None:
    """The latest handle on ``model`` holding ``diff``: the object itself, or a diff with the same content."""
    content_hash: list[str] = []

    def content() -> str:
        if not content_hash:
            content_hash.append(diff.content_hash)
        return content_hash[0]

    with model_lock(model):
        for handle in reversed(_APPLIED.get(model, [])):
            if _holds(handle, diff, content):
                return handle
    return None


def _original_values(original: torch.nn.Module | Mapping[str, torch.Tensor], prefix: str, model_name: str,
                     diff_name: str) -> torch.Tensor:
    """The original's tensor of model parameter ``model_name`` (diff name ``diff_name``), under either name with
    or without the body's ``prefix`` (:func:`prefix_forms`): a bare body, a classifier, or their state dicts."""
    tensors = named_parameter_map(original) if isinstance(original, torch.nn.Module) else original
    for name in dict.fromkeys([*prefix_forms(model_name, prefix), *prefix_forms(diff_name, prefix)]):
        if name in tensors:
            return tensors[name].detach()
    raise KeyError(f"revert: the original has no parameter {model_name!r} (or {diff_name!r})")


def _bits_differ(a: torch.Tensor, b: torch.Tensor) -> int:
    """Entries whose bits differ (so NaN payloads and signed zeros count)."""
    if a.numel() == 0:
        return 0
    if a.dtype != b.dtype:
        return int((a.float() != b.float()).sum())
    return int((a.contiguous().view(torch.uint8).reshape(a.numel(), -1)
                != b.contiguous().view(torch.uint8).reshape(b.numel(), -1)).any(dim=1).sum())


def count_mismatches(
    plan: ApplyPlan,
    targets: Sequence[torch.Tensor],
    indices: Sequence[torch.Tensor],
    original: torch.nn.Module | Mapping[str, torch.Tensor],
    prefix: str = "",
) -> int:
    """Entries of one diff's sparse ``targets`` (at its ``indices``) whose bits differ from ``original``'s (its
    names with or without the body's ``prefix``)."""
    diff_names = {model_name: diff_name for diff_name, model_name in plan.entries[0].items()}
    count = 0
    for model_name, target, idx in zip(plan.sparse, targets, indices, strict=True):
        reference = _original_values(original, prefix, model_name, diff_names[model_name]).to(target.device)
        count += _bits_differ(target.reshape(-1)[idx], reference.reshape(-1)[idx])
    return count


def subtract_diff(
    model: torch.nn.Module,
    diff: SparseDiff,
    scale: float = 1.0,
    original: torch.nn.Module | Mapping[str, torch.Tensor] | None = None,
    *,
    strict_dtype: bool = True,
    check_base: bool = True,
    backend: str | None = None,
) -> RevertReport:
    """Revert ``diff`` merged into ``model`` with ``scale`` by subtracting it: ``w = cast(f32(w) − f32(scale)·v)``.

    Not exact in general ((w + d) − d ≠ w in floating point): warns with an
    :class:`InexactRevertWarning`. With ``original`` (the base model, or its state dict), the
    diff's dense tensors are restored from it and the sparse entries that still differ from it
    are counted; without it, dense tensors keep the diff's values (named in the warning).
    """
    (scale,) = check_scales([scale], [diff], "revert")
    prefix = getattr(model, "base_model_prefix", "") or ""
    with model_lock(model):
        params = named_parameter_map(model)
        resolved = check_compatible(model, params, [diff], strict_dtype, check_base, action="revert")
        plan = plan_application([diff], resolved)
        targets = [params[n].detach() for n in plan.sparse]
        indices, values = entries_per_target([diff], plan, targets)
        with torch.no_grad():
            scatter_add_(targets, indices, values, [-scale], backend=backend)
            if original is not None:
                for target_name, (_, name) in plan.dense.items():
                    params[target_name].detach().copy_(_original_values(original, prefix, target_name, name))
        mismatched = None if original is None else count_mismatches(plan, targets, indices[0], original, prefix)
    dense_kept = () if original is not None else tuple(sorted(plan.dense))
    report = RevertReport(exact=False, entries=diff.nnz, mismatched=mismatched, dense_kept=dense_kept)
    warnings.warn(inexact_message(diff, report), InexactRevertWarning, stacklevel=3)
    return report


def inexact_message(diff: SparseDiff, report: RevertReport) -> str:
    """The warning of an inexact revert: what was done and what may differ."""
    if report.mismatched is None:
        counted = "the original is unknown, so the entries that differ from it cannot be counted (pass original=)"
    else:
        counted = f"{report.mismatched} of {report.entries} entries differ from the original"
    kept = (f"; dense tensors {list(report.dense_kept)} keep the diff's values (their originals are unknown)"
            if report.dense_kept else "")
    return (f"SparseDiff ({diff.method}, {diff.nnz} entries) reverted by subtraction, not bit-exactly: {counted}"
            f"{kept}. An exact revert needs the apply's saved originals (the same process)")


def revert_diff(
    model: torch.nn.Module,
    diff: SparseDiff,
    *,
    exact: bool = True,
    scale: float = 1.0,
    original: torch.nn.Module | Mapping[str, torch.Tensor] | None = None,
    **options: Any,
) -> RevertReport:
    """Revert ``diff`` on ``model``: exactly when it is applied there, else (``exact=False``) by subtraction.

    The latest application holding ``diff`` — the same object, or any diff with the same
    :attr:`~deftx.sft.SparseDiff.content_hash` (the same file loaded again) — is reverted
    bit-exactly from its saved originals; it must be the latest application on the model
    (reverts go in reverse order), and every diff applied with it in one call is reverted too.
    When the model holds no such application (the diff was merged into a model saved and
    loaded elsewhere), ``exact=True`` raises, and ``exact=False`` subtracts ``scale`` times
    the diff (:func:`subtract_diff`, with ``original`` and ``options``), warning that it is
    inexact.

    Raises:
        RuntimeError: no application of the diff to revert exactly (``exact=True``), or it is
            not the latest application.
    """
    with model_lock(model):
        handle = applied_handle(model, diff)
        if handle is not None:
            handle.revert()
            return RevertReport(exact=True, entries=sum(d.nnz for d in handle.diffs))
        if exact:
            raise RuntimeError(
                f"this SparseDiff (content {diff.content_hash[:12]}) is not applied to this model in this process, "
                "so no original values are saved to revert it exactly. For a model it was merged into and saved, "
                "revert(model, exact=False) subtracts it (inexact; pass original= to count the entries that differ)"
            )
        return subtract_diff(model, diff, scale, original, **options)
