"""``deftx doctor``: versions (python, torch, triton, transformers, datasets, accelerate, peft, safetensors),
devices, and which backend each op uses here (triton / native / torch) and why."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from deftx.info import report

    print(report())
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="report versions and which backend each op uses, and why",
        description="Report versions, devices, and the backend ('auto') picks for each op and device, with the reason.",
    )
    parser.set_defaults(func=run)
