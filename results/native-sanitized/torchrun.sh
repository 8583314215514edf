#!/usr/bin/env bash
# The torchrun example (tests/distributed/test_example_torchrun.py's command: 2 ranks, gloo, FSDP2,
# LT-SFT, --verify) in a loop against the sanitized native library, with the ASan and UBSan
# runtimes preloaded into every process (launcher and ranks), so that every malloc/free of torch
# and gloo is checked too. Stops at the first failure. From the repository root:
#   bash results/native-sanitized/torchrun.sh 150 > results/native-sanitized/torchrun.out
make native-sanitized > /dev/null
export LD_PRELOAD="$(g++ -print-file-name=libasan.so) $(g++ -print-file-name=libubsan.so)"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export DEFTX_NATIVE_LIBRARY=$PWD/build/native-sanitized/deftx_native_sanitized.so OMP_NUM_THREADS=1
work=$(mktemp -d)
for i in $(seq 1 "${1:-100}"); do
  start=$(date +%s.%N)
  timeout 300 python -m torch.distributed.run --standalone --nproc_per_node 2 examples/distributed_sft.py \
    --strategy fsdp --method lt-sft --full-steps 4 --sparse-steps 4 --k 2000 --out "$work/sft.safetensors" \
    --verify > "$work/log" 2>&1
  rc=$?
  printf '%s rc=%s verified=%s %.1fs %s\n' "$i" "$rc" "$(grep -c 'identical: True' "$work/log")" \
    "$(echo "$(date +%s.%N) - $start" | bc)" \
    "$(grep -m1 -E 'ERROR: AddressSanitizer|runtime error|terminate|double free|corruption|Segmentation' "$work/log")"
  if [ "$rc" != 0 ]; then cp "$work/log" "results/native-sanitized/torchrun-failure-$i.log"; break; fi
done
rm -rf "$work"
