"""The SparseDiff file format: safetensors (never pickle) with validated metadata.

One file holds, for each parameter name:

* ``indices/<name>``: int32 (when the parameter has < 2**31 entries) or int64 flat
  row-major indices, sorted ascending and unique;
* ``values/<name>``: float32 differences θ − θ0 at those indices (finite);
* ``dense/<name>``: optional full tensors shipped with the diff (e.g. a task head),
  applied by replacement (finite; a parameter is sparse or dense, never both).

and string metadata: ``format`` (``"deftx.sparse_diff"``), ``format_version``,
``base_model``, ``method`` (``lt-sft`` / ``deft-x`` / ...), ``k``, ``settings`` (JSON
object), ``params`` (JSON object: name -> shape, a list of non-negative integers, and
dtype of the parameter the diff applies to), and ``sha256``: a digest of every other
metadata field and every tensor (name, dtype, shape, bytes), so that a flipped bit
anywhere in the file is refused rather than loaded. Files without ``sha256`` (written
before it existed) are still read.

Reading takes the whole file through one descriptor (:func:`deftx.files.read_consistent`),
so a concurrent atomic replace gives the old or the new file; writing is atomic
(:func:`deftx.files.atomic_write`). Every malformed file is a :class:`SparseDiffFormatError`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from deftx.files import FileChangedError, atomic_write_bytes, read_consistent
from deftx.sft.foreign import describe_folder, describe_foreign_file, describe_foreign_safetensors
from deftx.text import strict_json_loads

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
DIGEST_FIELD = "sha256"
METADATA_FIELDS = frozenset(
    {"format", "format_version", "base_model", "method", "k", "settings", "params", "info", DIGEST_FIELD}
)
"""Every metadata field a SparseDiff file may hold: another one (``sha257``, a renamed ``sha256``) is refused,
so that a changed byte cannot turn the digest check off."""
MAX_NUMEL = 2**63 - 1  # flat indices are int64
HEADER_LENGTH_BYTES = 8
MAX_DECIMAL_DIGITS = 18  # every such count fits in int64


class SparseDiffFormatError(ValueError):
    """A SparseDiff file is corrupt, truncated, or not a SparseDiff."""


class ForeignFormatError(SparseDiffFormatError):
    """The file is another tool's format (a pickle, a peft adapter, ...); the message names it."""


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


@dataclass(frozen=True)
class FileMetadata:
    """The validated metadata of a SparseDiff file."""

    params: dict[str, ParamInfo]
    base_model: str | None
    method: str
    k: int
    settings: dict[str, Any]
    info: dict[str, Any]

    def keywords(self) -> dict[str, Any]:
        """Everything but ``params``, as the keyword arguments of :class:`~deftx.sft.SparseDiff`."""
        return {"base_model": self.base_model, "method": self.method, "k": self.k, "settings": self.settings,
                "info": self.info}


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"`` (the names stored in files)."""
    for name, value in DTYPE_NAMES.items():
        if value == dtype:
            return name
    raise TypeError(f"unsupported parameter dtype {dtype}")


def exactly_float32(values: torch.Tensor, what: str) -> torch.Tensor:
    """``values`` (any float dtype, any shape) as float32, refusing float64 values float32 cannot hold.

    float16 / bfloat16 / float32 widen exactly; a float64 value that would round, underflow
    (1e-300 -> 0) or overflow (1e300 -> inf) raises ValueError naming ``what``. NaN and ±Inf
    pass through unchanged, for the finiteness check to name.
    """
    widened = values.to(torch.float32)
    if values.dtype != torch.float64:
        return widened
    changed = (widened.to(torch.float64) != values) & ~torch.isnan(values)
    if bool(changed.any()):
        position = int(changed.reshape(-1).nonzero()[0])
        raise ValueError(
            f"{what}: {int(changed.sum())} float64 value(s) that float32 cannot hold exactly (the first, "
            f"{float(values.reshape(-1)[position])!r} at position {position}, would become "
            f"{float(widened.reshape(-1)[position])!r}); values are stored as float32: round them yourself "
            "(values.float()) if that change is intended"
        )
    return widened


def storage_index_dtype(numel: int) -> torch.dtype:
    """int32 when every flat index of a ``numel``-entry parameter fits, else int64."""
    return torch.int32 if numel < 2**31 else torch.int64


def content_digest(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """sha256 (hex) of the metadata except ``sha256`` and of every tensor's name, dtype, shape and bytes."""
    digest = hashlib.sha256()
    fields = {key: value for key, value in metadata.items() if key != DIGEST_FIELD}
    digest.update(json.dumps(fields, sort_keys=True).encode())
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(json.dumps([name, str(tensor.dtype), list(tensor.shape)]).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def canonical_safetensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """The safetensors bytes of ``tensors`` (contiguous) and ``metadata``, equal for equal content.

    safetensors writes ``__metadata__`` in a hash map's order, which changes from one save to the
    next; here its keys are sorted, so that the same diff always gives the same file (checksums,
    caches and Hub uploads see no change). The tensor entries and data are safetensors' own.
    """
    raw = save_safetensors(tensors, metadata=metadata)
    header = parse_header(raw, "safetensors' output")
    data_start = HEADER_LENGTH_BYTES + int.from_bytes(raw[:HEADER_LENGTH_BYTES], "little")
    entries = {name: entry for name, entry in header.items() if name != "__metadata__"}
    ordered = {"__metadata__": dict(sorted(header.get("__metadata__", {}).items())), **entries}
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # the data stays 8-byte aligned, as safetensors pads it
    return b"".join([len(text).to_bytes(HEADER_LENGTH_BYTES, "little"), text, memoryview(raw)[data_start:]])


def write_file(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write atomically (see :func:`deftx.files.atomic_write`) with the content digest in the metadata.

    The old file survives any failure (an error, a full disk, a kill); equal content gives equal
    bytes (:func:`canonical_safetensors`).
    """
    contiguous = {k: v.contiguous() for k, v in tensors.items()}
    signed = {**metadata, DIGEST_FIELD: content_digest(contiguous, metadata)}
    atomic_write_bytes(path, canonical_safetensors(contiguous, signed))


def _loads(text: str | bytes) -> Any:
    """``json.loads`` refusing duplicate keys; JSON and nesting errors become ValueError."""
    try:
        return strict_json_loads(text)
    except RecursionError as err:
        raise ValueError("nested too deeply") from err


def parse_header(data: bytes, source: str) -> dict[str, Any]:
    """The JSON header of a safetensors byte string (tensor entries and ``__metadata__``)."""
    if len(data) < HEADER_LENGTH_BYTES:
        raise SparseDiffFormatError(f"{source}: corrupt or truncated SparseDiff file ({len(data)} bytes)")
    length = int.from_bytes(data[:HEADER_LENGTH_BYTES], "little")
    if length > len(data) - HEADER_LENGTH_BYTES:
        raise SparseDiffFormatError(f"{source}: corrupt or truncated SparseDiff file (header length {length})")
    try:
        header = _loads(data[HEADER_LENGTH_BYTES : HEADER_LENGTH_BYTES + length])
    except (ValueError, UnicodeDecodeError) as err:
        raise SparseDiffFormatError(f"{source}: corrupt or truncated SparseDiff file (header: {err})") from err
    if not isinstance(header, dict):
        raise SparseDiffFormatError(f"{source}: corrupt or truncated SparseDiff file (header is not a JSON object)")
    return header


def header_metadata(data: bytes, source: str) -> dict[str, str]:
    """The ``__metadata__`` string map of a safetensors byte string."""
    metadata = parse_header(data, source).get("__metadata__")
    if not isinstance(metadata, dict) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in metadata.items()
    ):
        raise SparseDiffFormatError(f"{source}: not a SparseDiff file (no string metadata)")
    return metadata


def read_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors and the metadata of a SparseDiff file, from one consistent read.

    Raises:
        FileNotFoundError: no such file.
        SparseDiffFormatError: anything else wrong with it (not safetensors, truncated,
            not a SparseDiff, an unsupported version, changed while being read).
    """
    path = Path(path)
    if path.is_dir():
        raise ForeignFormatError(f"{path}: {describe_folder(path)}")
    if not path.is_file():
        raise FileNotFoundError(f"SparseDiff file not found: {path}")
    foreign = describe_foreign_file(path)
    if foreign is not None:
        raise ForeignFormatError(f"{path}: {foreign}")
    source = str(path)
    try:
        data = read_consistent(path)
    except FileChangedError as err:
        raise SparseDiffFormatError(f"{source}: {err.strerror} (read it again once the writer is done)") from err
    header = parse_header(data, source)
    raw_metadata = header.get("__metadata__")
    if not isinstance(raw_metadata, dict) or raw_metadata.get("format") != FORMAT_NAME:
        keys = [key for key in header if key != "__metadata__"]
        described = describe_foreign_safetensors(keys, raw_metadata if isinstance(raw_metadata, dict) else {})
        raise ForeignFormatError(f"{source}: {described}")
    metadata = header_metadata(data, source)
    check_format(metadata, source)
    unknown = sorted(set(metadata) - METADATA_FIELDS)
    if unknown:
        raise SparseDiffFormatError(
            f"{source}: corrupt SparseDiff file (metadata field {unknown[0]!r} is not one a SparseDiff holds)"
        )
    try:
        tensors = load_safetensors(data)
    except (SafetensorError, ValueError, RuntimeError, TypeError, OverflowError) as err:
        raise SparseDiffFormatError(f"{source}: corrupt or truncated SparseDiff file ({err})") from err
    if DIGEST_FIELD in metadata and metadata[DIGEST_FIELD] != content_digest(tensors, metadata):
        raise SparseDiffFormatError(f"{source}: corrupt SparseDiff file (its content does not match its sha256)")
    return tensors, metadata


def decimal(text: str) -> int | None:
    """The value of a string of ASCII digits (no sign, no spaces); None for anything else."""
    if text and len(text) <= MAX_DECIMAL_DIGITS and text.isascii() and text.isdigit():
        return int(text)
    return None


def check_format(metadata: dict[str, str], source: str) -> None:
    """Refuse metadata that is not a SparseDiff's of a version this deftx reads."""
    if metadata.get("format") != FORMAT_NAME:
        raise SparseDiffFormatError(
            f"{source}: not a SparseDiff file (metadata 'format' is {metadata.get('format')!r})"
        )
    version = decimal(metadata.get("format_version", ""))
    if version is None or not 1 <= version <= FORMAT_VERSION:
        raise SparseDiffFormatError(
            f"{source}: format version {metadata.get('format_version')!r} is not supported "
            f"(this deftx reads 1 to {FORMAT_VERSION})"
        )


def parse_json_field(metadata: dict[str, str], key: str, source: str) -> object:
    """``json.loads`` of a metadata field, with a format error naming the field."""
    if key not in metadata:
        raise SparseDiffFormatError(f"{source}: metadata field {key!r} is missing")
    try:
        return _loads(metadata[key])
    except ValueError as err:
        raise SparseDiffFormatError(f"{source}: metadata field {key!r} is not valid JSON ({err})") from err


def _size(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def parse_param_info(name: object, entry: object, source: str) -> tuple[str, ParamInfo]:
    """One ``params`` record: a non-empty name -> shape (non-negative ints) and a known dtype."""
    if not isinstance(name, str) or not name:
        raise SparseDiffFormatError(f"{source}: 'params' holds an empty parameter name")
    shape = entry.get("shape") if isinstance(entry, dict) else None
    dtype = entry.get("dtype") if isinstance(entry, dict) else None
    sizes = [_size(s) for s in shape] if isinstance(shape, list) else [None]
    if None in sizes or not isinstance(dtype, str) or dtype not in DTYPE_NAMES:
        raise SparseDiffFormatError(
            f"{source}: bad shape/dtype record for {name!r} (want a list of integers >= 0 and one of "
            f"{sorted(DTYPE_NAMES)})"
        )
    info = ParamInfo(tuple(sizes), DTYPE_NAMES[dtype])
    if info.numel > MAX_NUMEL:
        raise SparseDiffFormatError(f"{source}: parameter {name!r} of shape {info.shape} has more than 2**63 entries")
    return name, info


def parse_metadata(metadata: dict[str, str], source: str) -> FileMetadata:
    """Validate every metadata field of a SparseDiff file."""
    check_format(metadata, source)
    raw_params = parse_json_field(metadata, "params", source)
    if not isinstance(raw_params, dict):
        raise SparseDiffFormatError(f"{source}: metadata 'params' must be a JSON object")
    params = dict(parse_param_info(name, entry, source) for name, entry in raw_params.items())
    settings = parse_json_field(metadata, "settings", source)
    if not isinstance(settings, dict):
        raise SparseDiffFormatError(f"{source}: metadata 'settings' must be a JSON object")
    k = decimal(metadata.get("k", ""))
    if k is None:
        raise SparseDiffFormatError(f"{source}: metadata field 'k' is {metadata.get('k')!r}, not a count")
    info = parse_json_field(metadata, "info", source) if "info" in metadata else {}
    if not isinstance(info, dict):
        raise SparseDiffFormatError(f"{source}: metadata 'info' must be a JSON object")
    return FileMetadata(
        params=params,
        base_model=metadata.get("base_model") or None,
        method=metadata.get("method") or "sparse",
        k=k,
        settings=settings,
        info=info,
    )
