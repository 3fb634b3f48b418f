#!/usr/bin/env bash
# mimeo against pouchdb-server, same machine, same run: starts both on loopback, runs every
# workload against each in turn, stops them, and prints a table with the ratio mimeo/peer.
#   bench/run.sh                 full run (100,000 docs; under 10 minutes on 2 cores)
#   BENCH_QUICK=1 bench/run.sh   small run (10,000 docs; under a minute)
# Results also land in build/bench/last.jsonl (one JSON line per run) and build/bench/last.md.
# A side that is missing or fails shows "n/a"; the run goes on. MIMEO_BIN picks another mimeo
# binary (default build/mimeo); BENCH_KEEP=1 keeps the data folders.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=$ROOT/bench
LG=$ROOT/build/loadgen
OUT=$ROOT/build/bench
QUICK=${BENCH_QUICK:-0}

if [ "$QUICK" = 1 ]; then
  DOCS=10000 PUT1_DOCS=300 PUT16_DOCS=1000 GET_SECS=2 CEIL_SECS=2
else
  DOCS=100000 PUT1_DOCS=2000 PUT16_DOCS=5000 GET_SECS=10 CEIL_SECS=5
fi
BATCH=1000 SIZE=1024 CLIENTS=16
if [ "$QUICK" = 1 ]; then ATT_MB=20 ATT_DOCS=100; else ATT_MB=100 ATT_DOCS=1000; fi
# documents of the attachment replication (one 100 KiB attachment each)
if [ "$QUICK" = 1 ]; then ATT_REPL_DOCS=200; else ATT_REPL_DOCS=1000; fi

[ -x "$LG" ] || { echo "bench: $LG is missing; run 'make bench' (or 'make build/loadgen')" >&2; exit 1; }
mkdir -p "$OUT"
# The data folders live beside the build, on the project's disk: a tmpfs /tmp would make every
# fsync free and the durable figures meaningless.
TMP=$(mktemp -d "$OUT/run.XXXXXX")
RESULTS=$TMP/results.jsonl
: > "$RESULTS"

MIMEO_PID="" MIMEO_URL="" PEER_PID="" PEER_URL=""
stop_server() { # pid: TERM, then KILL after 10 s
  local pid=$1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null
}
cleanup() {
  stop_server "$MIMEO_PID"
  stop_server "$PEER_PID"
  wait 2>/dev/null
  [ "${BENCH_KEEP:-0}" = 1 ] && echo "bench: kept $TMP" >&2 || rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

note() { echo "bench: $*" >&2; }

# Appends one record for (workload, server) to the results: the tool's JSON line with the two
# tags added, or a failure record when the tool printed none.
record() { # workload server json-or-empty error-text
  local wl=$1 srv=$2 json=$3 err=$4
  if [ "${json:0:1}" = "{" ]; then
    echo "{\"workload\":\"$wl\",\"server\":\"$srv\",${json:1}" >> "$RESULTS"
  else
    err=${err//\\/ }; err=${err//\"/\'}; err=$(echo "$err" | tr '\n\t' '  ' | cut -c1-200)
    echo "{\"workload\":\"$wl\",\"server\":\"$srv\",\"failed\":true,\"first_error\":\"$err\"}" >> "$RESULTS"
  fi
}

cpu_ticks() { # pid: user+system clock ticks of a process so far
  awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0
}

# Runs one workload against one server: `run WORKLOAD SERVER TIMEOUT COMMAND...`, where the
# command's "@URL" is replaced by the server's base URL. Prints a progress line.
run() {
  local wl=$1 srv=$2 limit=$3; shift 3
  local url pid
  if [ "$srv" = mimeo ]; then url=$MIMEO_URL pid=$MIMEO_PID; else url=$PEER_URL pid=$PEER_PID; fi
  if [ -z "$url" ]; then record "$wl" "$srv" "" "server not running"; return; fi
  if ! kill -0 "$pid" 2>/dev/null; then
    record "$wl" "$srv" "" "server exited before this workload"; return
  fi
  local args=() a
  for a in "$@"; do a=${a//@URL/$url}; args+=("${a//@PID/$pid}"); done
  local c0 json err
  c0=$(cpu_ticks "$pid")
  json=$(timeout "$limit" "${args[@]}" 2>"$TMP/err")
  # The first line that names an error says more than the tail of a stack trace.
  err=$(grep -m1 -iE 'error|refused|cannot' "$TMP/err" || tail -c 300 "$TMP/err")
  json=$(echo "$json" | grep '^{' | tail -1)
  if [ -n "$json" ]; then # add the server's CPU seconds for this workload
    local c1; c1=$(cpu_ticks "$pid")
    json="${json%\}},\"server_cpu_s\":$(awk -v a="$c0" -v b="$c1" -v hz="$(getconf CLK_TCK)" \
      'BEGIN { printf "%.2f", (b - a) / hz }')}"
  fi
  [ -z "$json" ] && [ -z "$err" ] && err="no output within ${limit}s"
  record "$wl" "$srv" "$json" "$err"
  printf '  %-16s %-6s %s\n' "$wl" "$srv" "$(summary "$json" "$err")" >&2
}

summary() { # a short progress figure from a JSON line
  local j=$1 k
  for k in docs_per_s req_per_s rows_per_s mb_per_s write_p99_ms p99_ms; do
    if [[ $j =~ \"$k\":([0-9.]+) ]]; then echo "$k ${BASH_REMATCH[1]}"; return; fi
  done
  echo "n/a: ${2:0:100}"
}

# ---------------------------------------------------------------- servers

MIMEO_BIN=${MIMEO_BIN:-$ROOT/build/mimeo}
start_mimeo() { # [folder, default $TMP/mimeo]
  local dir=${1:-$TMP/mimeo}
  if [ ! -x "$MIMEO_BIN" ]; then note "$MIMEO_BIN is missing: mimeo figures are n/a"; return; fi
  mkdir -p "$dir/data"
  # Room for the 10,000-feed workload beside the load generator's own connections.
  "$MIMEO_BIN" serve --data "$dir/data" --bind 127.0.0.1 --port 0 \
    --set httpd.max_connections=12000 > "$dir/out.log" 2>&1 &
  MIMEO_PID=$!
  local line
  for _ in $(seq 150); do
    line=$(grep -o 'mimeo listening on http://[0-9.]*:[0-9]*' "$dir/out.log" 2>/dev/null | head -1)
    if [ -n "$line" ]; then MIMEO_URL=${line#mimeo listening on }; break; fi
    kill -0 "$MIMEO_PID" 2>/dev/null || break
    sleep 0.1
  done
  if [ -z "$MIMEO_URL" ]; then
    note "mimeo did not start: $(tail -c 300 "$dir/out.log" | tr '\n' ' ')"
    stop_server "$MIMEO_PID"; MIMEO_PID=""
  else
    note "mimeo $MIMEO_URL (pid $MIMEO_PID)"
  fi
}

start_peer() {
  local bin=$BENCH/node_modules/pouchdb-server/bin/pouchdb-server
  if [ ! -f "$bin" ]; then
    note "pouchdb-server is not installed (scripts/setup.sh --bench): peer figures are n/a"; return
  fi
  local port; port=$("$LG" port)
  mkdir -p "$TMP/peer/data"
  # Request logging off: every request would otherwise append a line to a log file, which
  # costs the peer throughput that mimeo (which logs no requests) does not pay.
  echo '{"log":{"level":"error"}}' > "$TMP/peer/config.json"
  # Default back end: LevelDOWN on disk. exec keeps $! the node process, for its memory figure.
  (cd "$TMP/peer" && exec node "$bin" --port "$port" --host 127.0.0.1 --dir "$TMP/peer/data" \
     --config "$TMP/peer/config.json" --no-stdout-logs > "$TMP/peer/out.log" 2>&1) &
  PEER_PID=$!
  if "$LG" wait "http://127.0.0.1:$port/" --timeout 30; then
    PEER_URL=http://127.0.0.1:$port
    note "pouchdb-server $PEER_URL (pid $PEER_PID)"
  else
    note "pouchdb-server did not start: $(tail -c 300 "$TMP/peer/out.log" | tr '\n' ' ')"
    stop_server "$PEER_PID"; PEER_PID=""
  fi
}

# ---------------------------------------------------------------- workloads

START=$(date +%s)
LOAD_BEFORE=$(cut -d' ' -f1 /proc/loadavg)
note "$( [ "$QUICK" = 1 ] && echo quick || echo full ) run: $DOCS docs of $SIZE bytes; data in $TMP"
if [ "$(stat -f -c %T "$TMP")" = tmpfs ]; then note "warning: $TMP is on tmpfs, fsync costs nothing there"; fi

# The client's own limit first, with the machine otherwise idle.
json=$(timeout 60 "$LG" ceiling --clients "$CLIENTS" --seconds "$CEIL_SECS" 2>"$TMP/err")
record ceiling loadgen "$json" "$(cat "$TMP/err")"
note "loadgen ceiling: $(summary "$json" "$(cat "$TMP/err")")"

# The storage's own limit (bench/store_ceiling.c: LMDB alone with the store's layout, the same
# batches, durable commits), measured in the same run so every write figure has a fraction.
for ids in seq random; do
  rm -rf "$TMP/ceiling_$ids"
  json=$(timeout 300 "$ROOT/build/store_ceiling" --dir "$TMP/ceiling_$ids" --docs "$DOCS" \
           --batch "$BATCH" --size "$SIZE" --ids "$ids" 2>"$TMP/err")
  record "store_ceiling_$ids" lmdb "$json" "$(cat "$TMP/err")"
  note "storage ceiling ($ids ids): $(summary "$json" "$(cat "$TMP/err")")"
  rm -rf "$TMP/ceiling_$ids"
done

start_mimeo
start_peer
SERVERS=(mimeo peer)

disk_kb() { du -sk "$1" 2>/dev/null | cut -f1; }

for s in "${SERVERS[@]}"; do
  run bulk_seq "$s" 600 "$LG" bulk @URL/bench_seq --docs "$DOCS" --batch "$BATCH" --ids seq --size "$SIZE"
  # The first workload on a fresh server: its peak resident memory so far is the bulk load's.
  if [ "$s" = mimeo ]; then pid=$MIMEO_PID; else pid=$PEER_PID; fi
  if [ -n "$pid" ]; then
    for f in VmHWM:memory_bulk RssAnon:memory_bulk_anon; do
      kb=$(awk -v k="${f%%:*}:" '$1 == k { print $2 }' "/proc/$pid/status" 2>/dev/null)
      [ -n "$kb" ] && echo "{\"workload\":\"${f#*:}\",\"server\":\"$s\",\"kb\":$kb}" >> "$RESULTS"
    done
  fi
  # On-disk size of the database that now holds the docs (the data folder holds nothing else yet).
  if [ "$s" = mimeo ] && [ -n "$MIMEO_URL" ]; then
    echo "{\"workload\":\"disk\",\"server\":\"mimeo\",\"kb\":$(disk_kb "$TMP/mimeo/data")}" >> "$RESULTS"
  elif [ "$s" = peer ] && [ -n "$PEER_URL" ]; then
    echo "{\"workload\":\"disk\",\"server\":\"peer\",\"kb\":$(disk_kb "$TMP/peer/data")}" >> "$RESULTS"
  fi
done
for s in "${SERVERS[@]}"; do
  run bulk_random "$s" 600 "$LG" bulk @URL/bench_rand --docs "$DOCS" --batch "$BATCH" --ids random --size "$SIZE"
done
for s in "${SERVERS[@]}"; do
  run bulk_16 "$s" 600 "$LG" bulk @URL/bench_bulk16 --docs "$DOCS" --batch "$BATCH" --ids seq --size "$SIZE" --clients "$CLIENTS"
done
for s in "${SERVERS[@]}"; do
  run put_1 "$s" 300 "$LG" put @URL/bench_put1 --docs "$PUT1_DOCS" --clients 1 --size "$SIZE"
done
for s in "${SERVERS[@]}"; do
  run put_16 "$s" 300 "$LG" put @URL/bench_put16 --docs "$PUT16_DOCS" --clients "$CLIENTS" --size "$SIZE"
done
for s in "${SERVERS[@]}"; do
  run get_16 "$s" 120 "$LG" get @URL/bench_seq --docs "$DOCS" --ids seq --clients "$CLIENTS" --seconds "$GET_SECS"
done
for s in "${SERVERS[@]}"; do
  run changes "$s" 300 "$LG" read "@URL/bench_seq/_changes?include_docs=true"
done
for s in "${SERVERS[@]}"; do
  run all_docs "$s" 300 "$LG" read "@URL/bench_seq/_all_docs?include_docs=true"
done
for s in "${SERVERS[@]}"; do
  run replicate "$s" 360 "$LG" replicate @URL/_replicate --source @URL/bench_seq \
    --target @URL/bench_repl --docs "$DOCS" --timeout 340
done
for s in "${SERVERS[@]}"; do
  run pull "$s" 360 node "$BENCH/pull.mjs" @URL/bench_seq "$DOCS"
done
# Attachments: ATT_DOCS docs of 100 KiB replicated by the server's own /_replicate, then again
# after every body changed and no attachment did (the blobs are all on the target already).
for s in "${SERVERS[@]}"; do
  run att_repl "$s" 900 node "$BENCH/att_repl.mjs" @URL "$ATT_REPL_DOCS" 102400
done

# Attachments: a 100 MiB upload and download, streamed, and 1,000 documents carrying the same
# 1 MiB blob (blob-store growth as du sees it: content addressing should keep it near 1 MiB).
for s in "${SERVERS[@]}"; do
  run att_up "$s" 300 node "$BENCH/attachments.mjs" up @URL/bench_att "$ATT_MB"
  run att_down "$s" 300 node "$BENCH/attachments.mjs" down @URL/bench_att "$ATT_MB"
done
for s in "${SERVERS[@]}"; do
  dir=$TMP/$([ "$s" = mimeo ] && echo mimeo || echo peer)/data
  kb0=$(disk_kb "$dir")
  run att_dedupe "$s" 600 node "$BENCH/attachments.mjs" dedupe @URL/bench_dedupe "$ATT_DOCS"
  echo "{\"workload\":\"att_dedupe_disk\",\"server\":\"$s\",\"kb\":$(( $(disk_kb "$dir") - kb0 ))}" >> "$RESULTS"
done
# The disk's own sequential write speed, durable, in the same run and folder.
t0=$(date +%s%N)
dd if=/dev/zero of="$TMP/dd.bin" bs=1M count="$ATT_MB" conv=fdatasync status=none 2>/dev/null
t1=$(date +%s%N)
rm -f "$TMP/dd.bin"
echo "{\"workload\":\"dd\",\"server\":\"disk\",\"mb_per_s\":$(awk -v a="$t0" -v b="$t1" -v m="$ATT_MB" \
  'BEGIN { printf "%.1f", m * 1048576 / 1e6 / ((b - a) / 1e9) }')}" >> "$RESULTS"

# Map/reduce views (bench/views.mjs): index builds with a JS map, with _sum/_count, with a JS
# reduce; reduce and key-range query latency on the built indexes.
for s in "${SERVERS[@]}"; do
  run view_load "$s" 600 node "$BENCH/views.mjs" @URL/bench_views "$DOCS" load
  for m in build_map build_sum reduce_count reduce_sum build_js reduce_js group_js range changes_filter; do
    run "view_$m" "$s" 900 node "$BENCH/views.mjs" @URL/bench_views "$DOCS" "$m"
  done
done

# Mango (issue 11, bench/find.mjs), on the views' documents: the build of a JSON index on
# one field, a selective query through it (1 client, then 16), a query no index serves, and
# a sorted query paged by bookmark; each with the server's CPU time per query.
for s in "${SERVERS[@]}"; do
  for m in build query noindex paged; do
    run "find_$m" "$s" 600 node "$BENCH/find.mjs" @URL/bench_views "$DOCS" @PID "$m"
  done
done

# Connections (issue 13): idle live feeds (memory per feed, and the latency of one write
# reaching all of them), then slowloris connections beside a normal client.
# Memory per feed is the server's resident growth while its feeds open, so each count gets a
# mimeo of its own, started for it: on the server that ran the workloads above, malloc hands
# the feeds memory those workloads freed, and the growth read 2.4 KB a feed at 1,000 feeds
# against 14.8 at 10,000 (a fresh server: ~20 KB at both). The peak memory below (VmHWM)
# therefore leaves the feeds out.
FEEDS_COUNTS=${BENCH_FEEDS:-"1000 10000"}
for n in $FEEDS_COUNTS; do
  for s in "${SERVERS[@]}"; do
    if [ "$s" = mimeo ] && [ -n "$MIMEO_PID" ]; then
      main_pid=$MIMEO_PID main_url=$MIMEO_URL
      MIMEO_PID="" MIMEO_URL=""
      start_mimeo "$TMP/mimeo_feeds_$n"
      run "feeds_$n" "$s" 300 node "$BENCH/conns.mjs" feeds @URL @PID "$n"
      stop_server "$MIMEO_PID"
      rm -rf "$TMP/mimeo_feeds_$n"
      MIMEO_PID=$main_pid MIMEO_URL=$main_url
    else
      run "feeds_$n" "$s" 300 node "$BENCH/conns.mjs" feeds @URL @PID "$n"
    fi
  done
done
for s in "${SERVERS[@]}"; do
  run slowloris "$s" 120 node "$BENCH/conns.mjs" slowloris @URL 2000
done
# GETs on new connections while a 128 MiB attachment streams in (its commits on a worker).
for s in "${SERVERS[@]}"; do
  run upload_gets "$s" 300 node "$BENCH/conns.mjs" upload @URL 128
done

# Peak resident memory over the whole run (VmHWM), read before the servers stop.
for s in "${SERVERS[@]}"; do
  if [ "$s" = mimeo ]; then pid=$MIMEO_PID; else pid=$PEER_PID; fi
  [ -n "$pid" ] || continue
  kb=$(awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status" 2>/dev/null)
  [ -n "$kb" ] && echo "{\"workload\":\"memory\",\"server\":\"$s\",\"kb\":$kb}" >> "$RESULTS"
  # VmHWM counts mapped file pages too (all of LMDB's map that was touched), which the kernel
  # can drop at will; the anonymous part at the end is the process's own heap and stacks.
  kb=$(awk '/^RssAnon:/ { print $2 }' "/proc/$pid/status" 2>/dev/null)
  [ -n "$kb" ] && echo "{\"workload\":\"memory_anon\",\"server\":\"$s\",\"kb\":$kb}" >> "$RESULTS"
done
stop_server "$MIMEO_PID"; stop_server "$PEER_PID"

ELAPSED=$(( $(date +%s) - START ))
# Other work on the machine skews every figure; the load average lets a reader see it.
echo "{\"workload\":\"load\",\"server\":\"machine\",\"before\":$LOAD_BEFORE,\"after\":$(cut -d' ' -f1 /proc/loadavg)}" >> "$RESULTS"
cp "$RESULTS" "$OUT/last.jsonl"
node "$BENCH/table.mjs" "$RESULTS" "$DOCS" "$ELAPSED" | tee "$OUT/last.md"

# Workloads that start servers of their own, each printing its own table after the main one:
# auth.sh (Basic and cookie authentication against none), crdt.mjs (CRDT ops, 8 nodes
# converging on one counter, replication with and without _design/crdt).
for extra in auth.sh crdt.mjs; do
  echo | tee -a "$OUT/last.md"
  note "$extra"
  case $extra in *.mjs) cmd=(node "$BENCH/$extra") ;; *) cmd=("$BENCH/$extra") ;; esac
  BENCH_QUICK=$QUICK MIMEO_BIN=$MIMEO_BIN timeout 1200 "${cmd[@]}" | tee -a "$OUT/last.md"
done
