#!/usr/bin/env bash
# Instructions one mimeo server executes (valgrind callgrind) for a one-shot HTTP replication
# of DOCS plain documents (bench/crdt.mjs's shape: ~1 KB, "type":"plain") into a target
# without _design/crdt, with a prefix rule, and with a selector rule: what the CRDT write hook
# costs replication, in a count the machine's load does not move. Prints each total and its
# ratio to no rules; pass several binaries to compare builds (run in the order given).
#   bench/crdt_instr.sh [DOCS] [MIMEO_BIN...]      (default 5000, build/mimeo)
#   callgrind_annotate --inclusive=yes build/bench/crdt_instr.<pid>.3 | head -40   where
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DOCS=${1:-5000}
shift || true
[ $# -gt 0 ] || set -- "$ROOT/build/mimeo"
command -v valgrind >/dev/null || { echo "crdt_instr: valgrind is not installed" >&2; exit 1; }
mkdir -p "$ROOT/build/bench"
OUT=$ROOT/build/bench/crdt_instr
J='Content-Type: application/json'

one() { # BIN: prints "none prefix selector" totals
  local bin=$1 tmp pid url
  tmp=$(mktemp -d "$ROOT/build/bench/crdt_instr.XXXXXX")
  valgrind --tool=callgrind --callgrind-out-file="$OUT.%p" --instr-atstart=no \
    "$bin" serve --data "$tmp/data" --bind 127.0.0.1 --port 0 > "$tmp/log" 2>&1 &
  pid=$!
  url=""
  for _ in $(seq 600); do
    url=$(grep -o 'http://[0-9.]*:[0-9]*' "$tmp/log" 2>/dev/null | head -1)
    [ -n "$url" ] && break
    sleep 0.2
  done
  [ -n "$url" ] || { echo "crdt_instr: $bin did not start" >&2; kill "$pid"; return 1; }
  curl -sf -X PUT "$url/src" > /dev/null
  node -e '
    const [n, dir] = [Number(process.argv[1]), process.argv[2]];
    const pad = "x".repeat(900);
    for (let k = 0; k < n; k += 1000) {
      const docs = [];
      for (let i = k; i < Math.min(n, k + 1000); i++)
        docs.push({ _id: `doc${String(i).padStart(8, "0")}`, type: "plain", n: i, payload: pad });
      require("fs").writeFileSync(`${dir}/batch${String(k).padStart(9, "0")}.json`, JSON.stringify({ docs }));
    }' "$DOCS" "$tmp"
  for f in "$tmp"/batch*.json; do
    curl -sf -X POST "$url/src/_bulk_docs" -H "$J" --data-binary "@$f" > /dev/null
  done
  local v rules
  for v in none prefix selector; do
    curl -sf -X PUT "$url/t_$v" > /dev/null
    case $v in
      prefix) rules='{"rules":[{"prefix":"c:"}]}' ;;
      selector) rules='{"rules":[{"selector":{"type":"cart"}}]}' ;;
      *) rules="" ;;
    esac
    [ -n "$rules" ] && curl -sf -X PUT "$url/t_$v/_design/crdt" -H "$J" -d "$rules" > /dev/null
    callgrind_control -z "$pid" > /dev/null 2>&1; callgrind_control -i on "$pid" > /dev/null 2>&1
    curl -sf -X POST "$url/_replicate" -H "$J" \
      -d "{\"source\":\"$url/src\",\"target\":\"$url/t_$v\"}" > /dev/null
    callgrind_control -i off "$pid" > /dev/null 2>&1; callgrind_control -d "$v" "$pid" > /dev/null 2>&1
  done
  kill "$pid"; wait "$pid" 2>/dev/null
  rm -rf "$tmp"
  local n tot=()
  for n in 1 2 3; do
    tot+=("$(callgrind_annotate "$OUT.$pid.$n" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')")
  done
  awk -v b="$bin" -v d="$DOCS" -v p="$OUT.$pid" -v a="${tot[0]}" -v c="${tot[1]}" -v s="${tot[2]}" 'BEGIN {
    printf "%s: instructions per document: none %.0f, prefix %.0f (%.1f%%), selector %.0f (%.1f%%)  (%s.1-3)\n",
      b, a / d, c / d, 100 * c / a, s / d, 100 * s / a, p }'
}

for bin in "$@"; do one "$bin"; done
