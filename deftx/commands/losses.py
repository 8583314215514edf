"""``deftx losses``: did each training phase train? The loss trend of every run log below some folders."""

from __future__ import annotations

import argparse

from deftx.commands._common import path_argument, positive_int

NAME = "losses"
SUMMARY = "the training-loss trend of every phase of every run below some folders"
DESCRIPTION = """\
For every log.jsonl below the folders (a SparseFineTuner work_dir, a pipeline's output_dir or a
results folder's logs/), each training phase: the mean logged loss over its first and its last
WINDOW steps and the fraction it fell. A phase whose loss fell by less than 5% (or rose) is
marked "hardly trained", one that logged NaN or Inf "non-finite". Windows, not single points:
with group_by_length the logged loss climbs through each length-sorted megabatch (up to 50
steps) and drops at the next. Exit status 1 with --strict when any phase is so marked.
"""


def run(args: argparse.Namespace) -> int:
    from deftx.train.losses import FELL, folder_trends

    marked = 0
    for folder in args.folders:
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} is not a folder")
        trends = folder_trends(folder, args.window, strict=True)
        if not trends:
            raise FileNotFoundError(f"{folder} holds no run log (log.jsonl) with a phase long enough for a trend")
        print(f"{folder}:")
        print("| run | phase | steps | first window | last window | fall | verdict |")
        print("|---|---|---:|---:|---:|---:|---|")
        for run_name, trend in trends:
            print(f"| {run_name} | {trend.phase} | {trend.steps} | {trend.first:.4f} | {trend.last:.4f} | "
                  f"{100 * trend.fall:+.1f}% | {trend.verdict} |")
        flagged = sum(1 for _, trend in trends if trend.verdict != FELL)
        print(f"{flagged} of {len(trends)} phases hardly trained or logged a non-finite loss\n")
        marked += flagged
    return 1 if args.strict and marked else 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from deftx.train.losses import WINDOW_STEPS

    parser.add_argument("folders", nargs="+", type=path_argument, help="folders searched for log.jsonl (recursively)")
    parser.add_argument("--window", type=positive_int, default=WINDOW_STEPS,
                        help=f"steps in each window (default {WINDOW_STEPS}; half the phase when it is shorter)")
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 when a phase hardly trained or logged a non-finite loss")
