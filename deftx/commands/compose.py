"""``deftx compose``: base model + SFTs (added with one fused scatter) -> a save_pretrained folder."""

from __future__ import annotations

import argparse

from deftx.commands._common import finite_float, guarded, positive_int, seed_int


def run(args: argparse.Namespace) -> int:
    import torch

    from deftx.eval.pipeline import resolve_model
    from deftx.sft import SparseDiff, apply_diffs
    from deftx.train.task import build_classifier

    scales = args.scale or [1.0] * len(args.sft)
    if len(scales) != len(args.sft):
        raise ValueError(f"{len(args.sft)} --sft files but {len(scales)} --scale values")
    model_dir = resolve_model(args.model)
    diffs = [SparseDiff.load(path) for path in args.sft]
    model = build_classifier(model_dir, args.num_labels, args.seed, args.pooling)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    handle = apply_diffs(model, diffs, scales)
    for path, diff, scale in zip(args.sft, diffs, scales, strict=True):
        print(f"applied {path}: {diff.method}, {diff.nnz} entries, dense {sorted(diff.dense)}, scale {scale}")
    if args.output:
        from transformers import AutoTokenizer

        model.save_pretrained(args.output)
        AutoTokenizer.from_pretrained(str(model_dir)).save_pretrained(args.output)
        print(f"composed model written to {args.output}")
    handle.revert()
    exact = all(torch.equal(p.detach(), before[name]) for name, p in model.named_parameters())
    print(f"revert restores the base bit-exactly: {exact}")
    return 0 if exact else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compose",
        help="add SFTs onto a base model (fused scatter) and save the composed classifier",
        description=(
            "Load the base model as a sequence classifier, add the given SFTs (e.g. a task SFT and a "
            "target language SFT; dense tensors such as the classifier head replace the model's), "
            "optionally save the result as a save_pretrained folder, then revert and check that the "
            "base is restored bit for bit."
        ),
    )
    parser.add_argument("--model", default="e5-small", help="'e5-small' or a save_pretrained folder")
    parser.add_argument(
        "--pooling",
        choices=("mean", "cls"),
        default="mean",
        help="classifier the task SFT was trained with (default mean)",
    )
    parser.add_argument("--sft", action="append", required=True, help="SFT file (repeatable, applied together)")
    parser.add_argument("--scale", action="append", type=finite_float, help="scale per --sft (default 1.0 each)")
    parser.add_argument("--num-labels", type=positive_int, default=3, help="classifier outputs (default 3)")
    parser.add_argument("--seed", type=seed_int, default=0, help="seed of the (replaced) new head's init")
    parser.add_argument("--output", help="folder to write the composed model + tokenizer to")
    parser.set_defaults(func=guarded("compose", run))
