#!/usr/bin/env bash
# What authentication costs on the hot paths: GET with 16 clients and _bulk_docs, against mimeo
# with no admin (everyone admin), with Basic auth on every request, and with an AuthSession
# cookie. The variants take turns for ROUNDS rounds (default 6 of SECS=4 s: the machine is
# shared, single runs vary by ±30%), each round starting with the next variant so that none is
# always first; prints the median per (workload, variant) and the ratio to the open server.
# Each variant's GETs are warmed for a second before the timed run (the account's first
# request pays its PBKDF2 there, not in the figure). Beside the rates it prints how each
# timed run's connections and CPU split between the server's event threads (from
# /_node/_local/_prometheus and /proc/<pid>/task): a lopsided split (all 16 connections on
# one of two threads) once made rates follow luck rather than authentication.
# The GETs go through loadgen's plain-socket client (`--client raw`): the client shares the two
# cores with the server, and curl spent 10-20% more CPU on a request with an Authorization or
# Cookie header (it formats headers a byte at a time), which the server then lacked. The raw
# client sends the same headers, built once, so its cost per GET is the same in all three
# variants (the "load generator CPU" row shows it); the server still checks them every time.
#   make build/mimeo build/loadgen && bench/auth.sh        (BENCH_QUICK=1: shorter)
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
LG=$ROOT/build/loadgen
MIMEO=${MIMEO_BIN:-$ROOT/build/mimeo}
DOCS=${DOCS:-20000} SECS=${SECS:-4}
[ "${BENCH_QUICK:-0}" = 1 ] && DOCS=5000 SECS=2
mkdir -p "$ROOT/build/bench"
TMP=$(mktemp -d "$ROOT/build/bench/auth.XXXXXX")
PID=""
trap '[ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$TMP"' EXIT

start() { # extra args…: starts mimeo, sets URL and PID
  rm -rf "$TMP/data"; mkdir -p "$TMP/data"
  "$MIMEO" serve --data "$TMP/data" --bind 127.0.0.1 --port 0 "$@" > "$TMP/out.log" 2>&1 &
  PID=$!
  URL=""
  for _ in $(seq 100); do
    URL=$(grep -o 'http://[0-9.]*:[0-9]*' "$TMP/out.log" | head -1)
    [ -n "$URL" ] && return 0
    sleep 0.1
  done
  echo "auth.sh: mimeo did not start: $(tail -c 300 "$TMP/out.log")" >&2; exit 1
}
stop() { kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null; PID=""; }
fig() { grep -o "\"$1\":[0-9.]*" | head -1 | cut -d: -f2; }

ROUNDS=${ROUNDS:-6}
declare -A R C L S T
LOAD0=$(cut -d' ' -f1 /proc/loadavg)
VARIANTS=(open basic cookie account)
cpu() { awk '{ print $14 + $15 }' "/proc/$PID/stat" 2>/dev/null || echo 0; }
per_us() { awk -v a="$1" -v b="$2" -v n="${3:-0}" -v hz="$(getconf CLK_TCK)" \
  'BEGIN { if (n > 0) printf "%.1f", (b - a) / hz * 1e6 / n; else print 0 }'; }
# Connections handed to each event thread so far, space-separated (Prometheus counters).
handed() { curl -s "$1/_node/_local/_prometheus" |
  awk '/^mimeo_http_event_thread_connections_total\{/ { print $2 }' | tr '\n' ' '; }
# CPU ticks of each event thread so far, space-separated in thread order.
ev_cpu() { for t in /proc/"$PID"/task/*; do
    n=$(cat "$t/comm" 2>/dev/null); case $n in mimeo-event*) echo "${n#mimeo-event} $(awk '{ print $14 + $15 }' "$t/stat")";; esac
  done | sort -n | awk '{ printf "%s ", $2 }'; }
# "a/b/…" of the differences between two such lists; with pct, as shares of their sum.
split() { awk -v a="$1" -v b="$2" -v pct="${3:-}" 'BEGIN {
  n = split(a, x, " "); split(b, y, " "); t = 0
  for (i = 1; i <= n; i++) { d[i] = y[i] - x[i]; t += d[i] }
  for (i = 1; i <= n; i++) printf "%s%s", (i > 1 ? "/" : ""), (pct ? (t > 0 ? sprintf("%.0f", 100 * d[i] / t) : 0) : d[i])
  if (pct) printf "%%" }'; }
median() { tr ' ' '\n' | grep . | sort -g | awk '{ v[NR] = $1 } END { print (NR ? v[int((NR + 1) / 2)] : 0) }'; }
for round in $(seq "$ROUNDS"); do
for k in 0 1 2 3; do
  variant=${VARIANTS[$(( (round - 1 + k) % 4 ))]}
  export -n BENCH_COOKIE
  if [ "$variant" = open ]; then
    start; base=$URL
  else
    # PBKDF2 at CouchDB's 600,000 iterations: only the first check of a password pays it.
    start --set admins.bench=bench-pw
    if [ "$variant" = basic ]; then
      base=${URL/http:\/\//http://bench:bench-pw@}
    elif [ "$variant" = account ]; then
      # A _users account that is a member of the database, as a PouchDB app's users are: its
      # requests also look up the account and the database's _security. Only admins create
      # databases, so the documents are loaded by the admin and only the GETs are the account's.
      base=${URL/http:\/\//http://bench:bench-pw@}
      curl -s -X PUT "$base/_users/org.couchdb.user:reader" -H 'Content-Type: application/json' \
        -d '{"name":"reader","password":"reader-pw","roles":[],"type":"user"}' > /dev/null
      curl -s -X PUT "$base/bench" > /dev/null
      curl -s -X PUT "$base/bench/_security" -H 'Content-Type: application/json' \
        -d '{"admins":{"names":[],"roles":[]},"members":{"names":["reader"],"roles":[]}}' > /dev/null
    else
      base=$URL
      BENCH_COOKIE=$(curl -s -D - -o /dev/null -H 'Content-Type: application/json' \
        -d '{"name":"bench","password":"bench-pw"}' "$URL/_session" |
        grep -io 'AuthSession=[^;]*' | head -1)
      export BENCH_COOKIE
    fi
  fi
  curl -s -X PUT "${base}/bench" -u bench:bench-pw > /dev/null
  # The server's CPU per document / request beside the rates: the machine is shared, and the
  # CPU a request costs the server moves far less with other work than requests per second.
  c0=$(cpu)
  b=$("$LG" bulk "$base/bench" --docs "$DOCS" --batch 1000 --ids seq --size 1024 2>/dev/null | fig docs_per_s)
  c1=$(cpu)
  [ "$variant" = account ] && base=${URL/http:\/\//http://reader:reader-pw@}
  "$LG" get "$base/bench" --docs "$DOCS" --ids seq --clients 16 --seconds 1 --client raw > /dev/null 2>&1
  adm=$URL; [ "$variant" != open ] && adm=${URL/http:\/\//http://bench:bench-pw@}
  h0=$(handed "$adm") e0=$(ev_cpu)
  g0=$(cpu)
  gj=$("$LG" get "$base/bench" --docs "$DOCS" --ids seq --clients 16 --seconds "$SECS" --client raw 2>/dev/null)
  c2=$(cpu)
  h1=$(handed "$adm") e1=$(ev_cpu)
  S[get_$variant]="${S[get_$variant]:-} $(split "$h0" "$h1")"
  T[get_$variant]="${T[get_$variant]:-} $(split "$e0" "$e1" pct)"
  g=$(echo "$gj" | fig req_per_s) n=$(echo "$gj" | fig ok)
  # A GET the server refused (a header the client built wrong) must not pass for a fast one.
  if [ "$(echo "$gj" | fig errors)" != 0 ] || [ "$(echo "$gj" | fig transport_errors)" != 0 ] || [ "${n:-0}" = 0 ]; then
    echo "auth.sh: $variant GETs failed: $gj" >&2
  fi
  R[get_$variant]="${R[get_$variant]:-} $g"
  if [ "$variant" != account ]; then
    R[bulk_$variant]="${R[bulk_$variant]:-} $b"
    C[bulk_$variant]="${C[bulk_$variant]:-} $(per_us "$c0" "$c1" "$DOCS")"
  fi
  C[get_$variant]="${C[get_$variant]:-} $(per_us "$g0" "$c2" "$n")"
  L[get_$variant]="${L[get_$variant]:-} $(awk -v s="$(echo "$gj" | fig client_cpu_s)" -v n="${n:-0}" \
    'BEGIN { if (n > 0) printf "%.1f", s * 1e6 / n; else print 0 }')"
  stop
done
done
for k in "${!R[@]}"; do R[$k]=$(echo "${R[$k]}" | median); done
for k in "${!C[@]}"; do C[$k]=$(echo "${C[$k]}" | median); done
for k in "${!L[@]}"; do L[$k]=$(echo "${L[$k]}" | median); done
LOAD=$(cut -d' ' -f1 /proc/loadavg)
pct() { awk -v a="${1:-0}" -v b="${2:-0}" 'BEGIN { if (b > 0) printf "%.0f%%", 100 * a / b; else print "n/a" }'; }
echo "authentication cost: mimeo with no admin (open), with Basic on every request (a config admin), with an AuthSession cookie, and with Basic as a _users account that is a member of the database; median of $ROUNDS rounds, $DOCS docs of 1 KB, GETs for $SECS s by loadgen --client raw after 1 s of warm-up; load average $LOAD0 before, $LOAD at the end"
echo
echo "| workload | open | Basic | cookie | _users account | Basic/open | cookie/open | account/open |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
row() { # label, key prefix (R_bulk…), array name
  local -n A=$3
  local o=${A[${2}_open]:-0} b=${A[${2}_basic]:-} c=${A[${2}_cookie]:-} u=${A[${2}_account]:-}
  echo "| $1 | $o | $b | $c | ${u:-—} | $(pct "$b" "$o") | $(pct "$c" "$o") | $([ -n "$u" ] && pct "$u" "$o" || echo —) |"
}
row "_bulk_docs, batches of 1,000, 1 client (docs/s)" bulk R
row "GET random id, 16 connections (req/s)" get R
row "… server CPU per document of _bulk_docs (µs)" bulk C
row "… server CPU per GET (µs)" get C
row "… load generator CPU per GET (µs)" get L
# Every round's split, in round order: the timed run's new connections per event thread, and
# the event threads' shares of their CPU.
split_row() { # label, array name
  local -n A=$2
  echo "| $1 | ${A[get_open]# } | ${A[get_basic]# } | ${A[get_cookie]# } | ${A[get_account]# } | | | |"
}
split_row "… connections per event thread, each round (the 16 and the one reading the counters)" S
split_row "… event-thread CPU split, each round" T
