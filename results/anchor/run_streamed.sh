#!/bin/sh
# The anchor table's streamed row (deftx.perf.anchor_streamed): a synthetic Llama-7B-shaped pair
# (6.74B parameters, bf16, 2 GiB shards: 13.5 GB per checkpoint) written under $SCRATCH (outside
# the repository, removed afterwards), then select_streamed at k = 1% in a fresh process; writes
# anchor_streamed_llama-7b.{json,md} beside this file. The log (run_streamed.log) has `uptime`
# before and after: the machine may be shared with other jobs.
SCRATCH=${SCRATCH:-/work/scratch-anchor/pair}
cd "$(dirname "$0")/../.." || exit 1
uptime
/usr/bin/time -v python benchmarks/anchor_selection.py --streamed --shapes llama-7b --dtype bf16 \
  --k-fraction 0.01 --scratch "$SCRATCH" --out results/anchor
uptime
