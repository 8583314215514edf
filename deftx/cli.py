"""The ``deftx`` command line: one subcommand per module of :mod:`deftx.commands`.

Each module there defines ``register(subparsers)``, adding its parser and setting
``func`` (called with the parsed arguments, returning an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

import deftx
import deftx.commands


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every discovered subcommand."""
    parser = argparse.ArgumentParser(
        prog="deftx",
        description=(
            "Denoised sparse fine-tuning (DeFT-X) and LT-SFT for zero-shot cross-lingual transfer: "
            "train language and task sparse fine-tunings, compose them, evaluate; benchmark and "
            "profile the accelerated ops."
        ),
    )
    parser.add_argument("--version", action="version", version=f"deftx {deftx.__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(deftx.commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"deftx.commands.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``deftx`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
