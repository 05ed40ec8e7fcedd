#!/usr/bin/env python3
"""Instructions per client request, per node and per component, from bench/callgrind3.sh output.

    bench/cgsum.py OUT_DIR

Reads OUT_DIR/pids.txt, OUT_DIR/wrk.txt (the "PUTN sent=S" line of bench/lua/put_n.lua: S is
the request count) and every thread's dump OUT_DIR/cg.PID.out.1-* (callgrind_annotate
--inclusive=yes), and prints for each node the total and the inclusive cost of the functions
below, summed over threads, divided by S. Inclusive costs nest (rocksdb_write is inside
pending_write, which is inside dkv_store_sync_wal or the prepare hook): read them as a tree,
not a sum.
"""
import collections
import glob
import os
import re
import subprocess
import sys

# (label, function name as callgrind_annotate prints it, without the argument list)
FUNCS = [
    ("HTTP: llhttp parse", "llhttp_execute"),
    ("HTTP: query parse", "dkv_query_parse"),
    ("HTTP: response head + queue", "conn_respond"),
    ("HTTP: 499 check (recv MSG_PEEK)", "client_gone"),
    ("router (all of a request's dispatch)", "dkv_router_handle"),
    ("coordinator: dkv_coord_put", "dkv_coord_put"),
    ("coordinator: op_start", "op_start"),
    ("HLC: next timestamp", "dkv_hlc_next"),
    ("HLC: observe", "dkv_hlc_observe"),
    ("ring: preference list", "dkv_ring_preference_list"),
    ("RPC client: call (encode + enqueue)", "dkv_rpc_client_call"),
    ("RPC client: encode PUT", "dkv_rpc_encode_put"),
    ("RPC client: replies (parse + callbacks)", "parse_frames"),
    ("coordinator: replica reply callback", "remote_cb"),
    ("RPC server: read + serve", "consume"),
    ("RPC server: one frame", "handle_frame"),
    ("RPC: decode", "dkv_rpc_decode"),
    ("replica put (batch append)", "dkv_replica_put"),
    ("store: WriteBatch merges x2", "batch_append"),
    ("store: pending batch write", "pending_write"),
    ("store: WAL sync", "dkv_store_sync_wal"),
    ("RocksDB: rocksdb_write", "rocksdb_write"),
    ("RocksDB: MemTable::Add (both CFs)", "rocksdb::MemTable::Add"),
    ("RocksDB: WAL record", "rocksdb::log::Writer::AddRecord"),
    ("RocksDB: flush WAL (write(2))", "rocksdb_flush_wal"),
    ("hints: add", "dkv_hints_add"),
    ("metrics: RPC outcome", "count_outcome"),
    ("RPC client: publish peer view", "publish"),
    ("libc: malloc", "malloc"),
    ("libc: calloc", "calloc"),
    ("libc: realloc", "realloc"),
    ("libc: free", "free"),
    ("ld.so: __tls_get_addr (RocksDB's thread-locals)", "__tls_get_addr"),
    ("libuv: uv_run (everything on a loop)", "uv_run"),
]

LINE = re.compile(r"\s*([\d,]+) \([\s\d.]+%\)\s+(\S.*?)(?: \[(.*)\])?$")


def annotate(path):
    out = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", "--auto=no",
                          path], capture_output=True, text=True, check=True, cwd="/").stdout
    m = re.search(r"^([\d,]+) .*PROGRAM TOTALS", out, re.M)
    total = int(m.group(1).replace(",", "")) if m else 0
    costs = collections.Counter()
    for line in out.splitlines():
        mm = LINE.match(line)
        if not mm or "PROGRAM TOTALS" in line:
            continue
        name = mm.group(2).split(":", 1)[1] if ":" in mm.group(2) else mm.group(2)
        name = name.split("(", 1)[0] if not name.startswith("rocksdb::") else name
        for label, fn in FUNCS:
            if name == fn or (fn.startswith("rocksdb::") and name.startswith(fn + "(")):
                costs[label] += int(mm.group(1).replace(",", ""))
    return total, costs


def main():
    root = sys.argv[1]
    n = int(re.search(r"PUTN sent=(\d+)", open(os.path.join(root, "wrk.txt")).read()).group(1))
    grand = 0
    for line in open(os.path.join(root, "pids.txt")):
        node, pid = line.split()
        total, costs = 0, collections.Counter()
        for f in sorted(glob.glob(os.path.join(root, f"cg.{pid}.out.1-*"))):
            t, c = annotate(f)
            total += t
            costs.update(c)
        grand += total
        print(f"== {node}: {total / n:,.0f} instructions per client request ({n} requests)")
        for label, _ in FUNCS:
            if costs[label] >= n:
                print(f"   {label:48s} {costs[label] / n:9,.0f}")
    print(f"== all nodes: {grand / n:,.0f} instructions per client request")


if __name__ == "__main__":
    main()
