#!/bin/bash
set -x
cd "$(dirname "$0")/../.."   # the repository root
/usr/bin/time -v deftx pipeline configs/nusax-e5-small-final.yaml
# 2026-12-05, sessions 9-12: seeds added one invocation each (seeds 5 and 7 were stopped with
# sessions 10 and 11 and resumed by the same command); the summaries below were regenerated after
# each seed; the pre-registered rule (NOTES.md) stopped at 8 seeds (0–7)
/usr/bin/time -v deftx pipeline configs/nusax-e5-small-final.yaml --seeds 3
/usr/bin/time -v deftx pipeline configs/nusax-e5-small-final.yaml --seeds 4
/usr/bin/time -v deftx pipeline configs/nusax-e5-small-final.yaml --seeds 5
/usr/bin/time -v deftx pipeline configs/nusax-e5-small-final.yaml --seeds 6
/usr/bin/time -v deftx pipeline configs/nusax-e5-small-final.yaml --seeds 7
# the table's summaries, over every seed in results.csv
python results/nusax-e5-small-final/goal.py > results/nusax-e5-small-final/goal.md
deftx paired results/nusax-e5-small-final/results.csv --goal 0.5 --out results/nusax-e5-small-final/paired
# the loss trend of every logged phase (deftx losses, 2026-12-06): the language SFTs hardly train
deftx losses results/nusax-e5-small-final/logs/seed-{0,1,2,3,4,5,6,7} > results/nusax-e5-small-final/losses.md
