#!/usr/bin/env bash
# The native library under ThreadSanitizer (`make native-tsan`: gcc's TSan, LLVM's OpenMP runtime,
# its tool archer telling TSan about OpenMP's barriers and reductions), 4 OpenMP threads on this
# 2-core machine. The first report ends a process (exit 66). From the repository root:
#   bash results/native-sanitized/tsan.sh [torchrun runs, default 10] > results/native-sanitized/tsan.out 2>&1
# 1. Every suite that reaches the native library but tests/distributed, whose gloo ranks are
#    forked from the test process: TSan does not follow threads started after a multi-threaded
#    fork ("dup thread with used id"). 2. The distributed path instead through the torchrun
#    example (2 ranks, FSDP2, LT-SFT, --verify), each rank a fresh Python; archer's greeting in a
#    rank's log shows that its native ops ran OpenMP teams. 3. The SFT file fuzzer at the README's
#    50,000 cases (seeds 0-2), every loaded mutant applied and reverted.
out=results/native-sanitized
make native-tsan > /dev/null || exit 1
llvm=$(dirname "$(ls /usr/lib/llvm-*/lib/libarcher.so | tail -1)")
export LD_PRELOAD=$(g++ -print-file-name=libtsan.so) OMP_TOOL_LIBRARIES=$llvm/libarcher.so OMP_NUM_THREADS=4
export TSAN_OPTIONS="ignore_noninstrumented_modules=1 halt_on_error=1 exitcode=66"
export DEFTX_NATIVE_LIBRARY=$PWD/build/native-tsan/deftx_native_tsan.so
python -c "from deftx.ops import dispatch; print(dispatch.auto_backend('scatter', 'cpu'))"

start=$(date +%s)
python -m pytest -q -p no:cacheprovider --capture=sys --ignore=tests/ops/native/test_sanitized.py \
  tests/ops tests/sft tests/reliability tests/train tests/test_files.py 2>&1 | tail -3
echo "suites: exit ${PIPESTATUS[0]}, $(( $(date +%s) - start )) s"

work=$(mktemp -d)
for i in $(seq 1 "${1:-10}"); do
  start=$(date +%s)
  ARCHER_OPTIONS=verbose=1 timeout 300 python -m torch.distributed.run --standalone --nproc_per_node 2 \
    examples/distributed_sft.py --strategy fsdp --method lt-sft --full-steps 4 --sparse-steps 4 --k 2000 \
    --out "$work/sft.safetensors" --verify > "$work/log" 2>&1
  rc=$?
  echo "torchrun $i: exit $rc, verified $(grep -c 'identical: True' "$work/log"), archer in" \
    "$(grep -c 'Archer detected' "$work/log") processes, $(( $(date +%s) - start )) s" \
    "$(grep -m1 -E 'ThreadSanitizer|terminate|double free|corruption|Segmentation' "$work/log")"
  if [ "$rc" != 0 ]; then cp "$work/log" "$out/tsan-torchrun-failure-$i.log"; break; fi
done
rm -rf "$work"

for run in "0 20000" "1 15000" "2 15000"; do
  set -- $run
  start=$(date +%s)
  DEFTX_FUZZ_SEED=$1 DEFTX_FUZZ_CASES=$2 DEFTX_FUZZ_REPORT=$out/tsan-fuzz-seed-$1.json \
    python -m pytest -q -p no:cacheprovider --capture=sys tests/reliability/test_fuzz_sft.py 2>&1 | tail -1
  echo "fuzz seed $1: $2 cases, exit ${PIPESTATUS[0]}, $(( $(date +%s) - start )) s"
done
