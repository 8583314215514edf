"""The whole chain from one config: language SFTs, task SFTs, baseline, zero-shot tables.

Every step is resumable (a finished step is reused) and has its folder under ``output_dir``
(:mod:`deftx.pipeline.layout`).

Every step folder records what its results depend on (:mod:`deftx.train.identity`): running
the pipeline again resumes the steps whose identity is unchanged and refuses the others,
naming what changed, unless ``overwrite`` (``deftx pipeline --overwrite``) lets them be
retrained. A :class:`~deftx.train.store.StepStore` (``Workspace.step_store``: ``deftx
ablate``'s, or the config's ``step_store`` folder, e.g. an ablation's, so a final run links
the ablation's equal steps) lets runs share finished steps: each step is keyed by the same
identity, so the store links the files of an equal step finished by another run instead of
training it, and takes this run's finished steps afterwards. The bytes each run folder keeps
are reported in results.md and ``disk.json``.

The tables go under ``results_dir`` (default: ``output_dir``): results.csv, summary.csv, results.md,
results.png, overlap.csv, selection.csv, heldout.csv, timings.json, disk.json, config.json, mlm_head.json.
heldout.csv holds each seed's language SFTs scored on the text left out of ``language_text_splits``
(NusaX MT) or ``americasnlp_text_splits`` (AmericasNLP 2021) (:mod:`deftx.pipeline.heldout`; none
when every split but test trains).
The rows there of seeds this run does not train stay when each records this config's recipe (its
``recipe`` column; ``config.json`` for rows written before it) and each such seed has every row of
the grid a seed scores (:func:`~deftx.pipeline.outputs.earlier_seeds`): seeds run a few at a time build
one table. ``config.json`` is written with ``results.csv``, each atomically, so however a run stops
the two describe each other.

Every phase (head warm-up, training, evaluation) runs on the config's ``device`` (``deftx
pipeline --device``), which is part of every step's identity.

Protocol names in the tables:

* ``nusax zero-shot`` — task trained on the source language's NusaX train split, tested on
  each target's ``eval_split`` split (test; valid when choosing a recipe) with the target's
  language SFT (trained on the target's NusaX MT ``language_text_splits`` text only, by
  default train+valid, never test) composed at each ``language_scale``. Rows
  ``<method> (no lang SFT)`` drop the language SFT.
* ``americasnli leave-languages-out`` — no English/Spanish NLI training set exists offline,
  so the task is trained on the pooled *dev* sets of some AmericasNLI languages and tested
  on the *test* sets of the held-out ones, each with its language SFT from AmericasNLP 2021
  ``americasnlp_text_splits`` text (default train+dev, never test); not the paper's protocol
  (which trains on English MultiNLI).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from deftx.data import americasnli, nusax
from deftx.eval.language import BASE
from deftx.eval.report import append_invocation, read_ledger
from deftx.eval.zero_shot import (
    Composition,
    EvalRow,
    RowContext,
    nli_examples,
    nusax_split_examples,
    score_compositions,
)
from deftx.files import exclusive
from deftx.models.classifier import build_classifier
from deftx.pipeline.config import BASELINE, NO_LANGUAGE_SFT, PipelineConfig
from deftx.pipeline.head import americasnlp_texts, ensure_head, language_texts
from deftx.pipeline.heldout import (
    AMERICASNLP,
    HeldoutScorer,
    has_heldout_text,
    nusax_languages,
    trained_languages,
)
from deftx.pipeline.layout import ANLI_TASK_NAME, seed_runs
from deftx.pipeline.outputs import Cell, earlier_seeds, kept_seeds_note, reused_steps_note, write_outputs
from deftx.pipeline.steps import full_finetune, language_sfts, nusax_train_examples, task_sfts
from deftx.pipeline.workspace import Workspace
from deftx.sft import SparseDiff
from deftx.train.store import LinkedStepStore
from deftx.train.task import at_token_limit

NUSAX = "nusax"
NUSAX_PROTOCOL = "zero-shot"
ANLI = "americasnli"
ANLI_PROTOCOL = "leave-languages-out"
RUN_LOCK = ".deftx-run.lock"
"""The lock file in ``results_dir`` that the pipeline run writing there holds (:func:`deftx.files.exclusive`)."""


def nusax_scored_languages(ws: Workspace) -> list[str]:
    """Targets (and sources) whose ``eval_split`` exists in ``ws``'s data: the NusaX languages a seed scores."""
    return [language for language in dict.fromkeys([*ws.config.targets, *ws.config.sources])
            if nusax.has_split(ws.data_dir, language, ws.config.eval_split)]


def nusax_sft_languages(ws: Workspace) -> list[str]:
    """The NusaX languages a seed trains a language SFT of: those it scores (:func:`nusax_scored_languages`),
    then the sources."""
    return list(dict.fromkeys([*nusax_scored_languages(ws), *ws.config.sources]))


def nusax_eval_languages(ws: Workspace) -> list[str]:
    """:func:`nusax_scored_languages`; the others are reported as skipped."""
    split = ws.config.eval_split
    languages = nusax_scored_languages(ws)
    for language in dict.fromkeys([*ws.config.targets, *ws.config.sources]):
        if language not in languages:
            ws.notes.append(f"{language}: no NusaX {split} split in {ws.data_dir} — not evaluated")
            ws.log(f"skipping {language}: no {split} split")
    return languages


def method_cells(ws: Workspace, examples_by_language: Mapping[str, Sequence[dict]], task: Mapping[str, SparseDiff],
                 lang: Mapping[str, Mapping[str, SparseDiff]]) -> Iterator[tuple[str, Sequence[dict], Composition]]:
    """Every method × language: the task SFT + the language's SFT at every ``language_scale`` (no
    retraining: each is one more composition), then the task SFT alone."""
    for method, task_diff in task.items():
        for language, examples in examples_by_language.items():
            if language in lang:
                for scale in ws.config.language_scales():
                    yield language, examples, Composition(method, (task_diff, lang[language][method]), (1.0, scale),
                                                          language_sft=True, language_scale=scale)
            yield language, examples, Composition(method + NO_LANGUAGE_SFT, (task_diff,), (1.0,))


def baseline_cells(examples_by_language: Mapping[str, Sequence[dict]]) -> Iterator[tuple[str, Sequence[dict],
                                                                                          Composition]]:
    """The full fine-tuning baseline on every language (the model as trained, no SFT)."""
    for language, examples in examples_by_language.items():
        yield language, examples, Composition(BASELINE)


def seed_cells(ws: Workspace) -> set[Cell]:
    """The :class:`~deftx.pipeline.outputs.Cell` of every row one seed of ``ws``'s config writes to results.csv:
    the cells :func:`run_nusax_seed` and :func:`run_anli_seed` score (:func:`baseline_cells`, :func:`method_cells`)."""
    cfg = ws.config
    grids = []
    if cfg.runs_nusax:
        scored = nusax_scored_languages(ws)
        grids += [(RowContext(NUSAX, NUSAX_PROTOCOL, source, split=cfg.eval_split), scored) for source in cfg.sources]
    if cfg.americasnli is not None:
        source = pooled_source(cfg.americasnli.train_languages)
        grids.append((RowContext(ANLI, ANLI_PROTOCOL, source), list(cfg.americasnli.test_languages)))
    cells = set()
    for context, languages in grids:
        examples: dict[str, Sequence[dict]] = dict.fromkeys(languages, ())
        task = dict.fromkeys(cfg.methods)
        lang = {language: task for language in languages}
        for language, _, composition in [*(baseline_cells(examples) if cfg.baseline else ()),
                                         *method_cells(ws, examples, task, lang)]:
            cells.add(Cell(context.benchmark, context.split, context.source, language, composition.method,
                           composition.language_scale))
    return cells


def note_cut(ws: Workspace, what: str, examples: Sequence[dict]) -> None:
    """Log how many of ``examples`` (tokenised at ``training.max_length``) fill the limit, where any does:
    their texts may have lost their ends (truncation is the usual practice; it is said, not silent)."""
    limit = ws.config.training.max_length
    full = at_token_limit(examples, limit)
    if full:
        ws.log(f"  {what}: {full} of {len(examples)} texts reach training.max_length {limit} tokens (longer ones cut)")


def evaluate(ws: Workspace, model, cells: Iterable[tuple[str, Sequence[dict], Composition]], context: RowContext,
             num_labels: int) -> list[EvalRow]:
    """Score ``cells`` on ``ws``'s device (:func:`~deftx.eval.zero_shot.score_compositions`), a log line each."""
    rows = []
    for row in score_compositions(model.to(ws.device), ws.tokenizer, cells, context, num_labels,
                                  batch_size=ws.config.eval_batch_size):
        at = "" if row.language_scale is None else f" (scale {row.language_scale:g})"
        ws.log(f"  {row.benchmark} {row.source}->{row.target} {row.method}{at}: "
               f"macro-F1 {100 * row.macro_f1:.1f} acc {100 * row.accuracy:.1f}")
        rows.append(row)
    return rows


def run_nusax_seed(ws: Workspace, seed: int, head_file: Path) -> Iterator[list[EvalRow]]:
    """Everything NusaX for one seed: language SFTs, per source baseline + task SFTs, evaluation.

    Yields the rows of each source as soon as they are evaluated, so a long run writes its
    tables source by source.
    """
    cfg = ws.config
    layout = ws.layout(seed)
    num_labels = len(nusax.LABELS)
    eval_languages = nusax_eval_languages(ws)
    lang = {language: language_sfts(ws, language, language_texts(ws, language), seed, head_file,
                                    layout.language(language))
            for language in nusax_sft_languages(ws)}
    tests = {language: nusax_split_examples(ws.data_dir, language, cfg.eval_split, ws.tokenizer,
                                            cfg.training.max_length)
             for language in eval_languages}
    for language, examples in tests.items():
        note_cut(ws, f"{language} {cfg.eval_split}", examples)
    for source in cfg.sources:
        rows: list[EvalRow] = []
        context = RowContext(NUSAX, NUSAX_PROTOCOL, source, seed, cfg.eval_split)
        examples = nusax_train_examples(ws, source)
        note_cut(ws, f"{source} train", examples)
        if cfg.baseline:
            ws.log(f"[seed {seed}] full fine-tuning baseline on {source}")
            with ws.timer(f"full ft {source}"):
                baseline = full_finetune(ws, examples, seed, num_labels, layout.baseline(source))
            with ws.timer("evaluation"):
                rows += evaluate(ws, baseline, baseline_cells(tests), context, num_labels)
            del baseline
        task = task_sfts(ws, source, examples, seed, num_labels, lang[source] if cfg.task_on_source_sft else None,
                         layout.task(source), labels=nusax.LABELS)
        model = build_classifier(ws.model_dir, num_labels, seed, ws.config.pooling)
        with ws.timer("evaluation"):
            rows += evaluate(ws, model, method_cells(ws, tests, task, lang), context, num_labels)
        yield rows


def heldout_languages(config: PipelineConfig, corpus: str) -> tuple[str, ...]:
    """The languages whose language SFTs a run scores on ``corpus``: the NusaX targets, then sources; the
    AmericasNLI test languages on AmericasNLP text."""
    if corpus == AMERICASNLP:
        return tuple(config.americasnli.test_languages) if config.americasnli is not None else ()
    return tuple(nusax_languages(config))


def heldout_seed(scorer: HeldoutScorer, seed: int, languages: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The held-out masked-LM records of the language SFTs ``seed`` trained under the scorer's workspace
    on the scorer's corpus, of ``languages`` that have one (default: :func:`heldout_languages` of the
    scorer's corpus)."""
    ws = scorer.ws
    trained = set(trained_languages(ws.config, seed, scorer.corpus))
    records = []
    with ws.timer("held-out mlm"):
        for language in heldout_languages(ws.config, scorer.corpus) if languages is None else languages:
            if language in trained:
                for record in scorer.records(seed, language):
                    records.append(record)
                    if record["method"] != BASE:
                        ws.log(f"  held-out {language} {record['method']} (scale {record['scale']:g}): loss "
                               f"{record['loss']:.3f}, {100 * record['loss_change']:+.1f}% from θ0")
    return records


def pooled_dev(ws: Workspace, languages: Sequence[str]) -> tuple[str, list[dict]]:
    """The AmericasNLI task's training data: the source name of the pooled *dev* sets of ``languages``
    (the rows' ``source``) and their tokenised premise/hypothesis pairs, in language order."""
    max_length = ws.config.training.max_length
    examples = [row for language in languages
                for row in nli_examples(ws.data_dir, language, "dev", ws.tokenizer, max_length)]
    return pooled_source(languages), examples


def pooled_source(languages: Sequence[str]) -> str:
    """The ``source`` of the AmericasNLI rows whose task trained on the pooled dev sets of ``languages``."""
    return "+".join(languages) + " (dev)"


def anli_task_examples(ws: Workspace, seed: int) -> tuple[str, list[dict]]:
    """The AmericasNLI task SFT's (and baseline's) training data of ``seed``: :func:`pooled_dev`, less a seeded
    draw of ``americasnli.max_train_examples`` of them (kept in order) when set."""
    section = ws.config.americasnli
    source, train = pooled_dev(ws, section.train_languages)
    if section.max_train_examples is not None:
        generator = torch.Generator().manual_seed(seed)
        keep = torch.randperm(len(train), generator=generator)[: section.max_train_examples].tolist()
        train = [train[i] for i in sorted(keep)]
    return source, train


def run_anli_seed(ws: Workspace, seed: int, head_file: Path) -> list[EvalRow]:
    """The AmericasNLI leave-languages-out protocol for one seed."""
    section = ws.config.americasnli
    layout = ws.layout(seed)
    num_labels = len(americasnli.LABELS)
    max_length = ws.config.training.max_length
    source, train = anli_task_examples(ws, seed)
    lang = {language: language_sfts(ws, language, americasnlp_texts(ws, language), seed, head_file,
                                    layout.language(language, americasnlp=True))
            for language in section.test_languages}
    tests = {language: nli_examples(ws.data_dir, language, "test", ws.tokenizer, max_length)
             for language in section.test_languages}
    for what, examples in [(f"{source} (task training)", train), *((f"{lang} test", t) for lang, t in tests.items())]:
        note_cut(ws, what, examples)
    rows: list[EvalRow] = []
    context = RowContext(ANLI, ANLI_PROTOCOL, source, seed)
    if ws.config.baseline:
        with ws.timer("full ft anli"):
            baseline = full_finetune(ws, train, seed, num_labels, layout.anli_baseline())
        rows += evaluate(ws, baseline, baseline_cells(tests), context, num_labels)
        del baseline
    task = task_sfts(ws, ANLI_TASK_NAME, train, seed, num_labels, None, layout.anli_task(), labels=americasnli.LABELS)
    model = build_classifier(ws.model_dir, num_labels, seed, ws.config.pooling)
    rows += evaluate(ws, model, method_cells(ws, tests, task, lang), context, num_labels)
    return rows


def run_pipeline(config: PipelineConfig, *, log: Callable[[str], None] = print,
                 command: str | None = None, overwrite: bool = False, heldout: bool = True) -> str:
    """Run (or resume) every step of ``config``; returns the main markdown table.

    Args:
        overwrite: retrain the steps whose recorded identity differs from this config's
            (default: refuse them, naming what changed; see :mod:`deftx.train.identity`).
        heldout: score each seed's language SFTs on the text left out of ``language_text_splits``
            (NusaX MT) or ``americasnlp_text_splits`` (AmericasNLP 2021), if any (:func:`heldout_seed`:
            heldout.csv, a results.md section).

    Raises:
        BusyError: another process runs the pipeline into the same ``results_dir`` (naming it): both
            would rewrite its results.csv, each with its own seeds' rows only.
    """
    start = time.perf_counter()
    ws = Workspace.open(config, log)
    ws.overwrite = overwrite
    with exclusive(ws.results_dir / RUN_LOCK, f"results folder {ws.results_dir}",
                   "two runs writing one results.csv keep only the rows of the last to write: give this run its own "
                   "--results-dir (deftx paired merges results folders) or wait for that run to end"):
        return run_workspace(ws, start, command=command, heldout=heldout)


def run_workspace(ws: Workspace, start: float, *, command: str | None, heldout: bool) -> str:
    """:func:`run_pipeline` in an opened workspace whose results folder this process holds (``start``: the
    invocation's :func:`time.perf_counter`)."""
    config, overwrite = ws.config, ws.overwrite
    store = None
    if config.step_store:
        ws.step_store = store = LinkedStepStore(Path(config.step_store))
    ledger = ws.results_dir / "invocations.jsonl"
    ws.earlier_seconds = sum(record["seconds"] for record in read_ledger(ledger))
    earlier = earlier_seeds(config, ws.results_dir, seed_cells(ws), overwrite=overwrite)
    if earlier.seeds:
        ws.log(f"keeping seeds {list(earlier.seeds)} already in {ws.results_dir / 'results.csv'} (same recipe)")
        note = kept_seeds_note(earlier.seeds, ledger, ws.environment)
        if note:
            ws.log(note)
            ws.notes.append(note)
    if earlier.dropped:
        ws.log(f"dropping seeds {list(earlier.dropped)} of another recipe from {ws.results_dir} (--overwrite)")
    ws.selections += earlier.selections
    ws.overlaps += earlier.overlaps
    ws.heldout += earlier.heldout
    head_file = ensure_head(ws)
    scorer = HeldoutScorer(ws, head_file)
    nusax_scorer = anli_scorer = None
    if heldout and config.runs_nusax and has_heldout_text(config):
        nusax_scorer = scorer.prepare(nusax_languages(config))
    if heldout and config.americasnli is not None and has_heldout_text(config, AMERICASNLP):
        anli_scorer = scorer.for_corpus(AMERICASNLP).prepare(config.americasnli.test_languages)
    rows: list[EvalRow] = list(earlier.rows)
    runs = seed_runs(config, nusax_sft_languages(ws) if config.runs_nusax else [])
    for seed in config.seeds:
        if config.runs_nusax:
            for source_rows in run_nusax_seed(ws, seed, head_file):
                rows += source_rows
                write_outputs(ws, rows, time.perf_counter() - start, command, runs)
            if nusax_scorer is not None:
                ws.heldout += heldout_seed(nusax_scorer, seed)
                write_outputs(ws, rows, time.perf_counter() - start, command, runs)
        if config.americasnli is not None:
            rows += run_anli_seed(ws, seed, head_file)
            if anli_scorer is not None:
                ws.heldout += heldout_seed(anli_scorer, seed, config.americasnli.test_languages)
            write_outputs(ws, rows, time.perf_counter() - start, command, runs)
    if store is not None:
        ws.notes.append(reused_steps_note(store.attached, config.step_store))
    table = write_outputs(ws, rows, time.perf_counter() - start, command, runs)
    append_invocation(ledger, command, time.perf_counter() - start, ws.environment)
    return table
