#!/usr/bin/env bash
# Installs what building and testing mimeo needs on Debian 12, and nothing that is already there.
#   scripts/setup.sh          Debian packages for building and running
#   scripts/setup.sh --test   also clang (the fuzz drivers) and the npm modules of the interop
#                             tests (pinned by their lockfile)
#   scripts/setup.sh --bench  also pouchdb-server, the benchmark's peer
set -euo pipefail
cd "$(dirname "$0")/.."

# libyajl-dev: not linked into mimeo; the reference oracle of the JSON parser's differential
# fuzz driver (tests/fuzz/fuzz_json_diff.c).
packages=(build-essential pkg-config liblmdb-dev libyajl-dev libmicrohttpd-dev
          libcurl4-gnutls-dev nettle-dev libgnutls28-dev libinih-dev libicu-dev libpcre2-dev
          libmozjs-102-dev zlib1g-dev)
want_test=0 want_bench=0
for arg in "$@"; do
  case "$arg" in
    --test) want_test=1 ;;
    --bench) want_bench=1 ;;
    *) echo "setup.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done
if [ "$want_test" = 1 ] || [ "$want_bench" = 1 ]; then packages+=(nodejs npm); fi
if [ "$want_test" = 1 ]; then packages+=(clang chromium gnutls-bin); fi   # fuzzing; browser test; TLS test CA
if [ "$want_bench" = 1 ]; then packages+=(serf); fi   # the mesh's failure-detection anchor

missing=()
for p in "${packages[@]}"; do
  if [ "$p" = nodejs ] || [ "$p" = npm ]; then
    command -v "${p/nodejs/node}" >/dev/null 2>&1 || missing+=("$p")
    continue
  fi
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || true
    apt-get install -y -qq "${missing[@]}"
  else
    echo "setup: missing Debian packages; run:" >&2
    echo "  sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

npm_ci() { # folder: install from the committed lockfile when node_modules is missing or stale
  local dir=$1
  # A link means an install shared with other checkouts (git worktrees): npm ci would wipe
  # it for all of them, and a fresh checkout's lockfile always looks newer. Leave it alone.
  if [ -L "$dir/node_modules" ]; then return 0; fi
  if [ ! -d "$dir/node_modules" ] || [ "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]; then
    echo "setup: npm ci in $dir"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
  fi
}
if [ "$want_test" = 1 ]; then npm_ci tests/interop; fi
if [ "$want_bench" = 1 ]; then npm_ci bench; fi
exit 0
