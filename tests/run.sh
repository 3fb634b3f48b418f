#!/usr/bin/env bash
# Runs the suite; `make test` builds everything first (make test-build). Stages, all by default:
#   unit         the C unit tests under ASan+UBSan (build/asan/tests)
#   tsan         the C unit tests, then the interop suites named in $TSAN_INTEROP, under
#                ThreadSanitizer (build/tsan); any race report fails the stage
#   fuzz         each libFuzzer driver (build/fuzz) for $FUZZ_SECONDS from its seed corpus
#   interop      every Node interop suite (tests/interop) against build/asan/mimeo
#   cluster      the mesh cluster suites (tests/cluster): several nodes behind fault-injecting
#                proxies; each prints its CLUSTER_SEED
# `tests/run.sh unit interop` runs only those. Ends with "N passed, N failed"; non-zero on
# failure. A missing prerequisite (a binary not built, node or clang absent) and every skipped
# or cancelled test count as failed, so a broken setup never reads "N passed, 0 failed".
set -uo pipefail
cd "$(dirname "$0")/.."
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export MIMEO_EXAMPLE=${MIMEO_EXAMPLE:-build/asan/example}
FUZZ_SECONDS=${FUZZ_SECONDS:-20}
TSAN_INTEROP=${TSAN_INTEROP:-feeds replication_continuous replication_mimeo bulk_async}

stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(unit tsan fuzz interop cluster)

passed=0 failed=0
failures=()
t_start=$(date +%s)

fail() { # name, why: one failed item
  echo "FAILED: $1: $2"
  failures+=("$1")
  failed=$((failed + 1))
}

# Runs the unit test binaries of one build folder and adds up their "N passed, N failed".
run_units() { # folder, label
  local dir=$1 label=$2 src name t out code line p f
  for src in tests/unit/test_*.c; do
    name=$(basename "$src" .c)
    t=$dir/$name
    if [ ! -x "$t" ]; then fail "$label $name" "not built ($t)"; continue; fi
    echo "== $label $t"
    out=$("$t" 2>&1); code=$?
    echo "$out" | tail -n 30
    line=$(echo "$out" | grep -E '^[0-9]+ passed, [0-9]+ failed$' | tail -n 1)
    p=0 f=0
    if [ -n "$line" ]; then
      p=${line%% passed*}; f=${line#*, }; f=${f%% failed*}
      passed=$((passed + p)); failed=$((failed + f))
    fi
    if [ $code -ne 0 ]; then
      failures+=("$label $name")
      # A crash, a sanitizer report or a bad exit after all cases passed is one more failure.
      if [ -z "$line" ] || [ "$f" = 0 ]; then failed=$((failed + 1)); fi
    fi
  done
}

# Runs node --test over the given files and adds up the TAP summary; skipped, todo and
# cancelled tests count as failed.
run_node() { # label, files...
  local label=$1; shift
  if ! command -v node >/dev/null 2>&1; then fail "$label" "node not found (scripts/setup.sh --test)"; return; fi
  local tap np nf ns nt nc
  tap=$(mktemp)
  echo "== $label (node --test $*)"
  node --test --test-concurrency=2 --test-reporter=tap --test-timeout=600000 "$@" 2>&1 |
    tee "$tap" | grep -E '^(not ok|# (pass|fail|skipped|todo|cancelled|tests|duration_ms))|# SKIP|# TODO|SEED='
  summary() { grep -E "^# $1 " "$tap" | tail -n 1 | awk '{print $3}'; }
  np=$(summary pass); nf=$(summary fail); ns=$(summary skipped); nt=$(summary todo)
  nc=$(summary cancelled)
  if [ -z "$np" ]; then
    echo "$label: no TAP summary (runner crashed?)"; tail -n 40 "$tap"; np=0; nf=1
  fi
  nf=$(( ${nf:-0} + ${ns:-0} + ${nt:-0} + ${nc:-0} ))
  if [ "${ns:-0}" != 0 ] || [ "${nt:-0}" != 0 ]; then
    echo "$label: ${ns:-0} skipped, ${nt:-0} todo: counted as failed (a prerequisite is missing?)"
  fi
  if [ "$nf" != 0 ]; then
    failures+=("$label")
    grep -B2 -A30 '^not ok' "$tap" | head -n 200
  fi
  rm -f "$tap"
  passed=$((passed + np)); failed=$((failed + nf))
}

stage_unit() {
  run_units build/asan/tests unit
}

stage_interop() {
  MIMEO_BIN=${MIMEO_BIN:-build/asan/mimeo} run_node interop tests/interop/
}

stage_cluster() {
  MIMEO_BIN=${MIMEO_BIN:-build/asan/mimeo} run_node cluster tests/cluster/
}

# ThreadSanitizer writes each process's reports to $logs/NAME.PID; any such file fails.
stage_tsan() {
  local logs=build/tsan/logs f files=() n
  rm -rf "$logs" && mkdir -p "$logs"
  local opts="halt_on_error=0:second_deadlock_stack=1:history_size=4"
  TSAN_OPTIONS="${TSAN_OPTIONS:-$opts}:log_path=$PWD/$logs/unit" run_units build/tsan/tests tsan
  if [ ! -x build/tsan/mimeo ]; then
    fail "tsan interop" "not built (build/tsan/mimeo)"
  else
    for n in $TSAN_INTEROP; do files+=("tests/interop/$n.test.mjs"); done
    TSAN_OPTIONS="${TSAN_OPTIONS:-$opts}:log_path=$PWD/$logs/mimeo" MIMEO_BIN=build/tsan/mimeo \
      MIMEO_EXAMPLE=build/asan/example run_node "tsan interop" "${files[@]}"
  fi
  # A unit test with a report already failed by its exit code (66); a server's is counted here.
  for f in "$logs"/*; do
    [ -e "$f" ] || continue
    echo "== race report $f"
    head -n 60 "$f"
    case "$(basename "$f")" in unit.*) ;; *) fail "tsan $(basename "$f")" "ThreadSanitizer report" ;; esac
  done
}

# Two drivers at a time (one per core). A crash leaves its input in build/fuzz/; add it to
# the driver's unit test and to tests/fuzz/corpus/<driver>/ once fixed.
stage_fuzz() {
  local cc=${FUZZ_CC:-clang} src name bin pids=() names=() i
  if ! command -v "$cc" >/dev/null 2>&1; then
    fail fuzz "$cc not found: the fuzz drivers did not run (scripts/setup.sh --test)"
    return
  fi
  fuzz_one() { # name
    local name=$1 bin=build/fuzz/$1
    mkdir -p "$bin.corpus" "tests/fuzz/corpus/$name"
    "$bin" -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="$bin-" "$bin.corpus" "tests/fuzz/corpus/$name" >"$bin.log" 2>&1
  }
  for src in tests/fuzz/fuzz_*.c; do
    name=$(basename "$src" .c)
    bin=build/fuzz/$name
    if [ ! -x "$bin" ]; then fail "fuzz $name" "not built ($bin)"; continue; fi
    echo "== fuzz $name (${FUZZ_SECONDS} s)"
    fuzz_one "$name" & pids+=($!); names+=("$name")
    if [ ${#pids[@]} -ge 2 ]; then
      for i in "${!pids[@]}"; do fuzz_done "${pids[$i]}" "${names[$i]}"; done
      pids=() names=()
    fi
  done
  for i in "${!pids[@]}"; do fuzz_done "${pids[$i]}" "${names[$i]}"; done
}

fuzz_done() { # pid, name
  local log=build/fuzz/$2.log
  if wait "$1"; then
    passed=$((passed + 1))
    echo "fuzz $2: $(grep -E 'stat::number_of_executed_units' "$log" | awk '{print $2}') runs," \
         "$(grep -E 'stat::new_units_added' "$log" | awk '{print $2}') new inputs"
  else
    tail -n 40 "$log"
    fail "fuzz $2" "crashed: input saved as build/fuzz/$2-*; make it a unit test"
  fi
}

for s in "${stages[@]}"; do
  t0=$(date +%s)
  case "$s" in
    unit) stage_unit ;;
    tsan) stage_tsan ;;
    fuzz) stage_fuzz ;;
    interop) stage_interop ;;
    cluster) stage_cluster ;;
    *) echo "run.sh: unknown stage $s (unit, tsan, fuzz, interop, cluster)" >&2; exit 2 ;;
  esac
  echo "-- stage $s: $(( $(date +%s) - t0 )) s"
done

echo
echo "total $(( $(date +%s) - t_start )) s; failed: ${failures[*]:-none}"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ] && [ ${#failures[@]} = 0 ]
