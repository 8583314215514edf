"""``deftx gpu-check``: the prepared GPU check (:mod:`deftx.gpucheck`)."""

from __future__ import annotations

import argparse
import sys

from deftx.gpucheck import cli as gpucheck_cli

NAME = "gpu-check"
SUMMARY = "the prepared check for a GPU machine: install, versions, CUDA tests, benchmarks, ncu, sanitizer"
DESCRIPTION = gpucheck_cli.DESCRIPTION
EPILOG = (
    "stages, budgets and examples: python -m deftx.gpucheck --help\n\n"
    "exit status: 0 when every stage that ran is ok, 1 otherwise, 2 on a usage error (before any stage runs)."
)
FORMATTER = argparse.RawDescriptionHelpFormatter
GUARDED = False


def run(args: argparse.Namespace) -> int:
    return gpucheck_cli.run(args, sys.argv[2:])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    gpucheck_cli.add_arguments(parser)
