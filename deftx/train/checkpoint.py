"""Per-phase persistence of a sparse fine-tuning run, so a killed run resumes in its phase.

A run's work directory holds, in the order they appear:

* ``identity.json`` — what phase 1 depends on (:mod:`deftx.train.identity`), written first;
* ``phase1/checkpoint-*`` — the Trainer's own checkpoints during phase 1;
* ``theta1.safetensors`` — θ1 (phase 1 done), kept until every branch is done (or on request);
* ``<branch>/identity.json`` — what the branch (``lt-sft``, ``deft-x``, ...) depends on;
* ``<branch>/mask.safetensors`` and ``<branch>/selection.json`` — the K selected indices of
  the branch (kept until its SFT is written) and its report;
* ``<branch>/phase3/checkpoint-*`` — Trainer checkpoints of sparse retraining,
  including the :class:`~deftx.train.retrain.MaskedAdamW` state;
* ``<branch>/sft.safetensors`` — the finished :class:`deftx.sft.SparseDiff`;
* ``log.jsonl`` — one line per logged loss, tagged with its phase.

θ0 is never copied: it is the model the run is given, identified by a digest in
``identity.json``. A finished run keeps its identities, logs, selection reports and SFTs.

Every file is written to a unique temporary name and renamed (:mod:`deftx.files`), so a
file that exists is complete and concurrent writers never share a temporary. A Trainer
checkpoint counts only once its ``trainer_state.json`` (the Trainer writes it last) parses
and names the checkpoint's step, and only when it holds the optimizer, scheduler and RNG
states (not one written under ``save_only_model``: :func:`checkpoint_step`);
:func:`discard_incomplete_checkpoints` removes the others before a phase resumes, and
:func:`trim_log` drops the records a killed phase will write again, so the log holds each
step once.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from deftx.files import atomic_write, atomic_write_bytes

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
RNG_STATES = "rng_state*.pth"
"""The RNG states a Trainer checkpoint holds (one per process) unless written under ``save_only_model``."""
LOG = "log.jsonl"
"""The run log's file name in a work directory."""


def save_tensors(path: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    """Write name -> tensor to ``path`` as safetensors (atomically, CPU copies)."""
    cpu = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    atomic_write(path, lambda tmp: save_file(cpu, str(tmp)))


def load_tensors(path: Path, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Read a safetensors file written by :func:`save_tensors` onto ``device``."""
    if not path.is_file():
        raise FileNotFoundError(f"missing run file {path}")
    return load_file(str(path), device=str(device))


def save_json(path: Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON (atomically)."""
    atomic_write_bytes(path, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())


def load_json(path: Path) -> Any:
    """Read a JSON file written by :func:`save_json`."""
    return json.loads(path.read_text())


def folder_bytes(folder: Path) -> int:
    """Bytes of the files under ``folder``, each file (inode) counted once; 0 if it does not exist."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for path in folder.rglob("*") if folder.is_dir() else ():
        if path.is_symlink() or not path.is_file():
            continue
        stat = path.stat()
        if (stat.st_dev, stat.st_ino) not in seen:
            seen.add((stat.st_dev, stat.st_ino))
            total += stat.st_size
    return total


def checkpoint_step(entry: Path) -> int | None:
    """The step of a complete Trainer checkpoint folder ``checkpoint-<step>``; None if incomplete.

    Complete: it holds the RNG state (``rng_state*.pth``, which the Trainer writes after the
    optimizer and scheduler states, and not at all under ``save_only_model``: a model-only
    checkpoint resumes with fresh Adam moments and a restarted schedule, another run than an
    uninterrupted one), and its ``trainer_state.json`` (written last by the Trainer) parses and
    names the folder's step.
    """
    match = _CHECKPOINT.match(entry.name)
    if match is None or not entry.is_dir():
        return None
    if next(entry.glob(RNG_STATES), None) is None:
        return None
    try:
        state = json.loads((entry / "trainer_state.json").read_text())
    except (OSError, ValueError, RecursionError):
        return None
    step = int(match.group(1))
    return step if isinstance(state, dict) and state.get("global_step") == step else None


def last_checkpoint(folder: Path) -> str | None:
    """The complete Trainer checkpoint with the highest step in ``folder`` (None if there is none)."""
    if not folder.is_dir():
        return None
    steps = [(step, entry) for entry in folder.iterdir() if (step := checkpoint_step(entry)) is not None]
    return str(max(steps)[1]) if steps else None


def discard_incomplete_checkpoints(folder: Path) -> None:
    """Remove every ``checkpoint-*`` folder in ``folder`` that is not complete (a killed save)."""
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if _CHECKPOINT.match(entry.name) and entry.is_dir() and checkpoint_step(entry) is None:
            shutil.rmtree(entry)


def append_log(path: Path, record: Mapping[str, Any]) -> None:
    """Append one JSON line to the run log."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(json.dumps(dict(record), sort_keys=True) + "\n")


def log_record(line: str) -> dict[str, Any] | None:
    """One line of a run log as its record, or None for a line torn by a kill (or not a record)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def read_log(path: Path) -> list[dict[str, Any]]:
    """The records of the run log ``path`` in order, torn lines left out."""
    return [record for line in path.read_text().splitlines() if (record := log_record(line)) is not None]


def _kept(line: str, phase: str, last_step: int) -> bool:
    record = log_record(line)
    if record is None:
        return False
    step = record.get("step")
    return record.get("phase") != phase or (isinstance(step, int) and step <= last_step)


def trim_log(path: Path, phase: str, last_step: int) -> None:
    """Drop ``phase``'s records after ``last_step`` (and torn lines) from the run log, atomically.

    Called when a phase (re)starts from step ``last_step`` (0: from scratch), so the
    steps it runs again are logged once.
    """
    if not path.is_file():
        return
    lines = path.read_text().splitlines()
    kept = [line for line in lines if _kept(line, phase, last_step)]
    if kept != lines:
        atomic_write_bytes(path, "".join(line + "\n" for line in kept).encode())


ROWS_PREFIX = "rows/"
VALUES_PREFIX = "values/"


def as_rows(tensor: torch.Tensor) -> torch.Tensor:
    """A view of ``tensor`` as rows: (first dimension, the rest); a 1-D tensor's entries, a scalar one row."""
    rows = tensor.shape[0] if tensor.dim() else 1
    return tensor.view(rows, -1)


def changed_rows(base: torch.Tensor, tuned: torch.Tensor) -> torch.Tensor:
    """Indices (int64) of the rows (see :func:`as_rows`) whose bits differ between two tensors."""
    before = as_rows(base.detach().contiguous()).view(torch.uint8)
    after = as_rows(tuned.detach().contiguous()).view(torch.uint8)
    return (before != after).any(dim=1).nonzero().flatten()


def save_changed_rows(path: Path, base: Mapping[str, torch.Tensor], tuned: Mapping[str, torch.Tensor]) -> None:
    """Write the rows of each ``tuned`` tensor whose bits differ from ``base``, atomically.

    A full fine-tuning touches only the embedding rows of tokens it saw (Adam leaves rows with
    zero gradient unchanged unless weight decay is on): the file keeps those rows, not the model.
    """
    tensors: dict[str, torch.Tensor] = {}
    for name, value in tuned.items():
        rows = changed_rows(base[name], value)
        if rows.numel():
            tensors[ROWS_PREFIX + name] = rows
            tensors[VALUES_PREFIX + name] = as_rows(value.detach().contiguous())[rows.to(value.device)]
    save_tensors(path, tensors)


@torch.no_grad()
def load_changed_rows_(params: Mapping[str, torch.Tensor], path: Path) -> None:
    """Write the rows saved by :func:`save_changed_rows` into ``params`` (at the base they were saved against).

    Raises:
        KeyError: the file names a tensor ``params`` lacks.
    """
    stored = load_tensors(path)
    for key, rows in stored.items():
        if not key.startswith(ROWS_PREFIX):
            continue
        name = key.removeprefix(ROWS_PREFIX)
        if name not in params:
            raise KeyError(f"{path}: the model has no parameter {name!r}")
        target = params[name]
        as_rows(target)[rows.to(target.device)] = stored[VALUES_PREFIX + name].to(target.device, target.dtype)
