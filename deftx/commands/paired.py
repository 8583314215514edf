"""``deftx paired``: paired differences between methods over seeds, with bootstrap intervals."""

from __future__ import annotations

import argparse
from pathlib import Path

from deftx.commands._common import (
    add_overwrite_output_argument,
    add_seed_argument,
    output_refusal,
    path_argument,
    positive_float,
    positive_int,
)
from deftx.text import repeated

NAME = "paired"
SUMMARY = "paired differences between methods over seeds (bootstrap 95%% intervals)"
DESCRIPTION = """\
Compare methods seed by seed from one or more results.csv files (a pipeline's, or one per seed from
runs spread over several machines: merged, duplicates kept once, conflicting scores refused). For
each pair A:B: the mean over seeds of A - B on the mean over the targets and on each target, a 95%
percentile-bootstrap interval over seeds, and the seeds each way. A method the results hold at several
language-SFT scales is compared per scale, named METHOD ×SCALE (e.g. --pair "deft-x ×1.25:lt-sft ×1.25").
"""


def method_pair(text: str) -> tuple[str, str]:
    """``"deft-x:lt-sft"`` -> ``("deft-x", "lt-sft")``."""
    a, sep, b = text.partition(":")
    if not sep or not a or not b:
        raise argparse.ArgumentTypeError(f"expected A:B (e.g. deft-x:lt-sft), got {text!r}")
    return a, b


def target_list(text: str) -> tuple[str, ...]:
    """``"acehnese, balinese"`` -> ``("acehnese", "balinese")``: names stripped; an empty or repeated name refused."""
    names = tuple(name.strip() for name in text.split(","))
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected comma-separated target names (e.g. acehnese,balinese), "
                                         f"got {text!r}")
    twice = repeated(names)
    if twice:
        raise argparse.ArgumentTypeError(f"target {', '.join(twice)} named more than once in {text!r}")
    return names


OUTPUT_FILES = ("paired.md", "paired.csv", "paired.png")
"""What ``--out`` receives."""


def check_out(out: Path | None, overwrite: bool) -> None:
    """Refuse, before any work, an ``--out`` that cannot be made or written, or that holds an earlier run's
    :data:`OUTPUT_FILES` unless ``overwrite``; and ``--overwrite`` without ``--out``.

    Raises:
        ValueError: naming the folder or the files.
    """
    from deftx.perf.report import output_folder_problem

    if out is None:
        if overwrite:
            raise ValueError("--overwrite replaces the files of an --out folder, and no --out is given")
        return
    problem = output_folder_problem(out)
    refusal = f"--out {out}: {problem}" if problem else output_refusal("--out", [out / n for n in OUTPUT_FILES],
                                                                       overwrite)
    if refusal is not None:
        raise ValueError(refusal)


def run(args: argparse.Namespace) -> int:
    from deftx.eval import paired

    check_out(args.out, args.overwrite)
    rows = paired.read_results(args.results)
    bootstrap = paired.Bootstrap(resamples=args.resamples, seed=args.seed)
    results = paired.paired_study(rows, pairs=args.pair or paired.DEFAULT_PAIRS, targets=args.targets,
                                  metric=args.metric, split=args.split, bootstrap=bootstrap)
    table = paired.markdown(results, metric=args.metric)
    if args.goal is not None:
        table += "\n" + "\n".join(paired.goal_lines(results, args.goal)) + "\n"
    print(table, end="")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "paired.md").write_text(table)
        paired.write_csv(results, args.out / "paired.csv")
        paired.plot(results, args.out / "paired.png")
        print(f"wrote paired.md, paired.csv, paired.png into {args.out}")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from deftx.eval.paired import PAPER_FIVE, RESAMPLES

    parser.add_argument("results", nargs="+", type=path_argument, help="results.csv files of one study")
    parser.add_argument("--pair", action="append", type=method_pair, metavar="A:B",
                        help="a comparison, repeatable (default: deft-x:lt-sft, deft-x:full-ft, lt-sft:full-ft); a "
                             "method composed at several language-SFT scales is named per scale, e.g. 'deft-x ×1.25'")
    parser.add_argument("--targets", type=target_list, default=PAPER_FIVE, metavar="T1,T2,...",
                        help="the targets to average, a comma-separated list of target names as in the results' "
                             f"target column, each once (default: {','.join(PAPER_FIVE)})")
    parser.add_argument("--metric", default="macro_f1", help="score column (default macro_f1)")
    parser.add_argument("--split", default="test", help="split column value (default test)")
    parser.add_argument("--resamples", type=positive_int, default=RESAMPLES, help=f"bootstrap resamples ({RESAMPLES})")
    add_seed_argument(parser, "bootstrap seed (default 0)")
    parser.add_argument("--out", type=path_argument, default=None,
                        help="folder for paired.md, paired.csv and paired.png (those of an earlier run there are "
                             "refused unless --overwrite)")
    add_overwrite_output_argument(parser, "--out", "paired.md, paired.csv and paired.png")
    parser.add_argument("--goal", type=positive_float, default=None, metavar="W",
                        help="a half-width goal for the intervals on the mean over the targets, in the table's "
                             "units (x100; issue #22: 0.5): says whether each pair meets it and about how many "
                             "seeds would at the spread seen")
