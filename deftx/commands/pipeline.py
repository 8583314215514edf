"""``deftx pipeline CONFIG``: language SFTs, task SFTs, baseline and zero-shot tables from one file."""

from __future__ import annotations

import argparse

from deftx.commands._common import (
    add_config_arguments,
    add_heldout_argument,
    command_line,
    load_pipeline_config,
    path_text,
    seed_int,
)

NAME = "pipeline"
SUMMARY = "train language + task SFTs (LT-SFT, DeFT-X) and a full fine-tuning baseline, evaluate zero-shot"
DESCRIPTION = """\
Run every step of a pipeline config: MLM head warm-up, language SFTs (masked LM on each language's
NusaX MT train+valid text), task SFTs on the source language(s) on top of the source language SFT,
the full fine-tuning baseline, and zero-shot NusaX (and optionally AmericasNLI) evaluation. Every
step checkpoints and records what its results depend on; running the same command again resumes, a
changed config is refused naming what changed (--overwrite retrains the changed steps). When
language_text_splits leaves an MT split out ([train]), each seed's language SFTs are then scored on
that text, which neither they nor the MLM head saw (as `deftx heldout-mlm`; --no-heldout skips it);
likewise the AmericasNLI language SFTs on AmericasNLP 2021 dev when americasnlp_text_splits is [train].
Prints the macro-F1 table and writes results.md/.csv/.png under results_dir (default: output_dir).
"""


def run(args: argparse.Namespace) -> int:
    from deftx.pipeline.run import run_pipeline

    config = load_pipeline_config(args)
    if args.dry_run:
        from deftx.pipeline.plan import plan_lines

        print("\n".join(plan_lines(config, heldout=not args.no_heldout, overwrite=args.overwrite)))
        return 0
    log = (lambda _: None) if args.quiet else print
    table = run_pipeline(config, log=log, command=command_line(), overwrite=args.overwrite,
                         heldout=not args.no_heldout)
    print(table)
    print(f"results: {config.results_dir or config.output_dir}/results.md (CSVs and plot beside it)")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--seeds", type=seed_int, nargs="+", help="override the config's seeds")
    parser.add_argument(
        "--results-dir", type=path_text,
        help="override the config's results_dir. A run of some --seeds into a folder that holds other seeds of "
             "the same recipe adds its seeds to that folder's tables (another recipe's are refused, naming what "
             "changed; --overwrite drops them); one folder per subset of seeds also works: deftx paired merges them",
    )
    parser.add_argument("--quiet", action="store_true", help="print only the final table")
    add_heldout_argument(parser, "seed")
    parser.add_argument(
        "--dry-run", action="store_true",
        help="print the plan (model, data, effective TrainingArguments, every step with its folder and what the "
             "run will do with it: reuse it (done), train it (to run), or refuse results of other settings, naming "
             "what changed (retrain them with --overwrite), by the identity check the run makes) and exit without "
             "training",
    )
