"""``SparseFineTuner``: LT-SFT and DeFT-X inside your own ``transformers.Trainer``.

Design: the tuner *drives* a Trainer you built rather than replacing it. It is neither
a Trainer subclass nor a mixin factory (the reference wraps the Trainer class, which
breaks as soon as a user has their own Trainer subclass or a newer transformers changes
a private method). It uses only the Trainer's public surface:

* phase 1 is ``trainer.train()`` with your model, ``TrainingArguments``, data collator,
  callbacks and optimizer, for the phase's length and learning rate (set on
  ``trainer.args`` for the duration of the phase), plus a gradient hook for the L1 pull;
* phase 2 (selection) needs no Trainer at all: scores -> global top-K;
* phase 3 is ``trainer.train()`` again after resetting the weights to θ0, with
  ``trainer.optimizer`` set to a :class:`~deftx.train.retrain.MaskedAdamW` (a regular
  ``torch.optim.Optimizer``, so the Trainer's scheduler, clipping, accumulation,
  logging and checkpointing all work unchanged) and a hook that keeps only the
  selected gradient entries.

So a user keeps everything they have and adds two lines::

    trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=collator)
    result = SparseFineTuner(trainer, task_sft_config(), work_dir="runs/task").fit()
    result.diffs["deft-x"].save("task-deftx.safetensors")

Phase 1 runs once; each entry of ``config.selections`` (e.g. LT-SFT's raw ``|Δ|`` and
DeFT-X's denoised scores) is a branch that selects its own mask from the same θ1 and
retrains from θ0 — a paired comparison that differs only in the mask.

Every phase boundary is persisted under ``work_dir`` (see :mod:`deftx.train.checkpoint`)
and the Trainer's own checkpoints are kept per phase, so ``fit()`` on a killed run
resumes in the phase (and, with ``save_steps``, at the step) where it stopped, and gives
the same SFTs bit for bit: each phase draws from global generators seeded with the run's
seed (``trainer.args.seed``) and the phase (:mod:`deftx.train.seeding`; every branch's
sparse phase gets the same stream, so branches differ only in their masks), or from the
RNG state of the checkpoint it resumes from.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback

from deftx.sft import SparseDiff, base_model_id
from deftx.train.architecture import describe_model
from deftx.train.checkpoint import (
    append_log,
    checkpoint_step,
    discard_incomplete_checkpoints,
    last_checkpoint,
    load_json,
    load_tensors,
    save_json,
    save_tensors,
    trim_log,
)
from deftx.train.config import DenoiseConfig, SparseFineTuningConfig, resolve_k, to_plain
from deftx.train.denoise import selection_scores
from deftx.train.finetune import run_full_finetuning
from deftx.train.params import (
    body_prefix,
    canonical_names,
    eligible_parameter_names,
    load_values_,
    parameter_groups,
    snapshot,
)
from deftx.train.retrain import run_sparse_retraining
from deftx.train.seeding import phase_seed, seeded_rng
from deftx.train.select import group_share_report, mask_overlap, select_top_k


class PhaseLogger(TrainerCallback):
    """Appends every Trainer log record (loss, learning rate, ...) to ``log.jsonl``, tagged."""

    def __init__(self, path: Path, phase: str) -> None:
        self.path = path
        self.phase = phase

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs:
            append_log(self.path, {"phase": self.phase, "step": state.global_step, **logs})


class NoFinalCheckpoint(TrainerCallback):
    """Skips the Trainer's checkpoint at a phase's last step (a model + optimizer-sized
    write): the phase's result is persisted by the tuner's own file right after."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.max_steps and state.global_step >= state.max_steps:
            control.should_save = False
        return control


def run_phase(
    trainer,
    log: Path,
    phase: str,
    seed_key: str,
    folder: Path,
    train: Callable[[str | None], Any],
) -> Any:
    """Run (or resume) one training phase: ``train(checkpoint)`` under the phase's seeded RNG.

    Incomplete checkpoints in ``folder`` are removed, the last complete one is passed to
    ``train`` (None: start from scratch), the records ``phase`` will log again are
    trimmed from ``log``, and the global generators are seeded with
    ``phase_seed(trainer.args.seed, seed_key)``. Losses are logged to ``log`` tagged with
    ``phase``; no Trainer checkpoint is written at the phase's last step.
    """
    discard_incomplete_checkpoints(folder)
    checkpoint = last_checkpoint(folder)
    trim_log(log, phase, checkpoint_step(Path(checkpoint)) if checkpoint else 0)
    callbacks = [PhaseLogger(log, phase), NoFinalCheckpoint()]
    for callback in callbacks:
        trainer.add_callback(callback)
    try:
        with seeded_rng(phase_seed(trainer.args.seed, seed_key)):
            return train(checkpoint)
    finally:
        for callback in callbacks:
            trainer.remove_callback(callback)


@dataclass
class SparseFineTuningResult:
    """What :meth:`SparseFineTuner.fit` produced.

    Attributes:
        diffs: branch name -> the trained :class:`~deftx.sft.SparseDiff`.
        selections: branch name -> selection report (K, per-group shares, denoised ranks).
        overlap: per-group overlap of each later branch's mask with the first branch's.
        seconds: phase name -> wall seconds spent in this call (0 for resumed-past phases).
    """

    diffs: dict[str, SparseDiff]
    selections: dict[str, dict[str, Any]]
    overlap: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


class SparseFineTuner:
    """Runs full fine-tuning, selection and sparse retraining on a Trainer's model.

    Args:
        trainer: a ``transformers.Trainer`` (any subclass) whose model is at θ0 (for a
            task SFT: the base model with the source language's SFT already applied).
        config: the phases, K, eligible groups and selection branches.
        work_dir: where phase outputs and the Trainer's per-phase checkpoints go.
        eligible_names: override the eligible parameters (default: the parameters of
            ``config.eligible``'s groups, see :mod:`deftx.train.params`).
        dense_names: override the densely trained parameters (default: the head, when
            ``config.train_head``).
        base_model: identifier stored in the SFTs (default: the model's name or path).
        backend: ``deftx.ops`` backend for the masked step (None = auto).
        progress: tqdm bars for scoring (the Trainer shows its own for training).
        keep_checkpoints: keep a phase's Trainer checkpoints after the phase finished
            (they are only needed to resume inside the phase; a model-sized folder each).

    The model's ``requires_grad`` flags are set for the run (eligible + dense trainable,
    everything else frozen) and restored afterwards; the model is left at θ0.
    """

    def __init__(
        self,
        trainer,
        config: SparseFineTuningConfig,
        work_dir: str | Path,
        *,
        eligible_names: Sequence[str] | None = None,
        dense_names: Sequence[str] | None = None,
        base_model: str | None = None,
        backend: str | None = None,
        progress: bool = True,
        keep_checkpoints: bool = False,
    ) -> None:
        self.trainer = trainer
        self.keep_checkpoints = keep_checkpoints
        self.config = config
        self.work_dir = Path(work_dir)
        model: nn.Module = trainer.model
        self.groups = parameter_groups(model)
        self.eligible = list(eligible_names) if eligible_names is not None else (
            eligible_parameter_names(model, config.eligible)
        )
        if dense_names is None:
            dense_names = [n for n, g in self.groups.items() if g == "head"] if config.train_head else []
        self.dense = [name for name in dense_names if name not in set(self.eligible)]
        params = dict(model.named_parameters())
        unknown = [n for n in [*self.eligible, *self.dense] if n not in params]
        if unknown:
            raise KeyError(f"SparseFineTuner: the model has no parameters {unknown[:3]}")
        self.sizes = {name: params[name].numel() for name in self.eligible}
        self.k = resolve_k(config.k, sum(self.sizes.values()))
        self.stored_names = canonical_names(model)
        body = model.get_submodule(body_prefix(model)) if body_prefix(model) else model
        self.base_model = base_model or base_model_id(model) or base_model_id(body)
        self.backend = backend
        self.progress = progress

    @property
    def num_eligible(self) -> int:
        """Number of eligible entries (the population K is drawn from)."""
        return sum(self.sizes.values())

    def _path(self, *parts: str) -> Path:
        return self.work_dir.joinpath(*parts)

    def _set_trainable(self) -> dict[str, bool]:
        trainable = set(self.eligible) | set(self.dense)
        flags = {}
        for name, param in self.trainer.model.named_parameters():
            flags[name] = param.requires_grad
            param.requires_grad_(name in trainable)
        return flags

    def _restore_trainable(self, flags: dict[str, bool]) -> None:
        for name, param in self.trainer.model.named_parameters():
            param.requires_grad_(flags[name])

    def _run_phase(self, phase: str, seed_key: str, folder: Path, train: Callable[[str | None], Any]) -> None:
        run_phase(self.trainer, self._path("log.jsonl"), phase, seed_key, folder, train)

    def _drop_checkpoints(self, folder: Path) -> None:
        """A finished phase is persisted by its own file: its Trainer checkpoints can go."""
        if not self.keep_checkpoints:
            shutil.rmtree(folder, ignore_errors=True)

    def _theta0(self) -> dict[str, torch.Tensor]:
        """Snapshot θ0 (or reload it on resume, checking the model is the same base)."""
        path = self._path("theta0.safetensors")
        names = [*self.eligible, *self.dense]
        current = snapshot(self.trainer.model, names)
        if not path.is_file():
            save_tensors(path, current)
            return current
        device = next(iter(current.values())).device
        stored = load_tensors(path, device)
        if set(stored) != set(names):
            raise ValueError(f"{path} holds other parameters than this run trains (changed config?)")
        for name in self.eligible:
            if not torch.equal(stored[name], current[name]):
                raise ValueError(
                    f"resuming {self.work_dir}: parameter {name!r} differs from the stored θ0 — "
                    "the model is not the base this run started from"
                )
        load_values_(self.trainer.model, stored)
        return stored

    def _theta1(self, theta0: dict[str, torch.Tensor], seconds: dict[str, float]) -> dict[str, torch.Tensor]:
        path = self._path("theta1.safetensors")
        folder = self._path("phase1")
        if path.is_file():
            self._drop_checkpoints(folder)  # a kill may have come between the file and the clean-up
            return load_tensors(path, next(iter(theta0.values())).device)
        start = time.perf_counter()
        eligible0 = {name: theta0[name] for name in self.eligible}
        self._run_phase("full", "full", folder, lambda checkpoint: run_full_finetuning(
            self.trainer, self.config.full, eligible0, str(folder), checkpoint,
        ))
        theta1 = snapshot(self.trainer.model, [*self.eligible, *self.dense])
        for name, tensor in theta1.items():
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                raise ValueError(f"phase 1 diverged: parameter {name!r} holds {bad} NaN/Inf value(s) after full "
                                 "fine-tuning (lower the learning rate)")
        save_tensors(path, theta1)
        self._drop_checkpoints(folder)
        seconds["full"] = time.perf_counter() - start
        return theta1

    def _mask(self, branch: str, denoise: DenoiseConfig | None, theta0, theta1) -> dict[str, torch.Tensor]:
        path = self._path(branch, "mask.safetensors")
        if path.is_file():
            stored = load_tensors(path)
            return {name: stored[name] for name in self.eligible}
        start = time.perf_counter()
        scores, records = selection_scores(
            {n: theta1[n] for n in self.eligible}, {n: theta0[n] for n in self.eligible},
            self.groups, denoise, progress=self.progress,
        )
        indices = {name: idx.cpu() for name, idx in select_top_k(scores, self.k).items()}
        del scores
        report = {
            "branch": branch,
            "k": self.k,
            "eligible": self.num_eligible,
            "denoise": to_plain(denoise),
            "groups": group_share_report(indices, self.groups, self.sizes),
            "denoised": [to_plain(r) for r in records],
            "seconds": time.perf_counter() - start,
        }
        save_json(self._path(branch, "selection.json"), report)
        save_tensors(path, indices)
        return indices

    def _branch(self, branch: str, denoise, theta0, theta1, seconds) -> SparseDiff:
        sft_path = self._path(branch, "sft.safetensors")
        folder = self._path(branch, "phase3")
        indices = self._mask(branch, denoise, theta0, theta1)
        if sft_path.is_file():
            self._drop_checkpoints(folder)
            return SparseDiff.load(sft_path)
        start = time.perf_counter()
        load_values_(self.trainer.model, theta0)
        self._run_phase(f"sparse:{branch}", "sparse", folder, lambda checkpoint: run_sparse_retraining(
            self.trainer, self.config.sparse, indices, self.dense, str(folder), checkpoint, backend=self.backend,
        ))
        tuned = snapshot(self.trainer.model, [*self.eligible, *self.dense])
        rename = self.stored_names
        diff = SparseDiff.from_states(
            {rename[n]: t for n, t in theta0.items()}, {rename[n]: t for n, t in tuned.items()},
            {rename[n]: idx for n, idx in indices.items()},
            [rename[n] for n in self.dense] if self.config.ship_head else (),
            base_model=self.base_model, method=branch, k=self.k,
            settings={"config": to_plain(self.config), "branch": branch, "eligible": self.num_eligible},
            info=describe_model(self.trainer.model, head=self.config.ship_head),
        )
        diff.save(sft_path)
        self._drop_checkpoints(folder)
        seconds[f"sparse:{branch}"] = time.perf_counter() - start
        return diff

    def fit(self) -> SparseFineTuningResult:
        """Run (or resume) phase 1 once, then select + retrain every branch.

        Returns:
            The SFTs per branch, the selection reports and mask overlaps.
        """
        flags = self._set_trainable()
        seconds: dict[str, float] = {}
        theta0 = None
        try:
            theta0 = self._theta0()
            theta1 = self._theta1(theta0, seconds)
            diffs = {
                branch: self._branch(branch, denoise, theta0, theta1, seconds)
                for branch, denoise in self.config.selections.items()
            }
        finally:
            if theta0 is not None:
                load_values_(self.trainer.model, theta0)
            self._restore_trainable(flags)
        return SparseFineTuningResult(
            diffs=diffs,
            selections={b: load_json(self._path(b, "selection.json")) for b in diffs},
            overlap=self.overlap(diffs),
            seconds=seconds,
        )

    def overlap(self, diffs: dict[str, SparseDiff]) -> dict[str, list[dict[str, Any]]]:
        """Per-group mask overlap of every branch with the first one."""
        names = list(diffs)
        if len(names) < 2:
            return {}
        first = diffs[names[0]].indices
        groups = {self.stored_names[n]: g for n, g in self.groups.items()}
        return {
            f"{names[0]} vs {other}": mask_overlap(first, diffs[other].indices, groups)
            for other in names[1:]
        }
