"""``deftx doctor``: versions (python, torch, triton, transformers, datasets, accelerate, peft, safetensors),
devices, and which backend each op uses here (triton / native / torch) and why."""

from __future__ import annotations

import argparse
import sys

NAME = "doctor"
SUMMARY = "report versions and which backend each op uses, and why"
DESCRIPTION = ("Report versions, devices, and the backend each op's calls run on each device ($DEFTX_BACKEND's, else "
               "the one 'auto' picks), with the reason.")
GUARDED = False
EPILOG = (
    "exit status: 0, or 1 when the report finds a setting that makes deftx's ops fail (an invalid "
    "$DEFTX_BACKEND): the report is printed all the same, the problem also as an error line on stderr."
)


def run(args: argparse.Namespace) -> int:
    from deftx.info import backend_override_problem, report

    print(report())
    problem = backend_override_problem()
    if problem is not None:
        print(f"deftx doctor: error: {problem}", file=sys.stderr)
        return 1
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No arguments."""
