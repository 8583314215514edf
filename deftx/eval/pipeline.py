"""The whole chain from one config: language SFTs, task SFTs, baseline, zero-shot tables.

Layout under ``output_dir`` (every step resumable; a finished step is reused)::

    seed-<s>/lang/<language>/              language SFT run (phase 1 shared, one folder per method)
    seed-<s>/task/<source>/<method>/       task SFT run on top of the source's <method> SFT
    seed-<s>/task/<source>/shared/         (task_on_source_sft: false) one run, every method a branch
    seed-<s>/full/<source>/                full fine-tuning baseline
    seed-<s>/anli/...                      the AmericasNLI leave-languages-out runs

and, under ``results_dir`` (default: ``output_dir``): results.csv, summary.csv, results.md,
results.png, overlap.csv, selection.csv, timings.json, config.json.

Protocol names in the tables:

* ``nusax zero-shot`` — task trained on the source language's NusaX train split, tested on
  each target's test split with the target's language SFT (trained on the target's NusaX
  MT train+valid text only). Rows ``<method> (no lang SFT)`` drop the language SFT.
* ``americasnli leave-languages-out`` — no English/Spanish NLI training set exists offline,
  so the task is trained on the pooled *dev* sets of some AmericasNLI languages and tested
  on the *test* sets of the held-out ones, each with its language SFT from AmericasNLP 2021
  text; not the paper's protocol (which trains on English MultiNLI).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from deftx.data import americasnli, americasnlp, default_data_dir, nusax
from deftx.eval.config import PipelineConfig
from deftx.eval.report import bar_plot, markdown_tables, summarize, write_csv
from deftx.eval.zero_shot import EvalRow, nli_examples, nusax_test_examples, score_composed
from deftx.sft import SparseDiff
from deftx.train.config import to_plain
from deftx.train.language import train_language_sft, warm_up_head
from deftx.train.sparse_finetuner import SparseFineTuningResult
from deftx.train.task import build_classifier, classification_examples, train_full_finetune, train_task_sft
from deftx.train.trainer_args import TrainingSettings

NUSAX = "nusax"
NUSAX_PROTOCOL = "zero-shot"
ANLI = "americasnli"
ANLI_PROTOCOL = "leave-languages-out"
BASELINE = "full-ft"
NO_LANGUAGE_SFT = " (no lang SFT)"


def resolve_model(name: str) -> Path:
    """``e5-small`` (converted once from PyPI, cached) or a ``save_pretrained`` folder."""
    if name in ("e5-small", "multilingual-e5-small"):
        from deftx.models.e5 import ensure_e5_small

        return ensure_e5_small()
    path = Path(name).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model {name!r} is neither 'e5-small' nor a save_pretrained folder (no config.json)")
    return path


@dataclass
class Workspace:
    """Resolved paths, tokenizer and bookkeeping of one pipeline run."""

    config: PipelineConfig
    model_dir: Path
    data_dir: Path
    output_dir: Path
    results_dir: Path
    tokenizer: Any
    log: Callable[[str], None] = print
    timings: dict[str, float] = field(default_factory=dict)
    selections: list[dict[str, Any]] = field(default_factory=list)
    overlaps: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    head_metrics: dict[str, Any] = field(default_factory=dict)
    earlier_seconds: float = 0.0

    @classmethod
    def open(cls, config: PipelineConfig, log: Callable[[str], None] = print) -> Workspace:
        from transformers import AutoTokenizer

        model_dir = resolve_model(config.model)
        data_dir = Path(config.data_dir).expanduser() if config.data_dir else default_data_dir()
        if not data_dir.is_dir():
            raise FileNotFoundError(f"data_dir {data_dir} does not exist")
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        output_dir = Path(config.output_dir)
        results_dir = Path(config.results_dir) if config.results_dir else output_dir
        output_dir.mkdir(parents=True, exist_ok=True)
        results_dir.mkdir(parents=True, exist_ok=True)
        return cls(config, model_dir, data_dir, output_dir, results_dir, tokenizer, log)

    def settings(self, seed: int) -> TrainingSettings:
        return TrainingSettings(**{**to_plain(self.config.training), "seed": seed})

    def seed_dir(self, seed: int) -> Path:
        return self.output_dir / f"seed-{seed}"

    @contextlib.contextmanager
    def timer(self, label: str) -> Iterator[None]:
        """Add the wall time of the block to ``timings[label]``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[label] = self.timings.get(label, 0.0) + time.perf_counter() - start

    def record(self, kind: str, language: str, seed: int, result: SparseFineTuningResult) -> None:
        """Keep the selection shares and mask overlaps of a finished SFT run."""
        for branch, report in result.selections.items():
            for row in report["groups"]:
                self.selections.append({"kind": kind, "language": language, "seed": seed,
                                        "method": branch, "k": report["k"], **row})
        for pair, rows in result.overlap.items():
            for row in rows:
                self.overlaps.append({"kind": kind, "language": language, "seed": seed, "pair": pair, **row})


def head_texts(ws: Workspace) -> list[str]:
    """All unlabelled NusaX text: every language column of MT train+valid (never test)."""
    texts: list[str] = []
    for language in nusax.sentiment_languages(ws.data_dir):
        texts.extend(nusax.load_mt_text(ws.data_dir, language))
    return texts


def ensure_head(ws: Workspace) -> Path:
    """Warm up (or load from the cache) the MLM head used by every language SFT."""
    from deftx.models.e5 import default_cache_root

    with ws.timer("mlm head"):
        head_file, metrics = warm_up_head(
            ws.model_dir, ws.tokenizer, head_texts(ws), ws.config.mlm_head, default_cache_root() / "mlm-heads",
        )
    ws.head_metrics = {k: metrics.get(k) for k in (
        "steps", "initial_loss", "final_loss", "initial_accuracy", "final_accuracy", "seconds", "cache_hit")}
    ws.log(f"MLM head: {head_file.name} masked-token accuracy {metrics.get('initial_accuracy', float('nan')):.3f}"
           f" -> {metrics.get('final_accuracy', float('nan')):.3f} (cache hit: {metrics.get('cache_hit')})")
    return head_file


def language_sfts(ws: Workspace, language: str, texts: list[str], seed: int, head_file: Path,
                  folder: str = "lang") -> dict[str, SparseDiff]:
    """Train (or reuse) the language SFT of ``language`` for every method."""
    work = ws.seed_dir(seed) / folder / language
    ws.log(f"[seed {seed}] language SFT {language}: {len(texts)} sentences -> {work}")
    with ws.timer(f"language sft {language}"):
        result = train_language_sft(
            ws.model_dir, ws.tokenizer, texts, ws.config.language_config(), work,
            head_file=head_file, settings=ws.settings(seed), base_model=str(ws.model_dir),
        )
    ws.record("language", language, seed, result)
    return result.diffs


def nusax_train_examples(ws: Workspace, language: str) -> list[dict]:
    rows = nusax.load_sentiment(ws.data_dir, language, "train")
    return classification_examples(ws.tokenizer, [r.text for r in rows], [r.label for r in rows],
                                   ws.config.training.max_length)


def task_sfts(ws: Workspace, name: str, examples: list[dict], seed: int, num_labels: int,
              source_sfts: dict[str, SparseDiff] | None, folder: str = "task") -> dict[str, SparseDiff]:
    """Task SFTs per method: on top of each method's source SFT, or one shared run."""
    cfg = ws.config
    settings = ws.settings(seed)
    base = ws.seed_dir(seed) / folder / name
    diffs: dict[str, SparseDiff] = {}
    if source_sfts is None:
        ws.log(f"[seed {seed}] task SFT {name}: shared phase 1, branches {list(cfg.methods)}")
        with ws.timer(f"task sft {name}"):
            result = train_task_sft(
                ws.model_dir, ws.tokenizer, examples, cfg.task_config(), base / "shared",
                num_labels=num_labels, settings=settings, base_model=str(ws.model_dir), pooling=cfg.pooling,
            )
        ws.record("task", name, seed, result)
        return result.diffs
    for method, denoise in cfg.methods.items():
        ws.log(f"[seed {seed}] task SFT {name} / {method} (on the source's {method} language SFT)")
        with ws.timer(f"task sft {name} {method}"):
            result = train_task_sft(
                ws.model_dir, ws.tokenizer, examples, cfg.task_config({method: denoise}), base / method,
                num_labels=num_labels, settings=settings, source_sft=source_sfts[method],
                base_model=str(ws.model_dir), pooling=cfg.pooling,
            )
        ws.record("task", name, seed, result)
        diffs.update(result.diffs)
    return diffs


def nusax_eval_languages(ws: Workspace) -> list[str]:
    """Targets (and sources) whose test split exists; the others are reported as skipped."""
    languages = []
    for language in dict.fromkeys([*ws.config.targets, *ws.config.sources]):
        if nusax.has_split(ws.data_dir, language, "test"):
            languages.append(language)
        else:
            ws.notes.append(f"{language}: no NusaX test split in {ws.data_dir} — not evaluated")
            ws.log(f"skipping {language}: no test split")
    return languages


def evaluate_methods(ws: Workspace, model, examples_by_language: dict[str, list[dict]], *, bench: str,
                     protocol: str, source: str, seed: int, num_labels: int,
                     task: dict[str, SparseDiff], lang: dict[str, dict[str, SparseDiff]]) -> list[EvalRow]:
    """Rows for every method × language: task SFT + the language's SFT, and without it."""
    rows = []
    scale = ws.config.language_scale
    for method, task_diff in task.items():
        for language, examples in examples_by_language.items():
            variants = [(method + NO_LANGUAGE_SFT, [task_diff], [1.0], False)]
            if language in lang:
                variants.insert(0, (method, [task_diff, lang[language][method]], [1.0, scale], True))
            for name, diffs, scales, with_lang in variants:
                f1, acc = score_composed(model, ws.tokenizer, examples, diffs, scales, num_labels,
                                         batch_size=ws.config.eval_batch_size)
                rows.append(EvalRow(bench, protocol, name, source, language, seed, f1, acc, len(examples), with_lang))
                ws.log(f"  {bench} {source}->{language} {name}: macro-F1 {100 * f1:.1f} acc {100 * acc:.1f}")
    return rows


def evaluate_baseline(ws: Workspace, model, examples_by_language, *, bench, protocol, source, seed,
                      num_labels) -> list[EvalRow]:
    rows = []
    for language, examples in examples_by_language.items():
        f1, acc = score_composed(model, ws.tokenizer, examples, [], [], num_labels,
                                 batch_size=ws.config.eval_batch_size)
        rows.append(EvalRow(bench, protocol, BASELINE, source, language, seed, f1, acc, len(examples), False))
        ws.log(f"  {bench} {source}->{language} {BASELINE}: macro-F1 {100 * f1:.1f} acc {100 * acc:.1f}")
    return rows


def run_nusax_seed(ws: Workspace, seed: int, head_file: Path) -> Iterator[list[EvalRow]]:
    """Everything NusaX for one seed: language SFTs, per source baseline + task SFTs, evaluation.

    Yields the rows of each source as soon as they are evaluated, so a long run writes its
    tables source by source.
    """
    cfg = ws.config
    num_labels = len(nusax.LABELS)
    eval_languages = nusax_eval_languages(ws)
    needs_lang = [lang for lang in dict.fromkeys([*eval_languages, *cfg.sources])]
    lang = {language: language_sfts(ws, language, nusax.load_mt_text(ws.data_dir, language), seed, head_file)
            for language in needs_lang}
    tests = {language: nusax_test_examples(ws.data_dir, language, ws.tokenizer, cfg.training.max_length)
             for language in eval_languages}
    for source in cfg.sources:
        rows: list[EvalRow] = []
        examples = nusax_train_examples(ws, source)
        if cfg.baseline:
            ws.log(f"[seed {seed}] full fine-tuning baseline on {source}")
            with ws.timer(f"full ft {source}"):
                baseline = train_full_finetune(
                    ws.model_dir, ws.tokenizer, examples, cfg.full_finetune, ws.seed_dir(seed) / "full" / source,
                    num_labels=num_labels, settings=ws.settings(seed), pooling=cfg.pooling,
                )
            with ws.timer("evaluation"):
                rows += evaluate_baseline(ws, baseline, tests, bench=NUSAX, protocol=NUSAX_PROTOCOL,
                                          source=source, seed=seed, num_labels=num_labels)
            del baseline
        task = task_sfts(ws, source, examples, seed, num_labels, lang[source] if cfg.task_on_source_sft else None)
        model = build_classifier(ws.model_dir, num_labels, seed, ws.config.pooling)
        with ws.timer("evaluation"):
            rows += evaluate_methods(ws, model, tests, bench=NUSAX, protocol=NUSAX_PROTOCOL, source=source,
                                     seed=seed, num_labels=num_labels, task=task, lang=lang)
        yield rows


def run_anli_seed(ws: Workspace, seed: int, head_file: Path) -> list[EvalRow]:
    """The AmericasNLI leave-languages-out protocol for one seed."""
    section = ws.config.americasnli
    num_labels = len(americasnli.LABELS)
    overlap = set(section.train_languages) & set(section.test_languages)
    if overlap:
        raise ValueError(f"americasnli: {sorted(overlap)} are both training and test languages")
    max_length = ws.config.training.max_length
    train = [row for language in section.train_languages
             for row in nli_examples(ws.data_dir, language, "dev", ws.tokenizer, max_length)]
    if section.max_train_examples is not None:
        generator = torch.Generator().manual_seed(seed)
        keep = torch.randperm(len(train), generator=generator)[: section.max_train_examples].tolist()
        train = [train[i] for i in sorted(keep)]
    source = "+".join(section.train_languages) + " (dev)"
    lang = {language: language_sfts(ws, language, americasnlp.load_text(ws.data_dir, language), seed, head_file,
                                    folder="anli/lang")
            for language in section.test_languages}
    tests = {language: nli_examples(ws.data_dir, language, "test", ws.tokenizer, max_length)
             for language in section.test_languages}
    rows: list[EvalRow] = []
    if ws.config.baseline:
        with ws.timer("full ft anli"):
            baseline = train_full_finetune(
                ws.model_dir, ws.tokenizer, train, ws.config.full_finetune, ws.seed_dir(seed) / "anli" / "full",
                num_labels=num_labels, settings=ws.settings(seed), pooling=ws.config.pooling)
        rows += evaluate_baseline(ws, baseline, tests, bench=ANLI, protocol=ANLI_PROTOCOL, source=source,
                                  seed=seed, num_labels=num_labels)
        del baseline
    task = task_sfts(ws, "pooled", train, seed, num_labels, None, folder="anli/task")
    model = build_classifier(ws.model_dir, num_labels, seed, ws.config.pooling)
    rows += evaluate_methods(ws, model, tests, bench=ANLI, protocol=ANLI_PROTOCOL, source=source, seed=seed,
                             num_labels=num_labels, task=task, lang=lang)
    return rows


def copy_run_logs(output_dir: Path, destination: Path) -> None:
    """Copy the small per-run files (loss logs, selection reports) next to the results."""
    for pattern in ("log.jsonl", "selection.json"):
        for path in output_dir.rglob(pattern):
            target = destination / path.relative_to(output_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)


def write_outputs(ws: Workspace, rows: list[EvalRow], wall_seconds: float, command: str | None) -> str:
    """results.csv, summary.csv, overlap.csv, selection.csv, timings.json, results.md, results.png."""
    out = ws.results_dir
    plain = [row.as_dict() for row in rows]
    write_csv(plain, out / "results.csv")
    summary = summarize(plain, exclude_from_average=ws.config.sources)
    write_csv(summary, out / "summary.csv")
    if ws.overlaps:
        write_csv(ws.overlaps, out / "overlap.csv")
    if ws.selections:
        write_csv(ws.selections, out / "selection.csv")
    timings = {"wall_seconds": wall_seconds, "earlier_invocations_seconds": ws.earlier_seconds, **ws.timings}
    (out / "timings.json").write_text(json.dumps(timings, indent=2) + "\n")
    if ws.results_dir.resolve() != ws.output_dir.resolve():
        copy_run_logs(ws.output_dir, ws.results_dir / "logs")
    main = [r for r in summary if not r["method"].endswith(NO_LANGUAGE_SFT)]
    bar_plot(main, out / "results.png")
    tables = markdown_tables(main, "macro_f1")
    text = [f"# {ws.config.name}: zero-shot results", ""]
    if command:
        text += ["Command:", "", f"    {command}", ""]
    earlier = ws.earlier_seconds
    total = f" ({(earlier + wall_seconds) / 60:.1f} min over all invocations of this run)" if earlier else ""
    text += [
        f"Wall time: {wall_seconds / 60:.1f} min{total}. Model: {ws.config.model} ({ws.model_dir}); "
        "multilingual-e5-small here is 4-bit (Q4_0 word embeddings and Linear weights).",
        f"Seeds: {list(ws.config.seeds)}. Methods: {BASELINE} (full fine-tuning on the source, no SFT), "
        + ", ".join(ws.config.methods) + " (task SFT + target language SFT).",
        "",
        tables,
        markdown_tables(main, "accuracy"),
        "Without the target language SFT (task SFT alone):",
        "",
        markdown_tables([r for r in summary if r["method"].endswith(NO_LANGUAGE_SFT)] or main[:0], "macro_f1")
        if any(r["method"].endswith(NO_LANGUAGE_SFT) for r in summary) else "(none)\n",
    ]
    if ws.head_metrics:
        text += [f"MLM head warm-up: {json.dumps(ws.head_metrics)}", ""]
    if ws.notes:
        text += ["Notes:", "", *[f"- {note}" for note in ws.notes], ""]
    text += ["Files: results.csv (per seed), summary.csv, overlap.csv (mask overlap per group), "
             "selection.csv (share of K per group), timings.json, results.png.", ""]
    (out / "results.md").write_text("\n".join(text))
    return tables


def run_pipeline(config: PipelineConfig, *, log: Callable[[str], None] = print,
                 command: str | None = None) -> str:
    """Run (or resume) every step of ``config``; returns the main markdown table."""
    start = time.perf_counter()
    ws = Workspace.open(config, log)
    ledger = ws.results_dir / "invocations.jsonl"
    if ledger.is_file():
        ws.earlier_seconds = sum(json.loads(line)["seconds"] for line in ledger.read_text().splitlines() if line)
    (ws.results_dir / "config.json").write_text(json.dumps(to_plain(config), indent=2) + "\n")
    head_file = ensure_head(ws)
    rows: list[EvalRow] = []
    for seed in config.seeds:
        if config.targets:
            for source_rows in run_nusax_seed(ws, seed, head_file):
                rows += source_rows
                write_outputs(ws, rows, time.perf_counter() - start, command)
        if config.americasnli is not None:
            rows += run_anli_seed(ws, seed, head_file)
            write_outputs(ws, rows, time.perf_counter() - start, command)
    table = write_outputs(ws, rows, time.perf_counter() - start, command)
    with ledger.open("a") as handle:
        handle.write(json.dumps({"command": command, "seconds": time.perf_counter() - start,
                                 "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}) + "\n")
    return table
