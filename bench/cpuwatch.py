#!/usr/bin/env python3
"""Runs a command (a load generator) and reports the CPU each watched process used meanwhile,
per thread name, plus the CPU that everything else on the machine used.

    cpuwatch.py --pid n1=PID --pid n2=PID ... -- wrk ...

Prints the command's stdout, then one line
    cpu: n1 45.0% (dkv-io0 20.1, dkv-io1 19.9, rocksdb:low 5.0), ..., load 30.2%, other 12.0%
in % of one core over the command's wall time: per watched process the sum of its threads'
utime + stime from /proc/PID/task/TID/stat (threads grouped by name, threads that exited during
the run are not counted), the command's own CPU (getrusage of the child), and `other`: the
machine's busy time (/proc/stat user + nice + system) less all of those, in % of ALL cores.
A second line gives, per process, how long its I/O threads (dkv-io*) waited for a CPU once
runnable: the run-queue delay per time slice, from /proc/PID/task/TID/schedstat (ns on the CPU,
ns waiting on a run queue, time slices), i.e. the scheduling part of a request's latency.
"""
import argparse
import os
import resource
import subprocess
import sys
import time
from collections import defaultdict

CLK_TCK = os.sysconf("SC_CLK_TCK")


def busy_ticks() -> int:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return v[0] + v[1] + v[2]


def schedstat(pid: int, prefix: str = "dkv-io") -> tuple:
    """(run-queue wait ns, time slices) summed over the threads whose name starts with prefix."""
    wait = slices = 0
    base = f"/proc/{pid}/task"
    try:
        tids = os.listdir(base)
    except OSError:
        return 0, 0
    for tid in tids:
        try:
            with open(f"{base}/{tid}/comm") as f:
                if not f.read().startswith(prefix):
                    continue
            with open(f"{base}/{tid}/schedstat") as f:
                v = f.read().split()
        except OSError:
            continue
        wait += int(v[1])
        slices += int(v[2])
    return wait, slices


def threads(pid: int) -> dict:
    """tid -> (name, utime + stime ticks)."""
    out = {}
    base = f"/proc/{pid}/task"
    try:
        tids = os.listdir(base)
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"{base}/{tid}/stat") as f:
                st = f.read()
        except OSError:
            continue
        name = st[st.index("(") + 1:st.rindex(")")]
        fields = st[st.rindex(")") + 2:].split()
        out[tid] = (name, int(fields[11]) + int(fields[12]))
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pid", action="append", default=[], help="NAME=PID to watch")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd and a.cmd[0] == "--" else a.cmd
    watched = []
    for p in a.pid:
        name, pid = p.split("=", 1)
        watched.append((name, int(pid)))
    t0, b0 = time.monotonic(), busy_ticks()
    before = {name: threads(pid) for name, pid in watched}
    sched0 = {name: schedstat(pid) for name, pid in watched}
    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    after = {name: threads(pid) for name, pid in watched}
    sched1 = {name: schedstat(pid) for name, pid in watched}
    wall = time.monotonic() - t0
    busy = (busy_ticks() - b0) / CLK_TCK
    sys.stdout.write(r.stdout)
    parts = []
    ours = 0.0
    for name, _ in watched:
        by = defaultdict(float)
        for tid, (tname, ticks) in after[name].items():
            by[tname] += (ticks - before[name].get(tid, (tname, 0))[1]) / CLK_TCK
        total = sum(by.values())
        ours += total
        top = sorted(by.items(), key=lambda kv: -kv[1])
        detail = ", ".join(f"{k} {100 * v / wall:.1f}" for k, v in top if v * 100 / wall >= 0.5)
        parts.append(f"{name} {100 * total / wall:.1f}% ({detail})")
    load = (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)
    ours += load
    other = max(0.0, busy - ours)
    parts.append(f"load {100 * load / wall:.1f}%")
    parts.append(f"other {100 * other / (wall * (os.cpu_count() or 1)):.0f}% of all cores")
    print("cpu: " + ", ".join(parts))
    waits = []
    for name, _ in watched:
        dw = sched1[name][0] - sched0[name][0]
        ds = sched1[name][1] - sched0[name][1]
        waits.append(f"{name} {dw / ds / 1e3:.0f} us x {ds}" if ds > 0 else f"{name} -")
    print("io threads' run-queue wait per slice: " + ", ".join(waits))
    return r.returncode


if __name__ == "__main__":
    sys.exit(main())
