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

Every file is written to a temporary name and renamed, so a file that exists is complete.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def save_tensors(path: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    """Write name -> tensor to ``path`` as safetensors (atomically, CPU copies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({name: t.detach().cpu().contiguous() for name, t in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def load_tensors(path: Path, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Read a safetensors file written by :func:`save_tensors` onto ``device``."""
    if not path.is_file():
        raise FileNotFoundError(f"missing run file {path}")
    return load_file(str(path), device=str(device))


def save_json(path: Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON (atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def load_json(path: Path) -> Any:
    """Read a JSON file written by :func:`save_json`."""
    return json.loads(path.read_text())


def last_checkpoint(folder: Path) -> str | None:
    """The Trainer checkpoint with the highest step in ``folder`` (None if there is none)."""
    if not folder.is_dir():
        return None
    steps = [
        (int(match.group(1)), entry)
        for entry in folder.iterdir()
        if entry.is_dir() and (match := _CHECKPOINT.match(entry.name))
        and (entry / "trainer_state.json").is_file()
    ]
    return str(max(steps)[1]) if steps else None


def append_log(path: Path, record: Mapping[str, Any]) -> None:
    """Append one JSON line to the run log."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(json.dumps(dict(record), sort_keys=True) + "\n")
