"""``deftx compose``: base model + SFTs (added with one fused scatter) -> a save_pretrained folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from deftx.commands._common import (
    add_model_arguments,
    check_base_models,
    composed_sft_scale,
    name_base_model,
    path_text,
)

NAME = "compose"
SUMMARY = "add SFTs onto a base model (fused scatter) and save the composed classifier"
DESCRIPTION = """\
Load the base model as the sequence classifier the task SFT was trained in (architecture, pooling
and labels read from the SFT's metadata; see --pooling), add the given SFTs (e.g. a task SFT and a
target language SFT; dense tensors such as the classifier head replace the model's), optionally save
the result as a save_pretrained folder, then revert and check that the base is restored bit for bit.
A folder of deftx's mean-pooled classifier (e5) loads with
deftx.models.classifier.BertMeanPoolClassifier.from_pretrained, which the command prints.
"""


def check_output_folder(folder: Path, overwrite: bool) -> None:
    """ValueError, before any work, for an --output that is a file, or a folder that already holds
    files (a save into it would leave old files, shards say, beside the new ones) unless ``overwrite``."""
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--output {folder} is a file; it must be a folder (the composed model is saved into it)")
    if not overwrite and folder.is_dir() and any(folder.iterdir()):
        raise ValueError(f"--output {folder} already holds files; choose an empty or new folder, or pass --overwrite "
                         "to save into it (files of the same names are replaced, others stay)")


def loading_note(model_class: type, folder: str) -> str:
    """How to load the written folder as the model that was composed: deftx's own classifier classes
    are not in transformers' Auto registry (its AutoModelForSequenceClassification would build
    another architecture, with a random pooler, from the same weights)."""
    if model_class.__module__.startswith("deftx."):
        return (f"load it with {model_class.__module__}.{model_class.__name__}.from_pretrained({folder!r}) "
                "(transformers' AutoModelForSequenceClassification would add a random pooler)")
    return f"load it with transformers.{model_class.__name__}.from_pretrained({folder!r})"


def run(args: argparse.Namespace) -> int:
    import torch

    from deftx.pipeline.workspace import resolve_model
    from deftx.sft import apply_diffs
    from deftx.sft.sources import open_sft
    from deftx.train.architecture import build_from_spec, resolve_classifier

    scales = args.scale or [1.0] * len(args.sft)
    if len(scales) != len(args.sft):
        raise ValueError(f"{len(args.sft)} --sft files but {len(scales)} --scale values")
    if args.output:
        check_output_folder(Path(args.output), args.overwrite)
    model_dir = resolve_model(args.model)
    diffs = [open_sft(spec) for spec in args.sft]
    spec = resolve_classifier(diffs, model_dir, pooling=args.pooling, num_labels=args.num_labels)
    print(f"classifier: {spec.describe()}")
    model = build_from_spec(model_dir, spec, args.seed)
    name_base_model(model, args.model)
    check_base_models(model, diffs, args.sft, args.no_base_check)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    handle = apply_diffs(model, diffs, scales, check_base=not args.no_base_check)
    for path, diff, scale in zip(args.sft, diffs, scales, strict=True):
        print(f"applied {path}: {diff.method}, {diff.nnz} entries, dense {sorted(diff.dense)}, scale {scale}")
    if args.output:
        from transformers import AutoTokenizer

        model.save_pretrained(args.output)
        AutoTokenizer.from_pretrained(str(model_dir)).save_pretrained(args.output)
        print(f"composed model written to {args.output}")
        print(loading_note(type(model), args.output))
    handle.revert()
    exact = all(torch.equal(p.detach(), before[name]) for name, p in model.named_parameters())
    print(f"revert restores the base bit-exactly: {exact}")
    return 0 if exact else 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument(
        "--sft", action="append", type=path_text, required=True,
        help="SFT (repeatable, applied together): a .safetensors file, a Hub-style folder, a composable-sft "
             "pytorch_diff.bin or folder, a peft SHiRA adapter folder, or a Hub repository id of any of those",
    )
    parser.add_argument("--scale", action="append", type=composed_sft_scale,
                        help="scale > 0 per --sft (default 1.0 each)")
    parser.add_argument("--output", type=path_text,
                        help="new or empty folder to write the composed model + tokenizer to")
    parser.add_argument("--overwrite", action="store_true",
                        help="save into an --output folder that already holds files (same names are replaced)")
