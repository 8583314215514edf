#!/usr/bin/env bash
# Every suite that reaches the native library (ops, SFT format and applies, reliability, training,
# distributed) against its sanitized build, the runtimes preloaded. From the repository root:
#   bash results/native-sanitized/suites.sh > results/native-sanitized/suites.out 2>&1
make native-sanitized > /dev/null
export LD_PRELOAD="$(g++ -print-file-name=libasan.so) $(g++ -print-file-name=libubsan.so)"
export ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1
export DEFTX_NATIVE_LIBRARY=$PWD/build/native-sanitized/deftx_native_sanitized.so
start=$(date +%s)
python -m pytest -q -p no:cacheprovider --ignore=tests/ops/native/test_sanitized.py \
  tests/ops tests/sft tests/reliability tests/train tests/distributed tests/test_files.py 2>&1 | tail -4
echo "exit ${PIPESTATUS[0]}, $(( $(date +%s) - start )) s"
