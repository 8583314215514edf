"""``deftx gpu-check``: the prepared GPU check (:mod:`deftx.gpucheck`)."""

from __future__ import annotations

import argparse
import sys


def run(args: argparse.Namespace) -> int:
    from deftx.gpucheck.cli import run as run_check

    return run_check(args, sys.argv[2:])


def register(subparsers: argparse._SubParsersAction) -> None:
    from deftx.gpucheck.cli import DESCRIPTION, add_arguments

    parser = subparsers.add_parser(
        "gpu-check",
        help="the prepared check for a GPU machine: install, versions, CUDA tests, benchmarks, ncu, sanitizer",
        description=DESCRIPTION,
        epilog="stages, budgets and examples: python -m deftx.gpucheck --help",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(func=run)
