"""``deftx evaluate``: zero-shot scores of a task SFT composed with language SFTs (NusaX, or any data set)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from deftx.commands._common import (
    DEVICE_METAVAR,
    add_model_arguments,
    check_base_models,
    device_option,
    language_sft_scale,
    name_base_model,
    path_text,
    positive_int,
)

if TYPE_CHECKING:
    from deftx.eval.zero_shot import Composition, RowContext
    from deftx.sft import SparseDiff


DEFAULT_MAX_LENGTH = 128
"""Tokens kept of each text when --max-length is not given (capped at the model's positions)."""
DEFAULT_SPLIT = "test"
"""The split of a --data folder or Hub data set when --split is not given."""
NUSAX_SOURCE = "indonesian"
"""The source language of the NusaX tables when --source is not given."""
UNNAMED_SOURCE = "not given"
"""The table's source with --data and no --source (the SFT does not record its training language)."""

OUTPUT_FILES = ("evaluate.csv", "evaluate.md")
"""What an evaluation writes into --output."""

NAME = "evaluate"
SUMMARY = "zero-shot macro-F1/accuracy of a task SFT + language SFTs (NusaX, or any data set with --data)"
DESCRIPTION = """\
Evaluate a task SFT, composed with a language SFT where given, on a test set. By default: the NusaX
sentiment test split of every language found under the data root (or --languages), each with its own
--lang-sft; languages without a test file are skipped and reported. With --data: one labelled data
set (a local CSV/TSV/JSON/parquet file or a Hub data set name, read with `datasets`). The classifier
(architecture, pooling, labels) is read from the task SFT's metadata.
"""


def _language_sfts(specs: list[str]) -> dict[str, str]:
    """--lang-sft's LANGUAGE=SFT values as language -> source; one SFT per language."""
    sfts = {}
    for spec in specs:
        language, sep, source = spec.partition("=")
        if not sep or not language or not source:
            raise ValueError(f"--lang-sft expects LANGUAGE=PATH (a file, folder or Hub id), got {spec!r}")
        if language in sfts:
            raise ValueError(f"--lang-sft gives {language} twice ({sfts[language]} and {source}): one SFT per language")
        sfts[language] = source
    return sfts


def check_language_sfts(lang_sfts: dict, sources: dict[str, str]) -> None:
    """ValueError for a language SFT (language -> SparseDiff; ``sources``: language -> its --lang-sft) that
    ships a classifier head: composed after the task SFT, its head would replace the task SFT's."""
    from deftx.train.architecture import HEAD_SUFFIXES

    for language, diff in lang_sfts.items():
        if any(name.endswith(HEAD_SUFFIXES) for name in diff.dense):
            raise ValueError(f"--lang-sft {language}={sources[language]} ships a classifier head "
                             f"({', '.join(sorted(diff.dense))}), which would replace the task SFT's: "
                             "is it a task SFT?")


def token_limit(asked: int | None, model_limit: int | None, model: str) -> int:
    """The tokens kept of each text: ``asked`` (--max-length), else the default capped at the model's
    positions; ValueError when ``asked`` exceeds ``model_limit`` (the model's embeddings would fail)."""
    if asked is None:
        return DEFAULT_MAX_LENGTH if model_limit is None else min(DEFAULT_MAX_LENGTH, model_limit)
    if model_limit is not None and asked > model_limit:
        raise ValueError(f"--max-length {asked} tokens, but model {model!r} accepts at most {model_limit} "
                         "(from max_position_embeddings in its config.json)")
    return asked


def _check_options(args: argparse.Namespace) -> None:
    """ValueError for options that would be ignored in this mode, or repeated, or an --output that
    is a file or holds an earlier evaluation (unless --overwrite): before anything is loaded."""
    nusax_only = [flag for flag, value in (("--languages", args.languages), ("--data-dir", args.data_dir)) if value]
    data_only = [flag for flag, value in (("--target", args.target), ("--split", args.split),
                                          ("--data-config", args.data_config), ("--pair-column", args.pair_column),
                                          ("--label-names", args.label_names),
                                          ("--label-ids", args.label_ids or None))
                 if value is not None]
    if args.data and nusax_only:
        raise ValueError(f"{' and '.join(nusax_only)} choose NusaX languages; with --data the data set is scored")
    if not args.data and data_only:
        raise ValueError(f"{' and '.join(data_only)} describe --data, which is not given")
    if args.scale is not None and not args.lang_sft:
        raise ValueError("--scale is the language SFT's scale, and no --lang-sft is given")
    from deftx.text import repeated

    twice = sorted(repeated(args.languages or ()))
    if twice:
        raise ValueError(f"--languages names {', '.join(twice)} more than once")
    if args.output and Path(args.output).exists() and not Path(args.output).is_dir():
        raise ValueError(f"--output {args.output} is a file; it must be a folder (evaluate.csv and evaluate.md "
                         "are written into it)")
    if args.overwrite and not args.output:
        raise ValueError("--overwrite replaces an --output folder's files, and no --output is given")
    written = [name for name in OUTPUT_FILES if args.output and (Path(args.output) / name).exists()]
    if written and not args.overwrite:
        raise ValueError(f"--output {args.output} already holds {' and '.join(written)} of an earlier evaluation: "
                         "choose another folder, or pass --overwrite to replace them")


def _nusax_data_dir(args: argparse.Namespace) -> Path:
    """The NusaX data root of ``--data-dir`` (else the default), which must exist."""
    from deftx.data import default_data_dir

    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    if not data_dir.is_dir():
        raise FileNotFoundError(f"--data-dir {data_dir} does not exist")
    return data_dir


def _composition(args: argparse.Namespace, task, lang_sft) -> Composition:
    """The task SFT, with the target's language SFT at ``--scale`` when there is one."""
    from deftx.eval.zero_shot import Composition

    if lang_sft is None:
        return Composition(args.name, (task,), (1.0,))
    scale = args.scale if args.scale is not None else 1.0
    return Composition(args.name, (task, lang_sft), (1.0, scale), language_sft=True, language_scale=scale)


def cut_note(examples: Sequence[dict], max_length: int) -> str:
    """``; N at --max-length L tokens (longer texts cut)`` for the ``examples`` whose ``input_ids`` fill
    the token limit (a text longer than it lost its end), or nothing when none does."""
    from deftx.train.task import at_token_limit

    full = at_token_limit(examples, max_length)
    return f"; {full} at --max-length {max_length} tokens (longer texts cut)" if full else ""


def recorded_seed(sft: SparseDiff) -> int | None:
    """The training seed ``sft`` records (``settings["seed"]``, written by deftx since session 28), or None."""
    seed = sft.settings.get("seed")
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def row_seed(task: SparseDiff, lang_sfts: Mapping[str, SparseDiff], asked: int) -> tuple[int, str]:
    """The seed the rows record, and a line saying where it comes from: the task SFT's training seed
    where it records one, else ``asked`` (``--seed``); language SFTs of another recorded seed are named."""
    seed = recorded_seed(task)
    line = (f"rows record seed {seed} (the task SFT's training seed)" if seed is not None
            else f"rows record seed {asked} (--seed: the task SFT records no training seed)")
    seed = asked if seed is None else seed
    others = {language: recorded_seed(sft) for language, sft in lang_sfts.items()}
    others = {language: s for language, s in others.items() if s is not None and s != seed}
    if others:
        line += "; trained with other seeds: " + ", ".join(f"{lang} language SFT {s}" for lang, s in others.items())
    return seed, line


def absent_classes_line(target: str, examples: Sequence[dict], num_labels: int,
                        names: Sequence[str] | None) -> str | None:
    """A line naming the classes (by ``names`` in class-id order, else by id) of which ``examples`` hold no gold
    ``labels``: macro-F1 averages over all ``num_labels`` classes, each such class scoring 0; None when every
    class has an example."""
    gold = {int(example["labels"]) for example in examples}
    absent = [names[i] if names is not None else str(i) for i in range(num_labels) if i not in gold]
    if not absent:
        return None
    return (f"{target}: no example of class {', '.join(absent)} in the data; macro-F1 is the mean over all "
            f"{num_labels} classes, in which a class without examples scores 0")


def _score(args, model, tokenizer, cells, context: RowContext, num_labels: int,
           names: Sequence[str] | None) -> list[dict]:
    """Score ``cells`` (:func:`~deftx.eval.zero_shot.score_compositions`), a line each, saying how many
    examples the token limit may have cut (:func:`cut_note`) and which classes have no example
    (:func:`absent_classes_line`; ``names``: the class names in class-id order, or None)."""
    from deftx.eval.zero_shot import score_compositions

    rows = []
    scored = score_compositions(model, tokenizer, cells, context, num_labels, batch_size=args.batch_size,
                                check_base=not args.no_base_check, progress=True)
    for (_, examples, _), row in zip(cells, scored, strict=True):
        sft = "with" if row.language_sft else "without"
        print(f"{row.target}: macro-F1 {100 * row.macro_f1:.1f} accuracy {100 * row.accuracy:.1f} on {row.examples} "
              f"examples ({sft} language SFT{cut_note(examples, args.max_length)})")
        absent = absent_classes_line(row.target, examples, num_labels, names)
        if absent:
            print(absent)
        rows.append(row.as_dict())
    return rows


def _nusax_languages(args: argparse.Namespace, data_dir: Path, lang_sft_languages: Sequence[str]) -> list[str]:
    """The NusaX languages to evaluate (--languages, else every one under the data root); ValueError
    for a --lang-sft whose language is not among them (it would be silently unused)."""
    from deftx.data import nusax

    languages = list(args.languages or nusax.sentiment_languages(data_dir))
    unused = sorted(set(lang_sft_languages) - set(languages))
    if unused:
        raise ValueError(f"--lang-sft for {', '.join(unused)}, which is not evaluated (languages: "
                         f"{', '.join(languages)})")
    return languages


def nusax_class_order(spec) -> tuple[str, ...]:
    """The classifier ``spec``'s label names in class-id order for scoring NusaX: those it records (NusaX's
    three in any order), else NusaX's own order for a three-label classifier that records none.

    Raises:
        ValueError: the classifier records other labels, or records none and has another number of them.
    """
    from deftx.data import nusax
    from deftx.eval.zero_shot import nusax_class_ids

    if spec.labels is None:
        if spec.num_labels != len(nusax.LABELS):
            raise ValueError(f"the classifier has {spec.num_labels} labels ({spec.source}), NusaX sentiment "
                             f"{len(nusax.LABELS)} ({', '.join(nusax.LABELS)}): it cannot be scored on NusaX")
        return nusax.LABELS
    try:
        nusax_class_ids(spec.labels)
    except ValueError as err:
        raise ValueError(f"{err} ({spec.source})") from None
    return spec.labels


def _nusax_cells(args, tokenizer, task, lang_sfts, data_dir: Path, languages: Sequence[str],
                 class_order: Sequence[str]) -> list[tuple[str, list[dict], Composition]]:
    from deftx.eval.zero_shot import nusax_test_examples

    cells = []
    for language in languages:
        examples = nusax_test_examples(data_dir, language, tokenizer, args.max_length, class_order)
        if examples is None:
            print(f"{language}: no test split under {data_dir} — skipped")
            continue
        cells.append((language, examples, _composition(args, task, lang_sfts.get(language))))
    return cells


def class_names(args: argparse.Namespace, spec) -> tuple[str, ...] | None:
    """The classifier's label names in class-id order: ``--label-names`` when given (checked against the
    classifier ``spec``), else the names it records (``spec.labels``: none for transformers' placeholders), else None.

    Raises:
        ValueError: --label-names empty or repeated names, another count than the classifier's labels,
            or names other than those it records.
    """
    recorded = spec.labels
    if args.label_names is None:
        return recorded
    from deftx.text import repeated

    given = tuple(name.strip() for name in args.label_names.split(","))
    if "" in given or repeated(given):
        raise ValueError(f"--label-names {args.label_names!r}: give each class name once, comma-separated, in "
                         "class-id order")
    if len(given) != spec.num_labels:
        raise ValueError(f"--label-names names {len(given)} classes, but the classifier has {spec.num_labels} "
                         f"({spec.source}): name every class, in class-id order")
    if recorded is not None and given != recorded:
        raise ValueError(f"--label-names {','.join(given)} differs from the labels the classifier records "
                         f"({','.join(recorded)}; {spec.source}): drop --label-names")
    return given


def written_class_ids(labels: Sequence[str]) -> list[int] | None:
    """``labels`` as integers when every one is written as a class id (ASCII digits), else None."""
    return [int(label) for label in labels] if all(label.isascii() and label.isdigit() for label in labels) else None


def _data_label_ids(args: argparse.Namespace, data, spec) -> list[int]:
    """The class id of each --data example: the integers of the label column with --label-ids, else by
    :func:`class_names`. ValueError for labels that are not integers with --label-ids, for integers that are not
    the classifier's class names when it names its classes and --label-ids is not given (the file's integers
    may follow another order), and naming --label-names when the labels are names and no class order is known
    (the data's own label set never gives one)."""
    from deftx.data.generic import UnknownClassOrderError

    names = class_names(args, spec)
    written = written_class_ids(data.labels)
    if args.label_ids and written is None:
        raise ValueError(f"--label-ids: column {args.label_column!r} of --data {args.data} holds labels that are not "
                         f"class ids ({', '.join(sorted(set(data.labels))[:10])})")
    if not args.label_ids and names is not None and written is not None and not set(data.labels) <= set(names):
        classes = ", ".join(f"{i}={name}" for i, name in enumerate(names))
        raise ValueError(f"--data {args.data}: column {args.label_column!r} holds integers "
                         f"({', '.join(map(str, sorted(set(written))[:10]))}), not the names of the classifier's "
                         f"classes ({classes}; {spec.source}), so which class each integer means is unknown: write "
                         "the names in the file, or pass --label-ids if the integers are these class ids")
    try:
        ids = written if args.label_ids else data.label_ids(names)
    except UnknownClassOrderError as err:
        placeholder = ",".join(f"NAME{i}" for i in range(spec.num_labels))
        raise ValueError(f"--data {args.data}: the labels are names ({', '.join(err.names)}), and the classifier "
                         f"records none ({spec.source}), so which class id each has is unknown: pass --label-names "
                         f"{placeholder}, its {spec.num_labels} labels in the class-id order it was trained "
                         "with") from err
    if max(ids) >= spec.num_labels:
        raise ValueError(f"--data {args.data}: class id {max(ids)} in column {args.label_column!r}, but the "
                         f"classifier has {spec.num_labels} labels (ids 0..{spec.num_labels - 1})")
    return ids


def _data_cells(args, tokenizer, task, lang_sfts, spec) -> list[tuple[str, list[dict], Composition]]:
    from deftx.data.generic import load_classification
    from deftx.train.task import classification_examples

    data = load_classification(args.data, text_column=args.text_column, label_column=args.label_column,
                               pair_column=args.pair_column, split=args.split or DEFAULT_SPLIT,
                               config=args.data_config)
    ids = _data_label_ids(args, data, spec)
    examples = classification_examples(tokenizer, data.texts, ids, args.max_length, pairs=data.pairs)
    target = args.target or next(iter(lang_sfts), None) or Path(str(args.data)).stem
    return [(target, examples, _composition(args, task, next(iter(lang_sfts.values()), None)))]


def run(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    from deftx.data import nusax
    from deftx.eval.report import markdown_tables, summarize, write_csv
    from deftx.eval.zero_shot import RowContext
    from deftx.pipeline.workspace import checked_device, folder_token_limit, resolve_model
    from deftx.sft.sources import open_sft
    from deftx.train.architecture import build_from_spec, has_trained_head, resolve_classifier

    device = checked_device(device_option(args.device))
    _check_options(args)
    lang_specs = _language_sfts(args.lang_sft or [])
    if args.data and len(lang_specs) > 1:
        raise ValueError("with --data, give at most one --lang-sft (the data's language)")
    data_dir = None if args.data else _nusax_data_dir(args)
    languages = [] if data_dir is None else _nusax_languages(args, data_dir, list(lang_specs))
    task = open_sft(args.task_sft)
    lang_sfts = {language: open_sft(source) for language, source in lang_specs.items()}
    check_language_sfts(lang_sfts, lang_specs)
    model_dir = resolve_model(args.model)
    args.max_length = token_limit(args.max_length, folder_token_limit(model_dir, args.model), args.model)
    if not has_trained_head([task], model_dir):
        raise ValueError(f"{args.task_sft} ships no classifier head and --model is not a saved classifier: the scores "
                         "would come from a randomly initialised head (is it a language SFT?)")
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    default_labels = None if args.data else len(nusax.LABELS)
    spec = resolve_classifier([task], model_dir, pooling=args.pooling,
                              num_labels=args.num_labels if args.num_labels is not None else
                              (None if task.info.get("num_labels") else default_labels))
    print(f"classifier: {spec.describe()}")
    class_order = None if args.data else nusax_class_order(spec)
    model = build_from_spec(model_dir, spec, args.seed)
    name_base_model(model, args.model)
    check_base_models(model, [task, *lang_sfts.values()], [args.task_sft, *lang_specs.values()], args.no_base_check)
    source = args.source or (UNNAMED_SOURCE if args.data else NUSAX_SOURCE)
    seed, seed_line = row_seed(task, lang_sfts, args.seed)
    print(seed_line)
    if args.data:
        cells = _data_cells(args, tokenizer, task, lang_sfts, spec)
        context = RowContext(str(args.data), "zero-shot", source, seed=seed, split=args.split or DEFAULT_SPLIT)
    else:
        cells = _nusax_cells(args, tokenizer, task, lang_sfts, data_dir, languages, class_order)
        context = RowContext("nusax", "zero-shot", source, seed=seed)
    names = class_names(args, spec) if args.data else class_order
    rows = _score(args, model.to(device), tokenizer, cells, context, spec.num_labels, names)
    if not rows:
        raise ValueError("no language with a test split was evaluated")
    summary = summarize(rows, exclude_from_average=[] if source == UNNAMED_SOURCE else [source])
    print(markdown_tables(summary, "macro_f1"))
    if args.output:
        write_csv(rows, Path(args.output) / "evaluate.csv")
        (Path(args.output) / "evaluate.md").write_text(
            markdown_tables(summary, "macro_f1") + "\n" + markdown_tables(summary, "accuracy")
        )
        print(f"written {args.output}/evaluate.csv and evaluate.md")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task-sft", type=path_text, required=True,
                        help="task SFT (with its classifier head): file, folder or Hub id of any supported format")
    parser.add_argument("--lang-sft", action="append", metavar="LANGUAGE=SFT",
                        help="language SFT per language (repeatable): file, folder or Hub id")
    parser.add_argument("--languages", nargs="+",
                        help="NusaX languages to evaluate (default: every folder; not with --data)")
    add_model_arguments(parser)
    parser.add_argument("--data-dir", type=path_text,
                        help="NusaX data root (default: $DEFTX_DATA_DIR or ../shared/data; not with --data)")
    data = parser.add_argument_group("any labelled data set (instead of NusaX)")
    data.add_argument("--data", type=path_text,
                      help="a local .csv/.tsv/.json/.jsonl/.parquet file, a folder, or a Hub data set name")
    data.add_argument("--data-config", help="configuration of a Hub data set")
    data.add_argument("--split", help=f"split of a folder or Hub data set (default {DEFAULT_SPLIT})")
    data.add_argument("--text-column", default="text", help="text column (default text)")
    data.add_argument("--pair-column", help="second-segment column (e.g. an NLI hypothesis)")
    data.add_argument("--label-column", default="label",
                      help="label column: names matching the SFT's labels, or class ids (default label; with "
                           "--label-ids when the classifier names its classes)")
    data.add_argument("--label-names", metavar="NAME,NAME,...",
                      help="the classifier's labels in class-id order, comma-separated: needed when the labels "
                           "are names and the task SFT records none (refused when it records others)")
    data.add_argument("--label-ids", action="store_true",
                      help="the label column's integers are the classifier's class ids: needed when the classifier "
                           "names its classes and the labels are integers (their order is not known otherwise)")
    data.add_argument("--target", help="name of the data's language in the table (default: --lang-sft's or the file)")
    parser.add_argument("--scale", type=language_sft_scale,
                        help="language SFT scale > 0 (default 1.0; needs --lang-sft)")
    parser.add_argument(
        "--source",
        help=f"the task SFT's source language, named in the table and left out of the average (default: "
             f"{NUSAX_SOURCE} on NusaX; with --data, none: the table says '{UNNAMED_SOURCE}')",
    )
    parser.add_argument("--name", default="sft", help="method name in the table (default sft)")
    parser.add_argument("--max-length", type=positive_int,
                        help=f"tokens kept of each text (default {DEFAULT_MAX_LENGTH}, or the model's limit when "
                             "lower; more than the model's limit is an error)")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="evaluation batch (default 64)")
    parser.add_argument(
        "--device", metavar=DEVICE_METAVAR, default="auto",
        help="where the classifier runs: cpu, cuda, or auto (the default): cuda when available. Asking for cuda "
             "where there is none is an error before anything is loaded",
    )
    parser.add_argument("--output", type=path_text,
                        help="folder for evaluate.csv / evaluate.md (refused when it holds them)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the evaluate.csv / evaluate.md an --output folder already holds")
