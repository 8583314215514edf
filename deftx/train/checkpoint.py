"""Per-phase persistence of a sparse fine-tuning run, so a killed run resumes in its phase.

A run's work directory holds, in the order they appear:

* ``theta0.safetensors`` — θ0 of every trained parameter (written before phase 1);
* ``phase1/checkpoint-*`` — the Trainer's own checkpoints during phase 1;
* ``theta1.safetensors`` — θ1 (phase 1 done);
* ``<branch>/mask.safetensors`` and ``<branch>/selection.json`` — the K selected
  indices of a branch (``lt-sft``, ``deft-x``, ...) and its report;
* ``<branch>/phase3/checkpoint-*`` — Trainer checkpoints of sparse retraining,
  including the :class:`~deftx.train.retrain.MaskedAdamW` state;
* ``<branch>/sft.safetensors`` — the finished :class:`deftx.sft.SparseDiff`;
* ``log.jsonl`` — one line per logged loss, tagged with its phase.

Every file is written to a unique temporary name and renamed (:mod:`deftx.files`), so a
file that exists is complete and concurrent writers never share a temporary. A Trainer
checkpoint counts only once its ``trainer_state.json`` (the Trainer writes it last) parses
and names the checkpoint's step; :func:`discard_incomplete_checkpoints` removes the others
before a phase resumes, and :func:`trim_log` drops the records a killed phase will write
again, so the log holds each step once.
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


def checkpoint_step(entry: Path) -> int | None:
    """The step of a complete Trainer checkpoint folder ``checkpoint-<step>``; None if incomplete.

    Complete: its ``trainer_state.json`` (written last by the Trainer) parses and names
    the folder's step.
    """
    match = _CHECKPOINT.match(entry.name)
    if match is None or not entry.is_dir():
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


def _kept(line: str, phase: str, last_step: int) -> bool:
    try:
        record = json.loads(line)
    except ValueError:
        return False  # a line torn by a kill
    if not isinstance(record, dict):
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
