"""Issue #9's goal check on this run's results.csv: the mean over the paper's five targets.

    python results/nusax-e5-small-final/goal.py > results/nusax-e5-small-final/goal.md

Per seed, macro-F1 (and accuracy) averaged over acehnese, balinese, banjarese, madurese and
minangkabau; then mean ± sd over seeds (deftx.eval.report.summarize, the same ``avg`` as
results.md, with Javanese, Sundanese and the source left out). The goal: LT-SFT and DeFT-X each
>= full fine-tuning + 1.6 macro-F1, and DeFT-X >= LT-SFT.
"""

from __future__ import annotations

import csv
from pathlib import Path

from deftx.eval.report import AVERAGE, summarize

HERE = Path(__file__).resolve().parent
PAPER_FIVE = ("acehnese", "balinese", "banjarese", "madurese", "minangkabau")
MARGIN = 1.6


def paper_five_rows(path: Path) -> list[dict]:
    """Mean ± sd over seeds of each method's per-seed mean over the five (composed rows only)."""
    with path.open(newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if "(no lang SFT)" not in r["method"]]
    others = sorted({r["target"] for r in rows} - set(PAPER_FIVE))
    return [r for r in summarize(rows, exclude_from_average=others) if r["target"] == AVERAGE]


def main() -> None:
    summary = {r["method"]: r for r in paper_five_rows(HERE / "results.csv")}
    bar = summary["full-ft"]["macro_f1_mean"]
    print("| method | macro-F1 ×100 | accuracy ×100 | seeds | vs full FT |")
    print("|---|---:|---:|---:|---:|")
    for method, row in summary.items():
        gap = 100 * (row["macro_f1_mean"] - bar)
        print(f"| {method} | {100 * row['macro_f1_mean']:.1f} ± {100 * row['macro_f1_sd']:.1f} "
              f"| {100 * row['accuracy_mean']:.1f} ± {100 * row['accuracy_sd']:.1f} | {row['seeds']} "
              f"| {gap:+.1f} |")
    sparse = [m for m in summary if m != "full-ft"]
    met = {m: 100 * (summary[m]["macro_f1_mean"] - bar) >= MARGIN for m in sparse}
    deftx_over_lt = summary["deft-x"]["macro_f1_mean"] >= summary["lt-sft"]["macro_f1_mean"]
    print()
    print(f"Mean over {', '.join(PAPER_FIVE)}. Goal (each >= full FT + {MARGIN}): "
          + ", ".join(f"{m} {'met' if ok else 'not met'}" for m, ok in met.items())
          + f"; DeFT-X >= LT-SFT: {'yes' if deftx_over_lt else 'no'}.")


if __name__ == "__main__":
    main()
