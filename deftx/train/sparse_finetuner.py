"""``SparseFineTuner``: LT-SFT and DeFT-X inside your own ``transformers.Trainer``.

Design: the tuner *drives* a Trainer you built rather than replacing it. It is neither
a Trainer subclass nor a mixin factory (the reference wraps the Trainer class, which
breaks as soon as a user has their own Trainer subclass or a newer transformers changes
a private method). It uses only the Trainer's public surface:

* phase 1 is ``trainer.train()`` with your model, ``TrainingArguments``, data collator,
  callbacks and optimizer choice, for the phase's length and learning rate (set on
  ``trainer.args`` for the duration of the phase), plus a gradient hook for the L1 pull;
* phase 2 (selection) needs no Trainer at all: scores -> global top-K;
* phase 3 is ``trainer.train()`` again after resetting the weights to θ0, with
  ``trainer.optimizer`` set to a :class:`~deftx.train.retrain.MaskedAdamW` (a regular
  ``torch.optim.Optimizer``, so the Trainer's scheduler, clipping, accumulation,
  logging and checkpointing all work unchanged) and a hook that keeps only the
  selected gradient entries.

What it does to your Trainer — the fields each phase sets (with one warning naming those
that differ from yours), the optimizer rule, the state after ``fit()`` — is the contract
of :mod:`deftx.train.trainer_contract`. So a user keeps everything they have and adds::

    from deftx import SparseFineTuner, task_sft_config

    trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=collator)
    result = SparseFineTuner(trainer, task_sft_config(), work_dir="runs/task").fit()
    result.diffs["deft-x"].save("task-deftx.safetensors")

Phase 1 runs once; each entry of ``config.selections`` (e.g. LT-SFT's raw ``|Δ|`` and
DeFT-X's denoised scores) is a branch that selects its own mask from the same θ1 and
retrains from θ0 — a paired comparison that differs only in the mask.

**Run identity.** Before anything runs, ``fit()`` records what phase 1 and each branch
depend on (:mod:`deftx.train.identity`: a digest of the model's weights — θ0 —, of the
data, the seed and the other result-changing ``TrainingArguments``, the phases, K, the
selection, the eligible parameters, deftx's format) in ``work_dir``. A second ``fit()``
with the same identity resumes (or returns the finished SFTs); one with another identity
is refused with :class:`~deftx.train.identity.IdentityMismatchError` naming each change,
unless ``overwrite=True``, which discards only the steps that changed.

**Resume and disk.** Every phase boundary is persisted under ``work_dir`` (see
:mod:`deftx.train.checkpoint`) and the Trainer's checkpoints are kept per phase, so
``fit()`` on a killed run resumes in the phase (and, with ``save_steps``, at the step)
where it stopped, and gives the same SFTs bit for bit: each phase draws from global
generators seeded with the run's seed (``trainer.args.seed``) and the phase
(:mod:`deftx.train.seeding`; every branch's sparse phase gets the same stream, so branches
differ only in their masks), or from the RNG state of the checkpoint it resumes from. A
run keeps what resuming needs and no more: θ0 is the model itself (never copied), θ1 only
until every branch is done (``keep_theta1=True`` keeps it, e.g. to add a branch later
without retraining phase 1), a mask only until its SFT is written, a phase's checkpoints
only while it runs; :attr:`SparseFineTuningResult.kept_bytes` reports what stays.
"""

from __future__ import annotations

import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainerCallback

from deftx.models.parameters import body_prefix, named_parameter_map
from deftx.ops.denoise import ENERGY_SKETCH_RULE
from deftx.ops.dispatch import resolve
from deftx.sft import SparseDiff, base_model_id
from deftx.sft.format import FORMAT_VERSION as SFT_FORMAT_VERSION
from deftx.train.architecture import describe_model
from deftx.train.checkpoint import (
    LOG,
    append_log,
    checkpoint_step,
    discard_incomplete_checkpoints,
    folder_bytes,
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
from deftx.train.identity import (
    IDENTITY_FILE,
    RUN_FORMAT,
    IdentityMismatchError,
    callable_name,
    claim,
    digest,
    model_digest,
    model_settings,
    owned,
    remove_outputs,
    settings_identity,
    stale_results,
)
from deftx.train.identity import data_digest as digest_data
from deftx.train.params import (
    canonical_names,
    eligible_parameter_names,
    load_values_,
    parameter_groups,
    snapshot,
)
from deftx.train.retrain import run_sparse_retraining
from deftx.train.seeding import phase_seed, seeded_rng
from deftx.train.select import group_share_report, mask_overlap, select_top_k
from deftx.train.store import StepStore
from deftx.train.trainer_args import result_arguments
from deftx.train.trainer_contract import (
    TrainerOverrideWarning,
    override_message,
    refuse_model_init,
    refuse_optimizer_instances,
    trainer_restored,
)

THETA1 = "theta1.safetensors"
PHASE1_FOLDER = "phase1"
MASK = "mask.safetensors"
SELECTION = "selection.json"
SFT = "sft.safetensors"
PHASE3_FOLDER = "phase3"
BRANCH_OUTPUTS = (MASK, SELECTION, PHASE3_FOLDER, SFT)
BRANCH_FILES = (SELECTION, SFT)
"""What a finished branch keeps (and what a step store shares)."""
LEGACY_OUTPUTS = ("theta0.safetensors",)
"""Files of work directories written before run identities (format 1)."""
CHANGE_NOTES = {
    "theta0": "the model's weights differ: it is not the base this run started from",
    "data.train": "other training examples",
    "data.eval": "other evaluation examples",
    "format.run": "written by an older deftx, whose identities recorded less: --overwrite retrains it",
    "selection.energy_sketch": "selected by an older deftx, whose randomized SVD kept an energy rank with no "
                               "spare sketch columns: --overwrite redoes the branch",
    **{f"backends.{op}": "another deftx.ops backend ($DEFTX_BACKEND, the native build, the device): backends "
       "agree to rounding, not bit for bit" for op in ("rsvd", "topk", "masked_step")},
}
"""What a change of an identity field means, added to the line naming it."""


def explained(line: str) -> str:
    """A change line (``"field: old -> new"``) with what the field's change means, where that needs saying."""
    field_name = line.split(":", 1)[0]
    return f"{line} ({CHANGE_NOTES[field_name]})" if field_name in CHANGE_NOTES else line


def selection_identity(denoise: DenoiseConfig | None) -> dict[str, Any] | None:
    """What a branch's selection records: its denoising settings (None for LT-SFT), and for the
    randomized SVD's energy policy the version of its sketch widths (:data:`ENERGY_SKETCH_RULE`), whose
    change changed the ranks it keeps."""
    settings = to_plain(denoise)
    if denoise is not None and denoise.uses_energy_sketch():
        settings["energy_sketch"] = ENERGY_SKETCH_RULE
    return settings


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

    Raises:
        PhaseStoppedError: the Trainer returned before the phase's last step (a callback set
            ``should_training_stop``, e.g. ``enable_jit_checkpoint`` on SIGTERM): the caller would otherwise
            keep the model of that step as the phase's result.
    """
    discard_incomplete_checkpoints(folder)
    checkpoint = last_checkpoint(folder)
    trim_log(log, phase, checkpoint_step(Path(checkpoint)) if checkpoint else 0)
    callbacks = [PhaseLogger(log, phase), NoFinalCheckpoint()]
    for callback in callbacks:
        trainer.add_callback(callback)
    try:
        with seeded_rng(phase_seed(trainer.args.seed, seed_key)):
            result = train(checkpoint)
    finally:
        for callback in callbacks:
            trainer.remove_callback(callback)
    state = trainer.state
    if state.max_steps and state.global_step < state.max_steps:
        raise PhaseStoppedError(
            f"phase {phase} stopped at step {state.global_step} of {state.max_steps} (a callback set "
            "should_training_stop, e.g. enable_jit_checkpoint on SIGTERM): its result is not kept as finished; run "
            f"again to resume from its last checkpoint in {folder}"
        )
    return result


class PhaseStoppedError(RuntimeError):
    """A training phase's Trainer returned before the phase's last step (:func:`run_phase`)."""


@dataclass
class SparseFineTuningResult:
    """What :meth:`SparseFineTuner.fit` produced.

    Attributes:
        diffs: branch name -> the trained :class:`~deftx.sft.SparseDiff`.
        selections: branch name -> selection report (K, per-group shares, denoised ranks).
        overlap: per-group overlap of each later branch's mask with the first branch's.
        seconds: phase name -> wall seconds spent in this call, for the phases it ran (a phase finished
            earlier, or linked from a store, has no entry).
        kept_bytes: bytes the run keeps in its work directory after the call (each file once).
    """

    diffs: dict[str, SparseDiff]
    selections: dict[str, dict[str, Any]]
    overlap: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    kept_bytes: int = 0


@dataclass(frozen=True)
class StaleSteps:
    """The results of a run folder that are not those of a run's identity (:meth:`SparseFineTuner.stale_steps`).

    Attributes:
        phase1: one line per changed field of phase 1 (every branch goes with it); [] when unchanged.
        branches: branch -> one line per changed field, of the branches whose results changed (none when
            phase 1 did).
    """

    phase1: list[str] = field(default_factory=list)
    branches: dict[str, list[str]] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """Every change, each line naming its step (``phase 1: k: 4224 -> 211``): what a refusal says."""
        return [*(f"phase 1: {explained(line)}" for line in self.phase1),
                *(f"branch {branch}: {explained(line)}" for branch, lines in self.branches.items() for line in lines)]

    def of_branch(self, branch: str) -> list[str]:
        """The changes that take ``branch``'s results: phase 1's, else its own."""
        return [f"phase 1: {explained(line)}" for line in self.phase1] or [
            f"branch {branch}: {explained(line)}" for line in self.branches.get(branch, [])]


@dataclass(frozen=True)
class RunIdentity:
    """What a run's results depend on: phase 1's identity and each branch's (see :mod:`deftx.train.identity`)."""

    phase1: dict[str, Any]
    branches: dict[str, dict[str, Any]]


def data_identity(trainer, train_digest: str | None = None) -> dict[str, Any]:
    """Digests of the Trainer's training data (``train_digest`` when given) and evaluation data, if any."""
    data: dict[str, Any] = {"train": train_digest or digest_data(trainer.train_dataset)}
    evaluation = trainer.eval_dataset
    if isinstance(evaluation, Mapping):
        data["eval"] = {name: digest_data(subset) for name, subset in evaluation.items()}
    elif evaluation is not None:
        data["eval"] = digest_data(evaluation)
    return data


def optimizer_identity(trainer) -> dict[str, Any] | None:
    """The Trainer's ``optimizer_cls_and_kwargs`` (None when it has none): the class and its keyword arguments
    but ``lr``, which each phase replaces with its own."""
    chosen = getattr(trainer, "optimizer_cls_and_kwargs", None)
    if chosen is None:
        return None
    cls, kwargs = chosen
    return {"class": callable_name(cls), "kwargs": settings_identity({k: v for k, v in kwargs.items() if k != "lr"})}


def trainer_identity(trainer, data_digest: str | None = None) -> dict[str, Any]:
    """What any training run on ``trainer`` depends on: deftx's formats, the model's weights (its θ0,
    digested), its class and configuration (:func:`~deftx.train.identity.model_settings`: dropout,
    activation...), the seed, the data, the Trainer class, its optimizer choice (:func:`optimizer_identity`)
    and loss function (``compute_loss_func``) where set (left out when not, so that runs of before
    they were recorded keep their identity), the data collator with its settings
    (:func:`~deftx.train.identity.settings_identity`: e.g. an MLM collator's masking rate and seed),
    the device type the model trains on (``cpu``, ``cuda``...), the number of model replicas a step's batch
    is spread over where there are several (processes of a distributed launch times the GPUs each drives
    through ``DataParallel``: each takes ``per_device_train_batch_size`` examples, so the same arguments
    train on that many times the batch; left out for one, so that identities of before stay valid) and
    the other result-changing arguments (``use_cpu`` is left to the device, which it only helps decide)."""
    training = result_arguments(trainer.args)
    seed = training.pop("seed")
    training.pop("use_cpu", None)
    identity = {
        "format": {"run": RUN_FORMAT, "sft": SFT_FORMAT_VERSION},
        "theta0": model_digest(trainer.model),
        "model": model_settings(trainer.model),
        "seed": seed,
        "data": data_identity(trainer, data_digest),
        "trainer": callable_name(trainer),
        "collator": settings_identity(trainer.data_collator),
        "device": trainer.args.device.type,
        "training": training,
    }
    replicas = trainer.args.world_size * max(trainer.args.n_gpu, 1)
    if replicas != 1:
        identity["replicas"] = replicas
    optimizer = optimizer_identity(trainer)
    loss = getattr(trainer, "compute_loss_func", None)
    if optimizer is not None:
        identity["optimizer"] = optimizer
    if loss is not None:
        identity["loss"] = settings_identity(loss)
    return identity


class SparseFineTuner:
    """Runs full fine-tuning, selection and sparse retraining on a Trainer's model.

    Args:
        trainer: a ``transformers.Trainer`` (any subclass) whose model is at θ0 (for a
            task SFT: the base model with the source language's SFT already applied).
            It must hold no optimizer instance (see :mod:`deftx.train.trainer_contract`).
        config: the phases, K, eligible groups and selection branches.
        work_dir: where the run's identity, phase outputs and the Trainer's per-phase
            checkpoints go.
        eligible_names: override the eligible parameters (default: the parameters of
            ``config.eligible``'s groups, see :mod:`deftx.train.params`).
        dense_names: override the densely trained parameters (default: the head, when
            ``config.train_head``, but the head parameters ``eligible_names`` makes sparse); none of them
            eligible.
        base_model: identifier stored in the SFTs (default: the model's name or path).
        backend: ``deftx.ops`` backend for the masked step (None = auto).
        progress: tqdm bars for scoring (the Trainer shows its own for training).
        keep_checkpoints: keep a phase's Trainer checkpoints after the phase finished
            (they are only needed to resume inside the phase; a model-sized folder each).
        keep_theta1: keep θ1 once every branch is done (a model-sized file; lets a branch
            added later skip phase 1).
        overwrite: discard the results of ``work_dir`` whose identity differs from this
            run's instead of refusing them (only the steps that changed are discarded).
        store: a :class:`~deftx.train.store.StepStore` to link equal finished steps from and
            to publish this run's finished steps to.
        data_digest: a digest of the training data, for data sets that cannot be read by
            index (default: computed from ``trainer.train_dataset``).
        label: how the run's steps are named in its identity and a store's counts
            (e.g. ``"language sft"``).
        warn_overrides: warn about the ``TrainingArguments`` fields the phases set where they
            differ from the Trainer's (off for runs that build their own arguments from a
            config that refuses those fields, like deftx's pipeline).

    The model's ``requires_grad`` flags are set for the run (eligible + dense trainable,
    everything else frozen) and restored afterwards; the model is left at θ0.
    """

    def __init__(
        self,
        trainer: Trainer,
        config: SparseFineTuningConfig,
        work_dir: str | Path,
        *,
        eligible_names: Sequence[str] | None = None,
        dense_names: Sequence[str] | None = None,
        base_model: str | None = None,
        backend: str | None = None,
        progress: bool = True,
        keep_checkpoints: bool = False,
        keep_theta1: bool = False,
        overwrite: bool = False,
        store: StepStore | None = None,
        data_digest: str | None = None,
        label: str = "sparse fine-tuning",
        warn_overrides: bool = True,
    ) -> None:
        refuse_optimizer_instances(trainer)
        refuse_model_init(trainer)
        self.warn_overrides = warn_overrides
        self.trainer = trainer
        self.keep_checkpoints = keep_checkpoints
        self.keep_theta1 = keep_theta1
        self.overwrite = overwrite
        self.store = store
        self.data_digest = data_digest
        self.label = label
        self.config = config
        self.work_dir = Path(work_dir)
        model: nn.Module = trainer.model
        self.groups = parameter_groups(model)
        self.eligible = list(eligible_names) if eligible_names is not None else (
            eligible_parameter_names(model, config.eligible)
        )
        if dense_names is None:
            head = [n for n, g in self.groups.items() if g == "head"] if config.train_head else []
            dense_names = [name for name in head if name not in set(self.eligible)]
        both = [name for name in dense_names if name in set(self.eligible)]
        if both:
            raise ValueError(f"SparseFineTuner: dense_names {both[:3]} are also eligible (sparse): leave them out of "
                             "eligible_names (or config.eligible's groups) to train them on every entry")
        self.dense = list(dense_names)
        if config.ship_head and not self.dense:
            raise ValueError("SparseFineTuner: config.ship_head is set but no parameter is trained densely "
                             "(train_head=False, or a model without a head, and no dense_names): the SFTs would "
                             "record a head and ship none")
        params = named_parameter_map(model)
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

    def sft_info(self) -> dict[str, Any]:
        """The model description each SFT's ``info`` records (:func:`~deftx.train.architecture.describe_model`)."""
        return describe_model(self.trainer.model, head=self.config.ship_head)

    def _path(self, *parts: str) -> Path:
        return self.work_dir.joinpath(*parts)

    def phase1_identity(self) -> dict[str, Any]:
        """What phase 1 (θ1) depends on; the model must be at θ0 (it is digested)."""
        return {
            "step": f"{self.label} phase 1",
            **trainer_identity(self.trainer, self.data_digest),
            "eligible": list(self.eligible),
            "dense": list(self.dense),
            "full": to_plain(self.config.full),
        }

    def branch_identity(self, branch: str, denoise: DenoiseConfig | None, phase1: Mapping[str, Any]) -> dict[str, Any]:
        """What one branch's mask and SFT depend on: phase 1, K, the sparse phase, the selection, the
        backends of its ops (:meth:`op_backends`), what is shipped (the head or not, the base model's name,
        the model description the SFT's ``info`` records: its class, pooling and label names in id order)."""
        return {
            "step": f"{self.label} branch",
            "phase1": digest(dict(phase1)),
            "branch": branch,
            "k": self.k,
            "sparse": to_plain(self.config.sparse),
            "selection": selection_identity(denoise),
            "backends": self.op_backends(denoise),
            "ship_head": self.config.ship_head,
            "base_model": self.base_model,
            "info": self.sft_info(),
        }

    def op_backends(self, denoise: DenoiseConfig | None) -> dict[str, str]:
        """The ``deftx.ops`` backend each op of a branch runs on, on the training device: the rSVD (DeFT-X
        only) and the top-k of the selection (``$DEFTX_BACKEND`` / auto), the masked step of phase 3
        (``backend``). Backends agree to rounding, not bit for bit (the masked step's moments differ in the
        last ulp), so a step is the same step only on the same backends."""
        device = self.trainer.args.device
        ops = {"rsvd": None, "topk": None} if denoise is not None else {"topk": None}
        ops["masked_step"] = self.backend
        return {op: resolve(op, device, backend) for op, backend in ops.items()}

    def identity(self) -> RunIdentity:
        """The run's identity as :meth:`fit` records it (the model must be at θ0)."""
        phase1 = self.phase1_identity()
        branches = {b: self.branch_identity(b, d, phase1) for b, d in self.config.selections.items()}
        return RunIdentity(phase1, branches)

    def _phase1_outputs(self) -> list[str]:
        """Everything a change of phase 1 invalidates: θ1, its checkpoints, the log, every branch folder."""
        branches = set(self.config.selections)
        if self.work_dir.is_dir():
            branches |= {entry.name for entry in self.work_dir.iterdir() if entry.is_dir() and any(
                (entry / name).exists() for name in (*BRANCH_OUTPUTS, IDENTITY_FILE))}
        return [THETA1, *LEGACY_OUTPUTS, PHASE1_FOLDER, LOG, *sorted(branches)]

    def stale_steps(self, identity: RunIdentity) -> StaleSteps:
        """Which results in ``work_dir`` are not those of ``identity``: what :meth:`fit` refuses (or, with
        ``overwrite``, discards). Reads the folder only; the check :meth:`fit` makes, and a dry run's."""
        phase1 = stale_results(self.work_dir, identity.phase1, self._phase1_outputs())
        if phase1:
            return StaleSteps(phase1)
        return StaleSteps(branches={branch: lines for branch, branch_identity in identity.branches.items()
                                    if (lines := stale_results(self._path(branch), branch_identity, BRANCH_OUTPUTS))})

    def _claim(self, identity: RunIdentity) -> None:
        """Record the identities, or refuse (naming every change) / discard the stale steps with ``overwrite``."""
        changes = self.stale_steps(identity).lines()
        if changes and not self.overwrite:
            raise IdentityMismatchError(self.work_dir, changes)
        claim(self.work_dir, identity.phase1, self._phase1_outputs(), overwrite=True)
        for branch, branch_identity in identity.branches.items():
            if claim(self._path(branch), branch_identity, BRANCH_OUTPUTS, overwrite=True):
                trim_log(self._path(LOG), f"sparse:{branch}", 0)

    @contextmanager
    def _trainable(self) -> Iterator[None]:
        """Eligible and dense parameters trainable, everything else frozen; the flags restored on exit."""
        trainable = set(self.eligible) | set(self.dense)
        params = list(named_parameter_map(self.trainer.model).items())
        flags = {name: param.requires_grad for name, param in params}
        for name, param in params:
            param.requires_grad_(name in trainable)
        try:
            yield
        finally:
            for name, param in params:
                param.requires_grad_(flags[name])

    def _run_phase(self, phase: str, seed_key: str, folder: Path, train: Callable[[str | None], Any]) -> None:
        run_phase(self.trainer, self._path(LOG), phase, seed_key, folder, train)

    def _drop_checkpoints(self, folder: Path) -> None:
        """A finished phase is persisted by its own file: its Trainer checkpoints can go."""
        if not self.keep_checkpoints:
            shutil.rmtree(folder, ignore_errors=True)

    def _theta1(self, phase1: Mapping[str, Any], theta0: dict[str, torch.Tensor],
                seconds: dict[str, float]) -> dict[str, torch.Tensor]:
        path = self._path(THETA1)
        folder = self._path(PHASE1_FOLDER)
        device = next(iter(theta0.values())).device
        if not path.is_file() and self.store is not None and self.store.attach(self.work_dir, phase1, [THETA1]):
            self._drop_partial_log("full")
        if path.is_file():
            self._drop_checkpoints(folder)  # a kill may have come between the file and the clean-up
            return load_tensors(path, device)
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
        if self.store is not None:
            self.store.publish(self.work_dir, phase1, [THETA1])
        self._drop_checkpoints(folder)
        seconds["full"] = time.perf_counter() - start
        return theta1

    def _mask(self, branch: str, denoise: DenoiseConfig | None, theta0, theta1) -> dict[str, torch.Tensor]:
        path = self._path(branch, MASK)
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
        save_json(self._path(branch, SELECTION), report)
        save_tensors(path, indices)
        return indices

    def _drop_partial_log(self, phase: str) -> None:
        """Drop the log's records of ``phase``, whose result came from the store: a run stopped in it here
        logged only part of it, which the loss trends would read as the whole phase."""
        trim_log(self._path(LOG), phase, 0)

    def _attach_branch(self, branch: str, identity: Mapping[str, Any]) -> bool:
        """True when the branch's SFT is there (finished here, or linked from the store)."""
        if self._path(branch, SFT).is_file():
            return True
        files = [f"{branch}/{name}" for name in BRANCH_FILES]
        if self.store is None or not self.store.attach(self.work_dir, identity, files):
            return False
        self._drop_partial_log(f"sparse:{branch}")
        return True

    def _branch(self, branch: str, identity: Mapping[str, Any], denoise, theta0, theta1, seconds) -> SparseDiff:
        folder = self._path(branch, PHASE3_FOLDER)
        indices = self._mask(branch, denoise, theta0, theta1)
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
            settings={"config": to_plain(self.config), "branch": branch, "eligible": self.num_eligible,
                      "seed": self.trainer.args.seed},
            info=self.sft_info(),
        )
        diff.save(self._path(branch, SFT))
        if self.store is not None:
            self.store.publish(self.work_dir, identity, [f"{branch}/{name}" for name in BRANCH_FILES])
        seconds[f"sparse:{branch}"] = time.perf_counter() - start
        return diff

    def _tidy(self) -> None:
        """Remove what no finished step needs: masks of written SFTs, finished phases' checkpoints, θ1."""
        for branch in self.config.selections:
            if self._path(branch, SFT).is_file():
                remove_outputs(self._path(branch), [MASK])
                self._drop_checkpoints(self._path(branch, PHASE3_FOLDER))
        if all(self._path(branch, SFT).is_file() for branch in self.config.selections):
            self._drop_checkpoints(self._path(PHASE1_FOLDER))
            if not self.keep_theta1:
                remove_outputs(self.work_dir, [THETA1])

    def _run(self, identity: RunIdentity, theta0: dict[str, torch.Tensor],
             seconds: dict[str, float]) -> dict[str, SparseDiff]:
        phase1_here = self._path(THETA1).is_file() or any(self._path(b, SFT).is_file() for b in identity.branches)
        done = {branch: self._attach_branch(branch, branch_identity)
                for branch, branch_identity in identity.branches.items()}
        if all(done.values()) and not phase1_here:
            self._drop_partial_log("full")
        theta1 = None if all(done.values()) else self._theta1(identity.phase1, theta0, seconds)
        diffs = {}
        for branch, denoise in self.config.selections.items():
            if done[branch]:
                diffs[branch] = SparseDiff.load(self._path(branch, SFT))
            else:
                diffs[branch] = self._branch(branch, identity.branches[branch], denoise, theta0, theta1, seconds)
                self._tidy()
        self._tidy()
        return diffs

    def fit(self) -> SparseFineTuningResult:
        """Run (or resume) phase 1 once, then select + retrain every branch.

        Warns once (:class:`~deftx.train.trainer_contract.TrainerOverrideWarning`) about the
        ``TrainingArguments`` its phases set where yours differ; leaves the Trainer as it
        was given (see :mod:`deftx.train.trainer_contract`).

        Returns:
            The SFTs per branch, the selection reports, mask overlaps and the bytes kept.

        Raises:
            IdentityMismatchError: ``work_dir`` holds results of a run with another identity
                (and ``overwrite`` is not set); nothing was trained or changed.
            BusyError: another process trains in ``work_dir`` (:func:`~deftx.train.identity.owned`); nothing
                was trained or changed.
            TypeError: the data collator (or optimizer_cls_and_kwargs) holds a value whose settings cannot be recorded
                (:func:`~deftx.train.identity.settings_identity` says which); nothing was trained.
        """
        message = override_message(self.trainer, self.config.full, self.config.sparse, self.work_dir)
        if message is not None and self.warn_overrides:
            warnings.warn(message, TrainerOverrideWarning, stacklevel=2)
        seconds: dict[str, float] = {}
        with owned(self.work_dir, holder=self.trainer.args.process_index == 0), trainer_restored(self.trainer), \
                self._trainable():
            theta0 = snapshot(self.trainer.model, [*self.eligible, *self.dense])
            try:
                identity = self.identity()
                self._claim(identity)
                diffs = self._run(identity, theta0, seconds)
            finally:
                load_values_(self.trainer.model, theta0)
        return SparseFineTuningResult(
            diffs=diffs,
            selections={b: load_json(self._path(b, SELECTION)) for b in diffs},
            overlap=self.overlap(diffs),
            seconds=seconds,
            kept_bytes=folder_bytes(self.work_dir),
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
