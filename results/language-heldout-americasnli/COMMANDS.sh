#!/bin/sh
# Held-out check of AmericasNLI language SFTs, LT-SFT against DeFT-X (NOTES.md). Run 2026-12-06 on
# 2 CPU cores, session 19: the language SFTs of configs/americasnli-train-text.yaml (the NusaX final
# recipe on AmericasNLP 2021 train text only), five AmericasNLI test languages x seeds 0-2, trained one
# at a time (run-language-sfts.sh; wall time of each in train-times.txt; the first call warms up the
# MLM head), then scored on each language's AmericasNLP 2021 dev text, which neither the SFTs nor the
# MLM head trained on.
set -e
CONFIG=results/language-heldout-americasnli/configs/americasnli-train-text.yaml
bash results/language-heldout-americasnli/run-language-sfts.sh
deftx heldout-mlm $CONFIG --americasnlp --seeds 0 1 2 --languages bzd cni hch oto tar --scales 1 \
    --csv results/language-heldout-americasnli/heldout.csv
python results/language-heldout-americasnli/summary.py results/language-heldout-americasnli/heldout.csv \
    > results/language-heldout-americasnli/summary.md
python results/language-heldout-final/norm_matched.py $CONFIG 0 --americasnlp --languages bzd cni hch oto tar \
    > results/language-heldout-americasnli/norm-matched-seed-0.md
# Session 20 (NOTES.md, "Seeds 3-4 and scale 1.25"): seeds 3-4, then seeds 0-4 at scales 1 and 1.25.
SEEDS="3 4" bash results/language-heldout-americasnli/run-language-sfts.sh
deftx heldout-mlm $CONFIG --americasnlp --seeds 0 1 2 3 4 --languages bzd cni hch oto tar --scales 1 1.25 \
    --csv results/language-heldout-americasnli/heldout-5-seeds.csv
python results/language-heldout-americasnli/summary.py results/language-heldout-americasnli/heldout-5-seeds.csv \
    > results/language-heldout-americasnli/summary-5-seeds.md
python results/language-heldout-final/norm_matched.py $CONFIG 1 2 3 4 --americasnlp --languages bzd cni hch oto tar \
    > results/language-heldout-americasnli/norm-matched-seeds-1-4.md
