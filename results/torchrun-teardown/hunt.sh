#!/usr/bin/env bash
# interleaved: old example (returns, then finalizes) vs new (exit_distributed); one line per run
ulimit -c 0
N=${1:-100}
cd /tmp
for i in $(seq 1 $N); do
  for v in old new; do
    if [ $v = old ]; then ex=/work/scratch/flake/distributed_sft_old.py; else ex=/work/main/examples/distributed_sft.py; fi
    start=$(date +%s.%N)
    OMP_NUM_THREADS=1 PYTHONPATH=/work/main timeout 170 /work/venv/bin/python -m torch.distributed.run --standalone --nproc_per_node 2 $ex \
      --strategy fsdp --method lt-sft --full-steps 4 --sparse-steps 4 --k 2000 --out /tmp/hunt-$v.safetensors --verify > /tmp/hunt-$v.log 2>&1
    rc=$?
    ok=$(grep -c "2000/2000 shared, identical: True" /tmp/hunt-$v.log)
    sig=$(grep -o "exitcode *: *-[0-9]*" /tmp/hunt-$v.log | head -1)
    echo "$i $v rc=$rc verified=$ok ${sig:-} $(python3 -c "import time;print(round(time.time()-$start,1))")s"
    if [ $rc != 0 ]; then cp /tmp/hunt-$v.log /work/scratch/flake/fail-$i-$v.log; fi
  done
done
