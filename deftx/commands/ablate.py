"""``deftx ablate CONFIG``: variants of a pipeline config × seeds on NusaX valid splits, one CSV."""

from __future__ import annotations

import argparse

from deftx.commands._common import add_heldout_argument, command_line, path_text, seed_int

NAME = "ablate"
SUMMARY = "variants of a pipeline config x seeds on NusaX valid splits (shared phase 1), one CSV + summary"
FORMATTER = argparse.RawDescriptionHelpFormatter
DESCRIPTION = """\
Run an ablation: every variant of a base pipeline config, for every seed, trained and scored
zero-shot on the NusaX *valid* splits (the test splits are never scored here: they are for the
final run of the chosen recipe, with `deftx pipeline`). The config file holds

  base: a pipeline config (path or inline mapping; see configs/default.yaml)
  base_overrides: {overrides}     optional, applied to the base before every variant
                                  (a second stage that starts from the first's winner)
  variants: {name: {overrides}}   dotted (language_sft.full.l1: 0) or nested keys,
                                  validated like a pipeline config (unknown keys are errors)
  seeds: [0, 1, 2]                (default)
  output_dir: runs/...            runs and the shared steps (large)
  results_dir: results/...        ablation.csv, summary.csv, results.md, results.png

Phase 1 of every language and task SFT (and their branches, and the full fine-tuning
baseline) is keyed by a hash of what it depends on and hard-linked into every variant that
needs an equal one, so variants that change only K, the selection, the sparse phase, the
composition scale (language_scale: [0.5, 1.0] scores both, no retraining) or the task recipe
reuse the language SFTs' phase 1. Each (variant, seed, source, target, method, scale) row is
appended to ablation.csv once; running the same command again resumes and adds only what is
missing (rows of a variant whose settings changed are refused, naming the change; --overwrite
drops them and runs the variant again; variants.json beside the rows records each variant's
settings, so the change is named even where the runs are not); invocations.jsonl and results.md
keep every finished invocation's command and wall time. One progress line per variant x seed.
Each variant's language SFTs are also scored on the NusaX MT text they did not train on (valid,
as language_text_splits is [train] here): the masked-LM loss of θ0 and θ0 + s·φ, as `deftx
heldout-mlm` prints it, into heldout.csv and a results.md table per variant (--no-heldout skips
it; a variant x seed already in ablation.csv whose SFTs are on disk gets its missing rows).
Example: configs/ablation-nusax-e5-small.yaml (stage 1) and
configs/ablation-nusax-e5-small-language.yaml (stage 2).
"""


def run(args: argparse.Namespace) -> int:
    from deftx.pipeline.ablation import chosen_variants, load_ablation, plan_lines, run_ablation

    ablation = load_ablation(args.config, output_dir=args.output_dir, results_dir=args.results_dir,
                             seeds=args.seeds, data_dir=args.data_dir, device=args.device)
    chosen_variants(ablation, args.variants)
    for line in plan_lines(ablation):
        print(line)
    if args.dry_run:
        return 0
    log = (lambda _: None) if args.quiet else print
    table = run_ablation(ablation, log=log, progress=print, command=command_line(), only=args.variants,
                         overwrite=args.overwrite, heldout=not args.no_heldout)
    print(table)
    print(f"results: {ablation.results_dir}/results.md (ablation.csv, summary.csv, results.png beside it)")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=path_text,
                        help="ablation config (YAML or JSON), e.g. configs/ablation-nusax-e5-small.yaml")
    parser.add_argument("--output-dir", type=path_text, help="override the ablation's output_dir")
    parser.add_argument("--results-dir", type=path_text, help="override the ablation's results_dir")
    parser.add_argument("--data-dir", type=path_text, help="override the data root of every variant")
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"),
                        help="override every variant's device (cuda where there is none is an error before any work)")
    parser.add_argument("--seeds", type=seed_int, nargs="+", help="override the ablation's seeds")
    parser.add_argument("--variants", nargs="+", metavar="NAME",
                        help="run only these variants (the summary still covers every variant's rows; another "
                             "variant's stale rows are named, kept, and left out of the tables)")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate the config and print the plan (variants, which share phase 1), run nothing")
    parser.add_argument("--quiet", action="store_true", help="print only the progress lines and the final table")
    add_heldout_argument(parser, "variant")
    parser.add_argument("--overwrite", action="store_true",
                        help="drop the rows of the variants it runs whose settings changed and run them again, "
                             "and retrain steps whose folder holds results of another identity (default: refuse, "
                             "naming what changed)")
