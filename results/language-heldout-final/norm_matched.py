"""Is DeFT-X's larger fall of the held-out loss its size? LT-SFT scaled to DeFT-X's L2 norm, per SFT.

    python results/language-heldout-final/norm_matched.py configs/nusax-e5-small-final.yaml 0 1 2 \
        > results/language-heldout-final/norm-matched.md
    python results/language-heldout-final/norm_matched.py CONFIG 0 1 2 --languages madurese
    python results/language-heldout-final/norm_matched.py CONFIG 0 1 2 --americasnlp --languages bzd cni hch oto tar

For each seed and target, LT-SFT's language SFT is added at scale c = ||φ_DeFT-X||₂ / ||φ_LT-SFT||₂
(about 1.03), so that it moves θ0 by as much as DeFT-X's does, and scored on the same held-out
masks as the committed check (mask seed 0, NusaX MT valid; with --americasnlp the AmericasNLI
language SFTs on AmericasNLP 2021 dev, pooled over every language given) beside both SFTs at
scale 1. If the size explained the gap, LT-SFT at c would close it.
"""

from __future__ import annotations

import argparse
import statistics
import sys

from deftx.eval.language import score_language_sfts
from deftx.eval.paired import PAPER_FIVE
from deftx.pipeline.config import load_config
from deftx.pipeline.head import ensure_head
from deftx.pipeline.heldout import AMERICASNLP, NUSAX, HeldoutScorer, language_sft_files
from deftx.pipeline.workspace import Workspace
from deftx.sft import SparseDiff

TARGETS = ("acehnese", "balinese", "banjarese", "madurese", "minangkabau", "javanese", "sundanese")


def l2(diff: SparseDiff) -> float:
    return sum(float((v.double() ** 2).sum()) for v in diff.values.values()) ** 0.5


def main(config_path: str, seeds: list[int], targets: list[str], corpus: str = NUSAX) -> None:
    ws = Workspace.open(load_config(config_path), log=lambda line: print(line, file=sys.stderr))
    scorer = HeldoutScorer(ws, ensure_head(ws), corpus=corpus).prepare(targets)
    pooled = PAPER_FIVE if corpus == NUSAX else tuple(targets)
    print("| seed | target | c | LT-SFT ×1 | LT-SFT ×c | DeFT-X ×1 | DeFT-X − LT-SFT ×c |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    gaps: dict[str, list[float]] = {"×1": [], "×c": []}
    five: dict[int, dict[str, list[float]]] = {seed: {"×1": [], "×c": []} for seed in seeds}
    for seed in seeds:
        for target in targets:
            files = language_sft_files(ws, seed, target, corpus)
            lt, dx = SparseDiff.load(files["lt-sft"]), SparseDiff.load(files["deft-x"])
            c = l2(dx) / l2(lt)
            batches = scorer.batches(target)
            base, lt_1, lt_c = score_language_sfts(scorer.model(), {"lt-sft": lt}, [1.0, c], batches)
            dx_1 = score_language_sfts(scorer.model(), {"deft-x": dx}, [1.0], batches)[1]
            fall = {name: row.change(base.score) for name, row in (("lt1", lt_1), ("ltc", lt_c), ("dx1", dx_1))}
            for label, lt_fall in (("×1", fall["lt1"]), ("×c", fall["ltc"])):
                gaps[label].append(fall["dx1"] - lt_fall)
                if target in pooled:
                    five[seed][label].append(fall["dx1"] - lt_fall)
            print(f"| {seed} | {target} | {c:.4f} | {100 * fall['lt1']:+.2f}% | {100 * fall['ltc']:+.2f}% | "
                  f"{100 * fall['dx1']:+.2f}% | {100 * (fall['dx1'] - fall['ltc']):+.2f} |", flush=True)
    print()
    for label in ("×1", "×c"):
        if not all(five[seed][label] for seed in seeds):
            continue
        per_seed = [statistics.fmean(five[seed][label]) for seed in seeds]
        spread = statistics.stdev(per_seed) if len(per_seed) > 1 else 0.0
        mean = statistics.fmean(per_seed)
        scored = [target for target in pooled if target in targets]
        where = "five targets" if scored == list(PAPER_FIVE) else ", ".join(scored)
        print(f"- DeFT-X ×1 − LT-SFT {label}: {where} {100 * mean:+.2f} ± {100 * spread:.2f} points over "
              f"{len(seeds)} seeds; DeFT-X larger in {sum(g > 0 for g in gaps[label])} of "
              f"{len(gaps[label])} target × seed pairs")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("seeds", type=int, nargs="+")
    parser.add_argument("--languages", nargs="+", default=list(TARGETS))
    parser.add_argument("--americasnlp", action="store_true", help="the AmericasNLI language SFTs")
    args = parser.parse_args()
    main(args.config, args.seeds, args.languages, AMERICASNLP if args.americasnlp else NUSAX)
