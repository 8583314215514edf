"""The output folder: the few files that come back from a GPU machine, and the bundle.

A device call returns at most :data:`MAX_RETURNED_FILES` files of at most
:data:`MAX_FILE_BYTES` each, no deeper than two folders, named in letters, digits, ``.``,
``_`` and ``-``. So the stages write into a working folder outside the output folder, and
after every stage the output folder is refreshed with:

* ``summary.json`` and ``summary.md``: every stage's status and results, the issue's goals;
* ``<prefix>_xlmr-base.json``, ``<prefix>_llama-7b.json``: the benchmark documents
  (``deftx-bench/1``, with the predicted-vs-measured section);
* ``<prefix>_kernels.json``: ceilings, histogram micro-benchmark, ncu metrics, sanitizer;
* :data:`BUNDLE_NAME`: a tar.gz of the whole working folder (logs, markdown tables such as
  ``<prefix>_<set>.md`` and ``<prefix>_kernels.md``, plots,
  traces, ncu reports), minus the largest files if it would not fit the size limit otherwise.

A run killed between two stages still leaves everything that had finished.
"""

from __future__ import annotations

import json
import re
import shutil
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MAX_RETURNED_FILES = 8
MAX_FILE_BYTES = 16 << 20
MAX_DEPTH = 2
BUNDLE_NAME = "gpucheck-logs.tar.gz"
BUNDLE_LIMIT_BYTES = 15 << 20
"""Largest bundle, under :data:`MAX_FILE_BYTES` with room to spare."""
NAME_PATTERN = re.compile(r"^[A-Za-z0-9._-]+$")

GPU_PREFIXES: tuple[tuple[str, str], ...] = (("H200", "h200"), ("H100", "h100"), ("A100", "a100"))
"""Substring of a CUDA device name -> result file prefix."""


def result_prefix(device: str, gpu_name: str | None) -> str:
    """``h200`` for an H200 (``h100``, ``a100`` likewise), ``cuda`` for another GPU, ``cpu`` on CPU."""
    if device != "cuda":
        return "cpu"
    name = (gpu_name or "").upper()
    return next((prefix for part, prefix in GPU_PREFIXES if part in name), "cuda")


def write_json(path: Path, doc: Any) -> Path:
    """Write ``doc`` as indented JSON (atomically: a killed run never leaves half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp"
    tmp.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    tmp.replace(path)
    return path


def bundle(work_dir: Path, target: Path, limit_bytes: int = BUNDLE_LIMIT_BYTES) -> list[str]:
    """Pack ``work_dir`` into the tar.gz ``target`` of at most ``limit_bytes``; returns the files left out.

    Logs and JSON traces compress several times, so files are first taken smallest first up to
    four times the limit uncompressed; while the archive is still over the limit, that budget is
    halved. What is left out is listed in ``LEFT_OUT.txt`` inside the archive.
    """
    budget = 4 * limit_bytes
    while True:
        left_out = _pack(work_dir, target, budget)
        if target.stat().st_size <= limit_bytes or budget < 1024:
            return left_out
        budget //= 2


def _pack(work_dir: Path, target: Path, budget: int) -> list[str]:
    """The tar.gz of the files of ``work_dir`` that fit ``budget`` bytes uncompressed, smallest first."""
    note = work_dir / "LEFT_OUT.txt"
    note.unlink(missing_ok=True)
    files = sorted((p for p in work_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    kept, left_out, size = [], [], 0
    for path in files:
        if size + path.stat().st_size > budget:
            left_out.append(f"{path.relative_to(work_dir)} ({path.stat().st_size:,} bytes)")
            continue
        kept.append(path)
        size += path.stat().st_size
    tmp = target.parent / f".{target.name}.tmp"
    with tarfile.open(tmp, "w:gz") as tar:
        for path in kept:
            tar.add(path, arcname=str(Path(work_dir.name) / path.relative_to(work_dir)))
        if left_out:
            note.write_text("left out of the bundle (size limit):\n" + "\n".join(left_out) + "\n")
            tar.add(note, arcname=str(Path(work_dir.name) / note.name))
    tmp.replace(target)
    return left_out


def publish(out_dir: Path, copies: Mapping[str, Path]) -> None:
    """Copy each existing source to ``out_dir/name``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, source in copies.items():
        if source.is_file():
            tmp = out_dir / f".{name}.tmp"
            shutil.copyfile(source, tmp)
            tmp.replace(out_dir / name)


def returnable_problems(out_dir: Path) -> list[str]:
    """Why ``out_dir`` would not come back whole from a device call (empty: it would)."""
    entries = list(out_dir.rglob("*"))
    files = [p for p in entries if p.is_file()]
    problems = []
    if len(files) > MAX_RETURNED_FILES:
        problems.append(f"{len(files)} files, more than {MAX_RETURNED_FILES}")
    for path in entries:
        relative = path.relative_to(out_dir)
        if not all(NAME_PATTERN.match(part) for part in relative.parts):
            problems.append(f"{relative}: a name outside letters, digits, '.', '_', '-'")
        if path.is_file() and len(relative.parts) - 1 > MAX_DEPTH:
            problems.append(f"{relative}: more than {MAX_DEPTH} folders deep")
        if path.is_file() and path.stat().st_size > MAX_FILE_BYTES:
            problems.append(f"{relative}: {path.stat().st_size:,} bytes, over {MAX_FILE_BYTES:,}")
    return problems
