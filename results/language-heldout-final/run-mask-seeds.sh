#!/bin/sh
# The held-out check of seeds 0-2 again, against four other draws of masks (--mask-seed 1-4; the
# committed heldout-seed-*.csv are mask seed 0). Run 2026-12-06, session 18, on 2 CPU cores, from
# main at 4b01326, over the language SFTs that COMMANDS.sh trained (runs/nusax-e5-small-final).
set -e
for mask in 1 2 3 4; do
  /usr/bin/time -f "mask seed $mask: %e s" deftx heldout-mlm configs/nusax-e5-small-final.yaml --seeds 0 1 2 \
      --languages acehnese balinese banjarese madurese minangkabau javanese sundanese --mask-seed $mask \
      --csv results/language-heldout-final/masks/heldout-mask-$mask.csv
done
