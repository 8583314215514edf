#!/bin/bash
set -x
cd "$(dirname "$0")/../.."   # the repository root
/usr/bin/time -v deftx pipeline configs/nusax-e5-small-final.yaml
# sessions 9-10 (2026-12-05): a 4th seed, then the table's summaries regenerated
/usr/bin/time -v deftx pipeline configs/nusax-e5-small-final.yaml --seeds 3
python results/nusax-e5-small-final/goal.py > results/nusax-e5-small-final/goal.md
deftx paired results/nusax-e5-small-final/results.csv --goal 0.5 --out results/nusax-e5-small-final/paired
# session 10 (2026-12-05): a 5th seed, then the summaries regenerated as above
/usr/bin/time -v deftx pipeline configs/nusax-e5-small-final.yaml --seeds 4
python results/nusax-e5-small-final/goal.py > results/nusax-e5-small-final/goal.md
deftx paired results/nusax-e5-small-final/results.csv --goal 0.5 --out results/nusax-e5-small-final/paired
# sessions 10-11 (2026-12-05): a 6th seed (stopped with session 10, resumed by the same command), then the summaries regenerated
/usr/bin/time -v deftx pipeline configs/nusax-e5-small-final.yaml --seeds 5
python results/nusax-e5-small-final/goal.py > results/nusax-e5-small-final/goal.md
deftx paired results/nusax-e5-small-final/results.csv --goal 0.5 --out results/nusax-e5-small-final/paired
# session 11 (2026-12-05): a 7th seed, then the summaries regenerated as above
/usr/bin/time -v deftx pipeline configs/nusax-e5-small-final.yaml --seeds 6
python results/nusax-e5-small-final/goal.py > results/nusax-e5-small-final/goal.md
deftx paired results/nusax-e5-small-final/results.csv --goal 0.5 --out results/nusax-e5-small-final/paired
