"""The ``deftx`` command line: one subcommand per module of :mod:`deftx.commands`.

Each module there (but ``_common``) declares the subcommand: ``NAME``, ``SUMMARY`` (its line in
``deftx --help``), ``DESCRIPTION``, ``add_arguments(parser)`` and ``run(args) -> exit code``; optionally
``EPILOG``, ``FORMATTER`` (an argparse help formatter class) and ``GUARDED``: the exception classes
:func:`deftx.commands._common.guarded` turns into one line and exit code 2 (default
:data:`~deftx.commands._common.USER_ERRORS`), or False to let every error propagate.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from collections.abc import Sequence
from types import ModuleType

import deftx
import deftx.commands
from deftx.commands._common import USER_ERRORS, guarded, parse_arguments, refuse_repeated_options


def command_modules() -> list[ModuleType]:
    """The subcommand modules of :mod:`deftx.commands`, by module name."""
    names = sorted(info.name for info in pkgutil.iter_modules(deftx.commands.__path__))
    return [importlib.import_module(f"deftx.commands.{name}") for name in names if not name.startswith("_")]


def add_command(subparsers: argparse._SubParsersAction, command: ModuleType) -> argparse.ArgumentParser:
    """The parser of the subcommand that module ``command`` declares (see the module docstring); a
    single-valued option given twice is a usage error (:func:`~deftx.commands._common.refuse_repeated_options`)."""
    parser = subparsers.add_parser(
        command.NAME, help=command.SUMMARY, description=command.DESCRIPTION, epilog=getattr(command, "EPILOG", None),
        formatter_class=getattr(command, "FORMATTER", argparse.HelpFormatter),
    )
    refuse_repeated_options(parser)
    command.add_arguments(parser)
    errors = getattr(command, "GUARDED", USER_ERRORS)
    parser.set_defaults(func=guarded(command.NAME, command.run, errors) if errors else command.run)
    return parser


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
    for command in command_modules():
        add_command(subparsers, command)
    return parser


def line_buffered_stdout() -> None:
    """Flush standard output at every line, also into a file or a pipe (``deftx ... > log``), so
    that the progress lines of long runs show as they happen (a stream that cannot, left as it is)."""
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(line_buffering=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``deftx`` console script."""
    line_buffered_stdout()
    parser = build_parser()
    args = parse_arguments(parser, argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:
        return reader_went_away()
    except KeyboardInterrupt:
        print("deftx: interrupted (Ctrl-C); files are written whole or not at all, and a pipeline or ablation "
              "continues where it stopped when run again", file=sys.stderr)
        return INTERRUPTED_STATUS


INTERRUPTED_STATUS = 130
"""Exit status after Ctrl-C: a shell's 128 + SIGINT, with one line instead of a traceback."""


BROKEN_PIPE_STATUS = 141
"""Exit status when the reader of standard output went away (``deftx doctor | head``): a shell's 128 + SIGPIPE."""


def reader_went_away() -> int:
    """Stop quietly when standard output's reader has gone: point it at /dev/null so that the
    interpreter's final flush raises nothing, and return :data:`BROKEN_PIPE_STATUS`."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return BROKEN_PIPE_STATUS


if __name__ == "__main__":
    sys.exit(main())
