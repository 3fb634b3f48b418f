#!/usr/bin/env bash
# Runs the whole suite against the sanitizer build: the C unit tests, then the Node interop
# suites (each spawns its own servers). Ends with "N passed, N failed"; non-zero on failure.
set -uo pipefail
cd "$(dirname "$0")/.."
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export MIMEO_BIN=${MIMEO_BIN:-build/asan/mimeo}
export MIMEO_EXAMPLE=${MIMEO_EXAMPLE:-build/asan/example}

passed=0 failed=0
failures=()

for t in build/asan/tests/test_*; do
  [ -x "$t" ] || continue
  echo "== $t"
  out=$("$t" 2>&1); code=$?
  echo "$out" | tail -n 30
  line=$(echo "$out" | grep -E '^[0-9]+ passed, [0-9]+ failed$' | tail -n 1)
  if [ -n "$line" ]; then
    p=${line%% passed*}; f=${line#*, }; f=${f%% failed*}
    passed=$((passed + p)); failed=$((failed + f))
  fi
  if [ $code -ne 0 ]; then
    failures+=("$t")
    [ -z "$line" ] || [ "$f" = 0 ] && failed=$((failed + 1))
  fi
done

echo "== interop (node --test tests/interop)"
tap=$(mktemp)
node --test --test-concurrency=2 --test-reporter=tap --test-timeout=600000 tests/interop/ 2>&1 | tee "$tap" | grep -E '^(not ok|# (pass|fail|tests|duration_ms))' 
np=$(grep -E '^# pass ' "$tap" | tail -n 1 | awk '{print $3}')
nf=$(grep -E '^# fail ' "$tap" | tail -n 1 | awk '{print $3}')
if [ -z "$np" ]; then
  echo "interop: no TAP summary (runner crashed?)"; tail -n 40 "$tap"; nf=1; np=0
fi
if [ "${nf:-0}" != 0 ]; then
  failures+=("interop")
  grep -B2 -A30 '^not ok' "$tap" | head -n 200
fi
rm -f "$tap"
passed=$((passed + np)); failed=$((failed + nf))

echo
echo "$passed passed, $failed failed"
[ "$failed" = 0 ] && [ ${#failures[@]} = 0 ]
