"""``deftx heldout-mlm CONFIG``: do a run's language SFTs predict unseen text of their language better than θ0?"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from deftx.commands._common import (
    add_config_arguments,
    add_overwrite_output_argument,
    load_pipeline_config,
    output_refusal,
    path_argument,
    seed_int,
    sft_scale,
)
from deftx.eval.report import write_csv

NAME = "heldout-mlm"
SUMMARY = "masked-LM loss of θ0 and θ0 + language SFT on held-out text of each language (did it learn the language?)"
DESCRIPTION = """\
For the NusaX language SFTs that `deftx pipeline` or `deftx train-lang` trained under the config's
output_dir (or, with --variant, that `deftx ablate` trained for one variant of an ablation config),
or with --americasnlp its AmericasNLI language SFTs (`deftx train-lang --americasnlp`, the pipeline's
americasnli section): the masked-token cross-entropy (nats) and top-1 accuracy, through the run's MLM
head, of θ0 and of θ0 + s·φ_language for every method and scale, on the language's text of the splits
that neither the SFTs nor the head trained on: NusaX MT valid when language_text_splits is [train];
AmericasNLP 2021 dev (the AmericasNLI dev sentences) when americasnlp_text_splits is [train]. A test
split is never read. One set of masks (drawn from --mask-seed) scores every seed, method and scale,
so a row's change from θ0 is the SFT's; other mask seeds score other tokens of the same text, which
measures how much a result owes to the draw. A language SFT that lowers its training loss (deftx
losses) but not the held-out loss fit its sentences, not the language. The MLM head is the run's
(cached or shipped; warmed up if neither). `deftx pipeline` and `deftx ablate` run this check after
each seed themselves (heldout.csv); this command scores other seeds, languages or scales, or runs
made without it.
"""


def run(args: argparse.Namespace) -> int:
    from deftx.pipeline.config import check_distinct
    from deftx.pipeline.head import ensure_head
    from deftx.pipeline.heldout import (
        AMERICASNLP,
        CORPUS_NAMES,
        MASK_SEED,
        NUSAX,
        HeldoutScorer,
        check_languages,
        heldout_splits,
        language_sft_files,
        trained_languages,
    )
    from deftx.pipeline.workspace import Workspace

    if args.variant and args.americasnlp:
        raise ValueError("--variant and --americasnlp exclude each other: an ablation trains NusaX language SFTs only")
    check_csv(args.csv, args.overwrite)
    corpus = AMERICASNLP if args.americasnlp else NUSAX
    config = variant_config(args) if args.variant else load_pipeline_config(args)
    if args.languages:
        check_languages(config, args.languages, corpus)
    scales = check_distinct(args.scales, "--scales") if args.scales else None
    if not Path(config.output_dir).is_dir():
        raise FileNotFoundError(f"output_dir {config.output_dir} does not exist: nothing trained there to score")
    ws = Workspace.open(replace(config, results_dir=None), log=lambda line: print(line, file=sys.stderr), trainer=False)
    splits = heldout_splits(ws, corpus)
    plan = {(seed, language): language_sft_files(ws, seed, language, corpus) for seed in ws.config.seeds
            for language in (args.languages or trained_languages(ws.config, seed, corpus))}
    if not plan:
        flag = " --americasnlp" if args.americasnlp else ""
        raise FileNotFoundError(f"no {CORPUS_NAMES[corpus]} language SFT under {ws.output_dir} for seeds "
                                f"{list(ws.config.seeds)}; train them first (deftx pipeline or deftx train-lang{flag})")
    mask_seed = MASK_SEED if args.mask_seed is None else args.mask_seed
    scorer = HeldoutScorer(ws, ensure_head(ws), scales, mask_seed, corpus).prepare(
        dict.fromkeys(language for _, language in plan))
    print(f"held-out text: {CORPUS_NAMES[corpus]} {'+'.join(splits)}, masks of seed {mask_seed}; "
          "loss change = fall of the loss from θ0's (> 0: better)")
    print("| seed | language | method | scale | loss | loss change | accuracy | masked tokens |")
    print("|---:|---|---|---:|---:|---:|---:|---:|")
    records = []
    for (seed, language), sft_files in plan.items():
        for record in scorer.records(seed, language, sft_files):
            records.append(record)
            print(f"| {seed} | {language} | {record['method']} | {record['scale']:g} | {record['loss']:.4f} | "
                  f"{100 * record['loss_change']:+.2f}% | {record['accuracy']:.4f} | {record['masked_tokens']} |",
                  flush=True)
    if args.csv:
        write_csv(records, args.csv)
    return 0


def check_csv(csv: Path | None, overwrite: bool) -> None:
    """Refuse, before any work, a ``--csv`` that is a folder or an earlier run's file unless ``overwrite``, and
    ``--overwrite`` without ``--csv``.

    Raises:
        ValueError: naming the file.
    """
    if csv is None:
        if overwrite:
            raise ValueError("--overwrite replaces an earlier --csv file, and no --csv is given")
        return
    refusal = output_refusal("--csv", [csv], overwrite)
    if refusal is not None:
        raise ValueError(refusal)


def variant_config(args: argparse.Namespace):
    """The pipeline config of ``--variant`` of the ablation config ``args.config`` (its own run folder)."""
    from deftx.pipeline.ablation import load_ablation

    ablation = load_ablation(args.config, output_dir=args.output_dir, seeds=args.seeds, data_dir=args.data_dir,
                             device=args.device)
    if args.variant not in ablation.variants:
        raise ValueError(f"--variant {args.variant!r} is not a variant of {args.config} "
                         f"(its variants: {', '.join(ablation.variants)})")
    return ablation.variants[args.variant]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, overwrite=False)
    parser.add_argument("--variant", metavar="NAME",
                        help="CONFIG is an ablation config (deftx ablate): score this variant's language SFTs "
                             "(--output-dir then overrides the ablation's output_dir)")
    parser.add_argument("--seeds", type=seed_int, nargs="+", help="override the config's seeds")
    parser.add_argument("--americasnlp", action="store_true",
                        help="score the AmericasNLI language SFTs (AmericasNLP 2021 text, e.g. deftx train-lang "
                             "--americasnlp) on the AmericasNLP splits left out of americasnlp_text_splits")
    parser.add_argument("--languages", nargs="+",
                        help="NusaX languages (or, with --americasnlp, AmericasNLI codes) to score (default: every "
                             "language with a trained SFT of the seed)")
    parser.add_argument("--scales", type=sft_scale, nargs="+",
                        help="composition scales s > 0 (default: 1 and the config's language_scale; θ0, s = 0, is "
                             "always a row)")
    parser.add_argument("--mask-seed", type=seed_int,
                        help="seed of the held-out masks (default: the masks of deftx pipeline's heldout.csv, "
                             "seed 0); write one CSV per mask seed")
    parser.add_argument("--csv", type=path_argument,
                        help="also write the rows to this CSV file (an earlier run's is refused unless --overwrite)")
    add_overwrite_output_argument(parser, "--csv", "CSV file")
