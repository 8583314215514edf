"""``deftx train-lang CONFIG --language L``: one language SFT (every method of the config)."""

from __future__ import annotations

import argparse

from deftx.commands._common import add_config_arguments, add_seed_argument, load_pipeline_config

NAME = "train-lang"
SUMMARY = "train a language SFT (masked LM; LT-SFT and DeFT-X branches from one phase 1)"
DESCRIPTION = """\
Train (or resume) the language SFT of one language with the config's language_sft, mlm_head,
training and methods sections: masked LM on the language's NusaX MT text of the config's
language_text_splits (default train+valid; or, with --americasnlp, AmericasNLP 2021 text of the
config's americasnlp_text_splits, default train+dev). Output:
<output_dir>/seed-<s>/lang/<language>/<method>/sft.safetensors (seed-<s>/anli/lang/... with
--americasnlp), where `deftx pipeline` looks for it.
"""


def run(args: argparse.Namespace) -> int:
    from deftx.pipeline.head import americasnlp_texts, ensure_head, language_texts
    from deftx.pipeline.layout import branch_file
    from deftx.pipeline.steps import language_sfts
    from deftx.pipeline.workspace import Workspace

    ws = Workspace.open(load_pipeline_config(args))
    ws.overwrite = args.overwrite
    texts = americasnlp_texts(ws, args.language) if args.americasnlp else language_texts(ws, args.language)
    work = ws.layout(args.seed).language(args.language, americasnlp=args.americasnlp)
    diffs = language_sfts(ws, args.language, texts, args.seed, ensure_head(ws), work)
    for method in diffs:
        print(f"{method}: {branch_file(work, method)} ({diffs[method].nnz} entries)")
    for row in ws.selections:
        print(f"  {row['method']}: {row['group']}: {row['selected']} of K={row['k']} ({100 * row['share_of_k']:.1f}%)")
    for row in ws.overlaps:
        print(f"  overlap {row['pair']} {row['group']}: jaccard {row['jaccard']:.3f}")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument(
        "--language",
        required=True,
        help="NusaX language folder name (e.g. madurese) or, with --americasnlp, an AmericasNLI code (e.g. aym)",
    )
    parser.add_argument("--americasnlp", action="store_true", help="train on AmericasNLP 2021 text")
    add_seed_argument(parser)
