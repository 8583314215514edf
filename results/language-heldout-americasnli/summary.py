"""Held-out tables of the AmericasNLI language SFTs from heldout CSVs (from the repository root):

    python results/language-heldout-americasnli/summary.py results/language-heldout-americasnli/heldout.csv

Per language, then over the five languages: θ0's loss, each method's fall of the loss from θ0's and
masked-token accuracy (mean ± sd over seeds), and the paired DeFT-X − LT-SFT columns, as
`deftx pipeline`'s results.md prints them (deftx.eval.language.heldout_table).
"""

from __future__ import annotations

import sys

from deftx.eval.language import heldout_table
from deftx.eval.report import read_csv

PAIRS = (("deft-x", "lt-sft"),)


def main(paths: list[str]) -> None:
    records = [row for path in paths for row in read_csv(path)]
    pooled = [{**row, "languages": "all five"} for row in records]
    for metric, title in (("loss_change", "Fall of the held-out masked-LM loss from θ0's"),
                          ("accuracy", "Top-1 accuracy of the masked tokens")):
        print(f"## {title}\n")
        print("\n".join(heldout_table(records, "language", metric, PAIRS)))
        print()
        print("\n".join(heldout_table(pooled, "languages", metric, PAIRS)))
        print()


if __name__ == "__main__":
    main(sys.argv[1:])
