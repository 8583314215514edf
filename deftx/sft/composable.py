"""Import composable-sft's (cambridgeltl) released SFTs: ``pytorch_diff.bin`` -> :class:`SparseDiff`.

composable-sft stores an SFT as one ``torch.save`` pickle, ``pytorch_diff.bin``, holding a
dict with up to two entries:

* ``"diffs"``: parameter name -> ``{"size": torch.Size, "index_steps": [int, ...],
  "values": tensor}``. The flat position of an entry is the cumulative sum of
  ``index_steps`` (the first step is the first position itself), in ascending order,
  with positions counted with the **first** dimension fastest (column-major for a
  matrix: position = row + rows·column). ``values`` are θ − θ0 at those positions.
* ``"abs"``: parameter name -> full tensors, which replace the model's: the fully trained
  parameters outside the sparse ones — a task SFT's classifier head, or a language SFT's
  masked-LM head (which composable-sft leaves out when it applies a language SFT).

Beside it, a released repository holds the fine-tuned model's ``config.json``
(``_name_or_path``: the base model; ``architectures``; ``id2label``).

The pickle is read with ``torch.load(weights_only=True)``: only tensors, containers,
``torch.Size`` and NumPy integer scalars (the first index step is one) are rebuilt;
anything else is refused. Conversion is exact: positions are re-counted row-major
(deftx's order), values widened to float32 without rounding (float64 values that
float32 cannot hold exactly are refused).
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from deftx.sft.apply import real_label_names
from deftx.sft.foreign import ZIP_MAGIC, looks_like_pickle
from deftx.sft.format import DTYPE_NAMES, ParamInfo, SparseDiffFormatError, exactly_float32
from deftx.sft.hub import resolve_folder

if TYPE_CHECKING:
    from deftx.sft.diff import SparseDiff

SFT_FILE = "pytorch_diff.bin"
MODEL_CONFIG_FILE = "config.json"
ENTRY_KEYS = {"size", "index_steps", "values"}
METHOD = "lt-sft"
CLASSIFIER_MODULES = frozenset({"classifier", "score"})
MLM_HEAD_MODULES = frozenset({"lm_head", "cls"})  # XLM-R's and BERT's masked-LM heads
SEQUENCE_CLASSIFIER = "ForSequenceClassification"
MASKED_LM = "ForMaskedLM"
LEFT_OUT_KEY = "abs_left_out"


class ComposableSFTFormatError(SparseDiffFormatError):
    """A file is not a composable-sft SFT, or holds more than tensors and plain data."""


def _numpy_scalar_globals() -> list[Any]:
    """What weights-only unpickling needs to rebuild a NumPy integer scalar, under NumPy 1 and 2 names."""
    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    return [scalar, (scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"), np.dtype,
            *{type(np.dtype(np.int64)), type(np.dtype(np.int32))}]


def read_pickle(path: Path) -> Any:
    """``torch.load`` of ``path`` with weights-only unpickling (never arbitrary objects)."""
    with path.open("rb") as handle:
        head = handle.read(4)
    if head != ZIP_MAGIC and not looks_like_pickle(head):
        raise ComposableSFTFormatError(f"{path}: not a torch.save file (neither a zip archive nor a pickle), "
                                       "so not a composable-sft SFT")
    try:
        with torch.serialization.safe_globals(_numpy_scalar_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ComposableSFTFormatError(
            f"{path}: refused by weights-only unpickling (it holds objects other than tensors and plain data, "
            f"so it is not a composable-sft SFT): {str(err).splitlines()[0]}"
        ) from err
    except (RuntimeError, EOFError, ValueError) as err:
        raise ComposableSFTFormatError(f"{path}: not a readable torch.save file ({err})") from err


def _steps(raw: Any, where: str) -> torch.Tensor:
    if not isinstance(raw, (list, tuple)) or not all(isinstance(s, (int, np.integer)) for s in raw):
        raise ComposableSFTFormatError(f"{where}: 'index_steps' must be a list of integers")
    steps = torch.tensor([int(s) for s in raw], dtype=torch.int64)
    if steps.numel() and (int(steps[0]) < 0 or bool((steps[1:] < 1).any())):
        raise ComposableSFTFormatError(f"{where}: 'index_steps' must start >= 0 and then increase (steps >= 1)")
    return steps


def _shape(raw: Any, where: str) -> tuple[int, ...]:
    if not isinstance(raw, (torch.Size, list, tuple)) or not all(
        isinstance(s, (int, np.integer)) and int(s) >= 0 for s in raw
    ):
        raise ComposableSFTFormatError(f"{where}: 'size' must be a shape, got {raw!r}")
    return tuple(int(s) for s in raw)


def exact_float32(values: torch.Tensor, where: str) -> torch.Tensor:
    """``values`` as float32; refuses values that float32 cannot hold exactly (:func:`exactly_float32`)."""
    if not values.is_floating_point():
        raise ComposableSFTFormatError(f"{where}: values are {values.dtype}, expected floating point")
    try:
        return exactly_float32(values, where)
    except ValueError as err:
        raise ComposableSFTFormatError(str(err)) from err


def column_major_to_row_major(positions: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Flat positions counted first-dimension-fastest, re-counted last-dimension-fastest (row-major)."""
    rows_major = torch.zeros_like(positions)
    remaining = positions.clone()
    row_stride = 1
    row_strides = []
    for size in reversed(shape):
        row_strides.append(row_stride)
        row_stride *= size
    for size, stride in zip(shape, reversed(row_strides), strict=True):
        rows_major += (remaining % size) * stride
        remaining //= size
    return rows_major


def convert_entry(name: str, entry: Any, source: str) -> tuple[torch.Tensor, torch.Tensor, ParamInfo]:
    """One ``diffs`` entry -> (sorted row-major int64 indices, float32 values, parameter info)."""
    where = f"{source}: diffs[{name!r}]"
    if not isinstance(entry, Mapping) or set(entry) != ENTRY_KEYS:
        keys = sorted(entry) if isinstance(entry, Mapping) else type(entry).__name__
        raise ComposableSFTFormatError(f"{where}: expected the keys {sorted(ENTRY_KEYS)}, got {keys}")
    shape = _shape(entry["size"], where)
    steps = _steps(entry["index_steps"], where)
    values = entry["values"]
    if not isinstance(values, torch.Tensor) or values.dim() != 1 or values.numel() != steps.numel():
        raise ComposableSFTFormatError(f"{where}: 'values' must be a 1-D tensor with one value per index step")
    positions = torch.cumsum(steps, 0)
    numel = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if positions.numel() and int(positions[-1]) >= numel:
        raise ComposableSFTFormatError(f"{where}: position {int(positions[-1])} is outside the shape {shape}")
    indices = column_major_to_row_major(positions, shape)
    order = torch.argsort(indices)
    dtype = values.dtype if values.dtype in DTYPE_NAMES.values() else torch.float32
    return indices[order], exact_float32(values, where)[order], ParamInfo(shape, dtype)


def read_model_config(folder: Path) -> dict[str, Any]:
    """The fine-tuned model's ``config.json`` beside the SFT ({} when absent)."""
    path = folder / MODEL_CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ComposableSFTFormatError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(config, dict):
        return {}
    id2label = config.get("id2label")
    if isinstance(id2label, Mapping) and sorted(map(str, id2label)) != sorted(map(str, range(len(id2label)))):
        raise ComposableSFTFormatError(f"{path}: id2label must map the class ids 0 to {len(id2label) - 1}, "
                                       f"it maps {sorted(map(str, id2label))}")
    return config


def architecture(config: Mapping[str, Any]) -> str:
    """The model class a ``config.json`` names first (``""`` when it names none)."""
    architectures = config.get("architectures") or []
    return str(architectures[0]) if architectures else ""


def is_classifier_head(names: Iterable[str], config: Mapping[str, Any]) -> bool:
    """Whether ``abs`` tensors of these parameter names are a classifier head (so ``id2label`` is its labels):
    one lies in a classifier module (``classifier.*``, ``score.*``), or the config is a sequence classifier."""
    names = list(names)
    in_classifier = any(set(name.split(".")[:-1]) & CLASSIFIER_MODULES for name in names)
    return bool(names) and (in_classifier or architecture(config).endswith(SEQUENCE_CLASSIFIER))


def is_masked_lm_head(names: Iterable[str], config: Mapping[str, Any]) -> bool:
    """Whether ``abs`` tensors of these names are the masked-LM head of a language SFT: not a classifier head,
    and the config is a ``…ForMaskedLM`` or every name lies in an MLM head (``lm_head.*``, ``cls.*``)."""
    names = list(names)
    in_mlm_head = all(name.split(".")[0] in MLM_HEAD_MODULES for name in names)
    return bool(names) and not is_classifier_head(names, config) and (
        in_mlm_head or architecture(config).endswith(MASKED_LM))


def info_from_model_config(config: Mapping[str, Any], has_head: bool) -> dict[str, Any]:
    """deftx's ``info`` (architecture; labels when ``has_head``: the SFT ships a classifier head)."""
    info: dict[str, Any] = {"source": "composable-sft"}
    if architecture(config):
        info["architecture"] = architecture(config)
    id2label = config.get("id2label")
    if has_head and isinstance(id2label, Mapping) and id2label:
        labels = [id2label[key] for key in sorted(id2label, key=int)]
        info.update(num_labels=len(labels), pooling="cls")
        names = real_label_names(labels)
        if names is not None:
            info["labels"] = names
    return info


def left_out_note(info: Mapping[str, Any]) -> str | None:
    """One line saying which ``abs`` tensors a conversion left out (None: none were)."""
    names = info.get(LEFT_OUT_KEY)
    if not names:
        return None
    shown = ", ".join(names[:3]) + (", …" if len(names) > 3 else "")
    return (f"left out the masked-LM head of this composable-sft language SFT ({len(names)} abs tensors: {shown}), "
            "as composable-sft applies language SFTs (with_abs=False); "
            "SparseDiff.from_composable_sft(..., with_abs=True) keeps it")


def _abs_tensors(tensors: Mapping[str, Any], source: str) -> Mapping[str, torch.Tensor]:
    absolute = tensors.get("abs", {})
    if not isinstance(absolute, Mapping):
        raise ComposableSFTFormatError(f"{source}: 'diffs' and 'abs' must be dicts of parameter name -> entry")
    for name, tensor in absolute.items():
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            raise ComposableSFTFormatError(f"{source}: abs[{name!r}] is not a floating-point tensor")
    return absolute


def convert(
    cls: type[SparseDiff], tensors: Any, model_config: Mapping[str, Any], source: str, *, with_abs: bool | None = None
) -> SparseDiff:
    """The SparseDiff (a ``cls``) equal to a loaded ``pytorch_diff.bin`` (and its ``config.json``).

    ``with_abs``: keep the ``abs`` tensors as dense tensors (True), leave them out (False), or
    (None) keep them unless they are a language SFT's masked-LM head (:func:`is_masked_lm_head`);
    names left out are recorded in ``info["abs_left_out"]``.
    """
    if not isinstance(tensors, Mapping) or not tensors or not set(tensors) <= {"diffs", "abs"}:
        keys = sorted(map(str, tensors)) if isinstance(tensors, Mapping) else type(tensors).__name__
        raise ComposableSFTFormatError(f"{source}: expected a dict with 'diffs' and/or 'abs', got {keys}")
    diffs, absolute = tensors.get("diffs", {}), _abs_tensors(tensors, source)
    if not isinstance(diffs, Mapping):
        raise ComposableSFTFormatError(f"{source}: 'diffs' and 'abs' must be dicts of parameter name -> entry")
    indices, values, params = {}, {}, {}
    for name, entry in diffs.items():
        indices[name], values[name], params[name] = convert_entry(str(name), entry, source)
    keep = not is_masked_lm_head(absolute, model_config) if with_abs is None else with_abs
    kept = dict(absolute) if keep else {}
    info = info_from_model_config(model_config, is_classifier_head(kept, model_config))
    if with_abs is None and not keep:
        info[LEFT_OUT_KEY] = sorted(map(str, absolute))
    base_model = model_config.get("_name_or_path") or None
    try:
        return cls(
            indices, values, params, kept, base_model=base_model, method=METHOD,
            settings={"source": "composable-sft", "origin": source}, info=info,
        )
    except (ValueError, TypeError, IndexError) as err:
        raise ComposableSFTFormatError(f"{source}: {err}") from err


def from_composable_sft(
    cls: type[SparseDiff],
    name_or_path: str | os.PathLike,
    *,
    with_abs: bool | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> SparseDiff:
    """Convert a composable-sft SFT into a :class:`SparseDiff` (a ``cls``), exactly.

    Args:
        cls: the class to build (:meth:`SparseDiff.from_composable_sft` passes its own).
        name_or_path: a ``pytorch_diff.bin`` file, a folder holding one (and the model's
            ``config.json``), or a Hub repository id such as
            ``cambridgeltl/xlmr-lang-sft-mad-small`` (fetched through the Hub cache, so it
            loads offline once cached).
        with_abs: keep the ``abs`` tensors as dense tensors (True) or leave them out (False).
            By default (None) they are kept unless they are a language SFT's masked-LM head
            (composable-sft applies language SFTs with ``with_abs=False``): a ``…ForMaskedLM``
            config, or only ``lm_head.*`` / ``cls.*`` names, and no classifier names. Names
            left out are listed in ``info["abs_left_out"]`` (:func:`left_out_note`).
        revision, cache_dir, local_files_only, token: as in ``huggingface_hub.snapshot_download``.

    Raises:
        ComposableSFTFormatError: not a composable-sft file (named as such), or it holds
            objects that weights-only unpickling refuses.
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        file, folder = path, path.parent
    else:
        folder = resolve_folder(name_or_path, [SFT_FILE, MODEL_CONFIG_FILE], revision=revision, cache_dir=cache_dir,
                                local_files_only=local_files_only, token=token)
        file = folder / SFT_FILE
        if not file.is_file():
            raise ComposableSFTFormatError(f"{name_or_path}: no {SFT_FILE} in {folder}")
    return convert(cls, read_pickle(file), read_model_config(folder), str(name_or_path), with_abs=with_abs)
