"""The pipeline's training steps: language SFTs, task SFTs and the full fine-tuning baseline.

Each step builds its tuner (or Trainer) from the workspace once and hands it its inputs; the
step's identity is computed by the tuner from those very inputs (the model's weights, the
data, the ``TrainingArguments`` — device included —, the phases: :mod:`deftx.train.identity`),
so a finished step is reused only for equal inputs, from its folder or from
``ws.step_store``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from deftx.data import nusax
from deftx.pipeline.layout import SHARED_RUN, task_run_name
from deftx.pipeline.workspace import Workspace
from deftx.sft import SparseDiff
from deftx.train.config import DenoiseConfig
from deftx.train.language import language_sft_tuner
from deftx.train.sparse_finetuner import SparseFineTuner
from deftx.train.task import classification_examples, task_sft_tuner, train_full_finetune


def language_tuner(ws: Workspace, texts: Sequence[str], seed: int, head_file: Path, work: Path,
                   trainer_dir: Path | None = None) -> SparseFineTuner:
    """The tuner of one language-SFT run (every method a branch of one phase 1) in ``work`` (``trainer_dir``: its
    Trainer's output_dir, see :func:`~deftx.train.language.language_sft_tuner`)."""
    return language_sft_tuner(
        ws.model_dir, ws.tokenizer, texts, ws.config.language_config(), work,
        head_file=head_file, settings=ws.language_settings(seed), base_model=str(ws.model_dir),
        overwrite=ws.overwrite, store=ws.step_store, trainer_dir=trainer_dir,
    )


def language_sfts(ws: Workspace, language: str, texts: list[str], seed: int, head_file: Path,
                  work: Path) -> dict[str, SparseDiff]:
    """Train (or reuse) the language SFT of ``language`` for every method in the run folder ``work``
    (:class:`~deftx.pipeline.layout.SeedLayout`)."""
    ws.log(f"[seed {seed}] language SFT {language}: {len(texts)} sentences -> {work}")
    with ws.timer(f"language sft {language}"):
        result = language_tuner(ws, texts, seed, head_file, work).fit()
    ws.record("language", language, seed, result)
    ws.keep(work)
    return result.diffs


def nusax_train_examples(ws: Workspace, language: str) -> list[dict]:
    rows = nusax.load_sentiment(ws.data_dir, language, "train")
    return classification_examples(ws.tokenizer, [r.text for r in rows], [r.label for r in rows],
                                   ws.config.training.max_length)


def task_tuner(ws: Workspace, examples: Sequence[dict], seed: int, num_labels: int,
               methods: Mapping[str, DenoiseConfig | None], source_sft: SparseDiff | None, work: Path,
               labels: Sequence[str] | None = None, trainer_dir: Path | None = None) -> SparseFineTuner:
    """The tuner of one task-SFT run in ``work``: ``methods`` as branches, on ``source_sft`` when given
    (``trainer_dir``: its Trainer's output_dir, see :func:`~deftx.train.task.task_sft_tuner`)."""
    return task_sft_tuner(
        ws.model_dir, ws.tokenizer, examples, ws.config.task_config(dict(methods)), work,
        num_labels=num_labels, settings=ws.settings(seed), source_sft=source_sft,
        base_model=str(ws.model_dir), pooling=ws.config.pooling, labels=labels,
        overwrite=ws.overwrite, store=ws.step_store, trainer_dir=trainer_dir,
    )


def task_sfts(ws: Workspace, name: str, examples: list[dict], seed: int, num_labels: int,
              source_sfts: dict[str, SparseDiff] | None, base: Path,
              labels: Sequence[str] | None = None) -> dict[str, SparseDiff]:
    """Task SFTs per method: on top of each method's source SFT, or one shared run (``labels``: class names).

    Each run trains in ``base / task_run_name(method, ...)`` (:mod:`deftx.pipeline.layout`).
    """
    cfg = ws.config
    diffs: dict[str, SparseDiff] = {}
    runs: list[tuple[str, dict[str, DenoiseConfig | None], SparseDiff | None]]
    if source_sfts is None:
        ws.log(f"[seed {seed}] task SFT {name}: shared phase 1, branches {list(cfg.methods)}")
        runs = [(SHARED_RUN, dict(cfg.methods), None)]
    else:
        runs = [(task_run_name(method, True), {method: denoise}, source_sfts[method])
                for method, denoise in cfg.methods.items()]
    for run_name, methods, source_sft in runs:
        if source_sft is not None:
            ws.log(f"[seed {seed}] task SFT {name} / {run_name} (on the source's {run_name} language SFT)")
        label = f"task sft {name}" if source_sft is None else f"task sft {name} {run_name}"
        with ws.timer(label):
            result = task_tuner(ws, examples, seed, num_labels, methods, source_sft, base / run_name, labels).fit()
        ws.record("task", name, seed, result)
        ws.keep(base / run_name)
        diffs.update(result.diffs)
    return diffs


def full_finetune(ws: Workspace, examples: list[dict], seed: int, num_labels: int, work_dir: Path):
    """The full fine-tuning baseline (shared through ``ws.step_store`` when there is one)."""
    model = train_full_finetune(
        ws.model_dir, ws.tokenizer, examples, ws.config.full_finetune, work_dir,
        num_labels=num_labels, settings=ws.settings(seed), pooling=ws.config.pooling,
        overwrite=ws.overwrite, store=ws.step_store,
    )
    ws.keep(work_dir)
    return model.to(ws.device)

