#!/usr/bin/env bash
# Instructions per GET (random id, 16 keep-alive connections, loadgen's raw client) counted by
# valgrind's callgrind, for the four variants of bench/auth.sh: open (no admin), Basic as a
# config admin, an AuthSession cookie, and Basic as a _users account that is a member of the
# database. Unlike rates, the counts do not move with the machine's load. Each variant is
# warmed (first password check, caches) before counting starts. Then instructions per
# document of _bulk_docs (BULK docs of 1 KiB in batches of 1,000 into a new database) for
# open, Basic and cookie: valgrind hashes revisions with the portable SHA-256, so these are
# mostly that (see bench/instr.sh), the same in every variant.
#   make build/mimeo build/loadgen && bench/auth_instr.sh [MIMEO_BIN] [SECONDS]
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${1:-$ROOT/build/mimeo}
SECS=${2:-6}
LG=$ROOT/build/loadgen
DOCS=2000 BULK=${BULK:-4000}
command -v valgrind >/dev/null || { echo "auth_instr: valgrind is not installed" >&2; exit 1; }
mkdir -p "$ROOT/build/bench"
TMP=$(mktemp -d "$ROOT/build/bench/auth_instr.XXXXXX")
OUT=$ROOT/build/bench/auth_instr
PID=""
trap '[ -n "$PID" ] && kill $PID 2>/dev/null; wait 2>/dev/null; rm -rf "$TMP"' EXIT
start() { # extra args…: mimeo under callgrind; sets URL and PID
  rm -rf "$TMP/data"; mkdir -p "$TMP/data"
  valgrind --tool=callgrind --callgrind-out-file="$OUT.%p" --instr-atstart=no \
    "$BIN" serve --data "$TMP/data" --bind 127.0.0.1 --port 0 "$@" > "$TMP/log" 2>&1 &
  PID=$!
  URL=""
  for _ in $(seq 600); do
    URL=$(grep -o 'http://[0-9.]*:[0-9]*' "$TMP/log" 2>/dev/null | head -1)
    [ -n "$URL" ] && return 0
    sleep 0.2
  done
  echo "auth_instr: mimeo did not start" >&2; exit 1
}
get() { "$LG" get "$1/bench" --docs "$DOCS" --ids seq --clients 16 --seconds "$2" --client raw 2>/dev/null; }
measure() { # variant base-url: warm, then count one timed run; prints instructions per GET
  get "$2" 1 > /dev/null
  callgrind_control -z "$PID" > /dev/null 2>&1; callgrind_control -i on "$PID" > /dev/null 2>&1
  local j; j=$(get "$2" "$SECS")
  callgrind_control -i off "$PID" > /dev/null 2>&1; callgrind_control -d "$1" "$PID" > /dev/null 2>&1
  local n; n=$(echo "$j" | grep -o '"ok":[0-9]*' | cut -d: -f2)
  local f; f=$(ls -t "$OUT.$PID".* | head -1)
  local total; total=$(callgrind_annotate "$f" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
  awk -v v="$1" -v t="$total" -v n="${n:-0}" -v f="$f" \
    'BEGIN { if (n > 0) printf "%-8s %8.0f instructions per GET (%d GETs, %s)\n", v, t / n, n, f; else print v ": no GETs" }'
}
measure_bulk() { # variant admin-url client-url: counts one _bulk_docs run into a new database
  curl -s -X PUT "$2/bulk_$1" > /dev/null
  callgrind_control -z "$PID" > /dev/null 2>&1; callgrind_control -i on "$PID" > /dev/null 2>&1
  "$LG" bulk "$3/bulk_$1" --docs "$BULK" --batch 1000 --ids seq --size 1024 > /dev/null 2>&1
  callgrind_control -i off "$PID" > /dev/null 2>&1; callgrind_control -d "bulk_$1" "$PID" > /dev/null 2>&1
  local f; f=$(ls -t "$OUT.$PID".* | head -1)
  local total; total=$(callgrind_annotate "$f" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
  awk -v v="bulk $1" -v t="$total" -v n="$BULK" -v f="$f" \
    'BEGIN { printf "%-12s %8.0f instructions per document (%d docs, %s)\n", v, t / n, n, f }'
}
start
curl -s -X PUT "$URL/bench" > /dev/null
"$LG" bulk "$URL/bench" --docs "$DOCS" --batch 1000 --ids seq --size 1024 > /dev/null 2>&1
measure open "$URL"
measure_bulk open "$URL" "$URL"
kill "$PID"; wait "$PID" 2>/dev/null
start --set admins.bench=bench-pw
A=${URL/http:\/\//http://bench:bench-pw@}
curl -s -X PUT "$A/bench" > /dev/null
"$LG" bulk "$A/bench" --docs "$DOCS" --batch 1000 --ids seq --size 1024 > /dev/null 2>&1
curl -s -X PUT "$A/_users/org.couchdb.user:reader" -H 'Content-Type: application/json' \
  -d '{"name":"reader","password":"reader-pw","roles":[],"type":"user"}' > /dev/null
curl -s -X PUT "$A/bench/_security" -H 'Content-Type: application/json' \
  -d '{"admins":{"names":[],"roles":[]},"members":{"names":["reader"],"roles":[]}}' > /dev/null
measure basic "$A"
measure_bulk basic "$A" "$A"
BENCH_COOKIE=$(curl -s -D - -o /dev/null -H 'Content-Type: application/json' \
  -d '{"name":"bench","password":"bench-pw"}' "$URL/_session" | grep -io 'AuthSession=[^;]*' | head -1)
export BENCH_COOKIE
measure cookie "$URL"
measure_bulk cookie "$A" "$URL"
export -n BENCH_COOKIE
measure account "${URL/http:\/\//http://reader:reader-pw@}"
kill "$PID"; wait "$PID" 2>/dev/null; PID=""
