"""``SparseDiff``: a sparse fine-tuning φ = θ − θ0 stored as sorted flat indices + values."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from deftx.ops.validation import check_index_tensor
from deftx.sft.format import (
    DENSE_PREFIX,
    DTYPE_NAMES,
    FORMAT_NAME,
    FORMAT_VERSION,
    INDEX_PREFIX,
    VALUE_PREFIX,
    SparseDiffFormatError,
    dtype_name,
    parse_json_field,
    read_file,
    storage_index_dtype,
    write_file,
)

if TYPE_CHECKING:
    from deftx.sft.apply import AppliedDiffs


@dataclass(frozen=True)
class ParamInfo:
    """Shape and dtype of the parameter a diff entry applies to."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        n = 1
        for size in self.shape:
            n *= size
        return n


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
        self.indices = {name: idx.detach().to("cpu", torch.int64) for name, idx in indices.items()}
        self.values = {name: val.detach().to("cpu", torch.float32) for name, val in values.items()}
        self.params = dict(params)
        self.dense = {name: t.detach().cpu() for name, t in (dense or {}).items()}
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
        return sorted(self.indices) + sorted(n for n in self.dense if n not in self.indices)

    def validate(self) -> None:
        """Check internal consistency; raises ValueError/TypeError/IndexError naming the entry."""
        if set(self.indices) != set(self.values):
            missing = sorted(set(self.indices) ^ set(self.values))
            raise ValueError(f"SparseDiff: indices and values name different parameters: {missing}")
        for name, idx in self.indices.items():
            if name not in self.params:
                raise ValueError(f"SparseDiff: no shape/dtype recorded for parameter {name!r}")
            check_index_tensor(idx, self.params[name].numel, f"SparseDiff[{name!r}]")
            val = self.values[name]
            if val.dim() != 1 or val.numel() != idx.numel():
                raise ValueError(f"SparseDiff[{name!r}]: {val.numel()} values for {idx.numel()} indices")
        for name, tensor in self.dense.items():
            if not tensor.is_floating_point():
                raise TypeError(f"SparseDiff dense[{name!r}] has dtype {tensor.dtype}; expected floating")

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
        """The diff ``tuned − base`` restricted to ``indices_by_name`` (flat indices or masks).

        ``dense_names`` are copied whole from ``tuned_state`` (e.g. a classifier head).
        """
        indices, values, params = {}, {}, {}
        for name, selection in indices_by_name.items():
            if name not in base_state or name not in tuned_state:
                raise KeyError(f"SparseDiff.from_states: parameter {name!r} missing from a state dict")
            base, tuned = base_state[name], tuned_state[name]
            if base.shape != tuned.shape:
                raise ValueError(f"SparseDiff.from_states: {name!r} shapes differ {base.shape} vs {tuned.shape}")
            idx = selection.reshape(-1).nonzero().flatten() if selection.dtype == torch.bool else selection
            idx = idx.to(tuned.device, torch.int64)
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
        """Write the diff as one safetensors file (atomic)."""
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
            "settings": json.dumps(self.settings, sort_keys=True),
            "params": json.dumps(params, sort_keys=True),
            "info": json.dumps(self.info, sort_keys=True),
        }
        write_file(path, tensors, metadata)

    @classmethod
    def load(cls, path: str | os.PathLike) -> SparseDiff:
        """Read and validate a file written by :meth:`save`."""
        tensors, metadata = read_file(path)
        source = str(path)
        params = _parse_params(parse_json_field(metadata, "params", source), source)
        settings = parse_json_field(metadata, "settings", source)
        info = parse_json_field(metadata, "info", source) if "info" in metadata else {}
        indices, values, dense = {}, {}, {}
        for key, tensor in tensors.items():
            prefix, _, name = key.partition("/")
            if prefix + "/" == INDEX_PREFIX:
                indices[name] = tensor
            elif prefix + "/" == VALUE_PREFIX:
                values[name] = tensor
            elif prefix + "/" == DENSE_PREFIX:
                dense[name] = tensor
            else:
                raise SparseDiffFormatError(f"{source}: unexpected tensor {key!r}")
        unpaired = sorted(set(indices) ^ set(values))
        if unpaired:
            raise SparseDiffFormatError(f"{source}: parameter {unpaired[0]!r} lacks its indices or its values")
        for name, val in values.items():
            if val.dtype != torch.float32:
                raise SparseDiffFormatError(f"{source}: values of {name!r} are {val.dtype}, expected float32")
        for name, idx in indices.items():
            if idx.dtype not in (torch.int32, torch.int64):
                raise SparseDiffFormatError(f"{source}: indices of {name!r} are {idx.dtype}, expected int32/int64")
        if not metadata.get("k", "").isdigit():
            raise SparseDiffFormatError(f"{source}: metadata field 'k' is {metadata.get('k')!r}")
        try:
            return cls(
                indices,
                values,
                params,
                dense,
                base_model=metadata.get("base_model") or None,
                method=metadata.get("method", "sparse"),
                k=int(metadata["k"]),
                settings=settings if isinstance(settings, dict) else {},
                info=info if isinstance(info, dict) else {},
            )
        except (ValueError, TypeError, IndexError) as err:
            raise SparseDiffFormatError(f"{source}: {err}") from err

    def apply(self, model: torch.nn.Module, scale: float = 1.0, **options: Any) -> AppliedDiffs:
        """Add the diff (times ``scale``) onto ``model`` in place; see :func:`deftx.sft.apply_diffs`."""
        from deftx.sft.apply import apply_diffs

        return apply_diffs(model, [self], [scale], **options)

    def revert(self, model: torch.nn.Module) -> None:
        """Undo the latest :meth:`apply` of this diff on ``model``, bit-exactly."""
        from deftx.sft.apply import revert_diff

        revert_diff(model, self)

    def save_pretrained(self, folder: str | os.PathLike, **options: Any) -> Path:
        """Write a Hub-style folder (safetensors, sft_config.json, model card); see :mod:`deftx.sft.hub`."""
        from deftx.sft.hub import save_pretrained

        return save_pretrained(self, folder, **options)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **options: Any) -> SparseDiff:
        """Load a Hub-style folder or Hub repository id (cached: works offline); see :mod:`deftx.sft.hub`."""
        from deftx.sft.hub import from_pretrained

        return from_pretrained(name_or_path, **options)

    def push_to_hub(self, repo_id: str, **options: Any) -> str:
        """Upload as a Hub-style folder to the model repository ``repo_id``; see :mod:`deftx.sft.hub`."""
        from deftx.sft.hub import push_to_hub

        return push_to_hub(self, repo_id, **options)

    @classmethod
    def from_composable_sft(cls, name_or_path: str | os.PathLike, **options: Any) -> SparseDiff:
        """Convert a composable-sft ``pytorch_diff.bin`` (file, folder or repo id); see :mod:`deftx.sft.composable`."""
        from deftx.sft.composable import from_composable_sft

        return from_composable_sft(name_or_path, **options)

    @classmethod
    def from_peft(cls, name_or_path: str | os.PathLike, **options: Any) -> SparseDiff:
        """Convert a peft SHiRA adapter folder (or repo id); see :mod:`deftx.sft.peft`."""
        from deftx.sft.peft import from_peft

        return from_peft(name_or_path, **options)

    def __repr__(self) -> str:
        return (
            f"SparseDiff(method={self.method!r}, params={len(self.indices)}, nnz={self.nnz}, "
            f"dense={len(self.dense)}, base_model={self.base_model!r})"
        )


def _parse_params(raw: object, source: str) -> dict[str, ParamInfo]:
    if not isinstance(raw, dict):
        raise SparseDiffFormatError(f"{source}: metadata 'params' must be an object")
    params = {}
    for name, entry in raw.items():
        try:
            shape = tuple(int(s) for s in entry["shape"])
            dtype = DTYPE_NAMES[entry["dtype"]]
        except (KeyError, TypeError, ValueError) as err:
            raise SparseDiffFormatError(f"{source}: bad shape/dtype record for {name!r}: {entry!r}") from err
        if any(s < 0 for s in shape):
            raise SparseDiffFormatError(f"{source}: negative size in the shape of {name!r}: {shape}")
        params[name] = ParamInfo(shape, dtype)
    return params
