"""What ``deftx pipeline`` will do with each step its dry run lists: reuse the step's results, train it, or
refuse results of other settings (retrain them with ``--overwrite``).

A step's results are reused only when the identity recorded beside them equals the one the run computes
from the step's inputs (:mod:`deftx.train.identity`), so a file's presence says nothing: the dry run builds
each step's tuner as the run does (:mod:`deftx.pipeline.steps`) and asks it the question its ``fit()`` asks
(:meth:`~deftx.train.sparse_finetuner.SparseFineTuner.stale_steps`,
:func:`~deftx.train.task.stale_baseline`). It does so only for the run folders that exist (a fresh plan loads
nothing) and writes nothing: the tuners' Trainers it builds have the existing run folder as their output_dir,
so building them creates no folder. A step whose inputs come from an earlier step that is still to be trained (a
task SFT on its source's language SFT; a language SFT under an MLM head not yet warmed up) is checked when
the run gets there: the plan says so.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from deftx.data import americasnli, default_data_dir, nusax
from deftx.pipeline.config import PipelineConfig
from deftx.pipeline.head import americasnlp_texts, cached_head_file, language_texts
from deftx.pipeline.layout import branch_file
from deftx.pipeline.run import anli_task_examples
from deftx.pipeline.steps import language_tuner, nusax_train_examples, task_tuner
from deftx.pipeline.workspace import Workspace, local_model_folder, requested_device
from deftx.sft import SparseDiff
from deftx.train.sparse_finetuner import StaleSteps
from deftx.train.task import BASELINE_FILE, stale_baseline

DONE = "done"
TO_RUN = "to run"

BranchStatus = Callable[[str], str]
"""Method -> what the run does with that branch of a run folder (a status: :data:`DONE`, :data:`TO_RUN`, ...)."""


def changed_status(changes: list[str], overwrite: bool) -> str:
    """The status of a step whose folder holds results of other settings (``changes``: one line each)."""
    named = "; ".join(changes)
    if overwrite:
        return f"to retrain (--overwrite): its results are of other settings: {named}"
    return f"REFUSED: the run stops here, its results are of other settings (--overwrite retrains it): {named}"


def result_status(changes: list[str], result: Path, overwrite: bool) -> str:
    """The status of a step with its ``changes`` (:func:`changed_status` when some) and its ``result`` file."""
    if changes:
        return changed_status(changes, overwrite)
    return DONE if result.is_file() else TO_RUN


def branch_statuses(stale: StaleSteps, run_dir: Path, overwrite: bool) -> BranchStatus:
    """Each branch's status in ``run_dir`` from the run's :class:`~deftx.train.sparse_finetuner.StaleSteps`."""
    return lambda method: result_status(stale.of_branch(method), branch_file(run_dir, method), overwrite)


def unchecked(reason: str) -> BranchStatus:
    """The status of branches whose run folder holds results the plan cannot check: ``reason`` says why."""
    return lambda method: f"results there, checked when the run reaches them: {reason}"


def plan_workspace(config: PipelineConfig) -> Workspace | str:
    """The workspace the run of ``config`` would open, opened without writing, converting or downloading
    anything; else why there is none here (the model is not on this machine, no device, no data)."""
    from transformers import AutoTokenizer

    model_dir = local_model_folder(config.model)
    if model_dir is None:
        return f"model {config.model!r} is not on this machine yet"
    device = requested_device(config)
    if device == "cuda" and not torch.cuda.is_available():
        return "the config's device cuda is not available here"
    data_dir = Path(config.data_dir).expanduser() if config.data_dir else default_data_dir()
    if not data_dir.is_dir():
        return f"data_dir {data_dir} does not exist"
    output_dir = Path(config.output_dir)
    return Workspace(config, model_dir, data_dir, output_dir, Path(config.results_dir) if config.results_dir
                     else output_dir, AutoTokenizer.from_pretrained(str(model_dir)), log=lambda _: None, device=device)


@dataclass
class StepChecker:
    """Checks the steps of a plan as the run will (see the module docstring).

    Attributes:
        config: the pipeline config.
        overwrite: the run retrains steps of other settings (``--overwrite``) instead of refusing them.
        workspace: the run's workspace (:func:`plan_workspace`), or why it cannot be opened; built once a run
            folder that exists needs it.
        head: the MLM head file the language SFTs train under, None when it is not cached (built once needed).
        language_sfts: (seed, AmericasNLP text?, language) -> the finished language SFTs the run reuses, by method.
    """

    config: PipelineConfig
    overwrite: bool = False
    workspace: Workspace | str | None = None
    head: Path | None = None
    head_checked: bool = False
    language_sfts: dict[tuple[int, bool, str], dict[str, SparseDiff]] = field(default_factory=dict)

    def ws(self) -> Workspace | str:
        if self.workspace is None:
            self.workspace = plan_workspace(self.config)
        return self.workspace

    def head_file(self, ws: Workspace) -> Path | None:
        if not self.head_checked:
            self.head, self.head_checked = cached_head_file(ws), True
        return self.head

    def language(self, seed: int, language: str, run_dir: Path, americasnlp: bool = False) -> BranchStatus:
        """The statuses of the branches of ``language``'s language-SFT run folder ``run_dir``; the SFTs the run
        reuses are kept for the task SFTs trained on them."""
        if not run_dir.is_dir():
            return lambda method: TO_RUN
        ws = self.ws()
        if isinstance(ws, str):
            return unchecked(ws)
        head = self.head_file(ws)
        if head is None:
            return unchecked("the MLM head is not warmed up yet (not cached)")
        texts = americasnlp_texts(ws, language) if americasnlp else language_texts(ws, language)
        tuner = language_tuner(ws, texts, seed, head, run_dir, trainer_dir=run_dir)
        status = branch_statuses(tuner.stale_steps(tuner.identity()), run_dir, self.overwrite)
        self.language_sfts[(seed, americasnlp, language)] = {
            method: SparseDiff.load(branch_file(run_dir, method)) for method in self.config.methods
            if status(method) == DONE}
        return status

    def task(self, seed: int, source: str | None, run_dir: Path, methods: list[str]) -> BranchStatus:
        """The statuses of the branches ``methods`` of a task-SFT run folder ``run_dir``: on ``source``'s
        language SFT of ``methods``' one method (``config.task_on_source_sft``), or the shared run
        (``source`` None for AmericasNLI's pooled one)."""
        if not run_dir.is_dir():
            return lambda method: TO_RUN
        ws = self.ws()
        if isinstance(ws, str):
            return unchecked(ws)
        source_sft = None
        if self.config.task_on_source_sft and source is not None:
            (method,) = methods
            source_sft = self.language_sfts.get((seed, False, source), {}).get(method)
            if source_sft is None:
                return unchecked(f"its source's {method} language SFT is not trained yet")
        examples, num_labels, labels = self.task_data(ws, seed, source)
        selections = {method: self.config.methods[method] for method in methods}
        tuner = task_tuner(ws, examples, seed, num_labels, selections, source_sft, run_dir, labels, trainer_dir=run_dir)
        return branch_statuses(tuner.stale_steps(tuner.identity()), run_dir, self.overwrite)

    def baseline(self, seed: int, source: str | None, work_dir: Path) -> str:
        """The status of the full fine-tuning baseline in ``work_dir``, trained on ``source``'s NusaX train
        split (None: AmericasNLI's pooled dev sets)."""
        if not work_dir.is_dir():
            return TO_RUN
        ws = self.ws()
        if isinstance(ws, str):
            return unchecked(ws)("")
        examples, num_labels, _ = self.task_data(ws, seed, source)
        changes = stale_baseline(ws.model_dir, ws.tokenizer, examples, self.config.full_finetune, work_dir,
                                 num_labels=num_labels, settings=ws.settings(seed), pooling=self.config.pooling)
        return result_status(changes, work_dir / BASELINE_FILE, self.overwrite)

    @staticmethod
    def task_data(ws: Workspace, seed: int, source: str | None) -> tuple[list[dict], int, Sequence[str]]:
        """The task's training examples, label count and label names: ``source``'s NusaX train split, or
        (``source`` None) AmericasNLI's pooled dev sets as the run draws them for ``seed``."""
        if source is None:
            return anli_task_examples(ws, seed)[1], len(americasnli.LABELS), americasnli.LABELS
        return nusax_train_examples(ws, source), len(nusax.LABELS), nusax.LABELS
