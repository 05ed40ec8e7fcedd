#!/usr/bin/python3
"""dkv benchmark runner: throughput and fixed-rate latency of every scenario, against an nginx
ceiling measured in the same run, written up as bench/results/<date>-<commit>.md (+ .json, .png).

    /usr/bin/python3 bench/bench.py [--quick] [--fill-keys N | --fill-gib-per-node X] ...
    (make bench, make bench QUICK=1; --help lists every option)

What one run does (docs/benchmarks.md explains the method and the choice of tools):
 1. nginx answering `return 200 "ok"` (worker_processes = dkv's I/O threads): the HTTP ceiling.
 2. For each topology (1 node; 3 nodes), start a cluster on fresh data directories, fill it
    (default 1M keys x 1 KiB random values, every node holding every key), stop it and keep the
    data as a snapshot. Every scenario then starts from its own copy of that snapshot, warms up,
    and is measured.
 3. Each target (nginx or a scenario): maximum throughput in closed loop (wrk -t1 -c64 -d10s),
    median of --runs runs; then latency at fixed rates of 50% and 80% of that median
    (p50/p90/p99/p99.9, corrected for coordinated omission), each a median of --runs runs.
    Every run also records the servers' CPU: utime + stime of all server processes (nginx
    master + workers, every dkv node) from /proc over the run, per request answered.
 4. Convergence, on the 3-node fill: ab-n3-a2f3-get / ab-n3-a2f3-put run the ack=2/from=3
    scenario on two clusters side by side, hinted handoff + read repair on (defaults) and off,
    alternating closed-loop runs on, off, on, off, ... (CPU/request and throughput ratios);
    hints-drain stops node 3, writes 100k keys through nodes 1 and 2 (100k hints), starts node 3
    and measures the time until no hint is pending and GET latency at a fixed rate meanwhile,
    against the same load without a drain.
 5. Anti-entropy (`repair`), on the 3-node fill with hints, read repair and periodic rounds off:
    node 3 stopped, K keys written through nodes 1 and 2 (--repair-keys, default 100 and
    10,000), node 3 started, POST /v0/admin/repair on it: time to converge, bytes exchanged
    against the data's size, GET latency at a fixed rate meanwhile vs without; and the bytes
    of a repair over identical replicas (the trees' top level only).
 6. Speculative reads (`spec`), on the 3-node fill: the ack=2/from=3 GET workload at a fixed rate
    through node 1 on two clusters side by side, --read-fanout all and speculative: server CPU
    per GET (all three nodes) and latency, healthy and with node 3 SIGSTOPped 1 s on / 1 s off.
Every load is bounded in time (wrk -d plus a subprocess timeout); every process it starts is
stopped on the way out, Ctrl-C included. Python standard library only.
"""

import argparse
import datetime
import json
import os
import platform
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent
LUA = ROOT / "bench" / "lua"
CLUSTER_SH = ROOT / "scripts" / "cluster.sh"

# Workload of the first issue's numbers: keys key1..key100000, small PUT values.
WORKLOAD_KEYS = 100000
PUT_VALUE_BYTES = 16
FILL_VALUE_BYTES = 1024
CONNECTIONS = 64
# How long a started node may take to answer: it replays its write-ahead log first, and with the
# digest column family (dkv 0.3) a filled node keeps ~1 GiB of it (docs/benchmarks.md).
NODE_START_S = 180


@dataclass
class Fill:
    """A data set the scenarios start from: a cluster of `nodes` nodes (started with
    `dkv_args`), written once through node 0 with `fill.lua` (`keys` keys x `value_bytes`
    random bytes, `ack`/`from` of the fill's PUTs), stopped and kept as a snapshot."""
    name: str
    nodes: int
    what: str
    value_bytes: int = FILL_VALUE_BYTES
    scale: int = 1  # x the default fill's bytes (--fill-keys x 1 KiB)
    dkv_args: str = ""
    ack: Optional[int] = None
    frm: Optional[int] = None

    def keys(self, fill_keys: int) -> int:
        return max(1, fill_keys * self.scale * FILL_VALUE_BYTES // self.value_bytes)

    def query(self) -> List[str]:
        return [] if self.ack is None else [f"ack={self.ack}", f"from={self.frm}"]


FILLS = {f.name: f for f in [
    Fill("n1", 1, "1 node"),
    Fill("n3", 3, "3 nodes, every node holds every key (fill at ack=3/from=3)", ack=3, frm=3),
    Fill("n5", 5, "5 nodes `--replication-factor 3`, every key on its 3 replicas (fill at "
         "ack=3/from=3)", dkv_args="--replication-factor 3", ack=3, frm=3),
    Fill("x10", 1, "1 node, 10x the default fill", scale=10),
    Fill("v64k", 1, "1 node, values of 64 KiB, as many bytes as the default fill",
         value_bytes=64 << 10),
    Fill("v1m", 1, "1 node, values of 1 MiB, as many bytes as the default fill",
         value_bytes=1 << 20),
]}
# The GET and PUT workload's key set: the first HOT_BYTES of values (key1..key100000 of 1 KiB
# values, the first issue's workload; fewer keys for larger values) or, for `cold` scenarios,
# every key of the fill, so that most reads miss the block cache.
HOT_BYTES = WORKLOAD_KEYS * FILL_VALUE_BYTES


@dataclass
class Scenario:
    name: str
    nodes: int
    op: str  # "get" | "put"
    ack: Optional[int] = None
    frm: Optional[int] = None
    fill: str = ""  # FILLS key; default "n1" / "n3" by node count
    cold: bool = False  # keys uniform over the whole fill instead of the hot set
    group: str = "core"  # see GROUPS
    put_bytes: Optional[int] = None  # PUT body; default PUT_VALUE_BYTES (16 B)

    def __post_init__(self):
        if not self.fill:
            self.fill = "n1" if self.nodes == 1 else f"n{self.nodes}"

    def value_bytes(self) -> int:
        """Bytes of the values this scenario's requests carry (GET: the fill's)."""
        if self.op == "put":
            return self.put_bytes or PUT_VALUE_BYTES
        return FILLS[self.fill].value_bytes

    def title(self) -> str:
        where = "1 node" if self.nodes == 1 else f"{self.nodes} nodes"
        q = "" if self.ack is None else f" ack={self.ack}/from={self.frm}"
        t = f"{where}{q} {self.op.upper()}"
        f = FILLS[self.fill]
        extra = []
        if f.scale != 1:
            extra.append(f"{f.scale}x data")
        if self.op == "put" and self.put_bytes:
            extra.append(f"{fmt_size(self.put_bytes)} values")
        elif self.op == "get" and f.value_bytes != FILL_VALUE_BYTES:
            extra.append(f"{fmt_size(f.value_bytes)} values")
        if self.cold:
            extra.append("cold keys")
        return t + (f" ({', '.join(extra)})" if extra else "")


def fmt_size(n: int) -> str:
    if n >= 1 << 20 and n % (1 << 20) == 0:
        return f"{n >> 20} MiB"
    if n >= 1 << 10 and n % (1 << 10) == 0:
        return f"{n >> 10} KiB"
    return f"{n} B"


SCENARIOS = [
    Scenario("single-get", 1, "get"),
    Scenario("single-put", 1, "put"),
    Scenario("single-get-cold", 1, "get", cold=True),
    Scenario("n3-a1f1-get", 3, "get", 1, 1),
    Scenario("n3-a1f1-put", 3, "put", 1, 1),
    Scenario("n3-a2f3-get", 3, "get", 2, 3),
    Scenario("n3-a2f3-put", 3, "put", 2, 3),
    Scenario("n3-a3f3-put", 3, "put", 3, 3),
    Scenario("n5-a2f3-get", 5, "get", 2, 3, group="n5"),
    Scenario("n5-a2f3-put", 5, "put", 2, 3, group="n5"),
    Scenario("v64k-get", 1, "get", fill="v64k", group="values"),
    Scenario("v64k-put", 1, "put", fill="v64k", group="values", put_bytes=64 << 10),
    Scenario("v1m-get", 1, "get", fill="v1m", group="values"),
    Scenario("v1m-put", 1, "put", fill="v1m", group="values", put_bytes=1 << 20),
    Scenario("x10-get", 1, "get", fill="x10", group="x10"),
    Scenario("x10-get-cold", 1, "get", fill="x10", cold=True, group="x10"),
    Scenario("x10-put", 1, "put", fill="x10", group="x10"),
]
SCENARIO_BY_NAME = {s.name: s for s in SCENARIOS}
# nginx targets: the static 200 (ceiling of every small-value scenario) and static files of
# the value sizes the `values` scenarios read (1 KiB: the default fill's values, single-get).
NGINX_FILES = [FILL_VALUE_BYTES, 64 << 10, 1 << 20]

# Convergence scenarios (3 nodes, on the same fill as the scenarios above):
# - A/B: the ack=2/from=3 scenario on two clusters side by side, one with the defaults (hinted
#   handoff and read repair on), one with both off; closed-loop runs alternate on, off, on, off...
# - hints-drain: node 3 stopped, DRAIN_KEYS written through nodes 1 and 2 (hints pile up), node 3
#   started; time until no hint is pending and client GET latency meanwhile vs without a drain.
AB_SCENARIOS = {"ab-n3-a2f3-get": "n3-a2f3-get", "ab-n3-a2f3-put": "n3-a2f3-put"}
AB_OFF_ARGS = "--hinted-handoff off --read-repair off"
AB_GOAL_EFFICIENCY = 0.9  # CPU per request on <= off / 0.9
DRAIN_SCENARIO = "hints-drain"
# - repair: anti-entropy alone (no hints, no read repair, no periodic rounds); node 3 stopped, K
#   keys written through nodes 1 and 2, node 3 started, POST /v0/admin/repair on node 3: time to
#   converge, bytes exchanged, client GET latency meanwhile vs without.
REPAIR_SCENARIO = "repair"
REPAIR_ARGS = "--hinted-handoff off --read-repair off --anti-entropy-interval-ms 0"
# - spec: speculative reads. The ack=2/from=3 GET workload on two clusters side by side, one with
#   --read-fanout all, one with --read-fanout speculative, at one fixed rate through node 1:
#   healthy, and with node 3 stopped by SIGSTOP for SPEC_STALL_S out of every 2 x SPEC_STALL_S.
SPEC_SCENARIO = "spec"
SPEC_MODES = ("all", "speculative")
SPEC_STALL_S = 1.0
SPEC_GOAL_P99_RATIO = 1.5  # speculative: p99 with a stalled replica <= 1.5 x healthy p99
EXTRA_SCENARIOS = list(AB_SCENARIOS) + [DRAIN_SCENARIO, REPAIR_SCENARIO, SPEC_SCENARIO]
ALL_SCENARIO_NAMES = list(SCENARIO_BY_NAME) + EXTRA_SCENARIOS
# --scenarios (make bench SCENARIOS=...) takes scenario names and these group names; `default`
# is what `make bench` runs, `all` adds the 10x fill (about 10 min of filling by itself).
GROUPS = {g: [s.name for s in SCENARIOS if s.group == g] for g in ("core", "n5", "values", "x10")}
GROUPS["convergence"] = EXTRA_SCENARIOS
GROUPS["efficiency"] = ["single-get", "single-put", "n3-a2f3-get", "n3-a2f3-put"]
GROUPS["default"] = [n for n in ALL_SCENARIO_NAMES if n not in GROUPS["x10"]]
GROUPS["all"] = list(ALL_SCENARIO_NAMES)
DEFAULT_HINT_REPLAY_BYTES_PER_S = 8 << 20
DEFAULT_AE_BYTES_PER_S = 32 << 20

# Targets the lead asked for: (scenario, ratio to nginx at least, p99 at 50% at most in ms).
TARGETS = [
    ("single-get", 0.7, None),
    ("single-put", 0.6, None),
    ("n3-a2f3-get", 0.25, 5.0),
    ("n3-a2f3-put", 0.25, 5.0),
]
# Issue 11's efficiency table: CPU efficiency (nginx us/req ÷ dkv us/req, same run) today (the
# issue's measurement) and the goal.
EFFICIENCY_GOALS = [
    ("single-get", 0.59, 0.85),
    ("single-put", 0.63, 0.75),
    ("n3-a2f3-get", 0.19, 0.40),
    ("n3-a2f3-put", 0.27, 0.35),
]
EFFICIENCY_NAMES = {n for n, _, _ in EFFICIENCY_GOALS}
# Issue 11 item 4: peak RSS per node <= block cache + memtables + this.
RSS_SLACK_BYTES = 64 << 20
# Memtable limit of a node that does not export dkv_rocksdb_memtable_limit_bytes: RocksDB's
# defaults, 3 column families x max_write_buffer_number 2 x write_buffer_size 64 MiB.
DEFAULT_MEMTABLE_LIMIT_BYTES = 3 * 2 * (64 << 20)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class BenchError(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# Processes and ports


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def http_get(url: str, timeout_s: float = 5.0):
    """Returns (status, body bytes); status 0 when the server could not be reached."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def wait_http(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if http_get(url, 1.0)[0] == 200:
            return
        time.sleep(0.05)
    raise BenchError(f"{url} did not answer 200 within {timeout_s:.0f} s")


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (exited, waiting to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


class Nginx:
    """nginx as an unprivileged foreground process with a generated config in a temp dir."""

    def __init__(self, port: int, workers: int, files: List[int] = ()):
        self.port = port
        self.workers = workers
        self.files = list(files)
        self.dir = Path(tempfile.mkdtemp(prefix="dkv-bench-nginx-"))
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> None:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(nginx).exists():
            raise BenchError("nginx not found (bash scripts/install-deps.sh --bench)")
        if not port_free(self.port):
            raise BenchError(f"port {self.port} (nginx) is in use; pass --base-port")
        d = self.dir
        # Static files of the value sizes (random bytes, like the values dkv serves), served
        # from the page cache with sendfile, as nginx is usually deployed.
        (d / "www" / "f").mkdir(parents=True, exist_ok=True)
        for n in self.files:
            (d / "www" / "f" / str(n)).write_bytes(os.urandom(n))
        # Started as root, nginx's workers run as `nobody`: they must be able to read them.
        for x in (d, d / "www", d / "www" / "f"):
            x.chmod(0o755)
        for n in self.files:
            (d / "www" / "f" / str(n)).chmod(0o644)
        (d / "nginx.conf").write_text(f"""# generated by bench/bench.py: the HTTP ceiling
worker_processes {self.workers};
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 75s;
    server {{
        listen 127.0.0.1:{self.port} reuseport;
        location / {{ return 200 "ok"; }}
        location /f/ {{ root {d}/www; sendfile on; tcp_nopush on; }}
    }}
}}
""")
        self.proc = subprocess.Popen(
            [nginx, "-p", str(d), "-c", str(d / "nginx.conf"), "-e", str(d / "error.log")],
            stdout=subprocess.DEVNULL, stderr=open(d / "stderr.log", "wb"),
            start_new_session=True)
        try:
            wait_http(self.url(), 10)
        except BenchError:
            self.stop()
            raise BenchError("nginx did not start: " + (d / "stderr.log").read_text()[-500:])
        for n in self.files:
            status, body = http_get(self.url(n))
            if status != 200 or len(body) != n:
                self.stop()
                raise BenchError(f"nginx: GET {self.url(n)} gave {status} with {len(body)} "
                                 f"bytes instead of 200 with {n}")

    def url(self, file_bytes: Optional[int] = None) -> str:
        return f"http://127.0.0.1:{self.port}/" + (f"f/{file_bytes}" if file_bytes else "")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


class Cluster:
    """A local dkv cluster driven through scripts/cluster.sh."""

    def __init__(self, nodes: int, base_port: int, data_root: Path, dkv_bin: Path,
                 dkv_args: str):
        self.nodes = nodes
        self.base_port = base_port
        self.data_root = data_root
        self.env = dict(os.environ, NODES=str(nodes), BASE_PORT=str(base_port),
                        DATA_ROOT=str(data_root), DKV_BIN=str(dkv_bin), DKV_ARGS=dkv_args,
                        WAIT_UP_S=str(NODE_START_S))
        self.running = False

    def url(self, i: int = 0) -> str:
        return f"http://127.0.0.1:{self.base_port + i}/"

    def _sh(self, *args: str, timeout_s: float = 120) -> None:
        r = subprocess.run(["bash", str(CLUSTER_SH), *args], env=self.env, cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=timeout_s)
        if r.returncode != 0:
            raise BenchError(f"cluster.sh {' '.join(args)} failed:\n{r.stdout}")

    def start(self) -> None:
        for i in range(self.nodes):
            if not port_free(self.base_port + i):
                raise BenchError(f"port {self.base_port + i} is in use; pass --base-port")
        self.data_root.mkdir(parents=True, exist_ok=True)
        self.running = True
        self._sh("start", timeout_s=30 + (NODE_START_S + 5) * self.nodes)

    def stop(self) -> None:
        """SIGTERM to every node at once, then wait for each to exit (SIGKILL after 20 s).

        Not `cluster.sh stop`: it stops nodes one by one and polls with `kill -0`, which also
        succeeds on a zombie; a node started by cluster.sh is reparented to PID 1, and where PID 1
        reaps late (containers, this sandbox: about 1-2 s) each stop waits for the reaper.
        """
        if not self.running:
            return
        self.running = False
        pids = []
        for i in range(self.nodes):
            f = self.data_root / f"node{i}.pid"
            try:
                pids.append((f, int(f.read_text())))
            except (OSError, ValueError):
                continue
        for _, pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 20
        for f, pid in pids:
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.02)
            if alive(pid):
                log(f"node pid {pid} still running 20 s after SIGTERM; sending SIGKILL")
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                while alive(pid):
                    time.sleep(0.02)
            f.unlink(missing_ok=True)

    def pid(self, i: int) -> int:
        return int((self.data_root / f"node{i}.pid").read_text())

    def pids(self) -> List[int]:
        return [self.pid(i) for i in range(self.nodes)]

    def stop_node(self, i: int) -> None:
        """SIGTERM to node i and wait for it to exit (SIGKILL after 20 s); see stop()."""
        f = self.data_root / f"node{i}.pid"
        pid = int(f.read_text())
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 20
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if alive(pid):
            log(f"node {i} (pid {pid}) still running 20 s after SIGTERM; sending SIGKILL")
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            while alive(pid):
                time.sleep(0.02)
        f.unlink(missing_ok=True)

    def start_node(self, i: int) -> None:
        """Starts node i again on its data directory; returns once it answers /v0/status."""
        if not port_free(self.base_port + i):
            raise BenchError(f"port {self.base_port + i} is still in use")
        self._sh("start", str(i), timeout_s=30 + NODE_START_S)

    def json(self, i: int, path: str) -> dict:
        status, body = http_get(self.url(i) + path, 5.0)
        if status != 200:
            raise BenchError(f"GET {self.url(i)}{path}: {status} {body[:200]!r}")
        return json.loads(body)


# ---------------------------------------------------------------------------------------------
# Load generation


CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_ticks(pids: List[int]) -> int:
    """utime + stime of these processes (all their threads), in clock ticks."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total


def busy_ticks() -> int:
    """user + nice + system ticks of all CPUs (irq/softirq left out on both sides)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return v[0] + v[1] + v[2]


def descendants(pid: int) -> List[int]:
    """pid and its children (enough for nginx: a master and its workers)."""
    out = [pid]
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                st = (d / "stat").read_text()
                if int(st.rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, ValueError, IndexError):
                pass
    return out


def can_raise_priority() -> bool:
    r = subprocess.run(["nice", "-n", "-10", "nice"], stdout=subprocess.PIPE,
                       stderr=subprocess.DEVNULL, text=True)
    return r.returncode == 0 and r.stdout.strip() == "-10"


@dataclass
class LoadGen:
    wrk: str
    wrk2: Optional[str]
    connections: int = CONNECTIONS
    # Fixed-rate runs only: the generator should behave like a client on its own machine, so on
    # 2 shared cores it gets the CPU as soon as a send is due (nice -10) instead of queueing
    # behind the server's threads; that queueing would show up as lag, not as server latency.
    nice_fixed_rate: bool = False

    def describe(self) -> str:
        nice = " (fixed-rate runs at nice -10)" if self.nice_fixed_rate else ""
        if self.wrk2:
            return (f"wrk2 ({self.wrk2}) -R for fixed rates (CO-corrected by wrk2){nice}; "
                    f"wrk ({self.wrk}) for closed loop")
        return ("wrk " + wrk_version(self.wrk) + " for both; fixed rates paced by "
                "bench/lua/lib.lua, latency CO-corrected by wrk's stats_correct, lag reported "
                "separately" + nice)

    def run(self, url: str, script: str, args: List[str], duration_s: float,
            rate: Optional[float] = None, timeout_s: str = "5s",
            server_pids: Optional[List[int]] = None) -> dict:
        """One bounded wrk run; returns the DKV_RESULT record plus the command line.

        With `server_pids`, also `other_cpu_pct`: CPU used meanwhile by processes other than
        wrk and these servers, in % of all cores (another build on a shared machine, say); and
        the servers' own CPU: `server_cpu_s` (utime + stime of every server process over the
        run, from /proc/PID/stat, all threads) and `cpu_us_per_req` = that / requests answered.
        CPU per request is the figure to compare across runs on this shared machine: throughput
        swings with whatever else gets the cores, the work done per request does not.
        """
        d = max(1, int(round(duration_s)))
        if rate is not None and self.wrk2:
            cmd = [self.wrk2, "-t1", f"-c{self.connections}", f"-d{d}s", f"-R{int(rate)}",
                   "--latency", "--timeout", timeout_s, "-s", str(LUA / script), url, "--",
                   *args, "wrk2=1", f"rate={int(rate)}"]
        else:
            cmd = [self.wrk, "-t1", f"-c{self.connections}", f"-d{d}s", "--timeout", timeout_s,
                   "-s", str(LUA / script), url, "--", *args]
            if rate is not None:
                cmd.append(f"rate={rate:.1f}")
        if rate is not None and self.nice_fixed_rate:
            cmd = ["nice", "-n", "-10"] + cmd
        pids = server_pids or []
        per0 = [proc_ticks([p]) for p in pids]
        t0, b0, s0 = time.monotonic(), busy_ticks(), proc_ticks(pids)
        c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        try:
            r = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, timeout=d + 60)
        except subprocess.TimeoutExpired:
            raise BenchError(f"wrk did not finish within {d + 60} s: {' '.join(cmd)}")
        m = re.search(r"^DKV_RESULT (\{.*\})$", r.stdout, re.M)
        if r.returncode != 0 or m is None:
            raise BenchError(f"wrk failed ({r.returncode}): {' '.join(cmd)}\n"
                             f"{r.stdout[-1500:]}{r.stderr[-1500:]}")
        res = json.loads(m.group(1))
        c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        wall = time.monotonic() - t0
        server_s = (proc_ticks(pids) - s0) / CLK_TCK
        ours = server_s + (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)
        other = (busy_ticks() - b0) / CLK_TCK - ours
        res["other_cpu_pct"] = max(0.0, 100.0 * other / (wall * (os.cpu_count() or 1)))
        if pids:
            res["server_pids"] = list(pids)
            res["server_cpu_s"] = round(server_s, 3)
            res["server_cpu_s_by_pid"] = [round((proc_ticks([p]) - t) / CLK_TCK, 3)
                                          for p, t in zip(pids, per0)]
            res["cpu_us_per_req"] = (1e6 * server_s / res["requests"]) if res["requests"] else None
        res["cmd"] = " ".join(cmd)
        res["target_rate"] = rate
        res["errors"] = sum(res[k] for k in ("err_connect", "err_read", "err_write",
                                             "err_timeout", "err_status"))
        return res


def wrk_version(wrk: str) -> str:
    r = subprocess.run([wrk, "-v"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    m = re.search(r"wrk (\S+)", r.stdout)
    return m.group(1) if m else "?"


class FillFailed(BenchError):
    """Some of a fill's requests were not answered with success (`failed` of them)."""

    def __init__(self, msg: str, failed: int):
        super().__init__(msg)
        self.failed = failed


def fill(gen: LoadGen, url: str, keys: int, value_bytes: int, query_args: List[str],
         work: Path, start: int = 1, prefix: str = "key", script: str = "fill.lua") -> dict:
    """PUTs <prefix><start>..<prefix><start+keys-1> once each (bench/lua/fill.lua; with
    script="prime.lua", GETs them once each); returns {keys, seconds, rate}."""
    out = work / f"fill-{os.getpid()}-{random.randrange(1 << 30)}"
    bound_s = 120 + keys // 1000  # generous: at least 1000 keys/s
    cmd = [gen.wrk, "-t1", "-c32", f"-d{bound_s}s", "--timeout", "10s", "-s",
           str(LUA / script), url, "--", f"keys={keys}", "threads=1",
           f"value={value_bytes}", f"out={out}", f"start={start}", f"prefix={prefix}",
           *query_args]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    marker = Path(f"{out}.0")
    try:
        while not marker.exists():
            if proc.poll() is not None:
                raise BenchError(f"fill ended before all keys were written:\n"
                                 f"{proc.stdout.read()[-1500:]}")
            time.sleep(0.1)
        seconds = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
    created, failed = (int(x) for x in marker.read_text().split())
    marker.unlink()
    if failed:
        raise FillFailed(f"{script}: {failed} of {keys} requests failed", failed)
    return {"keys": created, "seconds": round(seconds, 1), "rate": round(created / seconds)}


def prime(gen: LoadGen, cl: "Cluster", s: "Scenario", fill_keys: int, work: Path
          ) -> Optional[dict]:
    """Before a GET scenario: its keys read once each, in order (bench/lua/prime.lua), as many
    as the block cache of node 0 holds (all of a hot set; of a cold scenario's whole data set,
    the first cache-capacity's worth), so that the cache is as full as in a server that has
    served these keys for a while. Without it the runs pay for filling the cache (a first-touch
    page fault and an insert per block read, about 15-20 us per miss here, against reusing an
    evicted block's memory in a full cache): a larger cache then looks slower for minutes.
    Returns the fill() record (keys, seconds) or None (PUT scenarios)."""
    if s.op != "get":
        return None
    keys = scenario_keys(s, fill_keys)
    cap = node_memory(cl)[0].get("block_cache_capacity_bytes") if cl.nodes else None
    if s.cold and cap:
        keys = min(keys, max(1, cap // FILLS[s.fill].value_bytes))
    q = [] if s.ack is None else [f"ack={s.ack}", f"from={s.frm}"]
    t = time.monotonic()
    r = fill(gen, cl.url(0), keys, 0, q, work, script="prime.lua")
    log(f"  primed: read {keys:,} keys once in {time.monotonic() - t:.1f} s")
    return r


def verify_fill(url: str, keys: int, value_bytes: int, query: str) -> None:
    rng = random.Random(7)
    sample = [1, keys, min(keys, WORKLOAD_KEYS)] + [rng.randint(1, keys) for _ in range(20)]
    for k in sample:
        status, body = http_get(f"{url}v0/entity?id=key{k}{query}")
        if status != 200 or len(body) != value_bytes:
            raise BenchError(f"fill check: GET key{k} gave {status} with {len(body)} bytes")


# ---------------------------------------------------------------------------------------------
# Measurement


def median(xs):
    return statistics.median(xs) if xs else 0.0


def summarize(runs: List[dict]) -> dict:
    """Median of each figure over the runs, plus min/max of the rate and summed errors."""
    out = {"runs": len(runs)}
    for k in ("rps", "p50_us", "p90_us", "p99_us", "p999_us", "max_us", "lag_p50_us",
              "lag_p99_us", "other_cpu_pct"):
        out[k] = median([r[k] for r in runs])
    out["rps_min"] = min(r["rps"] for r in runs)
    out["rps_max"] = max(r["rps"] for r in runs)
    out["errors"] = sum(r["errors"] for r in runs)
    out["requests"] = sum(r["requests"] for r in runs)
    cpu = [r["cpu_us_per_req"] for r in runs if r.get("cpu_us_per_req") is not None]
    out["cpu_us_per_req"] = median(cpu) if cpu else None
    sent = sum(r["sent"] for r in runs)
    out["late_pct"] = 100.0 * sum(r["late"] for r in runs) / sent if sent else 0.0
    return out


def measure(gen: LoadGen, url: str, script: str, args: List[str], opts,
            pids: List[int], ref: Optional[Tuple[str, List[int]]] = None) -> dict:
    """Closed-loop maximum, then fixed rates at opts.rates of it; every figure a median.

    With `ref` (nginx's URL and process ids), each closed-loop run is paired with a closed-loop
    run of nginx's static 200 just before it, and `max.paired` holds both sides' CPU per
    request and their ratio per pair (the efficiency), so drift of the machine between the
    start of the bench and this scenario (nginx's own cost moved 17.6 -> 13.5 us/req between
    two runs of the same binary) cancels within each pair."""
    result = {"max": None, "fixed": []}
    runs = []
    pairs = []
    for i in range(opts.runs):
        if ref is not None:
            rn = gen.run(ref[0], "static.lua", [], opts.duration, server_pids=ref[1])
            log(f"    nginx run {i + 1}/{opts.runs} (paired): {rn['rps']:.0f} req/s, "
                f"server CPU {fmt_cpu(rn.get('cpu_us_per_req'))} us/req, "
                f"other CPU {rn['other_cpu_pct']:.0f}%")
        r = gen.run(url, script, args, opts.duration, server_pids=pids)
        log(f"    max run {i + 1}/{opts.runs}: {r['rps']:.0f} req/s, "
            f"server CPU {fmt_cpu(r.get('cpu_us_per_req'))} us/req, errors {r['errors']}, "
            f"other CPU {r['other_cpu_pct']:.0f}%")
        runs.append(r)
        if ref is not None and rn.get("cpu_us_per_req") and r.get("cpu_us_per_req"):
            pairs.append({"nginx_us": rn["cpu_us_per_req"], "dkv_us": r["cpu_us_per_req"],
                          "efficiency": rn["cpu_us_per_req"] / r["cpu_us_per_req"],
                          "nginx_other_cpu_pct": rn["other_cpu_pct"]})
    result["max"] = summarize(runs)
    result["max"]["all"] = runs
    if pairs:
        result["max"]["paired"] = {
            "pairs": pairs,
            "nginx_us": median([x["nginx_us"] for x in pairs]),
            "efficiency": median([x["efficiency"] for x in pairs]),
            "efficiency_min": min(x["efficiency"] for x in pairs),
            "efficiency_max": max(x["efficiency"] for x in pairs)}
    peak = result["max"]["rps"]
    if peak < 1:
        log("    no request answered in the closed-loop runs: no fixed-rate runs")
        return result
    for frac in opts.rates:
        rate = peak * frac
        runs = []
        for i in range(opts.runs):
            r = gen.run(url, script, args, opts.rate_duration, rate=rate, server_pids=pids)
            log(f"    {frac:.0%} = {rate:.0f} req/s run {i + 1}/{opts.runs}: "
                f"got {r['rps']:.0f}, p50 {r['p50_us'] / 1e3:.2f} p99 {r['p99_us'] / 1e3:.2f} "
                f"p99.9 {r['p999_us'] / 1e3:.2f} ms, lag p99 {r['lag_p99_us'] / 1e3:.2f} ms, "
                f"server CPU {fmt_cpu(r.get('cpu_us_per_req'))} us/req, "
                f"errors {r['errors']}, other CPU {r['other_cpu_pct']:.0f}%")
            runs.append(r)
        s = summarize(runs)
        s["fraction"] = frac
        s["target_rate"] = rate
        s["all"] = runs
        result["fixed"].append(s)
    return result


def scenario_keys(s: Scenario, fill_keys: int) -> int:
    """Size of the scenario's key space key1..keyN: the hot set (HOT_BYTES of values) or, for a
    cold scenario, every key of its fill."""
    f = FILLS[s.fill]
    n = f.keys(fill_keys)
    return n if s.cold else min(n, max(1, HOT_BYTES // f.value_bytes))


def scenario_args(s: Scenario, fill_keys: int) -> (str, List[str]):
    args = [f"keys={scenario_keys(s, fill_keys)}"]
    if s.ack is not None:
        args += [f"ack={s.ack}", f"from={s.frm}"]
    if s.op == "put":
        args.append(f"value={s.value_bytes()}")
    return f"{s.op}.lua", args


def du_bytes(path: Path) -> int:
    total = 0
    for p in path.rglob("*"):
        if p.is_file() and not p.is_symlink():
            total += p.stat().st_size
    return total


def cpu_busy_pct(seconds: float = 1.0) -> float:
    """Share of all CPUs busy over `seconds` (before anything of ours runs: background load)."""
    def snap():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + (v[4] if len(v) > 4 else 0)
        return sum(v), idle
    t1, i1 = snap()
    time.sleep(seconds)
    t2, i2 = snap()
    return 100.0 * (1 - (i2 - i1) / max(1, t2 - t1))


def proc_memory(pid: int) -> dict:
    """VmHWM (peak resident set since the process started) and VmRSS of `pid`, in bytes."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            if k in ("VmHWM", "VmRSS"):
                out[k.lower() + "_bytes"] = int(v.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return out


PROM_LINE = re.compile(r'^(dkv_rocksdb_[a-z_]+)(?:\{cf="([a-z]+)"\})? (\d+)$')


def node_memory(cl: "Cluster") -> List[dict]:
    """Per node: peak and current RSS from /proc, and from its /metrics the block cache's
    capacity / usage / pinned bytes and each column family's memtable and table-reader bytes
    (index and filter blocks held outside the block cache)."""
    out = []
    for i in range(cl.nodes):
        m = proc_memory(cl.pid(i))
        status, body = http_get(cl.url(i) + "metrics", 5.0)
        if status == 200:
            for line in body.decode("latin-1").splitlines():
                g = PROM_LINE.match(line)
                if not g:
                    continue
                name, cf, v = g.group(1)[len("dkv_rocksdb_"):], g.group(2), int(g.group(3))
                if cf is None:
                    m[name] = v
                elif name in ("memtable_bytes", "table_readers_bytes"):
                    m[name] = m.get(name, 0) + v
                    m.setdefault("cf", {}).setdefault(cf, {})[name] = v
        out.append(m)
    return out


def copy_snapshot(snap: Path, root: Path, nodes: int) -> None:
    """A private copy of a filled cluster's data directories for one scenario. SST files are
    immutable once written (RocksDB only ever deletes them), so they are hard-linked, as a
    RocksDB checkpoint does; everything else (WAL, MANIFEST, node state) is copied."""
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)

    def copy(src, dst, *, follow_symlinks=True):
        if src.endswith(".sst"):
            os.link(src, dst)
            return dst
        return shutil.copy2(src, dst, follow_symlinks=follow_symlinks)
    for i in range(nodes):
        shutil.copytree(snap / f"node{i}", root / f"node{i}", symlinks=True,
                        copy_function=copy)


def run_fill(fill_name: str, scenarios: List[Scenario], gen: LoadGen, opts, work: Path,
             dkv_bin: Path, results: dict, extras: List[str] = (),
             ref: Optional[Tuple[str, List[int]]] = None) -> None:
    """Fills the data set `fill_name` once, then runs each scenario on its own copy of it. The
    efficiency table's scenarios pair each closed-loop run with one of nginx at `ref` (see
    measure())."""
    f = FILLS[fill_name]
    nodes = f.nodes
    keys = f.keys(opts.fill_keys)
    dkv_args = f"{opts.dkv_args} {f.dkv_args}".strip()
    base = opts.base_port
    kept = Path(opts.fill_dir) / f"{fill_name}-{keys}x{f.value_bytes}" if opts.fill_dir else None
    if kept is not None and (kept / "fill.json").exists():
        # A fill kept by an earlier run (--fill-dir): the same data for an A/B of two binaries.
        snap = kept
        info = json.loads((kept / "fill.json").read_text())
        info["reused_from"] = str(kept)
        log(f"fill `{fill_name}`: reusing {kept} ({info['keys']:,} keys, filled on "
            f"{info.get('date', '?')})")
        results["fill"][fill_name] = info
    else:
        snap = kept or work / f"snapshot-{fill_name}"
        shutil.rmtree(snap, ignore_errors=True)
        fill_root = work / f"fill-{fill_name}"
        shutil.rmtree(fill_root, ignore_errors=True)
        cl = Cluster(nodes, base, fill_root, dkv_bin, dkv_args)
        log(f"fill `{fill_name}` ({f.what}): {keys:,} keys x {f.value_bytes:,} B")
        try:
            cl.start()
            try:
                info = fill(gen, cl.url(0), keys, f.value_bytes, f.query(), work)
            except FillFailed as e:
                # A PUT that timed out on a replica (1 s) while the machine was saturated is
                # not acknowledged, which is right; a client retries it. fill.lua cannot tell
                # which keys failed (wrk's response() does not say), so the whole pass runs
                # again, once, and the report says so (the LSM then holds two versions of
                # most keys until compaction).
                log(f"  {e}; writing every key again (once)")
                info = fill(gen, cl.url(0), keys, f.value_bytes, f.query(), work)
                info["first_pass_failed"] = e.failed
            verify_fill(cl.url(0), keys, f.value_bytes,
                        "".join(f"&{q}" for q in f.query()))
            log(f"  filled in {info['seconds']} s ({info['rate']} keys/s)")
            info["memory"] = node_memory(cl)
        finally:
            cl.stop()
        snap.mkdir(parents=True)
        for i in range(nodes):
            shutil.move(str(fill_root / f"node{i}"), str(snap / f"node{i}"))
        info["bytes_per_node"] = [du_bytes(snap / f"node{i}") for i in range(nodes)]
        info.update(nodes=nodes, value_bytes=f.value_bytes, what=f.what, dkv_args=f.dkv_args,
                    date=datetime.datetime.now().isoformat(timespec="seconds"))
        shutil.rmtree(fill_root, ignore_errors=True)
        if kept is not None:
            (kept / "fill.json").write_text(json.dumps(info, indent=1) + "\n")
        results["fill"][fill_name] = info

    for s in scenarios:
        if opts.compare_bin:
            run_bin_ab(s, snap, gen, opts, work, dkv_bin, Path(opts.compare_bin_copy), results)
            continue
        root = work / f"run-{s.name}"
        copy_snapshot(snap, root, nodes)
        cl = Cluster(nodes, base, root, dkv_bin, dkv_args)
        script, args = scenario_args(s, opts.fill_keys)
        log(f"scenario {s.name} ({s.title()}): fresh copy of the filled data, "
            f"{args[0]}, warm-up {opts.warmup:g} s")
        try:
            t = time.monotonic()
            cl.start()
            start_s = round(time.monotonic() - t, 1)
            pids = [cl.pid(i) for i in range(nodes)]
            settle = None
            if opts.settle_s > 0:
                # Background work left from the start (a flush of what the write-ahead log
                # replayed, compactions) would be charged to the first runs' requests.
                settle = wait_quiet(pids, opts.settle_s)
                log(f"  started in {start_s} s, idle after {settle['waited_s']} more s "
                    f"(last second: {settle['last_cores']} cores)")
            primed = prime(gen, cl, s, opts.fill_keys, work)
            if opts.warmup > 0:
                gen.run(cl.url(0), script, args, opts.warmup)
            res = measure(gen, cl.url(0), script, args, opts, pids,
                          ref if s.name in EFFICIENCY_NAMES else None)
            res["primed"] = primed
            res["start_s"] = start_s
            res["settle"] = settle
            res["keys"] = scenario_keys(s, opts.fill_keys)
            res["value_bytes"] = s.value_bytes()
            res["memory"] = node_memory(cl)
            log(f"  peak RSS per node {', '.join(fmt_mib(m.get('vmhwm_bytes')) for m in res['memory'])}"
                f" MiB")
            results["scenarios"][s.name] = res
        finally:
            cl.stop()
            if not opts.keep:
                shutil.rmtree(root, ignore_errors=True)
    ab = [n for n in extras if n in AB_SCENARIOS]
    if ab:
        run_ab(ab, snap, gen, opts, work, dkv_bin, results)
    if DRAIN_SCENARIO in extras:
        run_drain(snap, gen, opts, work, dkv_bin, results)
    if REPAIR_SCENARIO in extras:
        run_repair(snap, gen, opts, work, dkv_bin, results)
    if SPEC_SCENARIO in extras:
        run_spec(snap, gen, opts, work, dkv_bin, results)
    if not opts.keep and kept is None:
        shutil.rmtree(snap, ignore_errors=True)


def reidentify(root: Path, nodes: int) -> None:
    """Lets a copy of a cluster's data run under other URLs (ports): a node's `identity` names
    its URL and dkv refuses another node's directory (cluster/identity.h). Without `identity`,
    `peers` and `state` but with its database, a node takes a new id and stays ready with its
    data (the dkv 0.1 upgrade path), and its peers, which never saw the old ids, accept it."""
    for i in range(nodes):
        for name in ("identity", "peers", "state"):
            (root / f"node{i}" / name).unlink(missing_ok=True)


def wait_quiet(pids: List[int], max_s: float, cores: float = 0.1) -> dict:
    """Waits until these processes together use less than `cores` CPU over a 1 s window (a
    memtable flush or compaction after a burst of writes has ended), at most `max_s` seconds.
    Returns {waited_s, last_cores}."""
    t0 = time.monotonic()
    used = 0.0
    while True:
        a = proc_ticks(pids)
        time.sleep(1.0)
        used = (proc_ticks(pids) - a) / CLK_TCK
        if used < cores or time.monotonic() - t0 >= max_s:
            return {"waited_s": round(time.monotonic() - t0, 1), "last_cores": round(used, 2)}


def convergence_flags(cl: Cluster) -> dict:
    """What node 0 says about hinted handoff and read repair, and their counters."""
    st = cl.json(0, "v0/status?verbose=1")
    hints = cl.json(0, "v0/admin/hints")
    rr = st.get("read_repair", {})
    return {"hinted_handoff": bool(hints.get("enabled")), "read_repair": bool(rr.get("enabled")),
            "hints_written": hints.get("written", 0),
            "read_repair_writes": rr.get("writes", 0),
            "reads_repaired": rr.get("reads_repaired", 0)}


def ab_summary(blocks: List[dict]) -> dict:
    """Medians of each side, and the on ÷ off ratios two ways, over blocks of alternating runs
    (a block: {"on_slot", "pairs": [{"on", "off"}, ...], "closing_on"}):

    - bracketed (the headline): each off run against the mean of the on runs just before and
      just after it, so a steady drift of the shared machine during a block cancels out (with
      on always first in a pair, plain pair ratios would charge that drift to one side); a
      block ends with one more on run so that its last off run is bracketed too;
    - per pair (on_i ÷ off_i, adjacent runs), for reference.
    """
    ons, offs, pairs, out = [], [], [], {}
    ratio = {"cpu_ratio": ([], []), "rps_ratio": ([], [])}
    for blk in blocks:
        b_on = [p["on"] for p in blk["pairs"]] + ([blk["closing_on"]]
                                                  if blk.get("closing_on") else [])
        b_off = [p["off"] for p in blk["pairs"]]
        ons += b_on
        offs += b_off
        pairs += blk["pairs"]
        for name, key in (("cpu_ratio", "cpu_us_per_req"), ("rps_ratio", "rps")):
            pr, br = ratio[name]
            pr += [p["on"][key] / p["off"][key] for p in blk["pairs"]
                   if p["on"].get(key) and p["off"].get(key)]
            br += [(b_on[i][key] + b_on[i + 1][key]) / 2 / b_off[i][key]
                   for i in range(min(len(b_off), len(b_on) - 1))
                   if b_on[i].get(key) and b_on[i + 1].get(key) and b_off[i].get(key)]
    out = {"pairs": len(pairs), "on": summarize(ons), "off": summarize(offs),
           "slots": [blk.get("on_slot", "A") for blk in blocks]}
    for name, (pr, br) in ratio.items():
        out[f"{name}_pairs"] = median(pr) if pr else None
        out[f"{name}_brackets"] = len(br)
        out[name] = median(br) if br else out[f"{name}_pairs"]
        use = br or pr
        out[f"{name}_min"] = min(use) if use else None
        out[f"{name}_max"] = max(use) if use else None
    return out


def ab_blocks(ab: dict) -> List[dict]:
    """The blocks of an A/B result (older reports: one block, `all` + `closing_on`)."""
    if "blocks" in ab:
        return ab["blocks"]
    return [{"on_slot": "A", "pairs": ab["all"], "closing_on": ab.get("closing_on")}]


def run_ab(names: List[str], snap: Path, gen: LoadGen, opts, work: Path, dkv_bin: Path,
           results: dict) -> None:
    """Convergence on vs off for the 3-node ack=2/from=3 GET and PUT, in the same run.

    Two clusters from copies of the same fill run side by side in two slots (A: ports
    base+0..2, B: base+10..12; both copies re-identified, see reidentify()): `on` with the
    defaults, `off` with --ab-off-args (default --hinted-handoff off --read-repair off; ""
    gives an A/A check of the method). Copies of one fill, not two fills: the same LSM shape
    on both sides. An A/A check showed the two slots differing by ~3% in GET CPU per request
    with identical flags, so each scenario runs two blocks, on in slot A then on in slot B
    (the clusters are restarted with the flags swapped in between), each block alternating
    closed-loop runs of --ab-duration seconds on, off, on, off, ..., on. Order: GET block,
    swap, GET block, PUT block, swap, PUT block: the PUTs change neither side's data before
    the GETs.
    """
    off_args = opts.ab_off_args
    roots = {"A": work / "run-ab-slotA", "B": work / "run-ab-slotB"}
    ports = {"A": opts.base_port, "B": opts.base_port + 10}
    per_block = [(opts.ab_pairs + 1) // 2, opts.ab_pairs // 2]
    log(f"convergence A/B ({', '.join(names)}): two 3-node clusters from copies of the fill, "
        f"'on' = defaults, 'off' = {off_args or '(defaults too: A/A check)'}; {opts.ab_pairs} "
        f"alternating pairs of {opts.ab_duration:g} s closed-loop runs in two blocks (slots "
        f"swapped), each closed by an 'on' run")
    for root in roots.values():
        copy_snapshot(snap, root, 3)
        reidentify(root, 3)
    want_off = {"hinted_handoff": "--hinted-handoff off" not in off_args,
                "read_repair": "--read-repair off" not in off_args}
    state = {"on_slot": None, "on": None, "off": None}

    def start(on_slot: str) -> None:
        for k in ("on", "off"):
            if state[k] is not None:
                state[k].stop()
                state[k] = None
        off_slot = "B" if on_slot == "A" else "A"
        on = Cluster(3, ports[on_slot], roots[on_slot], dkv_bin, opts.dkv_args)
        off = Cluster(3, ports[off_slot], roots[off_slot], dkv_bin,
                      f"{opts.dkv_args} {off_args}")
        state.update(on_slot=on_slot, on=on, off=off)
        on.start()
        off.start()
        flags_on, flags_off = convergence_flags(on), convergence_flags(off)
        if not (flags_on["hinted_handoff"] and flags_on["read_repair"]) or \
                any(flags_off[k] != v for k, v in want_off.items()):
            raise BenchError(f"A/B clusters do not have the expected flags: on {flags_on}, "
                             f"off {flags_off}")
        for cl in (on, off):
            for i in range(3):
                st = cl.json(i, "v0/status?verbose=1")
                if st.get("state", "ready") != "ready":
                    raise BenchError(f"A/B: {cl.url(i)} is not ready: {st}")

    def block(name: str, s: Scenario, npairs: int) -> dict:
        script, args = scenario_args(s, opts.fill_keys)
        on, off = state["on"], state["off"]
        # Both clusters were just started: let the start's flush and compactions end, and fill
        # the block caches with the hot set (a GET), or the first pairs measure that instead
        # (CPU per GET fell 145 -> 46 us over the first 40 s of an unprimed block).
        quiet = wait_quiet(on.pids() + off.pids(), max(30.0, opts.settle_s))
        log(f"  both clusters idle after {quiet['waited_s']} s")
        for cl in (on, off):
            prime(gen, cl, s, opts.fill_keys, work)
        warm = max(1.0, opts.warmup)
        for cl in (on, off):
            gen.run(cl.url(0), script, args, warm)
        pairs = []
        for i in range(npairs):
            pair = {}
            for side, cl in (("on", on), ("off", off)):
                pair[side] = gen.run(cl.url(0), script, args, opts.ab_duration,
                                     server_pids=cl.pids())
            log(f"  {name} slot {state['on_slot']} on, pair {i + 1}/{npairs}: on "
                f"{pair['on']['rps']:.0f} req/s {fmt_cpu(pair['on'].get('cpu_us_per_req'))} "
                f"us/req, off {pair['off']['rps']:.0f} req/s "
                f"{fmt_cpu(pair['off'].get('cpu_us_per_req'))} us/req (other CPU "
                f"{pair['on']['other_cpu_pct']:.0f}% / {pair['off']['other_cpu_pct']:.0f}%, "
                f"errors {pair['on']['errors']} / {pair['off']['errors']})")
            pairs.append(pair)
        closing = gen.run(on.url(0), script, args, opts.ab_duration, server_pids=on.pids())
        log(f"  {name} slot {state['on_slot']} on, closing on run: {closing['rps']:.0f} req/s "
            f"{fmt_cpu(closing.get('cpu_us_per_req'))} us/req")
        return {"on_slot": state["on_slot"], "pairs": pairs, "closing_on": closing}

    try:
        slot = "A"
        start(slot)
        for name in names:
            s = SCENARIO_BY_NAME[AB_SCENARIOS[name]]
            blocks = []
            for n in per_block:
                if n == 0:
                    continue
                if blocks:
                    slot = "B" if slot == "A" else "A"
                    start(slot)
                blocks.append(block(name, s, n))
            res = ab_summary(blocks)
            res["blocks"] = blocks
            res["scenario"] = s.name
            res["off_args"] = off_args
            res["counters_on"] = convergence_flags(state["on"])
            res["counters_off"] = convergence_flags(state["off"])
            results["ab"][name] = res
            log(f"  {name}: CPU/req on/off {res['cpu_ratio']:.3f} (efficiency "
                f"{1 / res['cpu_ratio']:.3f}; plain pairs {res['cpu_ratio_pairs']:.3f}), "
                f"throughput on/off {res['rps_ratio']:.3f}")
    finally:
        for k in ("on", "off"):
            if state[k] is not None:
                state[k].stop()
        if not opts.keep:
            for root in roots.values():
                shutil.rmtree(root, ignore_errors=True)


def run_bin_ab(s: Scenario, snap: Path, gen: LoadGen, opts, work: Path, dkv_bin: Path,
               old_bin: Path, results: dict) -> None:
    """Scenario `s` on two binaries side by side (--compare-bin): `new` = --dkv-bin, `old` =
    --compare-bin, each on its own copy of the same fill (re-identified: the copies listen on
    other ports), with the same flags. Closed-loop runs of --ab-duration seconds alternate new,
    old, new, old, ..., new in two blocks with the binaries' slots (port, data copy) swapped, as
    the convergence A/B does (run_ab): on a shared machine, two runs minutes apart differ more
    than the binaries might. Summaries as ab_summary() (`on` = new, `off` = old), plus each
    side's memory at the end."""
    f = FILLS[s.fill]
    dkv_args = f"{opts.dkv_args} {f.dkv_args}".strip()
    script, args = scenario_args(s, opts.fill_keys)
    # Data directories stay with their slot (a node's identity names its URL); the binaries
    # swap slots between the blocks.
    roots = {"A": work / f"run-binab-{s.name}-A", "B": work / f"run-binab-{s.name}-B"}
    bins = {"new": dkv_bin, "old": old_bin}
    ports = {"A": opts.base_port, "B": opts.base_port + 10}
    per_block = [(opts.ab_pairs + 1) // 2, opts.ab_pairs // 2]
    for root in roots.values():
        copy_snapshot(snap, root, f.nodes)
        reidentify(root, f.nodes)
    log(f"binary A/B of {s.name}: new {dkv_bin} vs old {old_bin}, {opts.ab_pairs} alternating "
        f"pairs of {opts.ab_duration:g} s closed-loop runs in two blocks (ports swapped)")
    cls = {}
    blocks = []
    memory = {}
    try:
        for bi, n in enumerate(per_block):
            if n == 0:
                continue
            new_slot = "A" if bi == 0 else "B"
            old_slot = "B" if new_slot == "A" else "A"
            for k in ("new", "old"):
                if k in cls:
                    cls[k].stop()
            cls = {"new": Cluster(f.nodes, ports[new_slot], roots[new_slot], bins["new"],
                                  dkv_args),
                   "old": Cluster(f.nodes, ports[old_slot], roots[old_slot], bins["old"],
                                  dkv_args)}
            for cl in cls.values():
                cl.start()
            if opts.settle_s > 0:
                for cl in cls.values():
                    wait_quiet(cl.pids(), opts.settle_s)
            for cl in cls.values():
                prime(gen, cl, s, opts.fill_keys, work)
                gen.run(cl.url(0), script, args, max(1.0, opts.warmup))
            pairs = []
            for i in range(n):
                pair = {}
                for side, key in (("on", "new"), ("off", "old")):
                    cl = cls[key]
                    pair[side] = gen.run(cl.url(0), script, args, opts.ab_duration,
                                         server_pids=cl.pids())
                log(f"  {s.name} block {bi + 1} pair {i + 1}/{n}: new "
                    f"{pair['on']['rps']:.0f} req/s {fmt_cpu(pair['on'].get('cpu_us_per_req'))} "
                    f"us/req, old {pair['off']['rps']:.0f} req/s "
                    f"{fmt_cpu(pair['off'].get('cpu_us_per_req'))} us/req (other CPU "
                    f"{pair['on']['other_cpu_pct']:.0f}% / {pair['off']['other_cpu_pct']:.0f}%)")
                pairs.append(pair)
            closing = gen.run(cls["new"].url(0), script, args, opts.ab_duration,
                              server_pids=cls["new"].pids())
            blocks.append({"on_slot": new_slot, "pairs": pairs, "closing_on": closing})
            for k, cl in cls.items():
                memory.setdefault(k, []).append(node_memory(cl))
        res = ab_summary(blocks)
        res.update(blocks=blocks, scenario=s.name, new_bin=opts.dkv_bin, old_bin=opts.compare_bin,
                   memory=memory)
        results["binab"][s.name] = res
        log(f"  {s.name}: CPU/req new ÷ old {res['cpu_ratio']:.3f} ({res['cpu_ratio_min']:.3f} - "
            f"{res['cpu_ratio_max']:.3f}), throughput new ÷ old {res['rps_ratio']:.3f}; peak RSS "
            f"new {', '.join(peak_rss(m) for m in memory['new'])} MiB, old "
            f"{', '.join(peak_rss(m) for m in memory['old'])} MiB")
    finally:
        for cl in cls.values():
            cl.stop()
        if not opts.keep:
            for root in roots.values():
                shutil.rmtree(root, ignore_errors=True)


def report_binab(results: dict) -> List[str]:
    ab_all = results.get("binab") or {}
    if not ab_all:
        return []
    first = next(iter(ab_all.values()))
    o = results["options"]
    L = ["## Two binaries side by side (`--compare-bin`)\n",
         f"*new* = `{first['new_bin']}`, *old* = `{first['old_bin']}`, same flags, each on its "
         f"own copy of the same fill. Closed-loop runs of {o.get('ab_duration', 0):g} s "
         f"alternate new, old, new, ..., new in two blocks with the binaries' slots (port and "
         f"data copy) swapped between them; *new ÷ old* = median over the old runs of the mean of the two new runs "
         f"around it ÷ that old run (a steady drift of the shared machine cancels), min - max "
         f"beside it. Peak RSS per node (VmHWM) at the end of each block.\n",
         "| Scenario | pairs | CPU/req new (us) | CPU/req old (us) | CPU new ÷ old | req/s new ÷ "
         "old | peak RSS new (MiB) | peak RSS old (MiB) | other CPU new / old |",
         "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, ab in ab_all.items():
        on, off = ab["on"], ab["off"]
        mem = ab.get("memory", {})
        L.append(f"| {SCENARIO_BY_NAME[name].title()} (`{name}`) | {ab['pairs']} | "
                 f"{fmt_cpu(on.get('cpu_us_per_req'))} | {fmt_cpu(off.get('cpu_us_per_req'))} | "
                 f"**{ab['cpu_ratio']:.3f}** ({ab['cpu_ratio_min']:.2f} - "
                 f"{ab['cpu_ratio_max']:.2f}) | {ab['rps_ratio']:.3f} | "
                 f"{' / '.join(peak_rss(m) for m in mem.get('new', []))} | "
                 f"{' / '.join(peak_rss(m) for m in mem.get('old', []))} | "
                 f"{on['other_cpu_pct']:.0f}% / {off['other_cpu_pct']:.0f}% |")
    L.append("")
    return L


class HintsPoller:
    """Polls GET /v0/admin/hints on the coordinators every 100 ms from its start until every
    pending_count is 0 (or `timeout_s`); `drained_at` is then the time.monotonic() of the first
    poll that saw them all at 0."""

    def __init__(self, cl: Cluster, nodes: List[int], timeout_s: float):
        import threading
        self.cl, self.nodes, self.timeout_s = cl, nodes, timeout_s
        self.samples = []  # (monotonic, [pending_count per node])
        self.drained_at = None
        self.stop_flag = False
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self.t0 = time.monotonic()
        self.thread.start()

    def _run(self):
        while not self.stop_flag and time.monotonic() - self.t0 < self.timeout_s:
            counts = []
            for i in self.nodes:
                status, body = http_get(self.cl.url(i) + "v0/admin/hints", 2.0)
                try:
                    counts.append(json.loads(body)["pending_count"] if status == 200 else None)
                except (ValueError, KeyError):
                    counts.append(None)
            now = time.monotonic()
            self.samples.append((now, counts))
            if all(c == 0 for c in counts):
                self.drained_at = now
                return
            time.sleep(0.1)

    def join(self):
        self.thread.join(self.timeout_s + 10)
        self.stop_flag = True


def hint_replay_rate(dkv_args: str) -> int:
    m = re.search(r"--hint-replay-bytes-per-s[ =](\d+)", dkv_args)
    return int(m.group(1)) if m else DEFAULT_HINT_REPLAY_BYTES_PER_S


def start_node3_under_load(cl: Cluster, gen: LoadGen, script: str, args: List[str], rate: float,
                           dur: int, hints: int, timeout_s: float) -> dict:
    """Starts node 3 (index 2) and, from that moment (clients do not wait for it, and no hint
    can move before it listens): GETs at `rate` for `dur` s, and /v0/admin/hints polled on
    nodes 1 and 2 every 100 ms until pending_count is 0 on both. Times are from the launch."""
    import threading
    up = {}

    def launch():
        try:
            cl.start_node(2)
            up["t"] = time.monotonic()
        except Exception as e:  # reported below
            up["error"] = e
    poller = HintsPoller(cl, [0, 1], timeout_s=timeout_s)
    pidfile = cl.data_root / "node2.pid"
    t_launch = time.monotonic()
    starter = threading.Thread(target=launch, daemon=True)
    starter.start()
    poller.start()
    while not pidfile.exists() and starter.is_alive():
        time.sleep(0.005)
    try:
        pids = [cl.pid(0), cl.pid(1), int(pidfile.read_text())]
    except (OSError, ValueError):
        starter.join(60)
        raise BenchError(f"node 3 did not start: {up.get('error')}")
    run = gen.run(cl.url(0), script, args, dur, rate=rate, server_pids=pids)
    t_end = time.monotonic()
    starter.join(60)
    if "t" not in up:
        raise BenchError(f"node 3 did not start: {up.get('error')}")
    poller.join()
    if poller.drained_at is None:
        raise BenchError(f"hints not drained {timeout_s:.0f} s after node 3 started: last poll "
                         f"{poller.samples[-1:]}")
    first = next((ts for ts, c in poller.samples if None not in c and sum(c) < hints),
                 poller.drained_at)
    return {"node3_start_s": round(up["t"] - t_launch, 2),
            "first_delivery_s": round(first - t_launch, 2),
            "drain_s": round(poller.drained_at - t_launch, 2),
            "get_duration_s": dur,
            "get_overlap_s": round(max(0.0, min(t_end, poller.drained_at) - t_launch), 2),
            "drain_samples": [(round(ts - t_launch, 2), c) for ts, c in poller.samples],
            "run": run}


def fmt_run(r: dict) -> str:
    return (f"p50 {r['p50_us'] / 1e3:.2f} p99 {r['p99_us'] / 1e3:.2f} p99.9 "
            f"{r['p999_us'] / 1e3:.2f} ms, lag p99 {r['lag_p99_us'] / 1e3:.2f} ms, "
            f"{fmt_cpu(r.get('cpu_us_per_req'))} us/req, errors {r['errors']}")


def run_drain(snap: Path, gen: LoadGen, opts, work: Path, dkv_bin: Path, results: dict) -> None:
    """Hinted handoff under client load, on a copy of the 3-node fill, --drain-reps times:

    1. node 3 (index 2) stopped (SIGTERM); --drain-keys keys key<F+1>..key<F+K> (F = fill keys,
       so not the keys the GETs read) written once each with --drain-value-bytes random values
       at the default quorum (ack=2/from=3), the first half through node 1, the second through
       node 2: each PUT leaves a hint for node 3 on its coordinator; checked on
       /v0/admin/hints. Then wait until the nodes are idle (memtable flush, compaction).
    2. node 3 started; from its launch: /v0/admin/hints polled on both coordinators every 100 ms
       until pending_count is 0 on both (the drain time), while GETs of the n3-a2f3-get
       workload run at a fixed rate (--drain-rate-fraction of n3-a2f3-get's maximum in this
       run) for about as long as the throttle needs to deliver the hints.
    3. once drained and idle again: the same GET load, same rate and duration, no drain.
    4. control: node 3 stopped and started again with nothing written meanwhile (no hints),
       the same GET load from its launch: what a restart alone costs the clients. (Before it,
       one unmeasured restart, so that its write-ahead log no longer holds the delivered hints:
       the drain's restart had none to replay either.)
    """
    s = SCENARIO_BY_NAME["n3-a2f3-get"]
    script, args = scenario_args(s, opts.fill_keys)
    root = work / f"run-{DRAIN_SCENARIO}"
    copy_snapshot(snap, root, 3)
    cl = Cluster(3, opts.base_port, root, dkv_bin, opts.dkv_args)
    keys, vbytes, start_key = opts.drain_keys, opts.drain_value_bytes, opts.fill_keys + 1
    replay_rate = hint_replay_rate(opts.dkv_args)
    out = {"keys": keys, "value_bytes": vbytes, "first_key": start_key,
           "replay_bytes_per_s": replay_rate, "reps": []}
    log(f"hints drain: 3 nodes, node 3 stopped, {keys:,} keys x {vbytes} B written at the "
        f"default quorum through nodes 1 and 2, node 3 started; {opts.drain_reps} repetition(s)")
    try:
        cl.start()
        ref = results["scenarios"].get("n3-a2f3-get")
        if opts.warmup > 0 or ref is None:
            gen.run(cl.url(0), script, args, max(1.0, opts.warmup))
        if ref is not None:
            peak, peak_src = ref["max"]["rps"], "n3-a2f3-get maximum in this run"
        else:
            peak = median([gen.run(cl.url(0), script, args, opts.duration,
                                   server_pids=cl.pids())["rps"] for _ in range(opts.runs)])
            peak_src = "closed-loop maximum measured on the drain cluster"
        rate = peak * opts.drain_rate_fraction
        out.update(rate=rate, rate_fraction=opts.drain_rate_fraction, peak=peak,
                   peak_source=peak_src)
        half = keys // 2
        for rep in range(opts.drain_reps):
            r = {}
            cl.stop_node(2)
            t = time.monotonic()
            w1 = fill(gen, cl.url(0), half, vbytes, [], work, start=start_key)
            w2 = fill(gen, cl.url(1), keys - half, vbytes, [], work, start=start_key + half)
            r["write_s"] = round(time.monotonic() - t, 1)
            r["write_rate"] = round(keys / r["write_s"])
            coords = [cl.json(i, "v0/admin/hints") for i in (0, 1)]
            r["pending_count"] = [c["pending_count"] for c in coords]
            r["pending_bytes"] = [c["pending_bytes"] for c in coords]
            r["hints_total"] = sum(r["pending_count"])
            log(f"  rep {rep + 1}: wrote {w1['keys'] + w2['keys']:,} keys in {r['write_s']} s; "
                f"pending hints {r['pending_count']} ({sum(r['pending_bytes']) / 2**20:.1f} MiB)")
            if r["hints_total"] < 0.95 * keys:
                raise BenchError(f"expected ~{keys} hints, /v0/admin/hints says "
                                 f"{r['pending_count']}")
            r["quiet_before"] = wait_quiet([cl.pid(0), cl.pid(1)], 30)
            # The GET runs: about as long as the throttle needs for the larger coordinator's
            # hints (it starts with one second of burst; node 3 takes about a second to start).
            est = max(r["pending_bytes"]) / replay_rate
            dur = int(min(30, max(2, round(est))))
            d = start_node3_under_load(cl, gen, script, args, rate, dur, r["hints_total"],
                                       max(120.0, 10 * est))
            run = d.pop("run")
            r.update(d)
            r["during"] = run
            r["hints_after"] = [cl.json(i, "v0/admin/hints") for i in (0, 1)]
            log(f"  rep {rep + 1}: node 3 answered after {r['node3_start_s']} s, first hint "
                f"delivered by {r['first_delivery_s']} s, drained {r['drain_s']} s after its "
                f"launch; GET at {rate:.0f}/s for {dur} s ({r['get_overlap_s']} s of it during "
                f"the drain): {fmt_run(run)}")
            r["quiet_after"] = wait_quiet(cl.pids(), 30)
            r["no_drain"] = gen.run(cl.url(0), script, args, dur, rate=rate,
                                    server_pids=cl.pids())
            log(f"  rep {rep + 1}: no drain, same rate: {fmt_run(r['no_drain'])}")
            # Node 3's write-ahead log now holds the delivered hints: a restart would replay
            # them. One restart without load first (RocksDB flushes what it recovered), so the
            # control measures a restart alone, like the drain's restart above.
            cl.stop_node(2)
            cl.start_node(2)
            wait_quiet(cl.pids(), 30)
            cl.stop_node(2)
            time.sleep(1.0)
            c = start_node3_under_load(cl, gen, script, args, rate, dur, 0, 60.0)
            r["restart_only"] = c.pop("run")
            r["restart_only_node3_start_s"] = c["node3_start_s"]
            log(f"  rep {rep + 1}: control, node 3 restarted with no hints pending (answered "
                f"after {c['node3_start_s']} s): {fmt_run(r['restart_only'])}")
            wait_quiet(cl.pids(), 30)
            out["reps"].append(r)
        for k in ("during", "no_drain", "restart_only"):
            out[k] = summarize([r[k] for r in out["reps"]])
        for k in ("drain_s", "write_s", "hints_total", "get_overlap_s", "node3_start_s",
                  "first_delivery_s"):
            out[k] = median([r[k] for r in out["reps"]])
        out["pending_bytes"] = median([sum(r["pending_bytes"]) for r in out["reps"]])
        results["drain"] = out
    finally:
        cl.stop()
        if not opts.keep:
            shutil.rmtree(root, ignore_errors=True)


class Staller:
    """SIGSTOPs a process for `on_s` out of every `on_s + off_s` seconds (first `off_s` running)
    until stopped; always leaves it running (SIGCONT) on the way out."""

    def __init__(self, pid: int, on_s: float, off_s: float):
        import threading
        self.pid, self.on_s, self.off_s = pid, on_s, off_s
        self.done = threading.Event()
        self.stops = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        try:
            while not self.done.wait(self.off_s):
                os.kill(self.pid, signal.SIGSTOP)
                self.stops += 1
                self.done.wait(self.on_s)
                os.kill(self.pid, signal.SIGCONT)
        finally:
            try:
                os.kill(self.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join(10)
        try:
            os.kill(self.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


def prom_value(url: str, name: str) -> Optional[float]:
    status, body = http_get(url + "metrics", 5.0)
    if status != 200:
        return None
    m = re.search(r"^%s (\S+)$" % re.escape(name), body.decode("utf-8", "replace"), re.M)
    return float(m.group(1)) if m else None


SPEC_COUNTERS = ("dkv_speculative_retries_total", "dkv_digest_fetches_total",
                 "dkv_read_repair_writes_total")


def run_spec(snap: Path, gen: LoadGen, opts, work: Path, dkv_bin: Path, results: dict) -> None:
    """Speculative reads vs the full fan-out, the ack=2/from=3 GET workload through node 1.

    Two clusters from copies of the 3-node fill run side by side in two slots (ports base+0..2
    and base+10..12), one with `--read-fanout all`, one with `--read-fanout speculative`; after
    the first block the clusters are restarted with the modes swapped between the slots (an
    A/A check of the A/B harness showed ~3% between slots). The rate is --spec-rate-fraction of
    the `all` cluster's closed-loop maximum (median of --runs runs, measured once). Each pair
    runs, in alternating order, both modes healthy and both modes with node 3 (index 2)
    SIGSTOPped for SPEC_STALL_S out of every 2 x SPEC_STALL_S s (it accepts connections and
    answers nothing; the 1 s replica timeout is never reached), each run --spec-duration s at
    that fixed rate. Server CPU per request covers all three nodes.
    """
    s = SCENARIO_BY_NAME["n3-a2f3-get"]
    script, args = scenario_args(s, opts.fill_keys)
    roots = {"A": work / "run-spec-slotA", "B": work / "run-spec-slotB"}
    ports = {"A": opts.base_port, "B": opts.base_port + 10}
    for root in roots.values():
        copy_snapshot(snap, root, 3)
        reidentify(root, 3)
    per_block = [(opts.spec_pairs + 1) // 2, opts.spec_pairs // 2]
    out = {"workload": s.name, "stall_s": SPEC_STALL_S, "duration_s": opts.spec_duration,
           "rate_fraction": opts.spec_rate_fraction, "pairs": [], "blocks": []}
    log(f"speculative reads: two 3-node clusters (--read-fanout all / speculative), GET "
        f"ack=2/from=3 at a fixed rate through node 1, healthy and with node 3 SIGSTOPped "
        f"{SPEC_STALL_S:g} s on / {SPEC_STALL_S:g} s off; {opts.spec_pairs} pairs of "
        f"{opts.spec_duration:g} s runs")
    clusters = {}

    def stop_all():
        for cl in clusters.values():
            cl.stop()
        clusters.clear()

    def start(first_slot: str) -> None:
        stop_all()
        other = "B" if first_slot == "A" else "A"
        for mode, slot in zip(SPEC_MODES, (first_slot, other)):
            cl = Cluster(3, ports[slot], roots[slot], dkv_bin,
                         f"{opts.dkv_args} --read-fanout {mode}")
            clusters[mode] = cl
            cl.start()
            for i in range(3):
                st = cl.json(i, "v0/status?verbose=1")
                if st.get("state", "ready") != "ready":
                    raise BenchError(f"spec: {cl.url(i)} is not ready: {st}")
        # The flush and compactions after the start would be charged to the first runs.
        quiet = wait_quiet(clusters["all"].pids() + clusters["speculative"].pids(),
                           max(30.0, opts.settle_s))
        out["blocks"].append({"all_slot": first_slot, "quiet": quiet})

    def one(mode: str, stalled: bool, rate: float) -> dict:
        cl = clusters[mode]
        before = {k: prom_value(cl.url(0), k) for k in SPEC_COUNTERS}
        if stalled:
            with Staller(cl.pid(2), SPEC_STALL_S, SPEC_STALL_S) as st:
                r = gen.run(cl.url(0), script, args, opts.spec_duration, rate=rate,
                            server_pids=cl.pids())
            r["stops"] = st.stops
        else:
            r = gen.run(cl.url(0), script, args, opts.spec_duration, rate=rate,
                        server_pids=cl.pids())
        after = {k: prom_value(cl.url(0), k) for k in SPEC_COUNTERS}
        r["counters"] = {k: (after[k] - before[k]) if None not in (after[k], before[k]) else None
                         for k in SPEC_COUNTERS}
        log(f"    {mode:11s} {'stalled' if stalled else 'healthy'}: {fmt_run(r)}; "
            f"counters {r['counters']}")
        return r

    try:
        start("A")
        warm = max(1.0, opts.warmup)
        for cl in clusters.values():
            gen.run(cl.url(0), script, args, warm)
        peak = median([gen.run(clusters["all"].url(0), script, args, opts.duration,
                               server_pids=clusters["all"].pids())["rps"]
                       for _ in range(opts.runs)])
        rate = peak * opts.spec_rate_fraction
        out.update(peak=peak, rate=rate)
        log(f"  'all' closed-loop maximum {peak:,.0f} req/s; fixed rate {rate:,.0f} req/s")
        n = 0
        for b, npairs in enumerate(per_block):
            if npairs == 0:
                continue
            if b > 0:
                start("B")
                for cl in clusters.values():
                    gen.run(cl.url(0), script, args, warm)
            for _ in range(npairs):
                order = SPEC_MODES if n % 2 == 0 else SPEC_MODES[::-1]
                pair = {"all_slot": out["blocks"][-1]["all_slot"]}
                for stalled in (False, True):
                    for mode in order:
                        pair[f"{mode}_{'stalled' if stalled else 'healthy'}"] = \
                            one(mode, stalled, rate)
                n += 1
                log(f"  pair {n}/{opts.spec_pairs} done")
                out["pairs"].append(pair)
        for mode in SPEC_MODES:
            for cond in ("healthy", "stalled"):
                k = f"{mode}_{cond}"
                runs = [p[k] for p in out["pairs"]]
                out[k] = summarize(runs)
                out[k]["cpu_us_per_req_by_node"] = [
                    median([1e6 * r["server_cpu_s_by_pid"][i] / r["requests"] for r in runs
                            if r.get("server_cpu_s_by_pid") and r["requests"]])
                    for i in range(3)]
                out[k]["counters"] = {c: median([r["counters"][c] for r in runs
                                                 if r["counters"][c] is not None])
                                      for c in SPEC_COUNTERS}
        out["cpu_ratio_healthy"] = median(
            [p["speculative_healthy"]["cpu_us_per_req"] / p["all_healthy"]["cpu_us_per_req"]
             for p in out["pairs"]])
        out["cpu_ratio_stalled"] = median(
            [p["speculative_stalled"]["cpu_us_per_req"] / p["all_stalled"]["cpu_us_per_req"]
             for p in out["pairs"]])
        for mode in SPEC_MODES:
            out[f"{mode}_p99_ratio"] = median(
                [p[f"{mode}_stalled"]["p99_us"] / p[f"{mode}_healthy"]["p99_us"]
                 for p in out["pairs"]])
        results["spec"] = out
        log(f"  spec: CPU/req speculative/all {out['cpu_ratio_healthy']:.3f} healthy, "
            f"{out['cpu_ratio_stalled']:.3f} stalled; p99 stalled/healthy: all "
            f"{out['all_p99_ratio']:.2f}, speculative {out['speculative_p99_ratio']:.2f}")
    finally:
        stop_all()
        if not opts.keep:
            for root in roots.values():
                shutil.rmtree(root, ignore_errors=True)


def report_spec(results: dict) -> List[str]:
    d = results.get("spec")
    if not d:
        return []
    L = ["## Speculative reads vs the full fan-out\n"]
    L.append(f"3 nodes, filled as above; the `{d['workload']}` workload (GET ack=2/from=3) "
             f"through node 1 at a fixed {d['rate']:,.0f} req/s ({d['rate_fraction']:.0%} of "
             f"the `--read-fanout all` cluster's closed-loop maximum, {d['peak']:,.0f} req/s). "
             f"Two clusters side by side from copies of the fill, `--read-fanout all` and "
             f"`--read-fanout speculative` (slots swapped after the first block); each pair runs "
             f"both modes healthy, then both with node 3 SIGSTOPped {d['stall_s']:g} s on / "
             f"{d['stall_s']:g} s off, {d['duration_s']:g} s per run, the modes' order "
             f"alternating. Server CPU/GET: all three nodes' utime + stime over the run ÷ GETs "
             f"answered. Counters: node 1's `/metrics` over the run (median). "
             f"{len(d['pairs'])} pairs; figures are medians.\n")
    L.append("| mode | replica 3 | achieved req/s | p50 ms | p99 ms | p99.9 ms | lag p99 ms | "
             "server CPU/GET (us) | of it nodes 1 / 2 / 3 | speculative retries | digest fetches "
             "| repair writes | errors | other CPU |")
    L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for mode in SPEC_MODES:
        for cond in ("healthy", "stalled"):
            x = d[f"{mode}_{cond}"]
            c = x["counters"]

            def cnt(k):
                return "-" if c.get(k) is None else f"{c[k]:,.0f}"
            L.append(f"| {mode} | {'healthy' if cond == 'healthy' else 'SIGSTOP 1 s / 1 s'} | "
                     f"{x['rps']:,.0f} | {fmt_ms(x['p50_us'])} | {fmt_ms(x['p99_us'])} | "
                     f"{fmt_ms(x['p999_us'])} | {fmt_ms(x['lag_p99_us'])} | "
                     f"{fmt_cpu(x.get('cpu_us_per_req'))} | "
                     f"{' / '.join(fmt_cpu(v) for v in x.get('cpu_us_per_req_by_node', []))} | "
                     f"{cnt('dkv_speculative_retries_total')} | "
                     f"{cnt('dkv_digest_fetches_total')} | {cnt('dkv_read_repair_writes_total')} "
                     f"| {x['errors']} | {x['other_cpu_pct']:.0f}% |")
    L.append("")
    L.append(f"Per-pair ratios (median): server CPU per GET speculative ÷ all "
             f"**{d['cpu_ratio_healthy']:.3f}** healthy, **{d['cpu_ratio_stalled']:.3f}** "
             f"stalled; p99 stalled ÷ healthy: all **{d['all_p99_ratio']:.2f}**, speculative "
             f"**{d['speculative_p99_ratio']:.2f}** (goal <= {SPEC_GOAL_P99_RATIO}).\n")
    return L


def http_post(url: str, timeout_s: float):
    """POST with an empty body; returns (status, body bytes), status 0 when unreachable."""
    req = urllib.request.Request(url, data=b"", method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def local_range(port: int, start: str, end: str, timeout_s: float = 60.0) -> dict:
    """One node's own live records in [start, end) through GET /v0/entities (one HTTP chunk per
    record `key\\nvalue`), read over a raw socket so that the chunk boundaries, i.e. the records,
    stay visible: {key: value length}."""
    q = f"/v0/entities?start={urllib.parse.quote(start)}&end={urllib.parse.quote(end)}"
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
        s.sendall(f"GET {q} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        f = s.makefile("rb")
        status = int(f.readline().split()[1])
        headers = {}
        while True:
            line = f.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            k, _, v = line.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        if status != 200:
            raise BenchError(f"GET {q} on port {port}: {status}")
        out = {}
        if headers.get("transfer-encoding", "").lower() != "chunked":
            if f.read(int(headers.get("content-length", "0")) or -1):
                raise BenchError(f"GET {q}: a body without chunked framing")
            return out
        while True:
            size = int(f.readline().split(b";")[0], 16)
            if size == 0:
                break
            chunk = f.read(size)
            f.readline()
            k, sep, v = chunk.partition(b"\n")
            if not sep:
                raise BenchError(f"GET {q}: a chunk without a newline")
            out[k.decode("latin-1")] = len(v)
        return out


def repair_totals(cl: Cluster) -> dict:
    """GET /v0/admin/repair of every node, summed over all peers of all nodes (the exchange
    counters live on the node that ran the exchange), plus each node's tree state."""
    tot = {k: 0 for k in ("exchanges_ok", "exchanges_failed", "segments_compared",
                          "keys_repaired", "records_sent", "records_received", "bytes_sent",
                          "bytes_received")}
    per_node = []
    for i in range(cl.nodes):
        st = cl.json(i, "v0/admin/repair")
        node = {k: 0 for k in tot}
        for p in st.get("peers", []):
            for k in tot:
                node[k] += p.get(k, 0)
        for k in tot:
            tot[k] += node[k]
        node["tree"] = st.get("tree", {})
        node["errors"] = [p.get("last_error") for p in st.get("peers", []) if p.get("last_error")]
        per_node.append(node)
    tot["nodes"] = per_node
    return tot


def repair_delta(before: dict, after: dict) -> dict:
    d = {k: after[k] - before[k] for k in before if k != "nodes"}
    d["bytes"] = d["bytes_sent"] + d["bytes_received"]
    d["by_node"] = [{k: a[k] - b[k] for k in b if k not in ("tree", "errors")}
                    for b, a in zip(before["nodes"], after["nodes"])]
    d["errors"] = [e for n in after["nodes"] for e in n["errors"]]
    return d


def wait_trees_built(cl: Cluster, timeout_s: float) -> List[dict]:
    """Waits until every node's hash trees are built (first refresh after its start, a scan of
    the digest column family); returns each node's `tree` object."""
    deadline = time.monotonic() + timeout_s
    while True:
        trees = [cl.json(i, "v0/admin/repair").get("tree", {}) for i in range(cl.nodes)]
        if all(t.get("built") for t in trees):
            return trees
        if time.monotonic() > deadline:
            raise BenchError(f"hash trees not built {timeout_s:.0f} s after the start: {trees}")
        time.sleep(0.1)


def post_repair(cl: Cluster, i: int, timeout_s: float) -> dict:
    """POST /v0/admin/repair on node i: one exchange with every peer; {status, seconds, body}."""
    t0 = time.monotonic()
    status, body = http_post(f"{cl.url(i)}v0/admin/repair?timeout_ms={int(timeout_s * 1000)}",
                             timeout_s + 10)
    took = time.monotonic() - t0
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = body[:300].decode("latin-1")
    return {"status": status, "seconds": round(took, 3), "t0": t0, "body": parsed}


def run_repair(snap: Path, gen: LoadGen, opts, work: Path, dkv_bin: Path, results: dict) -> None:
    """Anti-entropy repair of a replica that missed writes, under client load, on a copy of the
    3-node fill (M keys, every node holding every key), nodes started with
    REPAIR_ARGS (no hints, no read repair, no periodic rounds: only the exchange repairs):

    0. identical replicas: once every node's trees are built, POST /v0/admin/repair on node 3
       (index 2): one exchange with each peer over replicas that agree; the bytes must be the
       top level of the trees only (256 branch hashes each way per peer).
    For each K in --repair-keys, --repair-reps times:
    1. node 3 stopped; K new keys (prefix r<rep>n<K>x, not the keys the GETs read) written once
       each with --repair-value-bytes random values at the default quorum, half through node 1
       and half through node 2 (two replicas ack, node 3 misses them all); node 3 started, its
       trees built, every node idle; node 3's own copies of the K keys counted (must be 0).
    2. GETs of the n3-a2f3-get workload at --repair-rate-fraction of n3-a2f3-get's maximum for
       --repair-get-s seconds; one second into them, POST /v0/admin/repair on node 3: its
       duration is the time to converge. Then node 3's own copies counted again (must be K,
       whole values) and the exchange counters of all nodes compared with before: bytes sent +
       received, records moved, keys repaired.
    3. right after: a second POST on node 3, over replicas now in sync (tree bytes only again).
    4. idle again: the same GET load with no repair, for the comparison.
    """
    s = SCENARIO_BY_NAME["n3-a2f3-get"]
    script, args = scenario_args(s, opts.fill_keys)
    root = work / f"run-{REPAIR_SCENARIO}"
    copy_snapshot(snap, root, 3)
    dkv_args = f"{opts.dkv_args} {REPAIR_ARGS}"
    cl = Cluster(3, opts.base_port, root, dkv_bin, dkv_args)
    vbytes = opts.repair_value_bytes
    out = {"fill_keys": opts.fill_keys, "fill_value_bytes": FILL_VALUE_BYTES,
           "value_bytes": vbytes, "args": REPAIR_ARGS, "keys": opts.repair_keys,
           "max_bytes_per_s": ae_rate(opts.dkv_args), "points": []}
    log(f"anti-entropy repair: 3 nodes ({REPAIR_ARGS}), node 3 stopped, K keys x {vbytes} B "
        f"written for K in {opts.repair_keys}, node 3 started, POST /v0/admin/repair on it; "
        f"{opts.repair_reps} repetition(s)")
    timeout_s = opts.repair_timeout
    try:
        t = time.monotonic()
        cl.start()
        trees = wait_trees_built(cl, 600)
        out["trees_built_s"] = round(time.monotonic() - t, 1)
        out["tree_start"] = trees
        out["quiet_start"] = wait_quiet(cl.pids(), 30)
        ref = results["scenarios"].get("n3-a2f3-get")
        if ref is not None:
            peak, peak_src = ref["max"]["rps"], "n3-a2f3-get maximum in this run"
        else:
            gen.run(cl.url(0), script, args, max(1.0, opts.warmup))
            peak = median([gen.run(cl.url(0), script, args, opts.duration,
                                   server_pids=cl.pids())["rps"] for _ in range(opts.runs)])
            peak_src = "closed-loop maximum measured on the repair cluster"
        rate = peak * opts.repair_rate_fraction
        out.update(rate=rate, rate_fraction=opts.repair_rate_fraction, peak=peak,
                   peak_source=peak_src)
        # 0. identical replicas.
        idle = []
        for rep in range(opts.repair_reps):
            b = repair_totals(cl)
            p = post_repair(cl, 2, timeout_s)
            d = repair_delta(b, repair_totals(cl))
            idle.append({"status": p["status"], "seconds": p["seconds"], "delta": d})
            log(f"  identical replicas, repair {rep + 1}: {p['status']} in {p['seconds']:.3f} s, "
                f"{d['bytes']:,} bytes ({d['exchanges_ok']} exchanges ok, "
                f"{d['exchanges_failed']} failed), {d['keys_repaired']} keys repaired")
            if p["status"] != 200:
                raise BenchError(f"repair of identical replicas answered {p['status']}: "
                                 f"{p['body']}")
        out["identical"] = idle
        dur = opts.repair_get_s
        for k in opts.repair_keys:
            point = {"keys": k, "reps": []}
            for rep in range(opts.repair_reps):
                r = {}
                prefix = f"r{rep + 1}n{k}x"
                cl.stop_node(2)
                t = time.monotonic()
                half = k // 2
                w = [fill(gen, cl.url(0), half, vbytes, [], work, start=1, prefix=prefix)
                     if half else {"keys": 0}]
                w.append(fill(gen, cl.url(1), k - half, vbytes, [], work, start=half + 1,
                              prefix=prefix))
                r["write_s"] = round(time.monotonic() - t, 2)
                t = time.monotonic()
                cl.start_node(2)
                wait_trees_built(cl, 600)
                r["node3_trees_s"] = round(time.monotonic() - t, 1)
                r["quiet_before"] = wait_quiet(cl.pids(), 30)
                lo, hi = prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)
                have = local_range(opts.base_port + 2, lo, hi)
                r["node3_before"] = len(have)
                if have:
                    raise BenchError(f"node 3 holds {len(have)} of the {k} keys written while "
                                     f"it was down (hinted handoff or read repair on?)")
                b = repair_totals(cl)
                box = {}

                def repair_later():
                    time.sleep(1.0)
                    box["r"] = post_repair(cl, 2, timeout_s)

                import threading
                th = threading.Thread(target=repair_later, daemon=True)
                t_get = time.monotonic()
                th.start()
                run = gen.run(cl.url(0), script, args, dur, rate=rate, server_pids=cl.pids())
                t_get_end = time.monotonic()
                th.join(timeout_s + 30)
                if "r" not in box:
                    raise BenchError("POST /v0/admin/repair did not return")
                p = box["r"]
                d = repair_delta(b, repair_totals(cl))
                have = local_range(opts.base_port + 2, lo, hi)
                whole = sum(1 for n in have.values() if n == vbytes)
                r.update(status=p["status"], repair_s=p["seconds"], delta=d,
                         node3_after=len(have), node3_whole=whole, during=run,
                         repair_start_s=round(p["t0"] - t_get, 2),
                         get_overlap_s=round(max(0.0, min(t_get_end, p["t0"] + p["seconds"])
                                                 - p["t0"]), 2))
                log(f"  K={k:,} rep {rep + 1}: wrote in {r['write_s']} s; repair {p['status']} in "
                    f"{p['seconds']:.3f} s: {d['bytes']:,} bytes, {d['records_received']} records "
                    f"received / {d['records_sent']} sent, {d['keys_repaired']} keys repaired, "
                    f"{d['segments_compared']} segments compared; node 3 now holds "
                    f"{len(have):,} of {k:,} ({whole:,} whole); GET at {rate:.0f}/s for "
                    f"{dur} s: {fmt_run(run)}")
                # A repair that answers 200 should leave node 3 with every key. When it does
                # not, that is a finding, not a harness failure: record it, and repair again
                # until node 3 holds them all (at most --repair-max-rounds in all).
                r["peers_after"] = [cl.json(i, "v0/admin/repair") for i in (0, 1)]
                extra = []
                while whole != k and 1 + len(extra) < opts.repair_max_rounds:
                    b3 = repair_totals(cl)
                    p3 = post_repair(cl, 2, timeout_s)
                    d3 = repair_delta(b3, repair_totals(cl))
                    whole = sum(1 for n in local_range(opts.base_port + 2, lo, hi).values()
                                if n == vbytes)
                    extra.append({"status": p3["status"], "seconds": p3["seconds"], "delta": d3,
                                  "node3_whole": whole})
                    log(f"  K={k:,} rep {rep + 1}: **not converged**; repair {1 + len(extra)}: "
                        f"{p3['status']} in {p3['seconds']:.3f} s, {d3['bytes']:,} bytes, "
                        f"{d3['keys_repaired']} keys repaired; node 3 now holds {whole:,}")
                r["extra_rounds"] = extra
                r["rounds_to_converge"] = 1 + len(extra) if whole == k else None
                r["converge_s"] = round(p["seconds"] + sum(e["seconds"] for e in extra), 3)
                r["converge_bytes"] = d["bytes"] + sum(e["delta"]["bytes"] for e in extra)
                if whole != k:
                    log(f"  K={k:,} rep {rep + 1}: node 3 still holds only {whole:,} of {k:,} "
                        f"after {1 + len(extra)} repairs")
                b2 = repair_totals(cl)
                p2 = post_repair(cl, 2, timeout_s)
                d2 = repair_delta(b2, repair_totals(cl))
                r["again"] = {"status": p2["status"], "seconds": p2["seconds"], "delta": d2}
                log(f"  K={k:,} rep {rep + 1}: repair again right after: {p2['status']} in "
                    f"{p2['seconds']:.3f} s, {d2['bytes']:,} bytes, {d2['keys_repaired']} keys "
                    f"repaired")
                r["quiet_after"] = wait_quiet(cl.pids(), 30)
                r["no_repair"] = gen.run(cl.url(0), script, args, dur, rate=rate,
                                         server_pids=cl.pids())
                log(f"  K={k:,} rep {rep + 1}: no repair, same rate: {fmt_run(r['no_repair'])}")
                point["reps"].append(r)
            for key in ("during", "no_repair"):
                point[key] = summarize([r[key] for r in point["reps"]])
            for key in ("repair_s", "write_s", "get_overlap_s", "node3_trees_s", "node3_whole",
                        "converge_s", "converge_bytes"):
                point[key] = median([r[key] for r in point["reps"]])
            point["rounds_to_converge"] = [r["rounds_to_converge"] for r in point["reps"]]
            for key in ("bytes", "bytes_sent", "bytes_received", "records_sent",
                        "records_received", "keys_repaired", "segments_compared"):
                point[key] = median([r["delta"][key] for r in point["reps"]])
            point["again_bytes"] = median([r["again"]["delta"]["bytes"] for r in point["reps"]])
            point["again_s"] = median([r["again"]["seconds"] for r in point["reps"]])
            out["points"].append(point)
        results["repair"] = out
    finally:
        cl.stop()
        if not opts.keep:
            shutil.rmtree(root, ignore_errors=True)


def ae_rate(dkv_args: str) -> int:
    m = re.search(r"--anti-entropy-max-bytes-per-s[ =](\d+)", dkv_args)
    return int(m.group(1)) if m else DEFAULT_AE_BYTES_PER_S


# ---------------------------------------------------------------------------------------------
# Report


def machine_info() -> dict:
    model = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = 0.0
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem_gib = int(line.split()[1]) / (1 << 20)
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu": model, "kernel": platform.release(),
            "os": platform.platform(), "mem_gib": round(mem_gib, 1)}


def git_info() -> dict:
    def git(*a):
        r = subprocess.run(["git", *a], cwd=ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True)
        return r.stdout.strip() if r.returncode == 0 else ""
    commit = git("rev-parse", "--short", "HEAD") or "nogit"
    dirty = git("status", "--porcelain", "--", "src", "CMakeLists.txt")
    return {"commit": commit, "subject": git("log", "-1", "--format=%s"),
            "src_commit": git("log", "-1", "--format=%h", "--", "src", "CMakeLists.txt"),
            "dirty": bool(dirty), "dirty_files": dirty.splitlines()[:20]}


def fmt_ms(us: float) -> str:
    ms = us / 1000.0
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    return f"{ms:.2f}"


def fmt_cpu(us: Optional[float]) -> str:
    """Server CPU microseconds per request."""
    if us is None:
        return "-"
    return f"{us:.0f}" if us >= 100 else f"{us:.1f}"


def fmt_mib(n: Optional[float]) -> str:
    return "-" if n is None else f"{n / 2**20:.0f}"


def fmt_k(rps: float) -> str:
    return f"{rps / 1000:.1f}k"


def plot(results: dict, png: Path, dat_dir: Path) -> Optional[str]:
    """Latency vs throughput (p50 and p99, log scale) with gnuplot; None when it is missing."""
    gp = shutil.which("gnuplot")
    if gp is None:
        return "gnuplot not found (bash scripts/install-deps.sh --bench): no plot"
    targets = [("nginx", "nginx static 200", results["nginx"])]
    targets += [(n, SCENARIO_BY_NAME[n].title(), r) for n, r in results["scenarios"].items()]
    series = []
    for name, title, r in targets:
        f = dat_dir / f"{name}.dat"
        rows = sorted((fx["rps"], fx["p50_us"] / 1e3, fx["p99_us"] / 1e3, fx["p999_us"] / 1e3)
                      for fx in r["fixed"])
        f.write_text("# rps p50_ms p99_ms p999_ms\n" +
                     "".join(f"{a:.1f} {b:.4f} {c:.4f} {d:.4f}\n" for a, b, c, d in rows))
        series.append((f, title))
    def plots(col):
        return ", ".join(f"'{f}' using ($1/1000):{col} with linespoints lw 2 pt 7 ps 1.2 "
                         f"title '{t}'" for f, t in series)
    script = f"""
set terminal pngcairo size 1400,560 font 'sans,10'
set output '{png}'
set multiplot layout 1,2 title 'dkv latency vs throughput at fixed rates (share of each target''s maximum; median of runs; wrk CO correction, lag apart)'
set logscale y
set grid
set xlabel 'throughput (k req/s)'
set ylabel 'latency (ms)'
set key top right font ',9' box opaque
set xrange [0:*]
set title 'p50'
plot {plots(2)}
unset key
set title 'p99'
plot {plots(3)}
unset multiplot
"""
    gpf = dat_dir / "plot.gp"
    gpf.write_text(script)
    r = subprocess.run([gp, str(gpf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=60)
    if r.returncode != 0:
        return "gnuplot failed: " + r.stdout[-500:]
    return None


def report_ab(results: dict, ng_cpu: Optional[float]) -> List[str]:
    ab_all = results.get("ab") or {}
    if not ab_all:
        return []
    o = results["options"]
    off_args = next(iter(ab_all.values())).get("off_args", AB_OFF_ARGS)
    aa = off_args.strip() == ""
    swapped = any(len(ab_blocks(ab)) > 1 for ab in ab_all.values())
    how = ("in two blocks: *on* in slot A (ports base+0..2) and *off* in slot B (base+10..12), "
           "then both restarted with the flags swapped (an A/A check, both clusters on, showed "
           "the slots themselves differing by ~3% in GET CPU per request)" if swapped else
           "(*on* on ports base+0..2, *off* on base+10..12)")
    L = ["## Convergence on vs off (same run, alternating)\n" if not aa else
         "## A/A check of the on vs off method (both clusters on)\n"]
    L.append(f"Two 3-node clusters from copies of the same fill run side by side: *on* with the "
             f"defaults (hinted handoff and read repair on), *off* with "
             f"`{off_args or '(no extra flags)'}`. Closed-loop runs (`wrk -t1 -c{CONNECTIONS} "
             f"-d{o.get('ab_duration', 0):g}s`) alternate on, off, on, off, ..., on {how}. "
             f"*on ÷ off* is the "
             f"median over all off runs of the ratio to the mean of the two on runs around it "
             f"(a steady drift of the shared machine cancels), with its min - max; *pairs* is "
             f"the plain median of on_i ÷ off_i for reference. Server CPU per request as above "
             f"(all three nodes of that cluster). "
             f"**Goal: CPU per request on <= off ÷ {AB_GOAL_EFFICIENCY} "
             f"(= {1 / AB_GOAL_EFFICIENCY:.3f}x off), i.e. efficiency off ÷ on >= "
             f"{AB_GOAL_EFFICIENCY}x.**\n")
    L.append("| Scenario | pairs | req/s on | req/s off | throughput on ÷ off | CPU/req on (us) "
             "| CPU/req off (us) | CPU on ÷ off | (pairs) | efficiency (off ÷ on) | goal >= 0.9 "
             "| CPU eff. x nginx on / off | other CPU on / off | errors |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|---:|---:|---:|")

    def eff(us):
        return f"{ng_cpu / us:.2f}" if ng_cpu and us else "-"
    for name, ab in ab_all.items():
        on, off = ab["on"], ab["off"]
        cr, rr = ab.get("cpu_ratio"), ab.get("rps_ratio")
        e = 1 / cr if cr else None
        pr = ab.get("cpu_ratio_pairs")
        L.append(f"| {SCENARIO_BY_NAME[ab['scenario']].title()} (`{name}`) | {ab['pairs']} | "
                 f"{on['rps']:,.0f} | {off['rps']:,.0f} | "
                 f"{rr:.3f} ({ab['rps_ratio_min']:.2f} - {ab['rps_ratio_max']:.2f}) | "
                 f"{fmt_cpu(on.get('cpu_us_per_req'))} | {fmt_cpu(off.get('cpu_us_per_req'))} | "
                 f"{cr:.3f} ({ab['cpu_ratio_min']:.3f} - {ab['cpu_ratio_max']:.3f}) | "
                 f"{f'{pr:.3f}' if pr else '-'} | "
                 f"**{e:.3f}** | {'yes' if e >= AB_GOAL_EFFICIENCY else '**no**'} | "
                 f"{eff(on.get('cpu_us_per_req'))} / {eff(off.get('cpu_us_per_req'))} | "
                 f"{on['other_cpu_pct']:.0f}% / {off['other_cpu_pct']:.0f}% | "
                 f"{on['errors']} / {off['errors']} |")
    L.append("")
    for name, ab in ab_all.items():
        c = ab.get("counters_on") or {}
        L.append(f"- `{name}`, *on* cluster's node 0 after its runs: hints written "
                 f"{c.get('hints_written', '?')}, read repair writes "
                 f"{c.get('read_repair_writes', '?')}, reads repaired "
                 f"{c.get('reads_repaired', '?')} (all replicas healthy and in agreement: what "
                 f"is measured is the bookkeeping, not repair traffic).")
        for blk in ab_blocks(ab):
            seq = []
            for p in blk["pairs"]:
                seq += [f"on {fmt_cpu(p['on'].get('cpu_us_per_req'))}",
                        f"off {fmt_cpu(p['off'].get('cpu_us_per_req'))}"]
            if blk.get("closing_on"):
                seq.append(f"on {fmt_cpu(blk['closing_on'].get('cpu_us_per_req'))}")
            L.append(f"  CPU us/req in run order, *on* in slot {blk.get('on_slot', 'A')}: "
                     f"{', '.join(seq)}.")
    L.append("")
    return L


def report_drain(results: dict) -> List[str]:
    d = results.get("drain")
    if not d:
        return []
    L = ["## Hints drain under client load\n"]
    mib = d["pending_bytes"] / 2**20
    L.append(f"3 nodes, filled as above. Node 3 (index 2) stopped; {d['keys']:,} new keys "
             f"(`key{d['first_key']}` onwards, not the keys the GETs read) written once each "
             f"with {d['value_bytes']} B random values at the default quorum (ack=2/from=3), "
             f"half through node 1 and half through node 2: {d['hints_total']:,.0f} hints "
             f"pending ({mib:.1f} MiB, median over repetitions). Then node 3 is started and, "
             f"from that moment: `/v0/admin/hints` polled on both coordinators every 100 ms "
             f"(*drain* = time from node 3's launch until `pending_count` is 0 on both), and "
             f"the `n3-a2f3-get` workload at a fixed {d['rate']:,.0f} req/s "
             f"({d['rate_fraction']:.0%} of {d['peak']:,.0f}, the {d['peak_source']}), same "
             f"CO-corrected pacing, for about as long as the throttle needs; then, once drained "
             f"and idle, the same load for the same time with no drain; and a control: node 3 "
             f"stopped and started again with nothing written meanwhile, the same load from its "
             f"launch (what the restart alone costs). Server CPU per GET while draining "
             f"includes node 3's start and the replay. Replay throttle "
             f"`--hint-replay-bytes-per-s` {d['replay_bytes_per_s'] / 2**20:g} MiB/s per "
             f"coordinator. {len(d['reps'])} repetition(s); figures are medians.\n")
    L.append("| | drain s | GET s (of it during the drain) | achieved req/s | p50 ms | p99 ms "
             "| p99.9 ms | lag p99 ms | server CPU/GET (us) | errors |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for title, k in (("while draining", "during"), ("no drain (same rate, same run)",
                                                     "no_drain"),
                     ("control: node 3 restarted, no hints", "restart_only")):
        x = d.get(k)
        if x is None:
            continue
        drain = f"{d['drain_s']:.1f}" if k == "during" else "-"
        dur = d["reps"][0]["get_duration_s"]
        ov = f"{dur} ({d['get_overlap_s']:.1f})" if k == "during" else f"{dur}"
        L.append(f"| {title} | {drain} | {ov} | {x['rps']:,.0f} | {fmt_ms(x['p50_us'])} | "
                 f"{fmt_ms(x['p99_us'])} | {fmt_ms(x['p999_us'])} | {fmt_ms(x['lag_p99_us'])} | "
                 f"{fmt_cpu(x.get('cpu_us_per_req'))} | {x['errors']} |")
    L.append("")
    L.append("Per repetition (times in s from node 3's launch; *replay* = pending MiB ÷ (drain "
             "- first delivery), both coordinators together):\n")
    L.append("| rep | write s (keys/s) | hints per coordinator | node 3 answers | first hint "
             "delivered | drained | replay MiB/s | p99 during / without drain ms |")
    L.append("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for i, r in enumerate(d["reps"]):
        span = r["drain_s"] - r.get("first_delivery_s", 0)
        rate = sum(r["pending_bytes"]) / 2**20 / span if span > 0 else 0
        L.append(f"| {i + 1} | {r['write_s']} ({r['write_rate']:,}) | "
                 f"{' + '.join(f'{c:,}' for c in r['pending_count'])} | {r['node3_start_s']} | "
                 f"{r.get('first_delivery_s', '-')} | {r['drain_s']} | {rate:.1f} | "
                 f"{fmt_ms(r['during']['p99_us'])} / {fmt_ms(r['no_drain']['p99_us'])} |")
    L.append("")
    return L


def fmt_bytes(n: float) -> str:
    if n >= 1 << 20:
        return f"{n / 2**20:.2f} MiB"
    if n >= 10 << 10:
        return f"{n / 2**10:.0f} KiB"
    return f"{n:,.0f} B"


def report_repair(results: dict) -> List[str]:
    rp = results.get("repair")
    if not rp:
        return []
    L = ["## Anti-entropy repair under client load\n"]
    m_keys, fvb = rp["fill_keys"], rp["fill_value_bytes"]
    data = m_keys * fvb
    reps = len(rp["identical"])
    L.append(f"3 nodes started on a copy of the 3-node fill (M = {m_keys:,} keys x {fvb} B = "
             f"{fmt_bytes(data)} of values, every node holding every key) with `{rp['args']}`: "
             f"only the exchange repairs, and only when asked. Node 3 (index 2) stopped; K new "
             f"keys (not the keys the GETs read) written once each with {rp['value_bytes']} B "
             f"random values at the default quorum, half through node 1 and half through node "
             f"2; node 3 started, its hash trees built (a scan of its digest column family), "
             f"every node idle; then GETs of the `n3-a2f3-get` workload at a fixed "
             f"{rp['rate']:,.0f} req/s ({rp['rate_fraction']:.0%} of {rp['peak']:,.0f}, the "
             f"{rp['peak_source']}) for {results['options'].get('repair_get_s', '?')} s, and "
             f"1 s into them `POST /v0/admin/repair` on node 3 (one exchange with each peer). "
             f"*repair s* = the POST's duration, i.e. until node 3 converged; afterwards node 3's "
             f"own copies of the K keys are counted through `GET /v0/entities` on node 3 (all "
             f"K, whole values, in every repetition, else the run fails). *bytes* = sum over "
             f"every node and peer of the `bytes_sent` + `bytes_received` deltas of "
             f"`GET /v0/admin/repair` (the node that runs an exchange counts its traffic: "
             f"requests, tree levels, digest entries, records). Then, right away, a second "
             f"repair over replicas now in sync, and, idle again, the same GET load with no "
             f"repair. Throttle `--anti-entropy-max-bytes-per-s` "
             f"{rp['max_bytes_per_s'] / 2**20:g} MiB/s. {reps} repetition(s); medians.\n")
    ident = rp["identical"]
    ib = median([x["delta"]["bytes"] for x in ident])
    iex = median([x["delta"]["exchanges_ok"] for x in ident]) or 1
    L.append(f"- Identical replicas (fresh from the fill, trees built in "
             f"{rp['trees_built_s']:.1f} s after the start): repair in "
             f"{median([x['seconds'] for x in ident]):.3f} s, **{ib:,.0f} bytes** for "
             f"{iex:.0f} exchanges = {ib / iex:,.0f} B per peer "
             f"({', '.join(format(x['delta']['bytes'], ',') for x in ident)} per run), "
             f"{median([x['delta']['keys_repaired'] for x in ident]):.0f} keys repaired.\n")
    L.append("| K keys missed by node 3 | repair s (min - max) | node 3 holds after it "
             "| records received / sent "
             "| keys repaired | segments compared | bytes | ÷ K values | ÷ M values "
             "| repairs until node 3 held all K: s, bytes (repairs per rep) "
             "| repair again right after: s, bytes |")
    L.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    max_rounds = results["options"].get("repair_max_rounds", "?")
    for pt in rp["points"]:
        k = pt["keys"]
        ss = [r["repair_s"] for r in pt["reps"]]
        kb = k * rp["value_bytes"]
        holds = pt.get("node3_whole", k)
        rounds = pt.get("rounds_to_converge", [1])
        L.append(f"| {k:,} | {pt['repair_s']:.3f} ({min(ss):.3f} - {max(ss):.3f}) | "
                 f"{'' if holds == k else '**'}{holds:,.0f}{'' if holds == k else '**'} | "
                 f"{pt['records_received']:,.0f} / {pt['records_sent']:,.0f} | "
                 f"{pt['keys_repaired']:,.0f} | {pt['segments_compared']:,.0f} | "
                 f"{fmt_bytes(pt['bytes'])} | {pt['bytes'] / kb:.2f} | "
                 f"{pt['bytes'] / data:.4f} | "
                 f"{pt.get('converge_s', pt['repair_s']):.3f}, "
                 f"{fmt_bytes(pt.get('converge_bytes', pt['bytes']))} "
                 f"({', '.join(str(n) if n else f'>{max_rounds}' for n in rounds)}) | "
                 f"{pt['again_s']:.3f}, {pt['again_bytes']:,.0f} B |")
    bad = [pt for pt in rp["points"] if any(n != 1 for n in pt.get("rounds_to_converge", [1]))]
    if bad:
        L.append("")
        L.append("**Anomaly: a repair answered 200 (every exchange complete) while node 3 still "
                 "lacked keys** (" + "; ".join(
                     f"K = {pt['keys']:,}: node 3 held {pt['node3_whole']:,.0f} after the first "
                     f"repair, repairs per repetition until it held all: "
                     f"{', '.join(str(n) for n in pt['rounds_to_converge'])}" for pt in bad)
                 + "). Each extra repair is in the per-repetition table below.")
    L.append("")
    L.append("| GET during the repair | K | GET s (of it during the repair) | achieved req/s "
             "| p50 ms | p99 ms | p99.9 ms | lag p99 ms | server CPU/GET (us) | errors |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for pt in rp["points"]:
        dur = results["options"].get("repair_get_s", "?")
        for title, key in (("while repairing", "during"), ("no repair (same rate, same run)",
                                                            "no_repair")):
            x = pt[key]
            ov = f"{dur} ({pt['get_overlap_s']:.2f})" if key == "during" else f"{dur}"
            L.append(f"| {title} | {pt['keys']:,} | {ov} | {x['rps']:,.0f} | "
                     f"{fmt_ms(x['p50_us'])} | {fmt_ms(x['p99_us'])} | {fmt_ms(x['p999_us'])} | "
                     f"{fmt_ms(x['lag_p99_us'])} | {fmt_cpu(x.get('cpu_us_per_req'))} | "
                     f"{x['errors']} |")
    L.append("")
    L.append("Per repetition:\n")
    L.append("| K | rep | write s | node 3 trees built s | repair status, s | bytes (sent / "
             "received) | records in / out | node 3 holds | further repairs: keys repaired "
             "(node 3 then holds) | p99 during / without ms |")
    L.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for pt in rp["points"]:
        for i, r in enumerate(pt["reps"]):
            d = r["delta"]
            more = ", ".join(f"{e['delta']['keys_repaired']:,} ({e['node3_whole']:,})"
                             for e in r.get("extra_rounds", []))
            L.append(f"| {pt['keys']:,} | {i + 1} | {r['write_s']} | {r['node3_trees_s']} | "
                     f"{r['status']}, {r['repair_s']:.3f} | {d['bytes']:,} ({d['bytes_sent']:,} "
                     f"/ {d['bytes_received']:,}) | {d['records_received']:,} / "
                     f"{d['records_sent']:,} | {r['node3_whole']:,} | "
                     f"{more or '-'} | "
                     f"{fmt_ms(r['during']['p99_us'])} / "
                     f"{fmt_ms(r['no_repair']['p99_us'])} |")
    L.append("")
    return L


def refresh_ab(results: dict) -> bool:
    """Recomputes the A/B summaries from their runs (reports written by an older harness);
    True when something changed."""
    changed = False
    for name, ab in (results.get("ab") or {}).items():
        fresh = ab_summary(ab_blocks(ab))
        for k, v in fresh.items():
            if ab.get(k) != v:
                ab[k] = v
                changed = True
    return changed


def fills_of(results: dict):
    """(name, info) of every fill, older reports' "1"/"3" keys named n1/n3."""
    out = []
    for n, f in results["fill"].items():
        out.append((f"n{n}" if n.isdigit() else n, f))
    return out


def nginx_ref(results: dict, name: str):
    """The nginx target a scenario is compared with: (label, its measure) or (None, None).
    GETs of large values: the static file of the same size; PUTs of large values: none (nginx
    stores nothing); everything else: the static 200."""
    s = SCENARIO_BY_NAME[name]
    vb = FILLS[s.fill].value_bytes
    if s.op == "put" and s.put_bytes:
        return None, None
    if s.op == "get" and vb != FILL_VALUE_BYTES:
        r = (results.get("nginx_files") or {}).get(str(vb))
        return (f"static file {fmt_size(vb)}", r) if r else (None, None)
    return "static 200", results["nginx"]


def cpu_of(r: Optional[dict]) -> Optional[float]:
    return r["max"].get("cpu_us_per_req") if r else None


def half_rate(r: dict, frac: float = 0.5) -> Optional[dict]:
    for fx in r.get("fixed", []):
        if abs(fx["fraction"] - frac) < 1e-9:
            return fx
    return None


def peak_rss(mem: Optional[List[dict]]) -> str:
    if not mem:
        return "-"
    return ", ".join(fmt_mib(m.get("vmhwm_bytes")) for m in mem)


def report_efficiency(results: dict) -> List[str]:
    rows = [(n, today, goal) for n, today, goal in EFFICIENCY_GOALS if n in results["scenarios"]]
    if not rows:
        return []
    ng_cpu = cpu_of(results["nginx"])
    L = ["## Efficiency (issue 11)\n",
         "*efficiency* = nginx's server CPU per request ÷ dkv's, closed loop. Each of the "
         "scenario's closed-loop runs is paired with a run of nginx's static 200 just before it "
         "(same load generator, same duration); the efficiency is the median of the pairs' "
         "ratios (*range*: lowest - highest pair), so a drift of the machine during the bench "
         "moves both sides of a pair. CPU of every dkv node of the cluster counts, per client "
         "request. *issue* = the figure the issue measured before this work.\n",
         "| Scenario | dkv us/req | nginx us/req (paired) | efficiency | range | issue | goal "
         "| met |",
         "|---|---:|---:|---:|---:|---:|---:|:---:|"]
    for n, today, goal in rows:
        mx = results["scenarios"][n]["max"]
        cpu = mx.get("cpu_us_per_req")
        pr = mx.get("paired")
        if pr:
            e, ng, rng = (pr["efficiency"], pr["nginx_us"],
                          f"{pr['efficiency_min']:.2f} - {pr['efficiency_max']:.2f}")
        else:  # an older results file, or the pairs failed: nginx's runs at the start
            e, ng, rng = (ng_cpu / cpu if ng_cpu and cpu else None), ng_cpu, "unpaired"
        if e is None:
            L.append(f"| {SCENARIO_BY_NAME[n].title()} | - | - | - | - | {today:.2f} | "
                     f">= {goal:.2f} | - |")
            continue
        L.append(f"| {SCENARIO_BY_NAME[n].title()} | {fmt_cpu(cpu)} | {fmt_cpu(ng)} | "
                 f"**{e:.2f}** | {rng} | {today:.2f} | >= {goal:.2f} | "
                 f"{'yes' if e >= goal else '**no**'} |")
    L.append("")
    return L


def report_main(results: dict) -> List[str]:
    o = results["options"]
    fr = o["rates"]
    L = ["## Every scenario: CPU per request, throughput, latency\n",
         "*dkv us/req*: utime + stime of every dkv node of the cluster (all threads, RocksDB's "
         "background threads included) over the closed-loop run, from /proc/PID/stat, divided "
         "by the requests answered; *nginx us/req* the same for nginx's master and workers on "
         "the reference target of the same run (static 200, or for large values a static file "
         "of the same size, sendfile on); *eff.* = nginx ÷ dkv. *req/s*: closed loop, median "
         "(min - max) of the runs. *MB/s*: req/s x value bytes. Latency at fixed rates of the "
         "target's own median maximum (CO-corrected, see the latency table below; lag column "
         "there). *peak RSS*: VmHWM of each node at the end of the scenario (start-up "
         "included). *other CPU*: what processes other than wrk and the servers used meanwhile "
         "(% of all cores).\n"]
    lat = " | ".join(f"p50 / p99 at {x:.0%} ms" for x in fr)
    L.append(f"| Target | dkv us/req | nginx us/req | eff. | req/s (min - max) | MB/s | {lat} "
             f"| peak RSS per node MiB | other CPU | errors |")
    L.append("|---|---:|---:|---:|---:|---:|" + "---:|" * len(fr) + "---:|---:|---:|")

    def lat_cells(r):
        out = []
        for x in fr:
            fx = half_rate(r, x)
            out.append(f"{fmt_ms(fx['p50_us'])} / {fmt_ms(fx['p99_us'])}" if fx else "-")
        return " | ".join(out)

    ng = results["nginx"]
    nginx_rows = [("nginx static 200 (ceiling)", ng, 2)]
    nginx_rows += [(f"nginx static file {fmt_size(int(n))}", r, int(n))
                   for n, r in (results.get("nginx_files") or {}).items()]
    for title, r, vb in nginx_rows:
        mx = r["max"]
        L.append(f"| {title} | - | {fmt_cpu(mx.get('cpu_us_per_req'))} | 1.00 | "
                 f"{mx['rps']:,.0f} ({mx['rps_min']:,.0f} - {mx['rps_max']:,.0f}) | "
                 f"{mx['rps'] * vb / 1e6:,.1f} | {lat_cells(r)} | - | "
                 f"{mx['other_cpu_pct']:.0f}% | {mx['errors']} |")
    for name, r in results["scenarios"].items():
        mx = r["max"]
        cpu = mx.get("cpu_us_per_req")
        label, ref = nginx_ref(results, name)
        ncpu = cpu_of(ref)
        e = f"{ncpu / cpu:.2f}" if ncpu and cpu else "-"
        vb = r.get("value_bytes") or SCENARIO_BY_NAME[name].value_bytes()
        L.append(f"| {SCENARIO_BY_NAME[name].title()} (`{name}`) | {fmt_cpu(cpu)} | "
                 f"{fmt_cpu(ncpu)}{'' if label in (None, 'static 200') else ' (file)'} | {e} | "
                 f"{mx['rps']:,.0f} ({mx['rps_min']:,.0f} - {mx['rps_max']:,.0f}) | "
                 f"{mx['rps'] * vb / 1e6:,.1f} | {lat_cells(r)} | {peak_rss(r.get('memory'))} | "
                 f"{mx['other_cpu_pct']:.0f}% | {mx['errors']} |")
    L.append("")
    return L


def rel_spread(xs: List[float]) -> Optional[float]:
    xs = [x for x in xs if x]
    if len(xs) < 2:
        return None
    return (max(xs) - min(xs)) / statistics.median(xs)


def report_stability(results: dict) -> List[str]:
    targets = [results["nginx"]] + list((results.get("nginx_files") or {}).values()) + \
        list(results["scenarios"].values())
    cpu_sp, rps_sp, p99_sp = [], [], []
    for r in targets:
        runs = r["max"].get("all") or []
        c = rel_spread([x.get("cpu_us_per_req") for x in runs])
        q = rel_spread([x["rps"] for x in runs])
        if c is not None and q is not None:
            cpu_sp.append(c)
            rps_sp.append(q)
        fx = half_rate(r)
        if fx and fx.get("all"):
            v = rel_spread([x["p99_us"] for x in fx["all"]])
            if v is not None:
                p99_sp.append(v)
    if not cpu_sp:
        return []
    oc = [r["max"]["other_cpu_pct"] for r in targets]
    L = ["### Which figure is stable, and why\n"]
    L.append(
        f"In this run the closed-loop runs of one target differed by a median "
        f"**{100 * median(cpu_sp):.0f}% in CPU per request** (worst "
        f"{100 * max(cpu_sp):.0f}%) and **{100 * median(rps_sp):.0f}% in throughput** (worst "
        f"{100 * max(rps_sp):.0f}%); p99 at 50% load by {100 * median(p99_sp):.0f}% "
        f"(worst {100 * max(p99_sp):.0f}%) ((max - min) ÷ median over the "
        f"{results['options']['runs']} runs; other CPU {min(oc):.0f}-{max(oc):.0f}%). "
        f"**CPU per request is the figure to compare**, and the efficiency (nginx ÷ dkv in "
        f"the same run) the one to quote: it counts the work the servers do per request, so "
        f"it does not move when another process takes a core, while throughput is whatever "
        f"CPU is left after wrk (about one core), the other nodes and the machine's other "
        f"users, and latency depends on when the scheduler runs each thread. It is not free "
        f"of noise: it falls when more requests share a loop iteration (one `epoll_wait`, one "
        f"write-ahead-log `write(2)`, fuller socket writes), so a run that got less CPU also "
        f"spends a little more per request; the ratio to nginx measured minutes apart on the "
        f"same cores cancels most of the machine's state. Throughput and latency are here to "
        f"show the shape (what saturates first, the tail at a given load), not to compare "
        f"two runs.\n")
    return L


def report_values(results: dict) -> List[str]:
    rows = []
    for vb in NGINX_FILES:
        get = next((n for n, r in results["scenarios"].items()
                    if SCENARIO_BY_NAME[n].op == "get" and not SCENARIO_BY_NAME[n].cold
                    and FILLS[SCENARIO_BY_NAME[n].fill].value_bytes == vb
                    and FILLS[SCENARIO_BY_NAME[n].fill].scale == 1
                    and SCENARIO_BY_NAME[n].nodes == 1), None)
        put = next((n for n, r in results["scenarios"].items()
                    if SCENARIO_BY_NAME[n].op == "put" and SCENARIO_BY_NAME[n].put_bytes == vb),
                   None)
        ng = (results.get("nginx_files") or {}).get(str(vb))
        if get or put or ng:
            rows.append((vb, get, put, ng))
    if not results.get("nginx_files") or not rows:
        return []
    L = ["## Value sizes: bytes per second and CPU per MiB (1 node)\n",
         "GET: the hot set of a data set of the default fill's bytes (values of the size in "
         "the row) against nginx serving a static file of that size from the page cache "
         "(`sendfile on`), same run, closed loop. PUT: the same keys overwritten with values of "
         "that size (no nginx counterpart: nginx stores nothing). *CPU us/MiB* = server CPU "
         "per request ÷ value MiB; *eff.* = nginx ÷ dkv.\n",
         "| Value | GET MB/s | nginx MB/s | GET CPU us/MiB | nginx CPU us/MiB | eff. | "
         "PUT MB/s | PUT CPU us/MiB | scenarios |",
         "|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for vb, get, put, ng in rows:
        mib = vb / 2**20

        def mbs(r):
            return f"{r['max']['rps'] * vb / 1e6:,.1f}" if r else "-"

        def per_mib(r):
            c = cpu_of(r)
            return f"{c / mib:,.0f}" if c else "-"
        g = results["scenarios"].get(get) if get else None
        pu = results["scenarios"].get(put) if put else None
        e = f"{cpu_of(ng) / cpu_of(g):.2f}" if cpu_of(ng) and cpu_of(g) else "-"
        L.append(f"| {fmt_size(vb)} | {mbs(g)} | {mbs(ng)} | {per_mib(g)} | {per_mib(ng)} | "
                 f"{e} | {mbs(pu)} | {per_mib(pu)} | "
                 f"{', '.join(f'`{x}`' for x in (get, put) if x)} |")
    L.append("")
    return L


def report_data_size(results: dict) -> List[str]:
    sc = results["scenarios"]
    pairs = [("GET, hot keys", "single-get", "x10-get"),
             ("GET, cold keys (uniform over the data set)", "single-get-cold", "x10-get-cold"),
             ("PUT, hot keys", "single-put", "x10-put")]
    pairs = [p for p in pairs if p[1] in sc or p[2] in sc]
    if not any(p[2] in sc for p in pairs):
        return []
    fills = dict(fills_of(results))

    def size(n):
        f = fills.get(n)
        return f"{sum(f['bytes_per_node']) / len(f['bytes_per_node']) / 2**30:.1f} GiB" if f \
            else "?"
    L = ["## Data size: the default fill and 10x (1 node)\n",
         f"Data on disk per node: {size('n1')} and {size('x10')}. Server CPU per request "
         f"(closed loop, median) and its growth; the hot set is the same {WORKLOAD_KEYS:,} "
         f"keys in both, cold keys are uniform over the whole data set.\n",
         "| Workload | 1x us/req | 10x us/req | 10x ÷ 1x | 1x req/s | 10x req/s | "
         "1x p99 at 50% ms | 10x p99 at 50% ms |",
         "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for title, a, b in pairs:
        ra, rb = sc.get(a), sc.get(b)
        ca, cb = cpu_of(ra), cpu_of(rb)
        ha, hb = (half_rate(ra) if ra else None), (half_rate(rb) if rb else None)
        qa = f"{ra['max']['rps']:,.0f}" if ra else "-"
        qb = f"{rb['max']['rps']:,.0f}" if rb else "-"
        growth = f"{cb / ca:.2f}" if ca and cb else "-"
        L.append(f"| {title} | {fmt_cpu(ca)} | {fmt_cpu(cb)} | {growth} | {qa} | {qb} | "
                 f"{fmt_ms(ha['p99_us']) if ha else '-'} | {fmt_ms(hb['p99_us']) if hb else '-'} |")
    L.append("")
    return L


def memory_bound(m: dict) -> Optional[int]:
    cap = m.get("block_cache_capacity_bytes")
    lim = m.get("memtable_limit_bytes", DEFAULT_MEMTABLE_LIMIT_BYTES)
    return cap + lim + RSS_SLACK_BYTES if cap else None


def report_memory(results: dict) -> List[str]:
    fills = fills_of(results)
    if not any(f.get("memory") for _, f in fills):
        return []
    L = ["## Memory per node at each data size\n",
         "Peak RSS = VmHWM from /proc/PID/status (the process's high-water mark since its start, "
         "write-ahead-log replay included): after the fill (the write-heavy phase), and the "
         "largest at the end of any scenario on that data set. *Bound* = block cache capacity + "
         "memtable limit + 64 MiB (issue 11; docs/architecture.md, Memory). *Table readers* = "
         "index and filter blocks held outside the block cache (RocksDB's "
         "`estimate-table-readers-mem`, all column families), *memtables* = all memtables now, "
         "both at the end of the fill.\n",
         "| Data set | on disk per node | block cache | memtable limit | table readers | "
         "memtables | peak RSS after fill (max node) | peak RSS in scenarios (max node) | "
         "bound | holds |",
         "|---|---:|---:|---:|---:|---:|---:|---:|---:|:---:|"]
    for n, f in fills:
        mem = f.get("memory") or []
        if not mem:
            continue
        scen = [r.get("memory") or [] for s, r in results["scenarios"].items()
                if SCENARIO_BY_NAME[s].fill == n]
        peak_fill = max(m.get("vmhwm_bytes", 0) for m in mem)
        peak_sc = max([m.get("vmhwm_bytes", 0) for ms in scen for m in ms] or [0])
        m0 = max(mem, key=lambda m: m.get("vmhwm_bytes", 0))
        bound = memory_bound(m0)
        worst = max(peak_fill, peak_sc)
        disk = sum(f["bytes_per_node"]) / len(f["bytes_per_node"])
        L.append(f"| `{n}` | {disk / 2**20:,.0f} MiB | "
                 f"{fmt_mib(m0.get('block_cache_capacity_bytes'))} MiB | "
                 f"{fmt_mib(m0.get('memtable_limit_bytes', DEFAULT_MEMTABLE_LIMIT_BYTES))} MiB | "
                 f"{fmt_mib(m0.get('table_readers_bytes'))} MiB | "
                 f"{fmt_mib(m0.get('memtable_bytes'))} MiB | {fmt_mib(peak_fill)} MiB | "
                 f"{fmt_mib(peak_sc) if peak_sc else '-'} MiB | "
                 f"{fmt_mib(bound)} MiB | "
                 f"{'-' if bound is None else ('yes' if worst <= bound else '**no**')} |")
    L.append("")
    L.append("Per scenario, at its end (per node: peak RSS / RSS now / block cache in use / "
             "memtables / table readers, MiB): " + "; ".join(
                 f"`{s}` " + ", ".join(
                     f"{fmt_mib(m.get('vmhwm_bytes'))}/{fmt_mib(m.get('vmrss_bytes'))}/"
                     f"{fmt_mib(m.get('block_cache_usage_bytes'))}/"
                     f"{fmt_mib(m.get('memtable_bytes'))}/{fmt_mib(m.get('table_readers_bytes'))}"
                     for m in r["memory"])
                 for s, r in results["scenarios"].items() if r.get("memory")) + ".\n")
    return L


def report_md(results: dict, png_name: Optional[str], plot_note: Optional[str]) -> str:
    refresh_ab(results)
    m, g, o = results["machine"], results["git"], results["options"]
    ng = results["nginx"]
    ng_max = ng["max"]["rps"]
    L = []
    L.append(f"# dkv benchmark {results['date']} (commit {g['commit']}"
             f"{', modified working tree' if g['dirty'] else ''})\n")
    if o["quick"]:
        L.append("**QUICK run** (short loads, small fill): a smoke test, not figures to quote.\n")
    if results.get("note"):
        L.append(f"**Note:** {results['note']}\n")
    L.append(f"- Machine: {m['cores']} cores, {m['cpu']}, Linux {m['kernel']}, "
             f"{m['mem_gib']} GiB RAM. Load generator, nginx and every dkv node share these cores.")
    L.append(f"- Background CPU before the run: {results['background_cpu_pct']:.0f}% of all cores"
             + (" (**noisy machine: figures are pessimistic and vary**)"
                if results["background_cpu_pct"] > 10 else ""))
    src = g.get("src_commit")
    L.append(f"- Commit: `{g['commit']}` {g['subject']}"
             + (f" (dkv sources last changed in `{src}`)" if src and src != g["commit"] else "")
             + (f"; modified: {', '.join(f.strip() for f in g['dirty_files'])}"
                if g["dirty"] else ""))
    L.append(f"- dkv: release build (`make build`), flags `--io-threads {o['io_threads']}"
             f"{(' ' + o['dkv_args_extra']) if o['dkv_args_extra'] else ''}`, other flags default"
             f"; nginx {results['nginx_version']} `worker_processes {o['io_threads']}`, "
             f"`access_log off`, `return 200 \"ok\"`.")
    L.append(f"- Load: {results['loadgen']}. Closed loop `wrk -t1 -c{CONNECTIONS} "
             f"-d{o['duration']:.0f}s`; fixed rate `-t1 -c{CONNECTIONS} -d{o['rate_duration']:.0f}s`"
             f" at {', '.join(f'{r:.0%}' for r in o['rates'])} of the target's median maximum. "
             f"Every figure is the median of {o['runs']} runs. Client traffic enters through "
             f"node 0, which coordinates every request.")
    L.append(f"- Workload: GET and PUT of `key<N>`, N uniform in 1..K: K = the hot set, the "
             f"keys of the first {fmt_size(HOT_BYTES)} of values ({WORKLOAD_KEYS:,} keys of "
             f"1 KiB: the first issue's workload), or every key of the fill for *cold keys*. "
             f"PUT values {PUT_VALUE_BYTES} B random unless the scenario says otherwise. "
             f"Data sets (each filled once through node 0, then every scenario starts from "
             f"its own copy):")
    for n, f in fills_of(results):
        per = ", ".join(f"{b / (1 << 20):,.0f}" for b in f["bytes_per_node"])
        L.append(f"  - `{n}` ({f.get('what', '')}): {f['keys']:,} keys x "
                 f"{fmt_size(f.get('value_bytes', FILL_VALUE_BYTES))} in {f['seconds']} s "
                 f"({f['rate']:,} keys/s); on disk per node: {per} MiB."
                 + (f" **Written twice**: {f['first_pass_failed']:,} PUTs of the first pass "
                    f"failed (not acknowledged), so every key was written again."
                    if f.get("first_pass_failed") else ""))
    L.append("")

    ng_cpu = ng["max"].get("cpu_us_per_req")
    L.extend(report_binab(results))
    L.extend(report_efficiency(results))
    L.extend(report_main(results))
    L.extend(report_stability(results))
    L.extend(report_values(results))
    L.extend(report_data_size(results))
    L.extend(report_memory(results))
    starts = [(n, r) for n, r in results["scenarios"].items() if "start_s" in r]
    if starts:
        L.append("Start of each scenario's cluster on its copy of the fill (until every node "
                 "answers; RocksDB replays its write-ahead log first)"
                 + (f", then the wait until its nodes were idle (`--settle-s "
                    f"{o.get('settle_s'):g}`)" if o.get("settle_s") else "")
                 + ": " + "; ".join(
                     f"`{n}` {r['start_s']} s" + (f" + {r['settle']['waited_s']} s"
                                                  if r.get("settle") else "")
                     for n, r in starts) + ".\n")

    L.append("## Latency at fixed rates\n")
    L.append("Rates are a share of the same target's maximum above. Coordinated omission: "
             "latency runs from the request's send time and wrk adds the requests a stalled "
             "connection could not send (HdrHistogram-style correction, so server stalls are "
             "counted); time a request waited for a free connection after its slot is *not* in "
             "these percentiles but measured apart as *lag* (99th percentile; *late* = share sent "
             "more than 1 ms after the slot). Lag p99 around 1 ms is wrk's millisecond timer: the "
             "latency figures are then the whole story. Larger lag means the rate was at or past "
             "what the system sustains and the true latency is up to the lag higher "
             "(docs/benchmarks.md).\n")
    L.append("| Target | rate | achieved | p50 ms | p90 ms | p99 ms | p99.9 ms | lag p99 ms "
             "| late | server CPU/req (us) | errors | other CPU |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = [("nginx static 200", ng)]
    rows += [(f"nginx static file {fmt_size(int(n))}", r)
             for n, r in (results.get("nginx_files") or {}).items()]
    rows += [(SCENARIO_BY_NAME[n].title(), r) for n, r in results["scenarios"].items()]
    for title, r in rows:
        for fx in r["fixed"]:
            L.append(f"| {title} | {fx['fraction']:.0%} = {fx['target_rate']:,.0f} | "
                     f"{fx['rps']:,.0f} | {fmt_ms(fx['p50_us'])} | {fmt_ms(fx['p90_us'])} | "
                     f"{fmt_ms(fx['p99_us'])} | {fmt_ms(fx['p999_us'])} | "
                     f"{fmt_ms(fx['lag_p99_us'])} | {fx['late_pct']:.1f}% | "
                     f"{fmt_cpu(fx.get('cpu_us_per_req'))} | {fx['errors']} | "
                     f"{fx['other_cpu_pct']:.0f}% |")
    L.append("")

    L.extend(report_ab(results, ng_cpu))
    L.extend(report_drain(results))
    L.extend(report_repair(results))
    L.extend(report_spec(results))

    L.append("## Targets\n")
    L.append("| Target | measured | goal | met |")
    L.append("|---|---:|---:|:---:|")
    for name, ratio, p99_ms in TARGETS:
        r = results["scenarios"].get(name)
        if r is None:
            continue
        got = r["max"]["rps"] / ng_max
        L.append(f"| {SCENARIO_BY_NAME[name].title()} throughput / nginx | {got:.2f} | "
                 f">= {ratio} | {'yes' if got >= ratio else '**no**'} |")
        if p99_ms is not None:
            half = [fx for fx in r["fixed"] if abs(fx["fraction"] - 0.5) < 1e-9]
            if half:
                p99 = half[0]["p99_us"] / 1e3
                lag = half[0]["lag_p99_us"] / 1e3
                L.append(f"| {SCENARIO_BY_NAME[name].title()} p99 at 50% "
                         f"({half[0]['target_rate']:,.0f} req/s; lag p99 {lag:.1f} ms) | "
                         f"{p99:.2f} ms | <= {p99_ms} ms "
                         f"| {'yes' if p99 <= p99_ms else '**no**'} |")
    sp = results.get("spec")
    if sp:
        L.append(f"| Speculative reads: server CPU per GET ÷ full fan-out's (healthy, median of "
                 f"pairs) | {sp['cpu_ratio_healthy']:.3f} | < 1 | "
                 f"{'yes' if sp['cpu_ratio_healthy'] < 1 else '**no**'} |")
        r = sp["speculative_p99_ratio"]
        L.append(f"| Speculative reads: p99 with node 3 SIGSTOPped 1 s / 1 s ÷ healthy p99 "
                 f"| {r:.2f} | <= {SPEC_GOAL_P99_RATIO} | "
                 f"{'yes' if r <= SPEC_GOAL_P99_RATIO else '**no**'} |")
    for name, ab in results.get("ab", {}).items():
        if ab.get("cpu_ratio") and ab.get("off_args", AB_OFF_ARGS) == AB_OFF_ARGS:
            e = 1 / ab["cpu_ratio"]
            L.append(f"| {SCENARIO_BY_NAME[ab['scenario']].title()}: CPU/req efficiency with "
                     f"hints + read repair on vs off (off ÷ on, median of "
                     f"{ab.get('cpu_ratio_brackets') or ab['pairs']} bracketed off runs) "
                     f"| {e:.3f} | >= {AB_GOAL_EFFICIENCY} | "
                     f"{'yes' if e >= AB_GOAL_EFFICIENCY else '**no**'} |")
    L.append("")

    if png_name:
        L.append(f"![latency vs throughput]({png_name})\n")
    if plot_note:
        L.append(f"Plot: {plot_note}\n")
    L.append(f"Every run's figures and wrk command lines: `{results['json_name']}`. Method and "
             f"tool choice: `docs/benchmarks.md`.")
    return "\n".join(L) + "\n"


# ---------------------------------------------------------------------------------------------
# Profiling (bench/profile.sh, make profile SCENARIO=...)


def perf_usable() -> Optional[str]:
    """None when `perf record` works here, else why not."""
    perf = shutil.which("perf")
    if perf is None:
        return "perf not found (Debian linux-perf: bash scripts/install-deps.sh --bench)"
    r = subprocess.run([perf, "record", "-q", "-e", "cpu-clock", "-o", "/dev/null", "--", "true"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=30)
    if r.returncode != 0:
        return "perf record is not allowed here: " + r.stdout.strip()[-300:]
    return None


def strip_ipc(text: str) -> str:
    """Drops perf report's empty IPC columns ("-  -") and over-long rulers."""
    out = []
    for line in text.splitlines():
        line = re.sub(r"\s+-\s+-\s*$", "", line)
        line = re.sub(r"\s+IPC\s+\[IPC Coverage\]\s*$", "", line)
        if line.startswith("# ...."):
            line = line[:100]
        out.append(line.rstrip())
    return "\n".join(out) + "\n"


def hw_counters_usable() -> bool:
    r = subprocess.run(["perf", "stat", "-x,", "-e", "instructions", "true"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=30)
    return r.returncode == 0 and "not supported" not in r.stdout and "<not" not in r.stdout


def children_named(pid: int, comm: str) -> List[int]:
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            st = (d / "stat").read_text()
        except OSError:
            continue
        name = st[st.index("(") + 1:st.rindex(")")]
        ppid = int(st.rsplit(")", 1)[1].split()[1])
        if ppid == pid and name == comm:
            out.append(int(d.name))
    return out


def run_profile(opts, gen: LoadGen, work: Path, dkv_bin: Path, gi: dict) -> int:
    s = SCENARIO_BY_NAME[opts.profile]
    date = datetime.date.today().isoformat()
    out = Path(opts.out_dir) / "profiles" / f"{date}-{gi['commit']}-{s.name}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    raw = work.parent / f"profile-{s.name}"  # perf.data and heaptrack files: large, not results
    shutil.rmtree(raw, ignore_errors=True)
    raw.mkdir(parents=True)
    perf_problem = perf_usable()
    summary = [f"# Profile of `{s.name}` ({s.title()}), {date}, commit {gi['commit']}"
               f"{' (modified working tree)' if gi['dirty'] else ''}\n"]
    script, args = scenario_args(s, opts.fill_keys)
    root = work / f"profile-{s.name}"
    f = FILLS[s.fill]
    cl = Cluster(s.nodes, opts.base_port, root, dkv_bin, f"{opts.dkv_args} {f.dkv_args}".strip())
    try:
        cl.start()
        log(f"profile {s.name}: fill {f.keys(opts.fill_keys)} keys x {f.value_bytes} B")
        fill(gen, cl.url(0), f.keys(opts.fill_keys), f.value_bytes, f.query(), work)
        gen.run(cl.url(0), script, args, max(1.0, opts.warmup))
        if opts.profile_rate:
            rate = opts.profile_rate
        else:
            peak = gen.run(cl.url(0), script, args, 5)["rps"]
            rate = peak * opts.profile_fraction
            log(f"  closed-loop maximum {peak:.0f} req/s; profiling at {rate:.0f} req/s")
        pids = [cl.pid(i) for i in range(s.nodes)]
        secs = opts.profile_seconds
        wrk_box = {}

        def load():
            wrk_box["r"] = gen.run(cl.url(0), script, args, secs + 3, rate=rate)

        import threading
        th = threading.Thread(target=load)
        th.start()
        time.sleep(1.5)
        if perf_problem is None:
            perf_data = raw / "perf.data"
            cmd = ["perf", "record", "-q", "-e", "cpu-clock", "-F", str(opts.perf_freq),
                   "--call-graph", "dwarf,16384", "-p", ",".join(map(str, pids)),
                   "-o", str(perf_data), "--", "sleep", str(secs)]
            log("  " + " ".join(cmd))
            r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               timeout=secs + 120)
            if r.returncode != 0:
                perf_problem = "perf record failed: " + r.stdout[-300:]
        th.join(timeout=secs + 120)
        res = wrk_box.get("r")
    finally:
        cl.stop()

    summary.append(f"- Load: `{res['cmd'] if res else '?'}`")
    if res:
        summary.append(f"- During the recording: {res['rps']:.0f} req/s, p50 "
                       f"{res['p50_us'] / 1e3:.2f} ms, p99 {res['p99_us'] / 1e3:.2f} ms, "
                       f"errors {res['errors']} (perf's unwinding costs CPU too).")
    summary.append(f"- Processes: every dkv node ({s.nodes}); client traffic enters via node 0.")
    if perf_problem is not None:
        summary.append(f"- **CPU profile skipped**: {perf_problem}")
    else:
        hw = hw_counters_usable()
        summary.append(f"- `perf record -e cpu-clock -F {opts.perf_freq} --call-graph "
                       f"dwarf` for {secs} s"
                       + ("" if hw else " (hardware counters are not available in this VM: "
                          "`perf stat -e instructions` says <not supported>, so the software "
                          "cpu-clock timer samples instead of cycles)") + ".")
        rep = subprocess.run(["perf", "report", "-i", str(raw / "perf.data"), "--no-inline",
                              "--no-children", "--sort", "dso,symbol", "--stdio",
                              "--percent-limit", "0.4", "-g", "none"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                             timeout=600)
        rep.stdout = strip_ipc(rep.stdout)
        (out / "top-self.txt").write_text(rep.stdout)
        rep2 = subprocess.run(["perf", "report", "-i", str(raw / "perf.data"), "--no-inline",
                               "--children", "--sort", "symbol", "--stdio",
                               "--percent-limit", "3", "-g", "none"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                              timeout=600)
        (out / "top-inclusive.txt").write_text(strip_ipc(rep2.stdout))
        rows = [l.rstrip() for l in rep.stdout.splitlines()
                if l.strip() and not l.startswith("#")]
        summary.append("\n## Top symbols (self time, all dkv threads)\n")
        summary.append("```")
        summary.extend(rows[:30])
        summary.append("```")
        stacks = raw / "perf.stacks"
        with open(stacks, "w") as f:
            subprocess.run(["perf", "script", "--no-inline", "-i", str(raw / "perf.data")],
                           stdout=f, stderr=subprocess.DEVNULL, timeout=900)
        # One frame per function, not per return address: drop the "+0x1d3" offsets.
        text = stacks.read_text(errors="replace")
        stacks.write_text(re.sub(r"\+0x[0-9a-f]+ \(", " (", text))
        fg = opts.flamegraph_cmd
        if fg and Path(fg).exists():
            with open(stacks) as fin:
                r = subprocess.run([fg, "--inputtype", "perf", "--titletext",
                                    f"dkv {s.name} at {rate:.0f} req/s (commit {gi['commit']})",
                                    "--countname", "samples"],
                                   stdin=fin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, timeout=600)
            # flamegraph 1.3.0 writes raw "&&" into onmouseover attributes: not well-formed XML,
            # which browsers refuse to render as an .svg file. Escape them.
            (out / "flame.svg").write_text(r.stdout.replace(" && ", " &amp;&amp; "))
            if r.returncode == 0:
                summary.append("\nFlame graph: [flame.svg](flame.svg) (open it in a browser; "
                               "click to zoom).")
            else:
                summary.append(f"\nFlame graph failed: {r.stderr[-300:]}")
        else:
            summary.append("\nNo flame graph: the npm `flamegraph` renderer is not installed "
                           "(bench/profile.sh installs it with npm).")

    if opts.alloc:
        ht = shutil.which("heaptrack")
        if ht is None:
            summary.append("\n## Allocations\n\nSkipped: heaptrack not found (Debian heaptrack).")
        else:
            summary.extend(alloc_profile(s, opts, gen, root, dkv_bin, raw, out))
    (out / "README.md").write_text("\n".join(summary) + "\n")
    if not opts.keep:
        shutil.rmtree(root, ignore_errors=True)
    log(f"profile written to {out} (raw data in {raw})")
    print("\n".join(summary))
    return 0


def alloc_profile(s: Scenario, opts, gen: LoadGen, root: Path, dkv_bin: Path, raw: Path,
                  out: Path) -> List[str]:
    """Restarts the (filled) cluster under heaptrack and counts allocations at a low fixed rate."""
    wrapper = raw / "dkv-heaptrack"
    wrapper.write_text(f'#!/bin/sh\nexec heaptrack -o "{raw}/heaptrack.node.$$" '
                       f'"{dkv_bin}" "$@"\n')
    wrapper.chmod(0o755)
    cl = Cluster(s.nodes, opts.base_port, root, wrapper,
                 f"{opts.dkv_args} {FILLS[s.fill].dkv_args}".strip())
    script, args = scenario_args(s, opts.fill_keys)
    rate, secs = opts.alloc_rate, opts.alloc_seconds
    lines = ["\n## Allocations (heaptrack)\n"]
    try:
        cl.start()
        res = gen.run(cl.url(0), script, args, secs, rate=rate)
        node0 = cl.pid(0)
    finally:
        # heaptrack's script waits for dkv without forwarding signals: stop the dkv children.
        pids = [cl.pid(i) for i in range(s.nodes)]
        for p in pids:
            for c in children_named(p, "dkv"):
                os.kill(c, signal.SIGTERM)
        deadline = time.monotonic() + 120
        for p in pids:
            while alive(p) and time.monotonic() < deadline:
                time.sleep(0.1)
        cl.running = False
        cl.stop()
    files = sorted(raw.glob(f"heaptrack.node.{node0}.*"))
    if not files:
        return lines + ["No heaptrack file was written."]
    # Only allocations made on threads (start_thread in the backtrace): the I/O loops and
    # RocksDB's background threads. Start-up (WAL replay, ring building) runs on the main thread.
    hp = subprocess.run(["heaptrack_print", "-f", str(files[0]), "-a", "1", "-p", "0", "-T", "1",
                         "-n", "12", "-s", "3", "--filter-bt-function", "start_thread"],
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
    (out / "alloc.txt").write_text(hp.stdout)
    folded = raw / "alloc.folded"
    subprocess.run(["heaptrack_print", "-f", str(files[0]), "-a", "0", "-p", "0", "-T", "0",
                    "--flamegraph-cost-type", "allocations", "-F", str(folded)],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=900)
    total = threads = requests_path = 0
    by_site = {}
    if folded.exists():
        for line in folded.read_text(errors="replace").splitlines():
            stack, _, n = line.rpartition(" ")
            if not n.isdigit():
                continue
            n = int(n)
            total += n
            if "start_thread" not in stack:
                continue
            threads += n
            if "dkv_router_handle" in stack or "dkv_rpc_" in stack:
                requests_path += n
            frames = stack.split(";")
            ours = [f.split(" (")[0] for f in frames if f.startswith("dkv_")]
            site = ours[-1] if ours else "(RocksDB/libuv threads, no dkv frame)"
            by_site[site] = by_site.get(site, 0) + n
    nreq = max(1, res["requests"])
    lines.append(f"Node 0 under `heaptrack` during `{res['cmd']}` ({res['requests']:,} requests "
                 f"answered).\n")
    lines.append(f"- calls to allocation functions, whole process: {total:,}; on threads (I/O "
                 f"loops, RocksDB background; start-up excluded): {threads:,} = "
                 f"**{threads / nreq:.1f} per request**; under request handling "
                 f"(`dkv_router_handle`, `dkv_rpc_*`): {requests_path:,} = "
                 f"{requests_path / nreq:.1f} per request")
    lines.append("\n| innermost dkv function on the stack | allocations | per request |")
    lines.append("|---|---:|---:|")
    for site, n in sorted(by_site.items(), key=lambda kv: -kv[1])[:10]:
        lines.append(f"| `{site}` | {n:,} | {n / nreq:.1f} |")
    lines.append("")
    lines.append("- top allocation sites by number of calls: [alloc.txt](alloc.txt)")
    return lines


# ---------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: 100k-key fill, 1 s loads (make bench QUICK=1)")
    ap.add_argument("--scenarios", default="default",
                    help="comma-separated scenario and group names (make bench SCENARIOS=...); "
                         "groups: " + "; ".join(f"{g} = {', '.join(v)}"
                                                for g, v in GROUPS.items()
                                                if g not in ("default", "all"))
                         + "; default = all but x10; all = everything (default: default)")
    ap.add_argument("--fill-keys", type=int, default=None,
                    help="keys written before measuring (default 1000000; quick 100000)")
    ap.add_argument("--fill-gib-per-node", type=float, default=None,
                    help="size the fill to about this many GiB of values per node "
                         "(every node holds every key), e.g. 1 or 2")
    ap.add_argument("--runs", type=int, default=3, help="runs per figure (median; default 3)")
    ap.add_argument("--duration", type=float, default=None,
                    help="closed-loop run seconds (default 10; quick 1)")
    ap.add_argument("--rate-duration", type=float, default=None,
                    help="fixed-rate run seconds (default 8; quick 1)")
    ap.add_argument("--warmup", type=float, default=None,
                    help="warm-up seconds per scenario (default 3; quick 0: none)")
    ap.add_argument("--rates", default="0.5,0.8",
                    help="fixed rates as fractions of the maximum (default 0.5,0.8)")
    ap.add_argument("--ab-pairs", type=int, default=None,
                    help="convergence A/B: alternating on/off pairs of closed-loop runs, "
                         "split over two blocks with the clusters' slots swapped (default 6; "
                         "quick 4)")
    ap.add_argument("--ab-duration", type=float, default=None,
                    help="convergence A/B: seconds per run (default 5; quick 2)")
    ap.add_argument("--ab-off-args", default=AB_OFF_ARGS,
                    help=f"convergence A/B: flags of the 'off' cluster (default '{AB_OFF_ARGS}'; "
                         f"'' for an A/A check of the method)")
    ap.add_argument("--drain-keys", type=int, default=100000,
                    help="hints drain: keys written while node 3 is down (default 100000)")
    ap.add_argument("--drain-value-bytes", type=int, default=FILL_VALUE_BYTES,
                    help=f"hints drain: value size of those writes (default {FILL_VALUE_BYTES})")
    ap.add_argument("--drain-reps", type=int, default=None,
                    help="hints drain: repetitions (default 3; quick 1)")
    ap.add_argument("--drain-rate-fraction", type=float, default=0.5,
                    help="hints drain: GET rate as a share of n3-a2f3-get's maximum (0.5)")
    ap.add_argument("--settle-s", type=float, default=0,
                    help="before each scenario's warm-up, wait up to this long until its nodes "
                         "are idle (start-up flush and compactions done; default 0: no wait)")
    ap.add_argument("--repair-keys", default="100,10000",
                    help="repair: comma-separated numbers of keys written while node 3 is down, "
                         "one measured point each (default 100,10000); the replicas hold the "
                         "3-node fill (--fill-keys) besides")
    ap.add_argument("--repair-value-bytes", type=int, default=FILL_VALUE_BYTES,
                    help=f"repair: value size of those writes (default {FILL_VALUE_BYTES})")
    ap.add_argument("--repair-reps", type=int, default=None,
                    help="repair: repetitions of each point (default 3; quick 1)")
    ap.add_argument("--repair-get-s", type=int, default=None,
                    help="repair: seconds of GET load around each repair; the repair starts 1 s "
                         "into it (default 8; quick 3)")
    ap.add_argument("--repair-rate-fraction", type=float, default=0.5,
                    help="repair: GET rate as a share of n3-a2f3-get's maximum (0.5)")
    ap.add_argument("--repair-max-rounds", type=int, default=5,
                    help="repair: when node 3 still lacks keys after a repair that answered "
                         "200, repair again, up to this many repairs in all (default 5)")
    ap.add_argument("--repair-timeout", type=float, default=300.0,
                    help="repair: timeout_ms of each POST /v0/admin/repair, in s (300)")
    ap.add_argument("--spec-pairs", type=int, default=None,
                    help="spec: pairs of runs (each: both modes healthy and stalled; default 4;"
                         " quick 2)")
    ap.add_argument("--spec-duration", type=float, default=None,
                    help="spec: seconds per run (default 10; quick 4)")
    ap.add_argument("--spec-rate-fraction", type=float, default=0.5,
                    help="spec: GET rate as a share of the --read-fanout all cluster's "
                         "closed-loop maximum (0.5)")
    ap.add_argument("--io-threads", type=int, default=os.cpu_count() or 2,
                    help="dkv --io-threads and nginx worker_processes (default: cores)")
    ap.add_argument("--dkv-args", default="", help="extra flags for every dkv node")
    ap.add_argument("--base-port", type=int, default=19080,
                    help="node i listens on base+i, nginx on base+100 (default 19080)")
    ap.add_argument("--dkv-bin", default=str(ROOT / "build" / "dkv"))
    ap.add_argument("--work-dir", default=str(ROOT / "build" / "bench-work"),
                    help="data directories (default build/bench-work; deleted afterwards)")
    ap.add_argument("--out-dir", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--keep", action="store_true", help="keep data directories")
    ap.add_argument("--compare-bin", default=None, metavar="OLD_DKV",
                    help="instead of measuring each chosen scenario, run it on --dkv-bin and on "
                         "this binary side by side, alternating closed-loop runs (--ab-pairs, "
                         "--ab-duration): CPU/req and peak RSS new vs old")
    ap.add_argument("--fill-dir", default=None,
                    help="keep each fill's data in DIR/<fill>-<keys>x<value bytes> and reuse it "
                         "when it is there (an A/B of two binaries on the same data; the 10x "
                         "fill takes 10-30 min); never deleted by the runner")
    ap.add_argument("--note", default="", help="a sentence printed at the top of the report")
    ap.add_argument("--tag", default="",
                    help="appended to the report's file names (<date>-<commit>-<tag>.md), e.g. "
                         "to keep the runs of an A/B of two binaries apart")
    ap.add_argument("--report-from", metavar="JSON",
                    help="only rewrite the .md and .png of an earlier run from its .json")
    pg = ap.add_argument_group("profiling (bench/profile.sh)")
    pg.add_argument("--profile", metavar="SCENARIO",
                    help="profile this scenario instead of benchmarking")
    pg.add_argument("--profile-seconds", type=int, default=10)
    pg.add_argument("--profile-rate", type=float, default=None,
                    help="fixed rate while recording (default: --profile-fraction of the maximum)")
    pg.add_argument("--profile-fraction", type=float, default=0.5)
    pg.add_argument("--perf-freq", type=int, default=499, help="samples/s per CPU")
    pg.add_argument("--flamegraph-cmd", default=None, help="npm flamegraph executable")
    pg.add_argument("--alloc", action="store_true", help="also profile allocations (heaptrack)")
    pg.add_argument("--alloc-rate", type=float, default=2000)
    pg.add_argument("--alloc-seconds", type=int, default=5)
    opts = ap.parse_args()

    opts.duration = opts.duration or (1 if opts.quick else 10)
    opts.rate_duration = opts.rate_duration or (1 if opts.quick else 8)
    if opts.warmup is None:
        opts.warmup = 0 if opts.quick else 3
    opts.ab_pairs = opts.ab_pairs or (4 if opts.quick else 6)
    opts.ab_duration = opts.ab_duration or (2 if opts.quick else 5)
    opts.drain_reps = opts.drain_reps or (1 if opts.quick else 3)
    opts.repair_reps = opts.repair_reps or (1 if opts.quick else 3)
    opts.repair_get_s = opts.repair_get_s or (3 if opts.quick else 8)
    opts.spec_pairs = opts.spec_pairs or (2 if opts.quick else 4)
    opts.spec_duration = opts.spec_duration or (4 if opts.quick else 10)
    try:
        opts.repair_keys = [int(x) for x in opts.repair_keys.split(",")]
    except ValueError:
        ap.error("--repair-keys takes comma-separated integers")
    if any(k < 1 for k in opts.repair_keys):
        ap.error("--repair-keys: each number must be at least 1")
    if opts.drain_keys < 2:
        ap.error("--drain-keys must be at least 2")
    opts.rates = [float(x) for x in opts.rates.split(",")]
    if opts.fill_gib_per_node is not None:
        opts.fill_keys = int(opts.fill_gib_per_node * (1 << 30) / FILL_VALUE_BYTES)
    if opts.fill_keys is None:
        opts.fill_keys = 100000 if opts.quick else 1000000
    if opts.fill_keys < 1:
        ap.error("--fill-keys must be positive")
    if opts.runs < 1:
        ap.error("--runs must be >= 1")
    names = set()
    for n in (x.strip() for x in opts.scenarios.split(",")):
        if n in GROUPS:
            names.update(GROUPS[n])
        elif n in ALL_SCENARIO_NAMES:
            names.add(n)
        elif n:
            ap.error(f"unknown scenario {n}; known: {', '.join(ALL_SCENARIO_NAMES)}; groups: "
                     f"{', '.join(GROUPS)}")
    if opts.profile and opts.profile not in SCENARIO_BY_NAME:
        ap.error(f"unknown scenario {opts.profile}; known: {', '.join(SCENARIO_BY_NAME)}")
    chosen = [SCENARIO_BY_NAME[n] for n in SCENARIO_BY_NAME if n in names]
    extras = [n for n in EXTRA_SCENARIOS if n in names]

    if opts.report_from:
        jp = Path(opts.report_from)
        results = json.loads(jp.read_text())
        if refresh_ab(results):
            jp.write_text(json.dumps(results, indent=1) + "\n")
            print(f"recomputed the A/B summaries in {jp} from its runs")
        png = jp.with_suffix(".png")
        with tempfile.TemporaryDirectory(prefix="dkv-bench-plot-") as td:
            note = plot(results, png, Path(td))
        jp.with_suffix(".md").write_text(
            report_md(results, png.name if note is None else None, note))
        print(f"rewrote {jp.with_suffix('.md')} and {png}")
        return 0

    wrk = shutil.which("wrk")
    if wrk is None:
        print("bench: wrk not found; run: bash scripts/install-deps.sh --bench", file=sys.stderr)
        return 1
    gen = LoadGen(wrk=wrk, wrk2=shutil.which("wrk2"), nice_fixed_rate=can_raise_priority())
    src_bin = Path(opts.dkv_bin)
    if not os.access(src_bin, os.X_OK):
        print(f"bench: {src_bin} not built (make build)", file=sys.stderr)
        return 1

    work = Path(opts.work_dir)
    out_res = Path(opts.out_dir).resolve()
    if out_res == work.resolve() or work.resolve() in out_res.parents:
        print(f"bench: --out-dir {opts.out_dir} is inside --work-dir {work}, which is deleted "
              "before and after the run; choose another", file=sys.stderr)
        return 2
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    # A private copy: a rebuild of build/dkv during the run must not change what is measured.
    dkv_bin = work / "dkv"
    shutil.copy2(src_bin, dkv_bin)
    if opts.compare_bin:
        opts.compare_bin_copy = str(work / "dkv-old")
        shutil.copy2(opts.compare_bin, opts.compare_bin_copy)
    # The same for the script that starts the nodes: it must match the binary copied above
    # even if scripts/cluster.sh is edited during the run (new flags, say).
    global CLUSTER_SH
    shutil.copy2(CLUSTER_SH, work / "cluster.sh")
    CLUSTER_SH = work / "cluster.sh"
    opts.dkv_args = f"--io-threads {opts.io_threads} {opts.dkv_args}".strip()
    block_cache_mib = 64
    m = re.search(r"--block-cache-bytes[ =](\d+)", opts.dkv_args)
    if m:
        block_cache_mib = int(m.group(1)) >> 20

    date = datetime.date.today().isoformat()
    gi = git_info()
    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    if opts.profile:
        try:
            return run_profile(opts, gen, work, dkv_bin, gi)
        except BenchError as e:
            log(f"FAILED: {e}")
            return 1
        except KeyboardInterrupt:
            log("interrupted")
            return 130
        finally:
            if not opts.keep:
                shutil.rmtree(work, ignore_errors=True)
    out_dir = Path(opts.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = (f"{date}-{gi['commit']}" + ("-quick" if opts.quick else "")
            + (f"-{opts.tag}" if opts.tag else ""))
    nginx_v = subprocess.run(["nginx", "-v"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True).stdout.strip().split("/")[-1]
    results = {
        "date": date, "machine": machine_info(), "git": gi, "nginx_version": nginx_v,
        "loadgen": gen.describe(), "background_cpu_pct": cpu_busy_pct(1.0),
        "json_name": f"{stem}.json",
        "options": {"quick": opts.quick, "fill_keys": opts.fill_keys, "runs": opts.runs,
                    "duration": opts.duration, "rate_duration": opts.rate_duration,
                    "warmup": opts.warmup, "settle_s": opts.settle_s, "rates": opts.rates,
                    "io_threads": opts.io_threads,
                    "dkv_args_extra": opts.dkv_args.replace(f"--io-threads {opts.io_threads}",
                                                            "").strip(),
                    "block_cache_mib": block_cache_mib,
                    "scenarios": [s.name for s in chosen] + extras,
                    "ab_pairs": opts.ab_pairs, "ab_duration": opts.ab_duration,
                    "drain_reps": opts.drain_reps, "repair_reps": opts.repair_reps,
                    "repair_get_s": opts.repair_get_s,
                    "repair_max_rounds": opts.repair_max_rounds,
                    "spec_pairs": opts.spec_pairs, "spec_duration": opts.spec_duration},
        "fill": {}, "scenarios": {}, "nginx": None, "nginx_files": {}, "ab": {}, "binab": {},
        "drain": None, "repair": None, "spec": None,
        "note": opts.note,
    }
    log(f"commit {gi['commit']}{' (modified)' if gi['dirty'] else ''}; "
        f"{results['machine']['cores']} cores; background CPU {results['background_cpu_pct']:.0f}%"
        f"; {gen.describe()}")
    t_start = time.monotonic()

    # Static files of the value sizes that the chosen GET scenarios read (1 KiB: single-get's).
    files = sorted({FILLS[s.fill].value_bytes for s in chosen if s.op == "get"}
                   & set(NGINX_FILES)) if any(s.group == "values" for s in chosen) else []
    nginx = Nginx(opts.base_port + 100, opts.io_threads, files)
    interrupted = False
    try:
        log(f"nginx ceiling on port {nginx.port} (worker_processes {opts.io_threads})")
        nginx.start()
        if opts.warmup > 0:
            gen.run(nginx.url(), "static.lua", [], 1)
        results["nginx"] = measure(gen, nginx.url(), "static.lua", [], opts,
                                   descendants(nginx.proc.pid))
        for n in files:
            log(f"nginx static file of {fmt_size(n)}")
            if opts.warmup > 0:
                gen.run(nginx.url(n), "static.lua", [], 1)
            results["nginx_files"][str(n)] = measure(
                gen, nginx.url(n), "static.lua", [], opts, descendants(nginx.proc.pid))
        # nginx stays up, idle (no CPU), for the efficiency scenarios' paired runs.
        paired = any(s.name in EFFICIENCY_NAMES for s in chosen) and not opts.compare_bin
        ref = (nginx.url(), descendants(nginx.proc.pid)) if paired else None
        if not paired:
            nginx.stop()
        for fill_name in FILLS:
            group = [s for s in chosen if s.fill == fill_name]
            more = extras if fill_name == "n3" else []
            if group or more:
                run_fill(fill_name, group, gen, opts, work, dkv_bin, results, more, ref)
        nginx.stop()
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted; stopping everything")
    except BenchError as e:
        log(f"FAILED: {e}")
        nginx.stop()
        return 1
    finally:
        nginx.stop()
        if not opts.keep:
            shutil.rmtree(work, ignore_errors=True)
    if interrupted:
        return 130

    results["elapsed_s"] = round(time.monotonic() - t_start)
    json_path = out_dir / f"{stem}.json"
    json_path.write_text(json.dumps(results, indent=1) + "\n")
    png = out_dir / f"{stem}.png"
    with tempfile.TemporaryDirectory(prefix="dkv-bench-plot-") as td:
        note = plot(results, png, Path(td))
    md = report_md(results, png.name if note is None else None, note)
    md_path = out_dir / f"{stem}.md"
    md_path.write_text(md)
    log(f"done in {results['elapsed_s']} s: {md_path}")
    print()
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
