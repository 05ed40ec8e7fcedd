#!/usr/bin/env bash
# CPU (and optionally allocation) profile of one benchmark scenario.
#
#   bench/profile.sh SCENARIO [bench.py options]       (make profile SCENARIO=single-get)
#
# Starts the scenario's cluster on a fresh data directory, fills it as `make bench` does (1M keys
# x 1 KiB; --fill-keys N to change), finds the closed-loop maximum, then records every dkv node
# with `perf record -e cpu-clock --call-graph dwarf` during a fixed-rate run at 50% of it. Writes bench/results/profiles/<date>-<commit>-<scenario>/:
# README.md (load, top symbols), top-self.txt and top-inclusive.txt (perf report), flame.svg.
# With ALLOC=1 (or --alloc) it also runs node 0 under heaptrack and writes alloc.txt.
#
# Environment: SECONDS_=N (recording length, default 10), RATE=R (fixed rate instead of 50%),
# ALLOC=1. Tools: perf (Debian linux-perf), heaptrack (Debian heaptrack) for ALLOC=1, and the
# npm package `flamegraph` (thlorenz, a port of Brendan Gregg's flamegraph.pl), installed here
# into build/bench-tools on first use. Debian bookworm has no flamegraph package.
set -euo pipefail

cd "$(dirname "$0")/.."
scenario=${1:-${SCENARIO:-}}
if [[ -z "$scenario" ]]; then
  sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
  echo
  echo "scenarios: single-get single-put n3-a1f1-get n3-a1f1-put n3-a2f3-get n3-a2f3-put n3-a3f3-put"
  exit 2
fi
shift || true

FLAMEGRAPH_VERSION=1.3.0
tools=build/bench-tools
fg="$tools/node_modules/.bin/flamegraph"
if [[ ! -x "$fg" ]]; then
  if command -v npm >/dev/null 2>&1; then
    echo "profile: installing npm flamegraph@$FLAMEGRAPH_VERSION into $tools" >&2
    mkdir -p "$tools"
    npm install --silent --no-audit --no-fund --prefix "$tools" "flamegraph@$FLAMEGRAPH_VERSION" \
      >&2 || echo "profile: npm install failed; no flame graph (top symbols still written)" >&2
  else
    echo "profile: npm not found; no flame graph (top symbols still written)" >&2
  fi
fi

args=(--profile "$scenario" --flamegraph-cmd "$PWD/$fg")
[[ -n "${SECONDS_:-}" ]] && args+=(--profile-seconds "$SECONDS_")
[[ -n "${RATE:-}" ]] && args+=(--profile-rate "$RATE")
[[ "${ALLOC:-0}" != 0 ]] && args+=(--alloc)
exec /usr/bin/python3 bench/bench.py "${args[@]}" "$@"
