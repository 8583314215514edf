"""``deftx train-task CONFIG --source L``: NusaX task SFTs on top of the source language SFT."""

from __future__ import annotations

import argparse

from deftx.commands._common import add_config_arguments, add_seed_argument, load_pipeline_config

NAME = "train-task"
SUMMARY = "train NusaX sentiment task SFTs on a source language (classifier head shipped in the SFT)"
DESCRIPTION = """\
Train (or resume) the task SFTs of one source language with the config's task_sft and methods
sections, on the source's NusaX sentiment train split. With task_on_source_sft (default) each
method's task SFT is trained on top of that method's source language SFT, which is trained first if
missing.
"""


def run(args: argparse.Namespace) -> int:
    from deftx.data import nusax
    from deftx.pipeline.head import ensure_head, language_texts
    from deftx.pipeline.layout import branch_file, task_run_name
    from deftx.pipeline.steps import language_sfts, nusax_train_examples, task_sfts
    from deftx.pipeline.workspace import Workspace

    ws = Workspace.open(load_pipeline_config(args))
    ws.overwrite = args.overwrite
    layout = ws.layout(args.seed)
    on_source = ws.config.task_on_source_sft
    source_sfts = None
    if on_source:
        source_sfts = language_sfts(ws, args.source, language_texts(ws, args.source), args.seed, ensure_head(ws),
                                    layout.language(args.source))
    examples = nusax_train_examples(ws, args.source)
    runs = layout.task(args.source)
    diffs = task_sfts(ws, args.source, examples, args.seed, len(nusax.LABELS), source_sfts, runs,
                      labels=nusax.LABELS)
    for method, diff in diffs.items():
        file = branch_file(runs / task_run_name(method, on_source), method)
        print(f"{method}: {file} ({diff.nnz} entries + head {sorted(diff.dense)})")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--source", required=True, help="source language folder name (e.g. indonesian, english)")
    add_seed_argument(parser)
