"""The SparseDiff file format: safetensors (never pickle) with validated metadata.

One file holds, for each parameter name:

* ``indices/<name>``: int32 (when the parameter has < 2**31 entries) or int64 flat
  row-major indices, sorted ascending and unique;
* ``values/<name>``: float32 differences θ − θ0 at those indices;
* ``dense/<name>``: optional full tensors shipped with the diff (e.g. a task head),
  applied by replacement.

and string metadata: ``format`` (``"deftx.sparse_diff"``), ``format_version``,
``base_model``, ``method`` (``lt-sft`` / ``deft-x`` / ...), ``k``, ``settings`` (JSON),
``params`` (JSON: name -> shape and dtype of the parameter the diff applies to).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from deftx.sft.foreign import describe_folder, describe_foreign_file, describe_foreign_safetensors

FORMAT_NAME = "deftx.sparse_diff"
FORMAT_VERSION = 1
INDEX_PREFIX = "indices/"
VALUE_PREFIX = "values/"
DENSE_PREFIX = "dense/"
DTYPE_NAMES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}


class SparseDiffFormatError(ValueError):
    """A SparseDiff file is corrupt, truncated, or not a SparseDiff."""


class ForeignFormatError(SparseDiffFormatError):
    """The file is another tool's format (a pickle, a peft adapter, ...); the message names it."""


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"`` (the names stored in files)."""
    for name, value in DTYPE_NAMES.items():
        if value == dtype:
            return name
    raise TypeError(f"unsupported parameter dtype {dtype}")


def storage_index_dtype(numel: int) -> torch.dtype:
    """int32 when every flat index of a ``numel``-entry parameter fits, else int64."""
    return torch.int32 if numel < 2**31 else torch.int64


def write_file(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write atomically: a temporary file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors and the metadata of a safetensors file; clear errors for bad files."""
    path = Path(path)
    if path.is_dir():
        raise ForeignFormatError(f"{path}: {describe_folder(path)}")
    if not path.is_file():
        raise FileNotFoundError(f"SparseDiff file not found: {path}")
    foreign = describe_foreign_file(path)
    if foreign is not None:
        raise ForeignFormatError(f"{path}: {foreign}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise SparseDiffFormatError(f"{path}: corrupt or truncated SparseDiff file ({err})") from err
    if metadata.get("format") != FORMAT_NAME:
        raise ForeignFormatError(f"{path}: {describe_foreign_safetensors(tensors, metadata)}")
    version = metadata.get("format_version", "")
    if not version.isdigit() or int(version) > FORMAT_VERSION:
        raise SparseDiffFormatError(
            f"{path}: format version {version!r} is not supported (this deftx reads up to {FORMAT_VERSION})"
        )
    return tensors, metadata


def parse_json_field(metadata: dict[str, str], key: str, source: str) -> object:
    """``json.loads`` of a metadata field, with a format error naming the field."""
    if key not in metadata:
        raise SparseDiffFormatError(f"{source}: metadata field {key!r} is missing")
    try:
        return json.loads(metadata[key])
    except json.JSONDecodeError as err:
        raise SparseDiffFormatError(f"{source}: metadata field {key!r} is not valid JSON ({err})") from err
