#!/usr/bin/env bash
# Local dkv cluster on 127.0.0.1: node I listens on port BASE_PORT+I with data in DATA_ROOT/nodeI.
#
#   scripts/cluster.sh run                 start every node, stay in the foreground; Ctrl-C stops all
#   scripts/cluster.sh start|stop|kill|restart [I]   one node (or all when I is omitted)
#   scripts/cluster.sh status              which nodes are up
#
# Environment: NODES (default 3), BASE_PORT (8080), DATA_ROOT (./data), DKV_BIN (build/dkv),
# DKV_ARGS (extra flags for every node, e.g. "--log-level debug"), WAIT_UP_S (how long a started
# node may take to answer /v0/status, default 30; a node replays its write-ahead log first).
# The nodes share a quarter of the machine's memory as block cache unless DKV_ARGS sets
# --block-cache-bytes, and the machine's cores as I/O threads unless it sets --io-threads.
set -euo pipefail

NODES=${NODES:-3}
BASE_PORT=${BASE_PORT:-8080}
DATA_ROOT=${DATA_ROOT:-./data}
DKV_BIN=${DKV_BIN:-build/dkv}
DKV_ARGS=${DKV_ARGS:-}
WAIT_UP_S=${WAIT_UP_S:-30}

url() { echo "http://127.0.0.1:$((BASE_PORT + $1))"; }
cluster_list() {
  local list="" i
  for ((i = 0; i < NODES; i++)); do list+="${list:+,}$(url "$i")"; done
  echo "$list"
}
pidfile() { echo "$DATA_ROOT/node$1.pid"; }
logfile() { echo "$DATA_ROOT/node$1.log"; }
pid_of() {
  local f; f=$(pidfile "$1")
  [[ -f "$f" ]] && kill -0 "$(cat "$f")" 2>/dev/null && cat "$f"
}
all_or_one() {
  if [[ -n "${1:-}" ]]; then
    if ! [[ "$1" =~ ^[0-9]+$ ]] || ((10#$1 >= NODES)); then
      echo "cluster.sh: node index must be 0..$((NODES - 1))" >&2; exit 2
    fi
    echo "$((10#$1))"
  else
    seq 0 $((NODES - 1))
  fi
}

wait_up() {
  local i=$1 deadline=$((SECONDS + WAIT_UP_S))
  while ((SECONDS < deadline)); do
    if curl -fsS -o /dev/null "$(url "$i")/v0/status" 2>/dev/null; then return 0; fi
    if [[ -z "$(pid_of "$i" || true)" ]]; then
      echo "cluster.sh: node $i exited; last log lines:" >&2; tail -n 5 "$(logfile "$i")" >&2
      return 1
    fi
    sleep 0.05
  done
  echo "cluster.sh: node $i did not answer /v0/status within $WAIT_UP_S s" >&2
  return 1
}

# The cluster secret peers prove to each other in the RPC handshake (docs/security.md): made once
# per DATA_ROOT, 32 random bytes as 64 hex digits, readable by its owner only.
secret_file() {
  local f="$DATA_ROOT/cluster.secret"
  if [[ ! -s "$f" ]]; then
    (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$f" && echo >>"$f")
  fi
  echo "$f"
}

# Every node sizes its block cache to a quarter of the machine's memory when not told; NODES
# nodes on one machine share that quarter instead (docs/deploy.md, "Sizing memory").
cache_args() {
  case " $DKV_ARGS " in *" --block-cache-bytes"*) return 0 ;; esac
  local kb
  kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo 2>/dev/null || true)
  [[ -n "$kb" ]] || return 0
  local bytes=$((kb * 1024 / 4 / NODES)) floor=$((64 << 20))
  ((bytes < floor)) && bytes=$floor
  echo "--block-cache-bytes $bytes"
}

# Every node runs one I/O loop per core when not told; NODES nodes on one machine share the cores
# instead: NODES x cores loops on `cores` cores split each loop iteration's RPC frames, replica
# batches and WAL writes and cost 21% more CPU per 3-node PUT (docs/benchmarks.md, "3-node PUT:
# where the time goes").
io_args() {
  case " $DKV_ARGS " in *" --io-threads"*) return 0 ;; esac
  local cores
  cores=$(nproc 2>/dev/null || echo 1)
  local n=$((cores / NODES))
  ((n < 1)) && n=1
  echo "--io-threads $n"
}

start_node() {
  local i=$1
  if [[ -n "$(pid_of "$i" || true)" ]]; then echo "node $i already running"; return 0; fi
  if [[ ! -x "$DKV_BIN" ]]; then echo "cluster.sh: $DKV_BIN not built (make build)" >&2; exit 1; fi
  mkdir -p "$DATA_ROOT/node$i"
  # shellcheck disable=SC2086
  "$DKV_BIN" --listen "127.0.0.1:$((BASE_PORT + i))" --self "$(url "$i")" \
    --cluster "$(cluster_list)" --data "$DATA_ROOT/node$i" \
    --cluster-secret-file "$(secret_file)" $(cache_args) $(io_args) $DKV_ARGS \
    >>"$(logfile "$i")" 2>&1 </dev/null &
  echo $! >"$(pidfile "$i")"
  wait_up "$i" && echo "node $i up at $(url "$i") (pid $!, log $(logfile "$i"))"
}

signal_node() {
  local i=$1 sig=$2 pid deadline
  pid=$(pid_of "$i" || true)
  if [[ -z "$pid" ]]; then echo "node $i not running"; return 0; fi
  kill "-$sig" "$pid"
  deadline=$((SECONDS + 15))
  while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.05; done
  if kill -0 "$pid" 2>/dev/null; then
    echo "cluster.sh: node $i (pid $pid) still running 15 s after SIG$sig; sending KILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$(pidfile "$i")"
  echo "node $i stopped (SIG$sig)"
}

status() {
  local i pid
  for ((i = 0; i < NODES; i++)); do
    pid=$(pid_of "$i" || true)
    if [[ -n "$pid" ]] && curl -fsS -o /dev/null "$(url "$i")/v0/status" 2>/dev/null; then
      echo "node $i  $(url "$i")  up (pid $pid)"
    elif [[ -n "$pid" ]]; then
      echo "node $i  $(url "$i")  running but not answering (pid $pid)"
    else
      echo "node $i  $(url "$i")  down"
    fi
  done
}

run_foreground() {
  mkdir -p "$DATA_ROOT"
  trap 'echo; echo "stopping the cluster..."; for i in $(all_or_one); do signal_node "$i" TERM; done; exit 0' INT TERM
  for i in $(all_or_one); do start_node "$i"; done
  local u; u=$(url 0)
  cat <<TXT

dkv: $NODES-node cluster running (data in $DATA_ROOT, logs in $DATA_ROOT/node*.log).
Status page: open $u/ in a browser.
Try, from another terminal:
  curl -X PUT -d hello '$u/v0/entity?id=k'
  curl '$(url $((NODES > 1 ? 1 : 0)))/v0/entity?id=k'
  curl -X DELETE '$u/v0/entity?id=k'
  curl '$u/v0/entities?start=a'
  curl '$u/v0/status?verbose=1'
  scripts/cluster.sh kill $((NODES - 1))       # then try the requests again; restart with 'start $((NODES - 1))'
Ctrl-C stops every node cleanly.

TXT
  while true; do
    sleep 1 &
    wait $! || true
  done
}

cmd=${1:-}
case "$cmd" in
  run) run_foreground ;;
  start) for i in $(all_or_one "${2:-}"); do start_node "$i"; done ;;
  stop) for i in $(all_or_one "${2:-}"); do signal_node "$i" TERM; done ;;
  kill) for i in $(all_or_one "${2:-}"); do signal_node "$i" KILL; done ;;
  restart) for i in $(all_or_one "${2:-}"); do signal_node "$i" TERM; start_node "$i"; done ;;
  status) status ;;
  *) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
