#!/usr/bin/env bash
# Rebuild of a wiped node, measured by hand (not yet part of bench.py): 3 local nodes, fill
# KEYS x 1 KiB through node 1, a fixed-rate GET load on node 1 without a rebuild, then node 3's
# data directory deleted and the same load while it rebuilds; prints the fill time, both load
# summaries (p50/p99, lag), the CPU each node's threads used during each load (bench/cpuwatch.py:
# % of one core by thread name, and `other`: the rest of the machine) and the rebuild's wall time
# and status. A second rebuild comes without load (IDLE_REBUILD=1: node 3 wiped again): its time
# and the CPU each node's threads used for it.
#
# A/B on one fill: VARIANTS="NAME=BIN=FLAGS;NAME=BIN=FLAGS" (BIN empty: the script's BIN; FLAGS
# added to every node's command line), run ROUNDS times in turn: before each, all three nodes are
# restarted with that variant's binary and flags, then the two loads and the rebuild as above.
# RATE=auto: half the closed-loop maximum (wrk -c32, 8 s) measured just before each baseline, so
# "half load" stays half on a machine shared with other work. The load generator runs at nice
# LOAD_NICE (-10, as in bench.py: it stands for a client on its own machine).
#   bash bench/rebuild.sh [BIN]      env: KEYS (1000000), RATE (10000 GET/s, or auto), SECS (25),
#                                         WORK (/tmp/dkv-rebuild), BASE_PORT (39101),
#                                         DKV_ARGS (extra flags for every node), IDLE_REBUILD (0),
#                                         VARIANTS (none), ROUNDS (1), LOAD_NICE (-10), HOG (0)
# HOG=N: after the baseline, the same load again while N busy loops run at nice 19 in this
# session: the floor of what CPU priority alone can do for the client path on this machine (a
# background thread that takes every cycle the client path leaves).
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${1:-$ROOT/build/dkv}
KEYS=${KEYS:-1000000}; RATE=${RATE:-10000}; SECS=${SECS:-25}
WORK=${WORK:-/tmp/dkv-rebuild}; BASE_PORT=${BASE_PORT:-39101}; DKV_ARGS=${DKV_ARGS:-}
IDLE_REBUILD=${IDLE_REBUILD:-0}; VARIANTS=${VARIANTS:-}; ROUNDS=${ROUNDS:-1}; HOG=${HOG:-0}
LOAD_NICE=${LOAD_NICE:--10}; RATE_ARG=$RATE
P1=$BASE_PORT; P2=$((BASE_PORT + 1)); P3=$((BASE_PORT + 2))
CL=http://127.0.0.1:$P1,http://127.0.0.1:$P2,http://127.0.0.1:$P3
rm -rf "$WORK"; mkdir -p "$WORK/n1" "$WORK/n2" "$WORK/n3"
CUR_BIN=$BIN; CUR_ARGS=$DKV_ARGS
start() { # port name
    # shellcheck disable=SC2086
    "$CUR_BIN" --listen "127.0.0.1:$1" --self "http://127.0.0.1:$1" --cluster "$CL" \
        --data "$WORK/$2" --io-threads 2 $CUR_ARGS >>"$WORK/$2.log" 2>&1 &
    echo $! >"$WORK/$2.pid"
}
up() { for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$1/v0/status" >/dev/null && return; sleep 0.2; done; }
stop() { # name
    [ -f "$WORK/$1.pid" ] || return
    kill "$(cat "$WORK/$1.pid")" 2>/dev/null
    while kill -0 "$(cat "$WORK/$1.pid")" 2>/dev/null; do sleep 0.1; done
}
stop_all() { for n in n1 n2 n3; do stop $n; done; }
trap stop_all EXIT
load() {
    /usr/bin/python3 "$ROOT/bench/cpuwatch.py" --pid "n1=$(cat "$WORK/n1.pid")" \
        --pid "n2=$(cat "$WORK/n2.pid")" --pid "n3=$(cat "$WORK/n3.pid")" -- \
        nice -n "$LOAD_NICE" wrk -t1 -c32 -d"$1"s --timeout 10s -s "$ROOT/bench/lua/get.lua" \
        "http://127.0.0.1:$P1" -- keys="$KEYS" rate="$RATE" 2>&1 |
        grep -o '{.*p99_us[^}]*}\|^cpu: .*\|^io threads.*' | tail -3
}
closed_loop_rps() {
    nice -n "$LOAD_NICE" wrk -t1 -c32 -d8s --timeout 10s -s "$ROOT/bench/lua/get.lua" \
        "http://127.0.0.1:$P1" -- keys="$KEYS" 2>&1 | sed -n 's/.*"rps":\([0-9]*\).*/\1/p' | tail -1
}
ready() { until curl -s "http://127.0.0.1:$P3/v0/status?verbose=1" | grep -q '"state":"ready"'; do sleep 0.5; done; }
wipe3() { stop n3; sleep 1; rm -rf "$WORK/n3"; mkdir -p "$WORK/n3"; }
p99() { sed -n 's/.*"p99_us":\([0-9.]*\).*/\1/p' | head -1; }
# The two loads and the rebuild, on a cluster that is up with its data.
measure() { # label
    local base during t1 max
    sleep 5
    if [ "$RATE_ARG" = auto ]; then
        max=$(closed_loop_rps)
        RATE=$((max / 2))
        echo "[$1] closed-loop maximum $max GET/s: the load is $RATE GET/s"
    fi
    base=$(load "$SECS")
    echo "[$1] GET at $RATE/s, no rebuild:     $base"
    if [ "$HOG" -gt 0 ]; then
        local hogs=() hog i
        for i in $(seq 1 "$HOG"); do nice -n 19 sh -c 'while :; do :; done' & hogs+=($!); done
        hog=$(load "$SECS")
        kill "${hogs[@]}"; wait "${hogs[@]}" 2>/dev/null
        echo "[$1] GET at $RATE/s, $HOG nice-19 busy loop(s): $hog"
        echo "[$1] p99 with busy loops / without: $(echo "scale=2; $(echo "$hog" | p99) / $(echo "$base" | p99)" | bc)"
    fi
    wipe3
    t1=$(date +%s.%N)
    start "$P3" n3
    up "$P3"
    during=$(load "$SECS")
    echo "[$1] GET at $RATE/s, during rebuild: $during"
    ready
    echo "[$1] rebuild: ready $(echo "$(date +%s.%N) - $t1" | bc) s after the wiped node's start"
    curl -s "http://127.0.0.1:$P3/v0/status?verbose=1" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["rebuild"])'
    echo "[$1] p99 during / without rebuild: $(echo "scale=2; $(echo "$during" | p99) / $(echo "$base" | p99)" | bc)"
    if [ "$IDLE_REBUILD" = 1 ]; then
        sleep 5; wipe3
        t1=$(date +%s.%N)
        start "$P3" n3
        up "$P3"
        /usr/bin/python3 "$ROOT/bench/cpuwatch.py" --pid "n1=$(cat "$WORK/n1.pid")" \
            --pid "n2=$(cat "$WORK/n2.pid")" --pid "n3=$(cat "$WORK/n3.pid")" -- \
            bash -c "until curl -s http://127.0.0.1:$P3/v0/status?verbose=1 | grep -q '\"state\":\"ready\"'; do sleep 0.5; done" |
            grep "^cpu" | sed "s|^|[$1] idle rebuild |"
        echo "[$1] idle rebuild: ready $(echo "$(date +%s.%N) - $t1" | bc) s after the wiped node's start"
    fi
}
start "$P1" n1; start "$P2" n2; start "$P3" n3
up "$P1"; up "$P2"; up "$P3"; sleep 1
t0=$(date +%s.%N)
wrk -t2 -c64 -d3600s -s "$ROOT/bench/lua/fill.lua" "http://127.0.0.1:$P1" -- \
    keys="$KEYS" threads=2 out="$WORK/fill" >"$WORK/wrk-fill.log" 2>&1 &
FILL=$!
while [ ! -f "$WORK/fill.0" ] || [ ! -f "$WORK/fill.1" ]; do sleep 1; done
kill -INT "$FILL"; wait "$FILL" 2>/dev/null
echo "fill: $KEYS keys in $(echo "$(date +%s.%N) - $t0" | bc) s ($(cat "$WORK/fill.0") / $(cat "$WORK/fill.1") created/failed per thread)"
if [ -z "$VARIANTS" ]; then
    measure default
    exit 0
fi
for round in $(seq 1 "$ROUNDS"); do
    IFS=';' read -ra vs <<<"$VARIANTS"
    for v in "${vs[@]}"; do
        name=${v%%=*}; rest=${v#*=}
        vbin=${rest%%=*}; CUR_ARGS=${rest#*=}
        CUR_BIN=${vbin:-$BIN}
        stop_all
        start "$P1" n1; start "$P2" n2; start "$P3" n3
        up "$P1"; up "$P2"; up "$P3"
        echo "== round $round, $name: $CUR_BIN $CUR_ARGS ($(uptime | sed 's/.*load/load/'))"
        measure "$name/$round"
    done
done
