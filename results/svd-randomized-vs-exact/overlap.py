"""Overlap of the language-SFT selections of LT-SFT, DeFT-X (randomized SVD) and DeFT-X (exact SVD)
on one real phase 1 (madurese, seed 0, the final recipe): the share of K the selections hold in common."""
import os
import sys

from safetensors.torch import load_file

from deftx.sft import SparseDiff


def selection(folder):
    """(parameter name without its model prefix, flat index) of every selected entry."""
    if os.path.exists(f"{folder}/sft.safetensors"):
        diff = SparseDiff.load(f"{folder}/sft.safetensors")
        return {(k.split(".", 1)[1], int(i)) for k, v in diff.indices.items() for i in v}
    mask = load_file(f"{folder}/mask.safetensors")
    return {(k.split(".", 1)[1], int(i)) for k, v in mask.items() for i in v}


root = sys.argv[1]
picked = {name: selection(f"{root}/{name}") for name in ("lt-sft", "deft-x", "deft-x-exact")}
k = len(picked["lt-sft"])
print(f"K = {k:,}; " + ", ".join(f"{n}: {len(s):,}" for n, s in picked.items()))
for a, b in (("deft-x", "deft-x-exact"), ("lt-sft", "deft-x-exact"), ("lt-sft", "deft-x")):
    print(f"{a} ∩ {b}: {len(picked[a] & picked[b]) / k:.4f} of K")
