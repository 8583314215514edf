"""peft interop: a SparseDiff as a SHiRA adapter folder (:func:`to_peft`), and back (:func:`from_peft`).

peft's SHiRA (Sparse High Rank Adapter) adds, to each targeted ``nn.Linear`` weight of shape
(out, in), a sparse matrix of exactly ``r · (in + out)`` entries, with one ``r`` for every
targeted module, stored as ``shira_indices`` (int32 (2, n): rows, columns) and
``shira_weight`` (float32 (n,)). peft loads such a folder with ``PeftModel.from_pretrained``.

What SHiRA cannot hold:

* entries outside ``nn.Linear`` weights: embeddings, biases, LayerNorms, any other
  parameter, and dense tensors shipped whole (a task head);
* per-module counts: every module has ``r · (in + out)`` entries, so modules with fewer
  entries are **padded** with zero-valued entries (at the first positions outside the
  support; adding 0 changes no weight) — the size cost is reported; a module whose count
  would exceed its ``in · out`` entries at the common ``r`` cannot be a SHiRA target.

* a tensor the model holds under several names (word embeddings tied to an MLM decoder):
  peft's ``modules_to_save`` copies a module, which breaks the tie, and a SHiRA delta on a
  tied ``nn.Linear`` reaches that module only. So every module holding a changed tied
  tensor is saved whole with the diff applied (one inside another module saved whole goes
  with it), and none is a SHiRA target.

Nothing is dropped: by default (``rest="error"``) :func:`to_peft` refuses such a diff and
lists every parameter it cannot hold; with ``rest="modules_to_save"`` each of their modules
is saved whole (with the diff applied) through peft's ``modules_to_save``, which is exact
but dense. Logits of the loaded adapter equal deftx's own apply (merged or not) for
float32 models: both add each value to its weight in float32 with one rounding.

deftx records in the safetensors metadata of its exports the parameter shapes and dtypes,
the padding per module and its own metadata (method, K, base model, info, settings), so
:func:`from_peft` gives back a SparseDiff that applies identically (padding dropped). A SHiRA
adapter trained by peft has no shapes recorded: give the model (``SparseDiff.from_peft(folder, model=model)``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from torch import nn

from deftx.files import atomic_write_bytes
from deftx.models.parameters import named_parameter_map, tied_names
from deftx.sft.apply import apply_diffs, check_compatible
from deftx.sft.format import DTYPE_NAMES, ParamInfo, SparseDiffFormatError, canonical_safetensors, dtype_name
from deftx.sft.hub import resolve_folder

if TYPE_CHECKING:
    from deftx.sft.diff import SparseDiff

PEFT_TYPE = "SHIRA"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
KEY_PREFIX = "base_model.model."
INDICES_SUFFIX = ".shira_indices"
WEIGHT_SUFFIX = ".shira_weight"
METADATA_KEY = "deftx"
SHIRA_ENTRY_BYTES = 4 + 4 + 4  # int32 row, int32 column, float32 value
SPARSE_DIFF_ENTRY_BYTES = 4 + 4  # int32 flat index, float32 value
REST_POLICIES = ("error", "modules_to_save")
RECORD_OBJECTS = ("params", "padding", "settings")  # the JSON objects of deftx's record in an export


class PeftExportError(ValueError):
    """The diff holds entries a SHiRA adapter cannot hold (the message lists them), or bad input."""


class PeftImportError(SparseDiffFormatError):
    """An adapter folder is not a SHiRA adapter deftx can convert (the message says why)."""


@dataclass(frozen=True)
class ShiraModule:
    """One ``nn.Linear`` weight held by SHiRA: its entries and the zero entries padding it to ``r·(in+out)``."""

    module: str
    entries: int
    padding: int
    out_features: int
    in_features: int


@dataclass(frozen=True)
class WholeModule:
    """A module SHiRA cannot hold, saved whole through ``modules_to_save``."""

    module: str
    reasons: tuple[str, ...]
    numel: int


@dataclass
class ShiraPlan:
    """How a SparseDiff maps onto one SHiRA adapter: the common ``r``, SHiRA modules, whole modules."""

    r: int
    shira: list[ShiraModule]
    whole: list[WholeModule]
    names: dict[str, str] = field(default_factory=dict)

    @property
    def entries(self) -> int:
        return sum(m.entries for m in self.shira)

    @property
    def padding(self) -> int:
        return sum(m.padding for m in self.shira)


@dataclass
class PeftExport:
    """What :func:`to_peft` wrote, and what the SHiRA form costs.

    Attributes:
        folder: the adapter folder.
        plan: r, the SHiRA modules (entries, padding) and the modules saved whole.
        adapter_bytes: size of ``adapter_model.safetensors``.
        padding_bytes: bytes of the zero entries added to reach ``r·(in+out)`` per module.
        sparse_diff_bytes: bytes of the same SHiRA entries in a SparseDiff (flat int32 index +
            float32 value each), for comparison.
    """

    folder: Path
    plan: ShiraPlan
    adapter_bytes: int

    @property
    def padding_bytes(self) -> int:
        return self.plan.padding * SHIRA_ENTRY_BYTES

    @property
    def sparse_diff_bytes(self) -> int:
        return self.plan.entries * SPARSE_DIFF_ENTRY_BYTES

    def summary(self) -> str:
        """A few lines for people: r, modules, entries, padding and its size cost, whole modules."""
        plan = self.plan
        lines = [
            f"SHiRA adapter {self.folder}: r = {plan.r}, {len(plan.shira)} Linear weights, "
            f"{plan.entries:,} entries + {plan.padding:,} zero padding entries "
            f"({self.padding_bytes:,} bytes of padding; adapter file {self.adapter_bytes:,} bytes, "
            f"the same entries in a SparseDiff {self.sparse_diff_bytes:,} bytes)",
        ]
        lines += [f"  saved whole (modules_to_save): {m.module} ({m.numel:,} values): {'; '.join(m.reasons)}"
                  for m in plan.whole]
        return "\n".join(lines)


def _owner(name: str) -> tuple[str, str]:
    module, _, attr = name.rpartition(".")
    return module, attr


def _why_not_shira(model: nn.Module, name: str, diff_name: str, diff: SparseDiff) -> str | None:
    """Why SHiRA cannot hold the diff's entries of parameter ``name`` (None: it can)."""
    module_name, attr = _owner(name)
    module = model.get_submodule(module_name)
    if diff_name in diff.dense:
        return f"{attr} is shipped whole (dense)"
    if isinstance(module, nn.Linear) and attr == "weight":
        return None
    kind = "an embedding" if isinstance(module, nn.Embedding) else type(module).__name__
    return f"{diff.indices[diff_name].numel():,} entries in {attr} of {kind} (SHiRA holds nn.Linear weights only)"


def _least_r(entries: int, out_features: int, in_features: int) -> int:
    """The smallest SHiRA r whose ``r · (in + out)`` entries hold ``entries``."""
    return max(1, math.ceil(entries / (out_features + in_features)))


def _common_r(candidates: dict[str, tuple[int, int, int]]) -> tuple[int, dict[str, str]]:
    """The common r of the SHiRA modules and the modules that cannot take it (module -> reason).

    ``candidates``: module -> (entries, out, in). A module that no r fits (its least r, :func:`_least_r`,
    already gives more than its ``in · out`` entries) leaves first: it must not set r for the others. r
    is then the largest least r; a module whose ``r · (in + out)`` would exceed its ``in · out`` entries
    leaves, and r is recomputed without it.
    """
    left: dict[str, tuple[int, int, int]] = {}
    unfit: dict[str, str] = {}
    for module, (n, o, i) in candidates.items():
        least = _least_r(n, o, i)
        if least * (o + i) > o * i:
            unfit[module] = (f"weight: its {n:,} entries need r = {least}, which gives {least * (o + i):,} entries, "
                             f"more than its {o * i:,}: no SHiRA r fits it")
        else:
            left[module] = (n, o, i)
    while left:
        r = max(_least_r(n, o, i) for n, o, i in left.values())
        over = {m for m, (_, o, i) in left.items() if r * (o + i) > o * i}
        if not over:
            return r, unfit
        for module in over:
            n, o, i = left.pop(module)
            unfit[module] = (f"weight: SHiRA's common r = {r} would give it {r * (o + i):,} entries, more than its "
                             f"{o * i:,} ({n:,} in the diff)")
    return 0, unfit


def _tie_reasons(changed: list[str], tied: Mapping[str, tuple[str, ...]]) -> dict[str, str]:
    """Module -> why it is saved whole: it holds a tensor the diff changes under several names.

    Saved whole with the diff applied, every holder keeps the change once peft's
    ``modules_to_save`` copies them apart (merged or not); a SHiRA delta on one holder, a tied
    ``nn.Linear``, would reach that module only.
    """
    reasons: dict[str, str] = {}
    for name in changed:
        for alias in tied.get(name, ()):
            others = ", ".join(a for a in tied[name] if a != alias)
            reasons[_owner(alias)[0]] = (f"{_owner(alias)[1]} is tied to {others}: each module holding the tensor "
                                         "is saved whole with the diff applied (so the tie keeps the change)")
    return reasons


def _fold_nested(reasons: dict[str, list[str]]) -> dict[str, list[str]]:
    """Whole modules with the ones inside another whole module folded into it (its copy holds them)."""
    folded: dict[str, list[str]] = {}
    for module_name in sorted(reasons, key=lambda m: (m.count(".") if m else -1, m)):
        outer = next((o for o in folded if not o or module_name.startswith(o + ".")), None)
        folded.setdefault(module_name if outer is None else outer, []).extend(reasons[module_name])
    return folded


def plan_shira(diff: SparseDiff, model: nn.Module, *, check_base: bool = True) -> ShiraPlan:
    """Map ``diff`` onto ``model``'s modules: which SHiRA holds, which must be saved whole, and r.

    A tensor the diff changes that the model holds under several names (tied word embeddings
    and decoder) is never a SHiRA target: every module holding it is saved whole.
    """
    params = named_parameter_map(model)
    names = check_compatible(model, params, [diff], strict_dtype=False, check_base=check_base)
    reasons: dict[str, list[str]] = {}
    candidates: dict[str, tuple[int, int, int]] = {}
    changed = {names[d]: d for d in diff.names if d in diff.dense or diff.indices[d].numel()}  # model -> diff name
    for name, diff_name in changed.items():
        module_name, _ = _owner(name)
        reason = _why_not_shira(model, name, diff_name, diff)
        if reason is not None:
            reasons.setdefault(module_name, []).append(reason)
        else:
            out_features, in_features = model.get_parameter(name).shape
            candidates[module_name] = (diff.indices[diff_name].numel(), out_features, in_features)
    for module_name, reason in _tie_reasons(list(changed), tied_names(model)).items():
        candidates.pop(module_name, None)
        reasons.setdefault(module_name, []).append(reason)
    for module_name in set(candidates) & set(reasons):
        candidates.pop(module_name)
        reasons[module_name].append("its weight then goes whole too (a module is a SHiRA target or saved whole)")
    r, unfit = _common_r(candidates)
    for module_name, reason in unfit.items():
        candidates.pop(module_name)
        reasons.setdefault(module_name, []).append(reason)
    whole = []
    for module_name, why in sorted(_fold_nested(reasons).items()):
        nested = [m for m in candidates if m.startswith(module_name + ".")] if module_name else list(candidates)
        if nested:
            raise PeftExportError(f"module {module_name or '<root>'!r} must be saved whole ({why[0]}) "
                                  f"but holds SHiRA targets {nested[:3]}: peft cannot do both")
        numel = sum(p.numel() for p in model.get_submodule(module_name).parameters())
        whole.append(WholeModule(module_name, tuple(why), numel))
    shira = [ShiraModule(m, n, r * (o + i) - n, o, i) for m, (n, o, i) in sorted(candidates.items())]
    return ShiraPlan(r, shira, whole, names)


def padded_entries(indices: torch.Tensor, values: torch.Tensor, padding: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The diff's entries then ``padding`` zero entries at the first flat positions outside its support."""
    window = torch.arange(indices.numel() + padding, dtype=torch.int64)
    free = window[~torch.isin(window, indices)][:padding]
    return torch.cat([indices, free]), torch.cat([values, torch.zeros(padding, dtype=torch.float32)])


def adapter_config(plan: ShiraPlan, base_model: str | None) -> dict[str, Any]:
    """The ``adapter_config.json`` peft reads for a SHiRA adapter."""
    return {
        "peft_type": PEFT_TYPE,
        "r": plan.r,
        "target_modules": [m.module for m in plan.shira],
        "modules_to_save": [m.module for m in plan.whole] or None,
        "mask_type": "random",
        "random_seed": None,
        "fan_in_fan_out": False,
        "init_weights": True,
        "inference_mode": True,
        "base_model_name_or_path": base_model,
        "revision": None,
        "task_type": None,
    }


def _whole_tensors(model: nn.Module, diff: SparseDiff, plan: ShiraPlan, check_base: bool) -> dict[str, torch.Tensor]:
    """The modules saved whole, as they are with ``diff`` applied (deftx's own apply, then reverted)."""
    if not plan.whole:
        return {}
    handle = apply_diffs(model, [diff], strict_dtype=False, check_base=check_base)
    try:
        return {
            f"{KEY_PREFIX}{m.module}.{key}": tensor.detach().cpu().clone()
            for m in plan.whole for key, tensor in model.get_submodule(m.module).state_dict().items()
        }
    finally:
        handle.revert()


def tied_copies(model: nn.Module, keys: list[str]) -> list[str]:
    """Of the saved ``keys`` (``base_model.model.`` prefixed), the names (unprefixed) of a tied tensor under a
    name :func:`~deftx.models.parameters.named_parameter_map` does not use: copies of another saved tensor,
    which :func:`from_peft` leaves out."""
    listed, tied = named_parameter_map(model), tied_names(model)
    return sorted(name for name in (k.removeprefix(KEY_PREFIX) for k in keys) if name in tied and name not in listed)


def to_peft(
    diff: SparseDiff,
    model: nn.Module,
    folder: str | os.PathLike,
    *,
    rest: str = "error",
    check_base: bool = True,
) -> PeftExport:
    """Write ``diff`` as a peft SHiRA adapter folder for ``model`` (the base model, as peft will wrap it).

    Args:
        diff: the SFT.
        model: the base model the adapter is for, of the class later given to
            ``PeftModel.from_pretrained``; it is left as it was.
        folder: where ``adapter_config.json`` and ``adapter_model.safetensors`` go.
        rest: what to do with entries SHiRA cannot hold: ``"error"`` (default) refuses and
            lists them; ``"modules_to_save"`` saves each of their modules whole.
        check_base: refuse a diff made for another base model (as in :func:`apply_diffs`).

    Returns:
        A :class:`PeftExport`: r, padding and its size cost, modules saved whole.

    Raises:
        PeftExportError: entries SHiRA cannot hold with ``rest="error"``, nothing SHiRA can
            hold, or a module that would have to be both a target and saved whole.
    """
    if rest not in REST_POLICIES:
        raise PeftExportError(f"rest must be one of {REST_POLICIES}, got {rest!r}")
    plan = plan_shira(diff, model, check_base=check_base)
    listed = "\n".join(f"  {m.module}: {'; '.join(m.reasons)}" for m in plan.whole)
    if plan.whole and rest == "error":
        raise PeftExportError(f"a SHiRA adapter cannot hold these entries of the SFT:\n{listed}\n"
                              "pass rest='modules_to_save' to save those modules whole (exact, dense)")
    if not plan.shira:
        whole = f"; saved whole there would be:\n{listed}" if plan.whole else ""
        raise PeftExportError("no nn.Linear weight of the model has entries in this SFT that SHiRA can hold, and a "
                              f"peft adapter needs at least one SHiRA target{whole}")
    diff_name_of = {model_name: diff_name for diff_name, model_name in plan.names.items()}
    tensors = _whole_tensors(model, diff, plan, check_base)
    for m in plan.shira:
        name = diff_name_of[f"{m.module}.weight"]
        flat, values = padded_entries(diff.indices[name], diff.values[name], m.padding)
        tensors[f"{KEY_PREFIX}{m.module}{INDICES_SUFFIX}"] = torch.stack(
            [flat // m.in_features, flat % m.in_features]).to(torch.int32)
        tensors[f"{KEY_PREFIX}{m.module}{WEIGHT_SUFFIX}"] = values
    params = named_parameter_map(model)
    record = {
        "params": {f"{m.module}.weight": {"shape": [m.out_features, m.in_features],
                                          "dtype": dtype_name(params[f"{m.module}.weight"].dtype)}
                   for m in plan.shira},
        "padding": {m.module: m.padding for m in plan.shira},
        "tied_copies": tied_copies(model, list(tensors)),
        "method": diff.method, "k": diff.k, "base_model": diff.base_model, "info": diff.info,
        "settings": diff.settings,
    }
    weights = {k: v.contiguous() for k, v in tensors.items()}
    metadata = {"format": "pt", METADATA_KEY: json.dumps(record, sort_keys=True)}
    payload = canonical_safetensors(weights, metadata)
    config = json.dumps(adapter_config(plan, diff.base_model), indent=2) + "\n"
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / ADAPTER_WEIGHTS, payload)  # the weights first: a failed write leaves the old pair
    atomic_write_bytes(folder / ADAPTER_CONFIG, config.encode())
    return PeftExport(folder, plan, (folder / ADAPTER_WEIGHTS).stat().st_size)


def _read_adapter(folder: Path, source: str) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
    """(adapter config, tensors with the ``base_model.model.`` prefix removed, deftx's record or {})."""
    try:
        config = json.loads((folder / ADAPTER_CONFIG).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PeftImportError(f"{source}: cannot read {ADAPTER_CONFIG} ({err})") from err
    if not isinstance(config, dict) or config.get("peft_type") != PEFT_TYPE:
        kind = config.get("peft_type") if isinstance(config, dict) else None
        raise PeftImportError(f"{source}: a peft {kind} adapter, not SHiRA; only SHiRA adapters are sparse "
                              "differences deftx can convert")
    if config.get("fan_in_fan_out"):
        raise PeftImportError(f"{source}: fan_in_fan_out adapters (Conv1D weights) are not supported")
    try:
        with safe_open(str(folder / ADAPTER_WEIGHTS), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {k.removeprefix(KEY_PREFIX): handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    except Exception as err:
        raise PeftImportError(f"{source}: cannot read {ADAPTER_WEIGHTS} ({err})") from err
    try:
        record = json.loads(metadata[METADATA_KEY]) if METADATA_KEY in metadata else {}
    except json.JSONDecodeError as err:
        raise PeftImportError(f"{source}: deftx metadata is not valid JSON ({err})") from err
    if not isinstance(record, dict) or not all(isinstance(record.get(key, {}), dict) for key in RECORD_OBJECTS):
        raise PeftImportError(f"{source}: deftx metadata must be a JSON object, its 'params', 'padding' and "
                              "'settings' objects")
    return config, tensors, record


def _param_info(name: str, record: Mapping[str, Any], model: nn.Module | None, source: str) -> ParamInfo:
    entry = record.get("params", {}).get(name)
    if entry is not None:
        shape, dtype = (entry.get("shape"), entry.get("dtype")) if isinstance(entry, Mapping) else (None, None)
        if not (isinstance(shape, list) and all(type(size) is int and size >= 0 for size in shape)
                and dtype in DTYPE_NAMES):
            raise PeftImportError(f"{source}: deftx's record of {name!r} is not a shape and a dtype of "
                                  f"{sorted(DTYPE_NAMES)}: {entry!r}")
        return ParamInfo(tuple(shape), DTYPE_NAMES[dtype])
    if model is not None:
        try:
            param = model.get_parameter(name)
        except AttributeError as err:
            raise PeftImportError(f"{source}: the adapter targets {name!r}, which the model does not have") from err
        return ParamInfo(tuple(param.shape), param.dtype)
    raise PeftImportError(f"{source}: the shape of {name!r} is not recorded (not a deftx export): "
                          "pass the model, SparseDiff.from_peft(folder, model=model)")


def _padding(padding: Mapping[str, Any], module: str, source: str) -> int:
    """The zero entries deftx's record says it padded ``module`` with (0 when it names none)."""
    count = padding.get(module, 0)
    if type(count) is not int or count < 0:
        raise PeftImportError(f"{source}: deftx's record pads {module} with {count!r} entries, not a count")
    return count


def _shira_entries(indices: torch.Tensor, weight: torch.Tensor, info: ParamInfo, padding: int,
                   where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted unique row-major flat indices and summed float32 values of one SHiRA module."""
    if indices.dim() != 2 or indices.shape[0] != 2 or weight.dim() != 1 or indices.shape[1] != weight.numel():
        raise PeftImportError(f"{where}: shira_indices must be (2, n) and shira_weight (n,)")
    if len(info.shape) != 2:
        raise PeftImportError(f"{where}: SHiRA targets 2-D weights, the parameter has shape {info.shape}")
    rows, cols = indices.to(torch.int64)
    out_features, in_features = info.shape
    if bool(((rows < 0) | (rows >= out_features) | (cols < 0) | (cols >= in_features)).any()):
        raise PeftImportError(f"{where}: an index lies outside the weight's shape {info.shape}")
    keep = weight.numel() - padding
    if keep < 0 or bool(weight[keep:].any()):
        held = f"more than its {weight.numel()} entries" if keep < 0 else "but they are not all zeros"
        raise PeftImportError(f"{where}: deftx's record says its last {padding} entries are zero padding, {held}: "
                              "the record does not describe these weights (dropping them would lose entries)")
    flat, values = (rows * in_features + cols)[:keep], weight.to(torch.float32)[:keep]
    unique, inverse = torch.unique(flat, sorted=True, return_inverse=True)
    summed = torch.zeros(unique.numel(), dtype=torch.float32).index_add_(0, inverse, values)
    return unique, summed


def shira_modules(keys: Iterable[str], source: str) -> list[str]:
    """The modules an adapter's tensor ``keys`` hold SHiRA entries for (each needs both ``shira_indices`` and
    ``shira_weight``: one without the other is refused, as its entries cannot be read)."""
    keys = set(keys)
    modules = {k.removesuffix(suffix) for k in keys for suffix in (INDICES_SUFFIX, WEIGHT_SUFFIX) if k.endswith(suffix)}
    for module in sorted(modules):
        for suffix, other in ((INDICES_SUFFIX, WEIGHT_SUFFIX), (WEIGHT_SUFFIX, INDICES_SUFFIX)):
            if f"{module}{suffix}" in keys and f"{module}{other}" not in keys:
                raise PeftImportError(f"{source}: {module}{suffix} has no matching {other.lstrip('.')}")
    return sorted(modules)


def from_peft(
    cls: type[SparseDiff],
    name_or_path: str | os.PathLike,
    *,
    model: nn.Module | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> SparseDiff:
    """A SparseDiff (a ``cls``) equal in effect to a peft SHiRA adapter (folder or Hub repository id).

    Every SHiRA entry becomes a sparse entry (the zero padding of deftx's own exports is
    dropped; repeated positions are summed, as peft does); ``modules_to_save`` tensors become
    dense tensors (but for the copies of a tied tensor deftx's exports record, :func:`tied_copies`).
    Parameter names are the model's (as peft saw it). Shapes come from deftx's
    metadata or, for adapters trained with peft, from ``model``. ``settings`` are those deftx's
    export recorded, else ``{"source": "peft", "r": r}``.
    """
    folder = resolve_folder(name_or_path, [ADAPTER_CONFIG, ADAPTER_WEIGHTS], revision=revision, cache_dir=cache_dir,
                            local_files_only=local_files_only, token=token)
    source = str(name_or_path)
    config, tensors, record = _read_adapter(folder, source)
    padding, copies = record.get("padding", {}), set(record.get("tied_copies", ()))
    indices, values, params, dense = {}, {}, {}, {}
    for module in shira_modules(tensors, source):
        name = f"{module}.weight"
        params[name] = _param_info(name, record, model, source)
        indices[name], values[name] = _shira_entries(tensors[f"{module}{INDICES_SUFFIX}"],
                                                     tensors[f"{module}{WEIGHT_SUFFIX}"], params[name],
                                                     _padding(padding, module, source), f"{source}: {module}")
    for key, tensor in tensors.items():
        if not key.endswith((INDICES_SUFFIX, WEIGHT_SUFFIX)) and key not in copies:
            dense[key] = tensor
    if not indices:
        raise PeftImportError(f"{source}: the adapter holds no SHiRA entries")
    base_model = record.get("base_model") or config.get("base_model_name_or_path") or None
    settings = record.get("settings", {"source": "peft", "r": config.get("r")})
    return cls(indices, values, params, dense, base_model=base_model, method=record.get("method", "shira"),
               k=record.get("k"), settings=settings, info=record.get("info") or {})
