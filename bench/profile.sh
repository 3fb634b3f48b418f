#!/usr/bin/env bash
# Where a mimeo workload spends its time: runs one bench workload against a fresh mimeo and
# prints (1) the workload's figure, (2) the server's CPU seconds against the wall time — a
# server far below one core per second is waiting (on the disk, on a lock, on the client), not
# computing, (3) time in the write/sync system calls (strace, only with PROFILE_SYSCALLS=1, as
# it slows every call), and (4) the hottest functions.
#   bench/profile.sh bulk_seq|bulk_random|put_1|put_16|get_16|changes|all_docs [DOCS]
#   PROFILE_SYSCALLS=1 also traces sync/write/futex calls; PROFILE_TOOL=callgrind forces valgrind
# The hottest functions come from `perf record -e cpu-clock` (a software clock: it works in
# VMs without hardware counters) or, where perf cannot record, valgrind's callgrind on the same
# workload. For readable call chains build with frame pointers, e.g.
#   make build/mimeo CFLAGS='-O2 -g -fno-omit-frame-pointer'   (or point MIMEO_BIN elsewhere)
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
LG=$ROOT/build/loadgen
MIMEO_BIN=${MIMEO_BIN:-$ROOT/build/mimeo}
WL=${1:?usage: bench/profile.sh WORKLOAD [DOCS]}
DOCS=${2:-100000}
[ -x "$LG" ] && [ -x "$MIMEO_BIN" ] || { echo "profile: build $LG and $MIMEO_BIN first" >&2; exit 1; }

mkdir -p "$ROOT/build/bench"
TMP=$(mktemp -d "$ROOT/build/bench/profile.XXXXXX")
PID=""
cleanup() {
  [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
  [ "${BENCH_KEEP:-0}" = 1 ] && echo "profile: kept $TMP" >&2 || rm -rf "$TMP"
}
trap cleanup EXIT

case "$WL" in
  bulk_seq)    CMD=(bulk @URL/p --docs "$DOCS" --ids seq) ;;
  bulk_random) CMD=(bulk @URL/p --docs "$DOCS" --ids random) ;;
  put_1)       CMD=(put @URL/p --docs "$(( DOCS / 50 ))" --clients 1) ;;
  put_16)      CMD=(put @URL/p --docs "$(( DOCS / 20 ))" --clients 16) ;;
  get_16)      CMD=(get @URL/seed --docs "$DOCS" --ids seq --clients 16 --seconds 5) ;;
  changes)     CMD=(read "@URL/seed/_changes?include_docs=true") ;;
  all_docs)    CMD=(read "@URL/seed/_all_docs?include_docs=true") ;;
  *) echo "profile: unknown workload $WL" >&2; exit 2 ;;
esac

# perf works if it may sample this machine; otherwise (or with PROFILE_TOOL=callgrind) the
# server runs under callgrind, which is ~50x slower, so the workload shrinks to keep it short.
MODE=${PROFILE_TOOL:-perf}
if [ "$MODE" = perf ]; then
  perf record -e cpu-clock -o "$TMP/probe.data" true >/dev/null 2>&1 || MODE=callgrind
fi
if [ "$MODE" = callgrind ]; then
  command -v valgrind >/dev/null || { echo "profile: neither perf nor valgrind works here" >&2; exit 1; }
  DOCS=$(( DOCS / 20 ))
  for i in "${!CMD[@]}"; do [ "${CMD[$i]}" = --docs ] && CMD[$((i + 1))]=$(( ${CMD[$((i + 1))]} / 20 )); done
  mkdir -p "$TMP/data"
  valgrind --tool=callgrind --callgrind-out-file="$TMP/callgrind.out" --instr-atstart=no \
    "$MIMEO_BIN" serve --data "$TMP/data" --bind 127.0.0.1 --port 0 > "$TMP/out.log" 2>&1 &
else
  mkdir -p "$TMP/data"
  "$MIMEO_BIN" serve --data "$TMP/data" --bind 127.0.0.1 --port 0 > "$TMP/out.log" 2>&1 &
fi
PID=$!
URL=""
for _ in $(seq 300); do
  URL=$(grep -o 'http://[0-9.]*:[0-9]*' "$TMP/out.log" 2>/dev/null | head -1)
  [ -n "$URL" ] && break
  sleep 0.1
done
[ -n "$URL" ] || { echo "profile: mimeo did not start: $(tail -c 300 "$TMP/out.log")" >&2; exit 1; }

case "$WL" in get_16|changes|all_docs)
  "$LG" bulk "$URL/seed" --docs "$DOCS" --ids seq > /dev/null || exit 1 ;;
esac
ARGS=()
for a in "${CMD[@]}"; do ARGS+=("${a//@URL/$URL}"); done

ticks() { awk '{ print $14 + $15 }' "/proc/$PID/stat"; }
[ "$MODE" = callgrind ] && callgrind_control -i on "$PID" > /dev/null 2>&1
if [ "$MODE" = perf ]; then
  perf record -e cpu-clock -g -F 1999 -p "$PID" -o "$TMP/perf.data" > /dev/null 2>&1 &
  PERF=$!
  sleep 0.3
fi
if [ "${PROFILE_SYSCALLS:-0}" = 1 ]; then
  strace -f -T -e trace=fdatasync,fsync,msync,pwrite64,pwritev,writev,futex,select,poll \
    -p "$PID" -o "$TMP/strace.txt" 2>/dev/null &
  STRACE=$!
  sleep 0.5
fi
c0=$(ticks); t0=$(date +%s.%N)
"$LG" "${ARGS[@]}"
t1=$(date +%s.%N); c1=$(ticks)
[ "${PROFILE_SYSCALLS:-0}" = 1 ] && { kill "$STRACE"; wait "$STRACE" 2>/dev/null; }
[ "$MODE" = perf ] && { kill -INT "$PERF"; wait "$PERF" 2>/dev/null; }
[ "$MODE" = callgrind ] && callgrind_control -i off "$PID" > /dev/null 2>&1

awk -v c0="$c0" -v c1="$c1" -v t0="$t0" -v t1="$t1" -v hz="$(getconf CLK_TCK)" 'BEGIN {
  cpu = (c1 - c0) / hz; wall = t1 - t0
  printf "server CPU %.2f s over %.2f s of wall time: %.2f cores busy\n", cpu, wall, cpu / wall }'
echo "load average (1 min): $(cut -d' ' -f1 /proc/loadavg)"

if [ "${PROFILE_SYSCALLS:-0}" = 1 ]; then
  echo "--- system calls (count, total seconds; futex/select include time spent waiting)"
  awk '{ t = 0; for (i = 1; i <= NF; i++) if ($i ~ /^<[0-9.]+>$/) { gsub(/[<>]/, "", $i); t = $i }
         if (split($2, a, "(") < 2 || a[1] ~ /^[<+]/) next; n[a[1]]++; s[a[1]] += t }
       END { for (k in n) printf "  %-12s %7d calls %8.3f s\n", k, n[k], s[k] }' "$TMP/strace.txt" | sort -k4 -nr
fi

if [ "$MODE" = perf ]; then
  echo "--- where the CPU goes, by library (perf, cpu-clock)"
  perf report -i "$TMP/perf.data" --no-children --sort dso --stdio -g none 2>/dev/null |
    grep -v '^#' | grep -v '^$' | head -8
  echo "--- hottest functions"
  perf report -i "$TMP/perf.data" --no-children --sort dso,sym --stdio -g none 2>/dev/null |
    grep -v '^#' | grep -v '^$' | head -30
  echo "--- hottest call chains into mimeo (functions with their callers, inclusive)"
  perf report -i "$TMP/perf.data" --children --sort sym --stdio -g none --dsos "$(basename "$MIMEO_BIN")" 2>/dev/null |
    grep -v '^#' | grep -v '^$' | head -30
else
  kill "$PID"; wait "$PID" 2>/dev/null; PID=""
  echo "--- hottest functions (callgrind, instructions, inclusive)"
  callgrind_annotate --inclusive=yes "$TMP/callgrind.out" 2>/dev/null | head -45
fi
