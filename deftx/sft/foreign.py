"""Recognise the files and folders of other tools, so that errors name what a file is.

Everything here reads bytes and names only: nothing is unpickled or executed. Each
function returns a sentence for an error message (what the thing is and which deftx
function reads it), or None when it does not recognise the input.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterable
from pathlib import Path

ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTO = 0x80
COMPOSABLE_SFT_FILE = "pytorch_diff.bin"
COMPOSABLE_SFT_MARKERS = (b"index_steps", b"diffs")
PEFT_CONFIG_FILE = "adapter_config.json"
HUB_SFT_FILE = "sft.safetensors"
HUB_CONFIG_FILE = "sft_config.json"
MODEL_CONFIG_FILE = "config.json"
JSON_SCAN_BYTES = 64  # leading whitespace of JSON text and a safetensors header length both fit
PICKLE_SCAN_BYTES = 1 << 20

COMPOSABLE_HINT = "convert it with SparseDiff.from_composable_sft(path) (weights-only unpickling)"
PEFT_HINT = "convert a SHiRA adapter with SparseDiff.from_peft(folder)"


def _looks_like_composable_sft(pickle_bytes: bytes) -> bool:
    return all(marker in pickle_bytes for marker in COMPOSABLE_SFT_MARKERS)


def _zip_pickle_bytes(path: Path) -> bytes | None:
    """The ``data.pkl`` member of a ``torch.save`` zip archive (read as bytes), or None."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            return archive.read(names[0])[:PICKLE_SCAN_BYTES] if names else None
    except (zipfile.BadZipFile, OSError, KeyError):
        return None


def looks_like_safetensors(head: bytes, size: int) -> bool:
    """A safetensors file starts with its header's length (u64, little-endian), then ``{``."""
    return len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= size - 8


def looks_like_pickle(head: bytes) -> bool:
    """A pickle of protocol 2 or later starts with the PROTO opcode and the protocol number."""
    return len(head) >= 2 and head[0] == PICKLE_PROTO and 2 <= head[1] <= 5


def looks_like_json_object(head: bytes) -> bool:
    """JSON text (a config file) starts with ``{`` after optional whitespace and holds no NUL byte, where a
    safetensors file's first eight bytes, a little-endian header length far below 2**56, end in one."""
    return b"\x00" not in head and head.lstrip(b" \t\r\n").startswith(b"{")


def is_composable_sft_file(path: Path) -> bool:
    """Whether ``path`` holds a composable-sft SFT, whatever its name: a ``torch.save`` pickle (archive or
    legacy) of composable-sft's keys, not a safetensors file."""
    with path.open("rb") as handle:
        head = handle.read(PICKLE_SCAN_BYTES)
    if looks_like_safetensors(head[:9], path.stat().st_size):
        return False
    pickled = _zip_pickle_bytes(path) if head[:4] == ZIP_MAGIC else head if looks_like_pickle(head) else None
    return pickled is not None and _looks_like_composable_sft(pickled)


def describe_foreign_file(path: Path) -> str | None:
    """What ``path`` is when its first bytes show a pickle or zip archive (a ``torch.save`` file) or JSON text."""
    with path.open("rb") as handle:
        head = handle.read(JSON_SCAN_BYTES)
    if looks_like_safetensors(head[:9], path.stat().st_size):
        return None
    if looks_like_json_object(head):
        return (f"a JSON file (an SFT folder's {HUB_CONFIG_FILE}, {PEFT_CONFIG_FILE} or {MODEL_CONFIG_FILE}), "
                "not a SparseDiff: pass the folder that holds it")
    if head[:4] == ZIP_MAGIC:
        pickled = _zip_pickle_bytes(path)
        if pickled is None:
            return "a zip archive, not a SparseDiff (SparseDiff files are safetensors)"
        if _looks_like_composable_sft(pickled):
            return f"a composable-sft SFT ({COMPOSABLE_SFT_FILE}, a torch.save pickle archive), not a SparseDiff: " \
                + COMPOSABLE_HINT
        return "a PyTorch pickle archive (torch.save), not a SparseDiff (SparseDiff files are safetensors)"
    if looks_like_pickle(head):
        with path.open("rb") as handle:
            pickled = handle.read(PICKLE_SCAN_BYTES)
        if _looks_like_composable_sft(pickled):
            return f"a composable-sft SFT ({COMPOSABLE_SFT_FILE}, legacy torch.save pickle), not a SparseDiff: " \
                + COMPOSABLE_HINT
        return "a pickle file (legacy torch.save format), not a SparseDiff (SparseDiff files are safetensors)"
    return None


def describe_foreign_safetensors(keys: Iterable[str], metadata: dict[str, str]) -> str:
    """What a safetensors file without deftx's metadata holds, judged by its tensor names."""
    keys = list(keys)
    if any(k.endswith(".shira_weight") for k in keys):
        return f"a peft SHiRA adapter's weights, not a SparseDiff: {PEFT_HINT}"
    if any(".lora_A" in k or ".lora_B" in k for k in keys):
        return "a peft LoRA adapter's weights (dense low-rank factors), not a SparseDiff; it has no sparse form"
    return (f"a safetensors file without deftx's metadata (its 'format' is {metadata.get('format')!r}): "
            "model weights or another tool's tensors, not a SparseDiff")


def describe_folder(path: Path) -> str:
    """What a folder handed to ``SparseDiff.load`` holds, and which loader reads it."""
    if (path / HUB_SFT_FILE).is_file():
        return f"a Hub-style SFT folder: load it with SparseDiff.from_pretrained({str(path)!r})"
    if (path / COMPOSABLE_SFT_FILE).is_file():
        return f"a composable-sft SFT folder: {COMPOSABLE_HINT}"
    if (path / PEFT_CONFIG_FILE).is_file():
        return f"a peft adapter folder: {PEFT_HINT}"
    return "a folder without an SFT in it (SparseDiff.load reads one .safetensors file)"
