#!/usr/bin/env bash
# new example only, one busy core, core dumps on; stops at the first failure
ulimit -c unlimited
python3 -c "while True: pass" &
burner=$!
for i in $(seq 1 ${1:-150}); do
  d=/work/scratch/flake/cores/run-$i; mkdir -p $d; cd $d
  OMP_NUM_THREADS=1 PYTHONPATH=/work/main timeout 170 /work/venv/bin/python -m torch.distributed.run --standalone --nproc_per_node 2 /work/main/examples/distributed_sft.py \
    --strategy fsdp --method lt-sft --full-steps 4 --sparse-steps 4 --k 2000 --out $d/sft.safetensors --verify > $d/log 2>&1
  rc=$?
  echo "$i rc=$rc $(grep -m1 -E 'terminate|double free|corruption|Segmentation' $d/log)"
  if [ $rc != 0 ]; then break; fi
  cd /; rm -rf $d
done
kill $burner
