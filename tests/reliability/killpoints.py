"""Simulated kills at named points of a sparse fine-tuning run (in-process or with SIGKILL).

A kill point is one of:

* ``("step", phase, n)``: after optimizer step ``n`` of ``phase`` (``"full"``,
  ``"sparse:<branch>"``), before anything else of that step is written;
* ``("saved", suffix)``: right after a run file whose path ends with ``suffix`` was
  renamed into place (a phase boundary);
* ``("writing", suffix)``: with that file's temporary fully written, before the rename;
* ``("checkpoint-state", folder, n)``: halfway through the Trainer's ``trainer_state.json``
  of ``<folder>/checkpoint-<n>`` (the last file of a checkpoint).

:func:`kill_at` arms one point for the duration of a ``with`` block: reaching it raises
:class:`Killed` (a BaseException, so no ``except Exception`` swallows it) or, with
``hard=True``, SIGKILLs the process (nothing runs after it: no ``finally``, no cleanup).
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from transformers import TrainerState

from deftx.train.sparse_finetuner import PhaseLogger

KillPoint = tuple


class Killed(BaseException):
    """A simulated kill."""


def _die(point: KillPoint, hard: bool) -> None:
    if hard:
        os.kill(os.getpid(), signal.SIGKILL)
    raise Killed(f"killed at {point}")


@contextlib.contextmanager
def kill_at(point: KillPoint, *, hard: bool = False) -> Iterator[None]:
    """Arm ``point`` (see the module docstring) inside the block."""
    kind = point[0]
    with pytest.MonkeyPatch.context() as patch:
        if kind == "step":
            _, phase, step = point

            def on_step_end(self, args, state, control, **kwargs):
                if self.phase == phase and state.global_step == step:
                    _die(point, hard)

            patch.setattr(PhaseLogger, "on_step_end", on_step_end, raising=False)
        elif kind in ("saved", "writing"):
            suffix = point[1]
            replace = os.replace

            def replace_then_die(src, dst, *args, **kwargs):
                hit = str(dst).endswith(suffix)
                if hit and kind == "writing":
                    _die(point, hard)
                replace(src, dst, *args, **kwargs)
                if hit:
                    _die(point, hard)

            patch.setattr(os, "replace", replace_then_die)
        elif kind == "checkpoint-state":
            _, folder, step = point
            save_to_json = TrainerState.save_to_json

            def half_then_die(self, json_path):
                if Path(json_path).parent.name == f"checkpoint-{step}" and folder in str(json_path):
                    save_to_json(self, json_path)
                    text = Path(json_path).read_text()
                    Path(json_path).write_text(text[: len(text) // 2])
                    _die(point, hard)
                save_to_json(self, json_path)

            patch.setattr(TrainerState, "save_to_json", half_then_die)
        else:
            raise ValueError(f"unknown kill point {point!r}")
        yield
