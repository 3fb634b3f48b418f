#!/usr/bin/env bash
# Instructions a mimeo binary executes for three workloads, counted by valgrind's callgrind:
# unlike wall-clock figures, the counts do not move with the machine's load, so two builds
# can be compared on a busy machine. Runs one server under callgrind and records, each in its
# own dump: (1) _bulk_docs of DOCS 1 KiB docs with increasing ids, batches of 1,000;
# (2) a one-shot replication of that database to a new one through HTTP URLs; (3) the same
# between two local databases (bare names). Prints the three totals.
#   bench/instr.sh [MIMEO_BIN] [DOCS]      (default build/mimeo, 5000)
#   callgrind_annotate build/bench/instr.<pid>.2 | head -40   where a dump spends them
# valgrind hides the CPU's SHA extensions, so under it Nettle hashes new revisions with its
# portable SHA-256 (~48,000 instructions a 1 KiB body, 80% of the bulk dump): compare the
# bulk dump without `_nettle_sha256_compress*`, or between builds that hash alike.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${1:-$ROOT/build/mimeo}
DOCS=${2:-5000}
LG=$ROOT/build/loadgen
command -v valgrind >/dev/null || { echo "instr: valgrind is not installed" >&2; exit 1; }
[ -x "$LG" ] && [ -x "$BIN" ] || { echo "instr: build $LG and $BIN first" >&2; exit 1; }
mkdir -p "$ROOT/build/bench"
TMP=$(mktemp -d "$ROOT/build/bench/instr.XXXXXX")
OUT=$ROOT/build/bench/instr
valgrind --tool=callgrind --callgrind-out-file="$OUT.%p" --instr-atstart=no \
  "$BIN" serve --data "$TMP" --bind 127.0.0.1 --port 0 > "$TMP.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$TMP" "$TMP.log"' EXIT
URL=""
for _ in $(seq 600); do
  URL=$(grep -o 'http://[0-9.]*:[0-9]*' "$TMP.log" 2>/dev/null | head -1)
  [ -n "$URL" ] && break
  sleep 0.2
done
[ -n "$URL" ] || { echo "instr: mimeo did not start" >&2; exit 1; }
phase() { # name command...: counts only while the command runs, then dumps
  local name=$1; shift
  callgrind_control -z "$PID" > /dev/null 2>&1; callgrind_control -i on "$PID" > /dev/null 2>&1
  "$@" > /dev/null
  callgrind_control -i off "$PID" > /dev/null 2>&1; callgrind_control -d "$name" "$PID" > /dev/null 2>&1
}
phase bulk "$LG" bulk "$URL/bench_seq" --docs "$DOCS" --batch 1000 --ids seq --size 1024
phase replicate_http "$LG" replicate "$URL/_replicate" --source "$URL/bench_seq" \
  --target "$URL/bench_repl" --docs "$DOCS" --timeout 600
phase replicate_local curl -sf -X POST "$URL/_replicate" -H 'Content-Type: application/json' \
  -d '{"source":"bench_seq","target":"local_repl","create_target":true}'
kill "$PID"; wait "$PID" 2>/dev/null
for n in 1 2 3; do
  name=$(sed -n "s/^desc: Trigger: dump //p" "$OUT.$PID.$n")
  total=$(callgrind_annotate "$OUT.$PID.$n" 2>/dev/null | awk '/PROGRAM TOTALS/ { print $1 }')
  echo "$name: $total instructions ($OUT.$PID.$n)"
done
