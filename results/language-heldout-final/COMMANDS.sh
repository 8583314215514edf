#!/bin/sh
# Held-out check of the final recipe's language SFTs, LT-SFT against DeFT-X (NOTES.md). Run
# 2026-12-06 on 2 CPU cores, session 17: seeds 0-1 from main at 54e1b1f, seed 2 at 9c752fc (the
# same training and scoring code): the language SFTs of configs/nusax-e5-small-final.yaml (100 +
# 100 steps, K = 2.8%, both methods branching from one phase 1), seven NusaX targets x seeds 0-2,
# trained one at a time (run-language-sfts.sh; wall time of each in train-times.txt), then scored
# on each target's NusaX MT valid text, which neither the SFTs nor the MLM head trained on.
set -e
bash results/language-heldout-final/run-language-sfts.sh
for seed in 0 1 2; do
  deftx heldout-mlm configs/nusax-e5-small-final.yaml --seeds $seed \
      --languages acehnese balinese banjarese madurese minangkabau javanese sundanese \
      --csv results/language-heldout-final/heldout-seed-$seed.csv
done
python results/language-heldout-final/paired.py results/language-heldout-final/heldout-seed-*.csv \
    > results/language-heldout-final/paired.md
python results/language-heldout-final/norms.py runs/nusax-e5-small-final 0 1 2 \
    > results/language-heldout-final/norms.md
# Session 18 (2026-12-06, NOTES.md): four more draws of masks, and LT-SFT at DeFT-X's L2 norm
sh results/language-heldout-final/run-mask-seeds.sh > results/language-heldout-final/masks/run-mask-seeds.log 2>&1
python results/language-heldout-final/masks.py results/language-heldout-final > results/language-heldout-final/masks.md
python results/language-heldout-final/norm_matched.py configs/nusax-e5-small-final.yaml 0 1 2 \
    > results/language-heldout-final/norm-matched.md
# Stronger language SFTs, Madurese (NOTES.md, session 18): seed 0's LT-SFT branch copied from session 16's run
sh results/language-heldout-final/run-madurese-strong.sh
python results/language-heldout-final/norm_matched.py results/language-heldout-final/configs/madurese-steps-400-lr-2e-4.yaml \
    0 1 2 --languages madurese > results/language-heldout-final/norm-matched-madurese-steps-400-lr-2e-4.md
