#!/bin/sh
# Held-out check of language SFTs, madurese, seed 0 (NOTES.md). Run 2026-12-06 on 2 CPU cores,
# session 16, commit 726d089 (deftx heldout-mlm) over main 5f09751 (training code). The configs ran
# from /work/scratch with output_dir /work/scratch/held/runs-<name>; the committed copies differ only
# in name and output_dir. Wall times: steps-100 784 s (beside another training), steps-200 504 s,
# steps-400 917 s, steps-400-lr-2e-4 899 s (each: phase 1 + the LT-SFT sparse phase; the MLM head
# is the shipped one, a cache hit). Each heldout-mlm call: about 1 min.
set -e
for name in steps-100 steps-200 steps-400 steps-400-lr-2e-4; do
  deftx train-lang results/language-heldout-madurese/configs/$name.yaml --language madurese --seed 0 --device cpu
  deftx heldout-mlm results/language-heldout-madurese/configs/$name.yaml \
      --csv results/language-heldout-madurese/heldout-$name.csv
done
deftx losses runs/language-heldout-madurese/steps-100 runs/language-heldout-madurese/steps-200 \
    runs/language-heldout-madurese/steps-400 runs/language-heldout-madurese/steps-400-lr-2e-4 \
    > results/language-heldout-madurese/losses.md
