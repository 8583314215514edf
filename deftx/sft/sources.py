"""One entry point for an SFT wherever it comes from: :func:`open_sft`.

Accepted: a SparseDiff ``.safetensors`` file; composable-sft's ``pytorch_diff.bin`` (folder, or
the file under any name: told by what it holds); a Hub-style deftx folder (``sft.safetensors``);
a peft SHiRA adapter folder; or a Hugging Face Hub repository id holding any of those (through the
Hub cache: offline once cached). What the folder holds decides the reader. A composable-sft
language SFT's masked-LM head (its ``abs``) is left out, as composable-sft applies language SFTs,
with one line on stderr.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from torch import nn

from deftx.sft.composable import MODEL_CONFIG_FILE, left_out_note
from deftx.sft.diff import SparseDiff
from deftx.sft.foreign import (
    COMPOSABLE_SFT_FILE,
    HUB_SFT_FILE,
    PEFT_CONFIG_FILE,
    describe_folder,
    is_composable_sft_file,
)
from deftx.sft.format import SparseDiffFormatError
from deftx.sft.hub import CONFIG_FILE, resolve_folder
from deftx.sft.peft import ADAPTER_WEIGHTS

REPO_FILES = (HUB_SFT_FILE, CONFIG_FILE, COMPOSABLE_SFT_FILE, MODEL_CONFIG_FILE, PEFT_CONFIG_FILE, ADAPTER_WEIGHTS)


def read_composable(path: Path, source: str) -> SparseDiff:
    """A composable-sft SFT (file or folder); a language SFT's masked-LM head is left out, said on stderr."""
    diff = SparseDiff.from_composable_sft(path)
    note = left_out_note(diff.info)
    if note:
        print(f"note: {source}: {note}", file=sys.stderr)
    return diff


def read_folder(folder: Path, source: str, model: nn.Module | None = None) -> SparseDiff:
    """The SFT of a local folder, by what it holds (deftx, composable-sft or peft SHiRA)."""
    if (folder / HUB_SFT_FILE).is_file():
        return SparseDiff.from_pretrained(folder)
    if (folder / COMPOSABLE_SFT_FILE).is_file():
        return read_composable(folder, source)
    if (folder / PEFT_CONFIG_FILE).is_file():
        return SparseDiff.from_peft(folder, model=model)
    raise SparseDiffFormatError(f"{source}: {describe_folder(folder)}")


FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
"""Suffixes that make a missing SFT source a missing file, not a Hub repository id."""


def open_sft(spec: str | os.PathLike, *, model: nn.Module | None = None, **hub_options: Any) -> SparseDiff:
    """The SparseDiff of a file, folder or Hub repository id of any supported ecosystem.

    ``model`` gives the shapes of a peft-trained SHiRA adapter; ``hub_options`` go to
    ``huggingface_hub.snapshot_download`` (``revision``, ``cache_dir``, ``local_files_only``).
    """
    path = Path(spec).expanduser()
    if path.is_file():
        composable = path.name == COMPOSABLE_SFT_FILE or is_composable_sft_file(path)
        return read_composable(path, str(spec)) if composable else SparseDiff.load(path)
    if path.suffix in FILE_SUFFIXES and not path.exists():
        raise FileNotFoundError(f"{spec}: no such file")
    folder = resolve_folder(spec, REPO_FILES, **hub_options)
    return read_folder(folder, str(spec), model)
