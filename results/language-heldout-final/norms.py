"""Size and overlap of the LT-SFT and DeFT-X language SFTs scored here (from the repository root):

    python results/language-heldout-final/norms.py runs/nusax-e5-small-final 0 1 2 \
        > results/language-heldout-final/norms.md

Per seed and target: the entries each keeps, the L2 and L1 norms of their values, and the share
of LT-SFT's entries that DeFT-X keeps too.
"""

from __future__ import annotations

import sys
from pathlib import Path

from deftx.pipeline.layout import branch_file
from deftx.sft import SparseDiff

TARGETS = ("acehnese", "balinese", "banjarese", "madurese", "minangkabau", "javanese", "sundanese")


def norms(diff: SparseDiff) -> tuple[float, float]:
    values = [v.double() for v in diff.values.values()]
    return sum(float((v * v).sum()) for v in values) ** 0.5, sum(float(v.abs().sum()) for v in values)


def entries(diff: SparseDiff) -> dict[str, set[int]]:
    return {name: set(index.tolist()) for name, index in diff.indices.items()}


def main(root: Path, seeds: list[int]) -> None:
    print("| seed | target | entries (each) | L2 LT-SFT | L2 DeFT-X | L1 LT-SFT | L1 DeFT-X "
          "| LT-SFT entries DeFT-X keeps |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for seed in seeds:
        for target in TARGETS:
            folder = root / f"seed-{seed}" / "lang" / target
            lt, dx = (SparseDiff.load(branch_file(folder, method)) for method in ("lt-sft", "deft-x"))
            (l2_lt, l1_lt), (l2_dx, l1_dx) = norms(lt), norms(dx)
            kept_lt, kept_dx = entries(lt), entries(dx)
            shared = sum(len(kept_lt[name] & kept_dx.get(name, set())) for name in kept_lt)
            print(f"| {seed} | {target} | {lt.nnz:,} | {l2_lt:.3f} | {l2_dx:.3f} | {l1_lt:.1f} | {l1_dx:.1f} | "
                  f"{shared / lt.nnz:.1%} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]), [int(seed) for seed in sys.argv[2:]])
