#!/bin/sh
# The anchor table (deftx.perf.anchor): e5-small size (117.5M fp32), k = 1%, three fresh
# processes per method; writes anchor_e5-small.{json,md} and this run's log beside this file.
cd "$(dirname "$0")/../.." && python benchmarks/anchor_selection.py --shapes e5-small --k-fraction 0.01 --repeat 3 --out results/anchor
