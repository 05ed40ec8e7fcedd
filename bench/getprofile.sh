#!/usr/bin/env bash
# Instructions (callgrind) or system calls (strace -c) per GET, on a copy of a kept fill
# (docs/benchmarks.md, "GET floor"). Starts NODES dkv nodes (1, or 3 for GET ack=2/from=3 through
# node 0) from copies of FILL/node<i>, reads the hot keys once in order (bench/lua/prime.lua),
# warms up, then measures a wrk -t1 -c16 GET run of SECONDS_ s (bench/lua/get.lua, keys 1..100000)
# and prints the requests wrk completed. callgrind: every node under valgrind --tool=callgrind,
# instrumentation off until the warm-up (callgrind_control -i on), one profile per thread,
# counters zeroed before the run and dumped after it: OUT/callgrind.out.node<i>.1-<thread>
# (bench/cg_groups.py sums them per node, leaving out RocksDB's flush and compaction threads).
# strace: strace -c -f on every node during the run: OUT/strace.node<i>.
#
#   bench/getprofile.sh callgrind|strace NODES FILL OUT
#   (env: DKV_BIN, BASE_PORT, SECONDS_, HOT=keys read (default 100000), DKV_ARGS=more flags,
#   e.g. --replica-timeout-ms 60000 for 3 nodes under valgrind)
set -euo pipefail
mode=$1 nodes=$2 fill=$3 out=$4
bin=${DKV_BIN:-build/dkv}
base=${BASE_PORT:-23100}
secs=${SECONDS_:-15}
hot=${HOT:-100000}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
root=$(mktemp -d "${TMPDIR:-/tmp}/getprofile.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$root"
}
trap cleanup EXIT
cluster=""
for ((i = 0; i < nodes; i++)); do
  cluster+="${cluster:+,}http://127.0.0.1:$((base + i))"
done
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$root/secret"
chmod 600 "$root/secret"
kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
cache=$((kb * 1024 / 4 / nodes)) # as scripts/cluster.sh sizes it
for ((i = 0; i < nodes; i++)); do
  cp -a "$fill/node$i" "$root/node$i"
  rm -f "$root/node$i/identity" "$root/node$i/peers" "$root/node$i/state"
  pre=()
  if [[ $mode == callgrind ]]; then
    pre=(valgrind --tool=callgrind --instr-atstart=no --separate-threads=yes
      "--callgrind-out-file=$out/callgrind.out.node$i")
  fi
  "${pre[@]}" "$bin" --listen "127.0.0.1:$((base + i))" --self "http://127.0.0.1:$((base + i))" \
    --cluster "$cluster" --data "$root/node$i" --cluster-secret-file "$root/secret" \
    --block-cache-bytes "$cache" --io-threads 2 ${DKV_ARGS:-} >"$out/node$i.log" 2>&1 &
  pids+=($!)
done
for ((i = 0; i < nodes; i++)); do
  for ((t = 0; t < 600; t++)); do
    curl -fs "http://127.0.0.1:$((base + i))/v0/status" >/dev/null 2>&1 && break
    sleep 0.5
  done
done
q=()
[[ $nodes -gt 1 ]] && q=(ack=2 from=3)
url="http://127.0.0.1:$base/"
wrk -t1 -c32 -d600s -s "$here/lua/prime.lua" "$url" -- keys="$hot" threads=1 out="$root/prime" \
  "${q[@]}" >/dev/null &
wp=$!
while [[ ! -s "$root/prime.0" ]] && kill -0 $wp 2>/dev/null; do sleep 1; done
kill -INT $wp 2>/dev/null || true
wait $wp 2>/dev/null || true
echo "primed: $(cat "$root/prime.0" 2>/dev/null) (found failed)"
if [[ $mode == callgrind ]]; then
  for p in "${pids[@]}"; do callgrind_control -i on "$p" >/dev/null; done
fi
wrk -t1 -c16 -d5s -s "$here/lua/get.lua" "$url" -- keys="$hot" "${q[@]}" >/dev/null
spids=()
if [[ $mode == callgrind ]]; then
  for p in "${pids[@]}"; do callgrind_control -z "$p" >/dev/null; done
else
  for ((i = 0; i < nodes; i++)); do
    strace -c -f -o "$out/strace.node$i" -p "${pids[$i]}" &
    spids+=($!)
  done
  sleep 1
fi
wrk -t1 -c16 -d"${secs}s" -s "$here/lua/get.lua" "$url" -- keys="$hot" "${q[@]}" | tee "$out/wrk.txt" |
  grep -E "requests in|Non-2xx" || true
if [[ $mode == callgrind ]]; then
  for p in "${pids[@]}"; do callgrind_control -d "$p" >/dev/null; done
else
  for p in "${spids[@]}"; do kill -INT "$p"; done
  for p in "${spids[@]}"; do wait "$p" || true; done
fi
