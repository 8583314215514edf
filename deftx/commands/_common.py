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
