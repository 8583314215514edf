"""``deftx doctor``: versions (python, torch, triton, transformers, datasets, accelerate, peft, safetensors),
devices, and which backend each op uses here (triton / native / torch) and why."""

from __future__ import annotations

import argparse

NAME = "doctor"
SUMMARY = "report versions and which backend each op uses, and why"
DESCRIPTION = "Report versions, devices, and the backend ('auto') picks for each op and device, with the reason."
GUARDED = False


def run(args: argparse.Namespace) -> int:
    from deftx.info import report

    print(report())
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No arguments."""
