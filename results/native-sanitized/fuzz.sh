#!/usr/bin/env bash
# The SFT file fuzzer (tests/reliability/test_fuzz_sft.py) at the README's 50,000 cases (seeds 0-2:
# 20,000 + 15,000 + 15,000), every loaded mutant applied and reverted by the native library built
# with AddressSanitizer + UBSan. From the repository root: bash results/native-sanitized/fuzz.sh
set -euo pipefail
out=results/native-sanitized
make native-sanitized > /dev/null
export LD_PRELOAD="$(g++ -print-file-name=libasan.so) $(g++ -print-file-name=libubsan.so)"
export ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1
export DEFTX_NATIVE_LIBRARY=$PWD/build/native-sanitized/deftx_native_sanitized.so
python -c "from deftx.ops import dispatch; print(dispatch.auto_backend('scatter', 'cpu'))"
for run in "0 20000" "1 15000" "2 15000"; do
  set -- $run
  start=$(date +%s)
  DEFTX_FUZZ_SEED=$1 DEFTX_FUZZ_CASES=$2 DEFTX_FUZZ_REPORT=$out/fuzz-seed-$1.json \
    python -m pytest -q -p no:cacheprovider tests/reliability/test_fuzz_sft.py 2>&1 | tail -1
  echo "seed $1: $2 cases, $(( $(date +%s) - start )) s"
done
