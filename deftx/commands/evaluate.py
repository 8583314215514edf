"""``deftx evaluate``: zero-shot NusaX scores of a task SFT composed with language SFTs."""

from __future__ import annotations

import argparse
from pathlib import Path

from deftx.commands._common import finite_float, guarded, positive_int


def _language_sfts(specs: list[str]) -> dict[str, Path]:
    sfts = {}
    for spec in specs:
        language, sep, path = spec.partition("=")
        if not sep or not language or not path:
            raise ValueError(f"--lang-sft expects LANGUAGE=PATH, got {spec!r}")
        if not Path(path).is_file():
            raise FileNotFoundError(f"--lang-sft {language}: {path} does not exist")
        sfts[language] = Path(path)
    return sfts


def run(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    from deftx.data import default_data_dir, nusax
    from deftx.eval.pipeline import resolve_model
    from deftx.eval.report import markdown_tables, summarize, write_csv
    from deftx.eval.zero_shot import EvalRow, nusax_test_examples, score_composed
    from deftx.sft import SparseDiff
    from deftx.train.task import build_classifier

    lang_paths = _language_sfts(args.lang_sft or [])
    task = SparseDiff.load(args.task_sft)
    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    if not data_dir.is_dir():
        raise FileNotFoundError(f"--data-dir {data_dir} does not exist")
    model_dir = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = build_classifier(model_dir, len(nusax.LABELS), 0, args.pooling)
    languages = args.languages or nusax.sentiment_languages(data_dir)
    rows = []
    for language in languages:
        examples = nusax_test_examples(data_dir, language, tokenizer, args.max_length)
        if examples is None:
            print(f"{language}: no test split under {data_dir} — skipped")
            continue
        diffs, scales = [task], [1.0]
        if language in lang_paths:
            diffs.append(SparseDiff.load(lang_paths[language]))
            scales.append(args.scale)
        f1, acc = score_composed(
            model, tokenizer, examples, diffs, scales, len(nusax.LABELS), batch_size=args.batch_size
        )
        rows.append(
            EvalRow(
                "nusax",
                "zero-shot",
                args.name,
                args.source,
                language,
                0,
                f1,
                acc,
                len(examples),
                language in lang_paths,
            ).as_dict()
        )
        print(
            f"{language}: macro-F1 {100 * f1:.1f} accuracy {100 * acc:.1f} "
            f"({'with' if language in lang_paths else 'without'} language SFT)"
        )
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
        help="zero-shot NusaX macro-F1/accuracy of a task SFT + target language SFTs",
        description=(
            "Evaluate a task SFT, composed per language with that language's SFT (if given), on the "
            "NusaX sentiment test split of every language found under the data root (or --languages); "
            "languages without a test file are skipped and reported."
        ),
    )
    parser.add_argument("--task-sft", required=True, help="task SFT file (with its classifier head)")
    parser.add_argument("--lang-sft", action="append", metavar="LANGUAGE=PATH", help="language SFT (repeatable)")
    parser.add_argument("--languages", nargs="+", help="languages to evaluate (default: every folder)")
    parser.add_argument("--model", default="e5-small", help="'e5-small' or a save_pretrained folder")
    parser.add_argument(
        "--pooling",
        choices=("mean", "cls"),
        default="mean",
        help="classifier the task SFT was trained with (default mean)",
    )
    parser.add_argument("--data-dir", help="data root (default: $DEFTX_DATA_DIR or ../shared/data)")
    parser.add_argument("--scale", type=finite_float, default=1.0, help="language SFT scale (default 1.0)")
    parser.add_argument("--source", default="indonesian", help="source language (left out of the average)")
    parser.add_argument("--name", default="sft", help="method name in the table")
    parser.add_argument("--max-length", type=positive_int, default=128, help="token limit (default 128)")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="evaluation batch (default 64)")
    parser.add_argument("--output", help="folder for evaluate.csv / evaluate.md")
    parser.set_defaults(func=guarded("evaluate", run))
