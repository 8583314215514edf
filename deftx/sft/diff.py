"""``SparseDiff``: a sparse fine-tuning φ = θ − θ0 stored as sorted flat indices + values."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from deftx.ops.validation import check_finite, check_index_tensor
from deftx.sft import composable, hub, peft
from deftx.sft.apply import AppliedDiffs, RevertReport, apply_diffs, revert_diff
from deftx.sft.format import (
    DENSE_PREFIX,
    DTYPE_NAMES,
    FORMAT_NAME,
    FORMAT_VERSION,
    INDEX_PREFIX,
    VALUE_PREFIX,
    ParamInfo,
    SparseDiffFormatError,
    dtype_name,
    exactly_float32,
    parse_metadata,
    read_file,
    storage_index_dtype,
    write_file,
)


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    """The bytes of ``tensor``'s entries in order (any dtype or device)."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


class SparseDiff:
    """Sparse difference to add onto a base model's parameters.

    Attributes:
        indices: name -> int64 (nnz,) sorted unique flat row-major indices (CPU).
        values: name -> float32 (nnz,) differences at those indices (CPU).
        params: name -> :class:`ParamInfo` of the target parameter.
        dense: name -> full tensors shipped with the diff, applied by replacement
            (e.g. a task SFT's classifier head).
        base_model: identifier of the base model (None: not checked).
        method: how it was found (``"lt-sft"``, ``"deft-x"``, ``"composed"``, ...).
        k: the number of selected entries it was trained with.
        settings: JSON-serialisable settings of the method that made it.
        info: JSON-serialisable description of what the diff is for, read by the CLI and
            written into model cards: ``architecture`` (the model class it was trained
            in), ``pooling``, ``num_labels``, ``labels``, and optionally ``task``,
            ``language``, ``data``, ``scores``.
    """

    def __init__(
        self,
        indices: Mapping[str, torch.Tensor],
        values: Mapping[str, torch.Tensor],
        params: Mapping[str, ParamInfo],
        dense: Mapping[str, torch.Tensor] | None = None,
        *,
        base_model: str | None = None,
        method: str = "sparse",
        k: int | None = None,
        settings: Mapping[str, Any] | None = None,
        info: Mapping[str, Any] | None = None,
    ) -> None:
        self.indices = {name: _on_cpu(idx, INDEX_DTYPES, torch.int64, f"indices[{name!r}]")
                        for name, idx in indices.items()}
        self.values = {name: exactly_float32(_on_cpu(val, VALUE_DTYPES, None, f"values[{name!r}]"),
                                             f"SparseDiff values[{name!r}]")
                       for name, val in values.items()}
        self.params = dict(params)
        self.dense = {name: _on_cpu(t, DENSE_DTYPES, None, f"dense[{name!r}]") for name, t in (dense or {}).items()}
        self.base_model = base_model or None
        self.method = method
        self.k = self.nnz if k is None else int(k)
        self.settings = dict(settings or {})
        self.info = dict(info or {})
        self.validate()

    @property
    def nnz(self) -> int:
        """Number of stored (index, value) entries over all parameters."""
        return sum(int(idx.numel()) for idx in self.indices.values())

    @property
    def names(self) -> list[str]:
        """Every parameter the diff touches (sparse first, then dense), in a stable order."""
        return sorted(self.indices) + sorted(self.dense)

    def validate(self) -> None:
        """Check internal consistency; raises ValueError/TypeError/IndexError naming the entry.

        Every name is non-empty; a parameter is sparse (indices + values) or dense, never
        both (one diff could not be reverted exactly otherwise); indices are sorted, unique
        and in range; values and dense tensors are finite.
        """
        if set(self.indices) != set(self.values):
            missing = sorted(set(self.indices) ^ set(self.values))
            raise ValueError(f"SparseDiff: indices and values name different parameters: {missing}")
        if self.k < 0:
            raise ValueError(f"SparseDiff: k must be >= 0, got {self.k}")
        both = sorted(set(self.indices) & set(self.dense))
        if both:
            raise ValueError(f"SparseDiff: parameter {both[0]!r} is both sparse (indices/values) and dense")
        for name in [*self.indices, *self.dense, *self.params]:
            if not isinstance(name, str) or not name:
                raise ValueError(f"SparseDiff: parameter names must be non-empty strings, got {name!r}")
        for name, info in self.params.items():
            check_param_info(info, f"SparseDiff params[{name!r}]")
        for name, idx in self.indices.items():
            if name not in self.params:
                raise ValueError(f"SparseDiff: no shape/dtype recorded for parameter {name!r}")
            check_index_tensor(idx, self.params[name].numel, f"SparseDiff[{name!r}]")
            val = self.values[name]
            if val.dim() != 1 or val.numel() != idx.numel():
                raise ValueError(f"SparseDiff[{name!r}]: {val.numel()} values for {idx.numel()} indices")
            check_finite(val, f"SparseDiff values[{name!r}]")
        for name, tensor in self.dense.items():
            check_finite(tensor, f"SparseDiff dense[{name!r}]")
        check_json_metadata(self.settings, "SparseDiff settings")
        check_json_metadata(self.info, "SparseDiff info")

    @property
    def content_hash(self) -> str:
        """SHA-256 (hex) of what the diff changes: every sparse parameter's name, shape, dtype, indices and
        values, and every dense tensor. Equal for a diff and the same diff saved and loaded again (the
        metadata — method, K, settings, info — is not part of it)."""
        digest = hashlib.sha256()
        for name in sorted(self.indices):
            info = self.params[name]
            digest.update(json.dumps(["sparse", name, list(info.shape), dtype_name(info.dtype)]).encode())
            digest.update(_tensor_bytes(self.indices[name].to(torch.int64)))
            digest.update(json.dumps(["values", str(self.values[name].dtype)]).encode())
            digest.update(_tensor_bytes(self.values[name]))
        for name in sorted(self.dense):
            tensor = self.dense[name]
            digest.update(json.dumps(["dense", name, list(tensor.shape), str(tensor.dtype)]).encode())
            digest.update(_tensor_bytes(tensor))
        return digest.hexdigest()

    def delta(self, name: str) -> torch.Tensor:
        """The dense fp32 difference of parameter ``name`` (zeros off the support)."""
        info = self.params[name]
        out = torch.zeros(info.numel, dtype=torch.float32)
        out[self.indices[name]] = self.values[name]
        return out.view(info.shape)

    @classmethod
    def from_states(
        cls,
        base_state: Mapping[str, torch.Tensor],
        tuned_state: Mapping[str, torch.Tensor],
        indices_by_name: Mapping[str, torch.Tensor],
        dense_names: Iterable[str] = (),
        *,
        base_model: str | None = None,
        method: str = "sparse",
        k: int | None = None,
        settings: Mapping[str, Any] | None = None,
        info: Mapping[str, Any] | None = None,
    ) -> SparseDiff:
        """The diff ``tuned − base`` restricted to ``indices_by_name``: per parameter, integer flat
        (row-major) indices, sorted and unique, or a bool mask of the parameter's shape.

        ``dense_names`` are copied whole from ``tuned_state`` (e.g. a classifier head).

        Raises:
            KeyError: a name missing from a state dict.
            ValueError: shapes of ``base`` and ``tuned`` differ, a mask of another shape than its
                parameter, indices not sorted and unique (IndexError: out of range).
            TypeError: a selection that is not a bool or integer tensor.
        """
        indices, values, params = {}, {}, {}
        for name, selection in indices_by_name.items():
            if name not in base_state or name not in tuned_state:
                raise KeyError(f"SparseDiff.from_states: parameter {name!r} missing from a state dict")
            base, tuned = base_state[name], tuned_state[name]
            if base.shape != tuned.shape:
                raise ValueError(f"SparseDiff.from_states: {name!r} shapes differ {base.shape} vs {tuned.shape}")
            idx = selected_indices(selection, tuned.shape, f"SparseDiff.from_states: {name!r}").to(tuned.device)
            indices[name] = idx
            base_values = base.detach().reshape(-1)[idx.to(base.device)].to(tuned.device).float()
            values[name] = tuned.detach().reshape(-1)[idx].float() - base_values
            params[name] = ParamInfo(tuple(tuned.shape), tuned.dtype)
        dense = {}
        for name in dense_names:
            if name not in tuned_state:
                raise KeyError(f"SparseDiff.from_states: dense parameter {name!r} missing from tuned_state")
            dense[name] = tuned_state[name].detach().clone()
        return cls(indices, values, params, dense, base_model=base_model, method=method, k=k, settings=settings,
                   info=info)

    def save(self, path: str | os.PathLike) -> None:
        """Write the diff as one safetensors file (atomic).

        Raises:
            TypeError: ``settings`` or ``info`` changed since construction into something JSON would not
                give back as it is (:func:`check_json_metadata`); nothing is written.
        """
        tensors: dict[str, torch.Tensor] = {}
        for name, idx in self.indices.items():
            tensors[INDEX_PREFIX + name] = idx.to(storage_index_dtype(self.params[name].numel))
            tensors[VALUE_PREFIX + name] = self.values[name]
        for name, tensor in self.dense.items():
            tensors[DENSE_PREFIX + name] = tensor
        params = {n: {"shape": list(p.shape), "dtype": dtype_name(p.dtype)} for n, p in self.params.items()}
        metadata = {
            "format": FORMAT_NAME,
            "format_version": str(FORMAT_VERSION),
            "base_model": self.base_model or "",
            "method": self.method,
            "k": str(self.k),
            "settings": metadata_json(self.settings, "SparseDiff settings"),
            "params": json.dumps(params, sort_keys=True),
            "info": metadata_json(self.info, "SparseDiff info"),
        }
        write_file(path, tensors, metadata)

    @classmethod
    def load(cls, path: str | os.PathLike) -> SparseDiff:
        """Read and validate a file written by :meth:`save`.

        Raises:
            FileNotFoundError: no such file.
            SparseDiffFormatError: anything wrong with the file, naming what.
        """
        tensors, metadata = read_file(path)
        source = str(path)
        meta = parse_metadata(metadata, source)
        parts: dict[str, dict[str, torch.Tensor]] = {INDEX_PREFIX: {}, VALUE_PREFIX: {}, DENSE_PREFIX: {}}
        for key, tensor in tensors.items():
            prefix, slash, name = key.partition("/")
            if prefix + slash not in parts or not name:
                raise SparseDiffFormatError(f"{source}: unexpected tensor {key!r}")
            parts[prefix + slash][name] = tensor
        indices, values, dense = parts[INDEX_PREFIX], parts[VALUE_PREFIX], parts[DENSE_PREFIX]
        unpaired = sorted(set(indices) ^ set(values))
        if unpaired:
            raise SparseDiffFormatError(f"{source}: parameter {unpaired[0]!r} lacks its indices or its values")
        for name, val in values.items():
            if val.dtype != torch.float32:
                raise SparseDiffFormatError(f"{source}: values of {name!r} are {val.dtype}, expected float32")
        for name, idx in indices.items():
            if idx.dtype not in INDEX_DTYPES:
                raise SparseDiffFormatError(f"{source}: indices of {name!r} are {idx.dtype}, expected int32/int64")
        try:
            return cls(indices, values, meta.params, dense, **meta.keywords())
        except (ValueError, TypeError, IndexError) as err:
            raise SparseDiffFormatError(f"{source}: {err}") from err

    def apply(self, model: torch.nn.Module, scale: float = 1.0, **options: Any) -> AppliedDiffs:
        """Add the diff (times ``scale``) onto ``model`` in place; see :func:`deftx.sft.apply_diffs`."""
        return apply_diffs(model, [self], [scale], **options)

    def revert(
        self,
        model: torch.nn.Module,
        *,
        exact: bool = True,
        scale: float = 1.0,
        original: torch.nn.Module | Mapping[str, torch.Tensor] | None = None,
        **options: Any,
    ) -> RevertReport:
        """Undo this diff on ``model``; see :func:`deftx.sft.apply.revert_diff`.

        The diff is found among those applied to the model by content (:attr:`content_hash`),
        so the same file loaded again reverts too, bit-exactly. ``exact=False`` also accepts
        a model the diff was merged into elsewhere (saved and loaded, say): it subtracts
        ``scale`` times the diff and warns that this is inexact, counting the entries that
        differ from ``original`` (the base model or its state dict) when it is given.
        """
        return revert_diff(model, self, exact=exact, scale=scale, original=original, **options)

    def save_pretrained(self, folder: str | os.PathLike, **options: Any) -> Path:
        """Write a Hub-style folder (safetensors, sft_config.json, model card); see :mod:`deftx.sft.hub`."""
        return hub.save_pretrained(self, folder, **options)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **options: Any) -> SparseDiff:
        """Load a Hub-style folder or Hub repository id (cached: works offline); see :mod:`deftx.sft.hub`."""
        return hub.from_pretrained(cls, name_or_path, **options)

    def push_to_hub(self, repo_id: str, **options: Any) -> str:
        """Upload as a Hub-style folder to the model repository ``repo_id``; see :mod:`deftx.sft.hub`."""
        return hub.push_to_hub(self, repo_id, **options)

    @classmethod
    def from_composable_sft(cls, name_or_path: str | os.PathLike, **options: Any) -> SparseDiff:
        """Convert a composable-sft ``pytorch_diff.bin`` (file, folder or repo id); see :mod:`deftx.sft.composable`."""
        return composable.from_composable_sft(cls, name_or_path, **options)

    @classmethod
    def from_peft(cls, name_or_path: str | os.PathLike, **options: Any) -> SparseDiff:
        """Convert a peft SHiRA adapter folder (or repo id); see :mod:`deftx.sft.peft`."""
        return peft.from_peft(cls, name_or_path, **options)

    def __repr__(self) -> str:
        return (
            f"SparseDiff(method={self.method!r}, params={len(self.indices)}, nnz={self.nnz}, "
            f"dense={len(self.dense)}, base_model={self.base_model!r})"
        )


INDEX_DTYPES = (torch.int32, torch.int64)
VALUE_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
DENSE_DTYPES = VALUE_DTYPES


def _on_cpu(tensor: object, allowed: tuple[torch.dtype, ...], dtype: torch.dtype | None, what: str) -> torch.Tensor:
    """``tensor`` detached on the CPU (cast to ``dtype`` if given) after checking it holds data of an allowed dtype."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"SparseDiff {what} is {type(tensor).__name__}, not a torch.Tensor")
    if tensor.is_meta:
        raise ValueError(f"SparseDiff {what} is a meta tensor (it holds no data)")
    if tensor.dtype not in allowed:
        raise TypeError(f"SparseDiff {what} has dtype {tensor.dtype}; expected one of {list(allowed)}")
    return tensor.detach().to("cpu", dtype or tensor.dtype)


def selected_indices(selection: object, shape: torch.Size, what: str) -> torch.Tensor:
    """int64 flat indices of a ``selection`` of a tensor of ``shape``: the True entries of a bool mask
    of that shape (row-major), or integer indices as given (checked later, with the diff).

    Raises:
        ValueError: a mask of another shape (its flat positions would name other entries).
        TypeError: not a tensor, or a tensor neither bool nor integer (a float index would be truncated).
    """
    if not isinstance(selection, torch.Tensor):
        raise TypeError(f"{what}: the selection is {type(selection).__name__}, not a bool mask or an int tensor")
    if selection.dtype == torch.bool:
        if selection.shape != shape:
            raise ValueError(f"{what}: mask of shape {tuple(selection.shape)} for a parameter of shape {tuple(shape)}")
        return selection.reshape(-1).nonzero().flatten()
    if selection.dtype.is_floating_point or selection.dtype.is_complex:
        raise TypeError(f"{what}: indices have dtype {selection.dtype}; give integer flat indices or a bool mask")
    return selection.to(torch.int64)


def check_param_info(info: object, what: str) -> None:
    """TypeError/ValueError unless ``info`` is a ParamInfo of non-negative int sizes and a storable dtype."""
    if not isinstance(info, ParamInfo):
        raise TypeError(f"{what} is {type(info).__name__}, not a ParamInfo")
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in info.shape):
        raise ValueError(f"{what}: shape {info.shape} must hold integers >= 0")
    if info.dtype not in DTYPE_NAMES.values():
        raise TypeError(f"{what}: dtype {info.dtype} is not one of {sorted(DTYPE_NAMES)}")


JSON_SCALARS = (str, int, float, bool, type(None))


def json_metadata_problem(value: object, where: str) -> str | None:
    """Why JSON would not give ``value`` back as it is (``where``: its path, for the message), or None.

    Keys must be strings at every depth (JSON writes the key 1 as "1"); values are None, bool, int,
    float, str, lists or tuples (read back as lists) and such dicts.
    """
    if isinstance(value, JSON_SCALARS):
        return None
    if isinstance(value, (list, tuple)):
        problems = (json_metadata_problem(item, f"{where}[{i}]") for i, item in enumerate(value))
        return next((problem for problem in problems if problem), None)
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                return (f"{where}: key {key!r} is {type(key).__name__}, not a string (JSON would give it back "
                        f"as {json.dumps(str(key))})")
            problem = json_metadata_problem(item, f"{where}[{key!r}]")
            if problem:
                return problem
        return None
    return f"{where} is {type(value).__name__}, which JSON cannot hold (use None, bool, int, float, str, lists, dicts)"


def check_json_metadata(value: Mapping[str, Any], what: str) -> None:
    """TypeError naming the entry unless ``value`` comes back equal from the file (:func:`json_metadata_problem`)."""
    problem = json_metadata_problem(value, what)
    if problem:
        raise TypeError(problem)


def metadata_json(value: Mapping[str, Any], what: str) -> str:
    """``value`` as the JSON text of a metadata field, refused (TypeError) where it would not come back as it is."""
    check_json_metadata(value, what)
    return json.dumps(value, sort_keys=True)
