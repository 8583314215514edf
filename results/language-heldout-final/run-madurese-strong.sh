#!/bin/sh
# Stronger language SFTs, Madurese, LT-SFT and DeFT-X from one phase 1 (NOTES.md, session 18). Run
# 2026-12-06 on 2 CPU cores from main at 4de822e. Seed 0's LT-SFT branch is session 16's
# (runs/language-heldout-madurese/steps-400-lr-2e-4, copied from its scratch folder); every other
# step trains here. Wall time of each call in the log.
set -e
config=results/language-heldout-final/configs/madurese-steps-400-lr-2e-4.yaml
for seed in 0 1 2; do
  /usr/bin/time -f "train-lang seed $seed: %e s" deftx train-lang $config --language madurese --seed $seed --device cpu
done
deftx heldout-mlm $config --languages madurese --csv results/language-heldout-final/heldout-madurese-steps-400-lr-2e-4.csv
