"""``deftx evaluate``: zero-shot scores of a task SFT composed with language SFTs (NusaX, or any data set)."""

from __future__ import annotations

import argparse
from pathlib import Path

from deftx.commands._common import add_model_arguments, finite_float, guarded, name_base_model, positive_int


def _language_sfts(specs: list[str]) -> dict[str, str]:
    sfts = {}
    for spec in specs:
        language, sep, source = spec.partition("=")
        if not sep or not language or not source:
            raise ValueError(f"--lang-sft expects LANGUAGE=PATH (a file, folder or Hub id), got {spec!r}")
        sfts[language] = source
    return sfts


def _nusax_data_dir(args: argparse.Namespace) -> Path:
    """The NusaX data root of ``--data-dir`` (else the default), which must exist."""
    from deftx.data import default_data_dir

    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    if not data_dir.is_dir():
        raise FileNotFoundError(f"--data-dir {data_dir} does not exist")
    return data_dir


def _nusax_rows(args, model, tokenizer, task, lang_sfts, num_labels: int, data_dir: Path) -> list[dict]:
    from deftx.data import nusax
    from deftx.eval.zero_shot import EvalRow, nusax_test_examples, score_composed

    rows = []
    for language in args.languages or nusax.sentiment_languages(data_dir):
        examples = nusax_test_examples(data_dir, language, tokenizer, args.max_length)
        if examples is None:
            print(f"{language}: no test split under {data_dir} — skipped")
            continue
        diffs, scales = [task], [1.0]
        if language in lang_sfts:
            diffs.append(lang_sfts[language])
            scales.append(args.scale)
        f1, acc = score_composed(model, tokenizer, examples, diffs, scales, num_labels, batch_size=args.batch_size)
        rows.append(EvalRow("nusax", "zero-shot", args.name, args.source, language, 0, f1, acc, len(examples),
                            language in lang_sfts).as_dict())
        print(f"{language}: macro-F1 {100 * f1:.1f} accuracy {100 * acc:.1f} "
              f"({'with' if language in lang_sfts else 'without'} language SFT)")
    return rows


def _data_rows(args, model, tokenizer, task, lang_sfts, spec) -> list[dict]:
    from deftx.data.generic import load_classification
    from deftx.eval.zero_shot import EvalRow, score_composed
    from deftx.train.task import classification_examples

    data = load_classification(args.data, text_column=args.text_column, label_column=args.label_column,
                               pair_column=args.pair_column, split=args.split, config=args.data_config)
    ids = data.label_ids(spec.labels)
    if max(ids) >= spec.num_labels:
        raise ValueError(f"the data has {len(data.label_names)} labels, the classifier {spec.num_labels}")
    examples = classification_examples(tokenizer, data.texts, ids, args.max_length, pairs=data.pairs)
    target = next(iter(lang_sfts), None) or args.target or Path(str(args.data)).stem
    diffs, scales = [task], [1.0]
    if lang_sfts:
        diffs.append(next(iter(lang_sfts.values())))
        scales.append(args.scale)
    f1, acc = score_composed(model, tokenizer, examples, diffs, scales, spec.num_labels, batch_size=args.batch_size)
    print(f"{target}: macro-F1 {100 * f1:.1f} accuracy {100 * acc:.1f} on {len(examples)} examples "
          f"({'with' if lang_sfts else 'without'} language SFT)")
    return [EvalRow(str(args.data), args.split, args.name, args.source, target, 0, f1, acc, len(examples),
                    bool(lang_sfts), args.split).as_dict()]


def run(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    from deftx.data import nusax
    from deftx.eval.pipeline import resolve_model
    from deftx.eval.report import markdown_tables, summarize, write_csv
    from deftx.sft.sources import open_sft
    from deftx.train.architecture import build_from_spec, resolve_classifier

    lang_specs = _language_sfts(args.lang_sft or [])
    if args.data and len(lang_specs) > 1:
        raise ValueError("with --data, give at most one --lang-sft (the data's language)")
    data_dir = None if args.data else _nusax_data_dir(args)
    task = open_sft(args.task_sft)
    lang_sfts = {language: open_sft(source) for language, source in lang_specs.items()}
    model_dir = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    default_labels = None if args.data else len(nusax.LABELS)
    spec = resolve_classifier([task], model_dir, pooling=args.pooling,
                              num_labels=args.num_labels if args.num_labels is not None else
                              (None if task.info.get("num_labels") else default_labels))
    print(f"classifier: {spec.describe()}")
    model = build_from_spec(model_dir, spec, args.seed)
    name_base_model(model, args.model)
    if args.data:
        rows = _data_rows(args, model, tokenizer, task, lang_sfts, spec)
    else:
        rows = _nusax_rows(args, model, tokenizer, task, lang_sfts, spec.num_labels, data_dir)
    if not rows:
        raise ValueError("no language with a test split was evaluated")
    summary = summarize(rows, exclude_from_average=[args.source])
    print(markdown_tables(summary, "macro_f1"))
    if args.output:
        write_csv(rows, Path(args.output) / "evaluate.csv")
        (Path(args.output) / "evaluate.md").write_text(
            markdown_tables(summary, "macro_f1") + "\n" + markdown_tables(summary, "accuracy")
        )
        print(f"written {args.output}/evaluate.csv and evaluate.md")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="zero-shot macro-F1/accuracy of a task SFT + language SFTs (NusaX, or any data set with --data)",
        description=(
            "Evaluate a task SFT, composed with a language SFT where given, on a test set. By default: the NusaX "
            "sentiment test split of every language found under the data root (or --languages), each with its "
            "own --lang-sft; languages without a test file are skipped and reported. With --data: one labelled "
            "data set (a local CSV/TSV/JSON/parquet file or a Hub data set name, read with `datasets`). The "
            "classifier (architecture, pooling, labels) is read from the task SFT's metadata."
        ),
    )
    parser.add_argument("--task-sft", required=True,
                        help="task SFT (with its classifier head): file, folder or Hub id of any supported format")
    parser.add_argument("--lang-sft", action="append", metavar="LANGUAGE=SFT",
                        help="language SFT per language (repeatable): file, folder or Hub id")
    parser.add_argument("--languages", nargs="+", help="NusaX languages to evaluate (default: every folder)")
    add_model_arguments(parser)
    parser.add_argument("--data-dir", help="NusaX data root (default: $DEFTX_DATA_DIR or ../shared/data)")
    data = parser.add_argument_group("any labelled data set (instead of NusaX)")
    data.add_argument("--data", help="a local .csv/.tsv/.json/.jsonl/.parquet file, a folder, or a Hub data set name")
    data.add_argument("--data-config", help="configuration of a Hub data set")
    data.add_argument("--split", default="test", help="split of a folder or Hub data set (default test)")
    data.add_argument("--text-column", default="text", help="text column (default text)")
    data.add_argument("--pair-column", help="second-segment column (e.g. an NLI hypothesis)")
    data.add_argument("--label-column", default="label",
                      help="label column: names matching the SFT's labels, or class ids (default label)")
    data.add_argument("--target", help="name of the data's language in the table (default: --lang-sft's or the file)")
    parser.add_argument("--scale", type=finite_float, default=1.0, help="language SFT scale (default 1.0)")
    parser.add_argument("--source", default="indonesian", help="source language (left out of the average)")
    parser.add_argument("--name", default="sft", help="method name in the table")
    parser.add_argument("--max-length", type=positive_int, default=128, help="token limit (default 128)")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="evaluation batch (default 64)")
    parser.add_argument("--output", help="folder for evaluate.csv / evaluate.md")
    parser.set_defaults(func=guarded("evaluate", run))
