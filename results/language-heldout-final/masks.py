"""How much does the held-out finding owe to the draw of masks? DeFT-X − LT-SFT over five mask seeds.

    python results/language-heldout-final/masks.py results/language-heldout-final

Mask seed 0 is the committed check (heldout-seed-*.csv); mask seeds 1-4 are masks/heldout-mask-*.csv
(run-mask-seeds.sh): the same language SFTs and the same NusaX MT valid sentences, other tokens
masked. Prints markdown: per mask seed, the fall of the held-out loss from θ0's on the mean over the
paper's five targets, the paired difference DeFT-X − LT-SFT (per seed, then mean ± sd over seeds) and
in how many of the 21 target × seed pairs DeFT-X's fall is the larger; then, per target and scale,
the paired difference's spread over mask seeds beside its spread over training seeds.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from deftx.eval.paired import PAPER_FIVE
from deftx.eval.report import read_csv

A, B = "deft-x", "lt-sft"
Key = tuple[int, int, str, str, float]  # mask seed, seed, language, method, scale


def read_masks(folder: Path) -> dict[Key, float]:
    """(mask seed, seed, language, method, scale) -> fall of the held-out loss from θ0's (a fraction)."""
    files = {0: sorted(folder.glob("heldout-seed-*.csv"))}
    for path in sorted((folder / "masks").glob("heldout-mask-*.csv")):
        files[int(path.stem.rsplit("-", 1)[1])] = [path]
    change: dict[Key, float] = {}
    for mask, paths in files.items():
        for row in (row for path in paths for row in read_csv(path)):
            if row["method"] in (A, B):
                key = (mask, int(row["seed"]), row["language"], row["method"], float(row["scale"]))
                change[key] = float(row["loss_change"])
    return change


def points(value: float) -> str:
    return f"{100 * value:+.2f}"


def sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def main(folder: Path) -> None:
    change = read_masks(folder)
    masks = sorted({k[0] for k in change})
    seeds = sorted({k[1] for k in change})
    languages = list(dict.fromkeys(k[2] for k in change))
    scales = sorted({k[4] for k in change})

    def diff(mask: int, seed: int, language: str, scale: float) -> float:
        return change[(mask, seed, language, A, scale)] - change[(mask, seed, language, B, scale)]

    def five(mask: int, seed: int, method: str, scale: float) -> float:
        return statistics.fmean(change[(mask, seed, language, method, scale)] for language in PAPER_FIVE)

    print(f"Mean over the paper's five targets ({', '.join(PAPER_FIVE)}); seeds {seeds}; points of the loss "
          "fall from θ0's.")
    print()
    header = " | ".join(f"{B} ×{s:g} | {A} ×{s:g} | {A} − {B} ×{s:g} | pairs {A} larger ×{s:g}" for s in scales)
    print(f"| mask seed | {header} |")
    print("|---:|" + "---:|" * (4 * len(scales)))
    for mask in masks:
        cells = []
        for scale in scales:
            per_seed = [five(mask, seed, A, scale) - five(mask, seed, B, scale) for seed in seeds]
            pairs = [diff(mask, seed, language, scale) for seed in seeds for language in languages]
            cells += [points(statistics.fmean(five(mask, seed, B, scale) for seed in seeds)),
                      points(statistics.fmean(five(mask, seed, A, scale) for seed in seeds)),
                      f"{points(statistics.fmean(per_seed))} ± {100 * sd(per_seed):.2f}",
                      f"{sum(d > 0 for d in pairs)} of {len(pairs)}"]
        print(f"| {mask} | " + " | ".join(cells) + " |")
    print()
    print(f"Per target: {A} − {B} in points, mean over {len(masks)} mask seeds × {len(seeds)} seeds; its sd over "
          "mask seeds (per seed, then averaged over seeds) beside its sd over seeds (per mask seed, then averaged); "
          "the smallest of its mask × seed values.")
    print()
    print("| target | scale | mean | sd over mask seeds | sd over seeds | smallest |")
    print("|---|---:|---:|---:|---:|---:|")
    for language in [*languages, "five"]:
        for scale in scales:
            if language == "five":
                value = {(m, s): five(m, s, A, scale) - five(m, s, B, scale) for m in masks for s in seeds}
            else:
                value = {(m, s): diff(m, s, language, scale) for m in masks for s in seeds}
            over_masks = statistics.fmean(sd([value[(m, s)] for m in masks]) for s in seeds)
            over_seeds = statistics.fmean(sd([value[(m, s)] for s in seeds]) for m in masks)
            print(f"| {language} | {scale:g} | {points(statistics.fmean(value.values()))} | {100 * over_masks:.2f} | "
                  f"{100 * over_seeds:.2f} | {points(min(value.values()))} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
