"""Paired DeFT-X − LT-SFT on held-out masked-LM loss, per target and scale, from heldout CSVs.

    python results/language-heldout-final/paired.py results/language-heldout-final/heldout-seed-*.csv

Prints markdown: per target and scale, each method's fall of the held-out loss from θ0's (mean ±
sd over seeds), the paired difference DeFT-X − LT-SFT (> 0: DeFT-X's language SFT predicts the
unseen text better) and the seeds each way; then the same over the paper's five targets, and how
often DeFT-X's top-1 accuracy of the masked tokens is above, equal to or below LT-SFT's.
"""

from __future__ import annotations

import sys
from collections import defaultdict

from deftx.eval.paired import PAPER_FIVE
from deftx.eval.report import mean_sd, read_csv

A, B = "deft-x", "lt-sft"


def cell(values: list[float]) -> str:
    mean, sd = mean_sd(values)
    return f"{100 * mean:+.2f} ± {100 * sd:.2f}"


def main(paths: list[str]) -> None:
    change: dict[tuple[str, str, float, int], float] = {}
    accuracy: dict[tuple[str, str, float, int], float] = {}
    for row in (row for path in paths for row in read_csv(path)):
        if row["method"] in (A, B):
            key = (row["language"], row["method"], float(row["scale"]), int(row["seed"]))
            change[key], accuracy[key] = float(row["loss_change"]), float(row["accuracy"])
    languages = list(dict.fromkeys(key[0] for key in change))
    scales = sorted({key[2] for key in change})
    seeds = sorted({key[3] for key in change})
    print(f"| target | scale | {B} loss fall % | {A} loss fall % | {A} − {B} (points) | seeds {A} better / worse |")
    print("|---|---:|---:|---:|---:|---:|")
    pooled: dict[float, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for language in languages:
        for scale in scales:
            a = [change[(language, A, scale, s)] for s in seeds]
            b = [change[(language, B, scale, s)] for s in seeds]
            diff = [x - y for x, y in zip(a, b, strict=True)]
            if language in PAPER_FIVE:
                for seed, d in zip(seeds, diff, strict=True):
                    pooled[scale][seed].append(d)
            print(f"| {language} | {scale:g} | {cell(b)} | {cell(a)} | {cell(diff)} | "
                  f"{sum(d > 0 for d in diff)} / {sum(d < 0 for d in diff)} |")
    print()
    print(f"Mean over the paper's five targets ({', '.join(PAPER_FIVE)}), per seed, then over seeds:")
    print()
    for scale, by_seed in pooled.items():
        means = [sum(v) / len(v) for v in by_seed.values()]
        print(f"- scale {scale:g}: {A} − {B} = {cell(means)} points; per seed "
              + ", ".join(f"{100 * m:+.2f}" for m in means))
    print()
    for scale in scales:
        diffs = [accuracy[(language, A, scale, seed)] - accuracy[(language, B, scale, seed)]
                 for language in languages for seed in seeds]
        print(f"- top-1 accuracy at scale {scale:g}, {A} against {B} over {len(diffs)} target × seed pairs: "
              f"above {sum(d > 0 for d in diffs)}, equal {sum(d == 0 for d in diffs)}, below "
              f"{sum(d < 0 for d in diffs)}; mean difference {100 * sum(diffs) / len(diffs):+.2f} points")


if __name__ == "__main__":
    main(sys.argv[1:])
