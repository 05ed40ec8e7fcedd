#!/usr/bin/env bash
# Instructions and system calls per client PUT on each node of a 3-node cluster (ack=2/from=3,
# 16-byte values to key1..key100000 through node 0): docs/benchmarks.md, "3-node PUT: where the
# time goes".
#
#   bench/callgrind3.sh callgrind|strace|cpu DKV_BIN OUT_DIR
#
# Fills key1..key100000 (16 B, ack=3/from=3) once into OUT_DIR/../fill-<port> with DKV_BIN natively
# and restarts it once natively (its write-ahead log goes into SST files there, not under
# valgrind); then each run starts the three nodes on a copy of it and waits for their hash trees,
# sends WARM_N PUTs (bench/lua/put_n.lua), and measures N more:
# - callgrind: every node under `valgrind --tool=callgrind --separate-threads=yes`, counters
#   zeroed before and dumped after the N PUTs (OUT_DIR/cg.PID.out.1-THREAD); summarise with
#   bench/cgsum.py OUT_DIR. Replica timeout 120 s and breakers that never open, so that the
#   slowed nodes never time out (no hints, no retries in the counts).
# - strace: `strace -c -f` on every thread of every node (OUT_DIR/strace.nodeI.txt).
# - cpu: utime and stime of every node from /proc (OUT_DIR/cpu.txt: before / after, in ticks).
# Environment: N (3000), WARM_N (500), CONNS (16), BASE_PORT (24000: nodes on BASE_PORT..+2),
# DKV_EXTRA (more flags for every node, e.g. "--io-threads 1": the last of a flag wins).
# Tools: valgrind, strace, wrk, curl.
set -euo pipefail
mode=${1:?callgrind|strace|cpu}; bin=$(realpath "${2:?DKV_BIN}"); out=${3:?OUT_DIR}
N=${N:-3000}; WARM_N=${WARM_N:-500}; CONNS=${CONNS:-16}
cd "$(dirname "$0")/.."
wt=$PWD
export NODES=3 BASE_PORT=${BASE_PORT:-24000} WAIT_UP_S=900
export DKV_ARGS="--io-threads 2 --block-cache-bytes 134217728 --replica-timeout-ms 120000 --breaker-failures 1000000 --max-clock-offset-ms 600000 ${DKV_EXTRA:-}"
url=http://127.0.0.1:$BASE_PORT
fill=$(dirname "$out")/fill-$BASE_PORT
if [[ ! -d $fill/node0 ]]; then
  mkdir -p "$fill"
  DATA_ROOT=$fill DKV_BIN=$bin scripts/cluster.sh start
  wrk -t2 -c32 -d3000s -s bench/lua/fill.lua "$url" -- keys=100000 threads=2 out="$fill/fillres" \
    value=16 ack=3 from=3 >/dev/null &
  w=$!
  while [[ ! -f $fill/fillres.0 || ! -f $fill/fillres.1 ]]; do sleep 1; done
  kill -INT $w; wait $w || true
  DATA_ROOT=$fill scripts/cluster.sh stop
  DATA_ROOT=$fill DKV_BIN=$bin scripts/cluster.sh start
  DATA_ROOT=$fill scripts/cluster.sh stop
fi
rm -rf "$out"; mkdir -p "$out"; cp -a "$fill/." "$out/"; rm -f "$out"/*.pid "$out"/*.log
out=$(realpath "$out")
node_bin=$bin
if [[ $mode == callgrind ]]; then
  cat >"$out/vg.sh" <<EOS
#!/bin/sh
exec valgrind --tool=callgrind --separate-threads=yes --dump-instr=no \
  --callgrind-out-file=$out/cg.%p.out $bin "\$@"
EOS
  chmod +x "$out/vg.sh"; node_bin=$out/vg.sh
fi
DATA_ROOT=$out DKV_BIN=$node_bin scripts/cluster.sh start
pids=$(cat "$out/node0.pid" "$out/node1.pid" "$out/node2.pid")
for i in 0 1 2; do
  until curl -s -m 30 "http://127.0.0.1:$((BASE_PORT + i))/v0/status?verbose=1" |
      grep -q '"built":true'; do sleep 2; done
done
wrk -t1 -c"$CONNS" -d3000s -s bench/lua/put_n.lua "$url" -- n="$WARM_N" ack=2 from=3 >"$out/warm.txt" 2>&1 || true
sleep 2
sp=()
case $mode in
  callgrind) for p in $pids; do callgrind_control -z "$p" >/dev/null; done ;;
  strace)
    i=0
    for p in $pids; do
      a=(); for t in /proc/"$p"/task/*; do a+=(-p "$(basename "$t")"); done
      strace -c -f -o "$out/strace.node$i.txt" "${a[@]}" & sp+=($!)
      i=$((i + 1))
    done
    sleep 3 ;;
  cpu) echo "before $(for p in $pids; do awk '{printf "%s %s ", $14, $15}' /proc/"$p"/stat; done)" >"$out/cpu.txt" ;;
esac
wrk -t1 -c"$CONNS" -d3000s -s bench/lua/put_n.lua "$url" -- n="$N" ack=2 from=3 >"$out/wrk.txt" 2>&1
sleep 2
case $mode in
  callgrind) for p in $pids; do callgrind_control -d "$p" >/dev/null; done; sleep 2 ;;
  strace) for p in "${sp[@]}"; do kill -INT "$p"; done; wait "${sp[@]}" || true ;;
  cpu) echo "after $(for p in $pids; do awk '{printf "%s %s ", $14, $15}' /proc/"$p"/stat; done)" >>"$out/cpu.txt" ;;
esac
i=0; for p in $pids; do echo "node$i $p"; i=$((i + 1)); done >"$out/pids.txt"
DATA_ROOT=$out scripts/cluster.sh stop || true
grep PUTN "$out/wrk.txt"
