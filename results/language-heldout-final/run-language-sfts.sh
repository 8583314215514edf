#!/bin/bash
# Language SFTs of the final recipe (configs/nusax-e5-small-final.yaml), 7 targets x seeds 0-2, one at a time,
# from the repository root (COMMANDS.sh).
mkdir -p runs/nusax-e5-small-final
for seed in 0 1 2; do
  for lang in acehnese balinese banjarese madurese minangkabau javanese sundanese; do
    start=$(date +%s)
    deftx train-lang configs/nusax-e5-small-final.yaml --language $lang --seed $seed \
      > runs/nusax-e5-small-final/train-lang-$lang-$seed.log 2>&1
    rc=$?
    echo "$seed $lang rc=$rc $(( $(date +%s) - start ))s" >> results/language-heldout-final/train-times.txt
  done
done
echo done >> results/language-heldout-final/train-times.txt
