#!/bin/bash
# Language SFTs of the five AmericasNLI test languages on AmericasNLP 2021 train text only
# (configs/americasnli-train-text.yaml), seeds 0-2 (SEEDS: others), one at a time. The first call warms up the MLM
# head (no AmericasNLP dev text). OUT: where runs/ and the train-times file go (default: here, the
# repository root); extra arguments go to deftx train-lang (e.g. --output-dir).
OUT=${OUT:-.}
CONFIG=results/language-heldout-americasnli/configs/americasnli-train-text.yaml
TIMES=$OUT/results/language-heldout-americasnli/train-times.txt
mkdir -p "$OUT/runs/language-heldout-americasnli"
for seed in ${SEEDS:-0 1 2}; do
  for lang in bzd cni hch oto tar; do
    start=$(date +%s)
    python -m deftx train-lang $CONFIG --americasnlp --language $lang --seed $seed "$@" \
      > "$OUT/runs/language-heldout-americasnli/train-lang-$lang-$seed.log" 2>&1
    rc=$?
    echo "$seed $lang rc=$rc $(( $(date +%s) - start ))s" >> "$TIMES"
  done
done
echo done >> "$TIMES"
