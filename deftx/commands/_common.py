"""Helpers shared by the training / evaluation subcommands (no subcommand of its own)."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable

USER_ERRORS = (FileNotFoundError, ValueError, KeyError)


def command_line() -> str:
    """The command as typed (for the results files)."""
    return "deftx " + " ".join(shlex.quote(arg) for arg in sys.argv[1:])


def guarded(name: str, run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn bad input (missing files, bad config values) into one clear line and exit code 2."""

    def wrapper(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except USER_ERRORS as err:
            message = err.args[0] if isinstance(err, KeyError) and err.args else err
            print(f"deftx {name}: error: {message}", file=sys.stderr)
            return 2

    return wrapper


def load_pipeline_config(args: argparse.Namespace):
    """The config file of ``args.config`` with the command-line overrides applied."""
    from dataclasses import replace

    from deftx.eval.config import load_config

    config = load_config(args.config)
    if getattr(args, "output_dir", None):
        config = replace(config, output_dir=args.output_dir)
    if getattr(args, "data_dir", None):
        config = replace(config, data_dir=args.data_dir)
    if getattr(args, "seeds", None):
        config = replace(config, seeds=tuple(args.seeds))
    return config


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="pipeline config file (YAML or JSON; see configs/default.yaml)")
    parser.add_argument("--output-dir", help="override the config's output_dir")
    parser.add_argument("--data-dir", help="override the data root (default: $DEFTX_DATA_DIR or ../shared/data)")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model, --pooling, --num-labels, --seed: the classifier an SFT is applied to."""
    parser.add_argument(
        "--model", default="e5-small",
        help="base model: 'e5-small', a save_pretrained folder of any AutoModelFor... class, or a Hugging Face "
             "Hub model id (through the Hub cache; offline once cached)",
    )
    parser.add_argument(
        "--pooling", choices=("mean", "cls"),
        help="override the classifier: mean (deftx's mean-pooled BERT classifier) or cls (the model's own "
             "AutoModelForSequenceClassification head); default: what the SFT's metadata records, else the "
             "model folder's classifier, else mean",
    )
    parser.add_argument(
        "--num-labels", type=int,
        help="override the number of classifier outputs (default: the SFT's metadata, else the shipped head's "
             "shape, else 3)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of a new head's init where none is shipped")


def name_base_model(model, name: str) -> None:
    """Give a model loaded by Hub id that id as its base-model name (SFTs record the id, not a cache path)."""
    from pathlib import Path

    if name not in ("e5-small", "multilingual-e5-small") and not Path(name).expanduser().is_dir():
        model.config.deftx_base_model = name
