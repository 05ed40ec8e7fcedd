#!/usr/bin/env python3
"""Groups a callgrind profile's instructions by component (self cost of each function, grouped by
its source file or library), per request: bench/getprofile.sh's companion (docs/benchmarks.md,
"GET floor").

  bench/cg_groups.py REQUESTS PREFIX0 [PREFIX1 ...]

REQUESTS is the number of client requests the profiles cover (wrk's count). PREFIXi names one
node's per-thread profiles (bench/getprofile.sh: OUT/callgrind.out.node<i>.1, files PREFIX-NN);
the threads of RocksDB's flush and compaction pools are left out (their work is not per GET, and
a run on a fresh copy of a fill still compacts what the copy replayed). Prints one row per
component, instructions per request for each node and their sum, and the inclusive cost per
request of a few entry points (dkv_store_get, llhttp_execute, ...)."""
import glob
import re
import subprocess
import sys

# (component, regex on "file:function [object]"), first match wins.
GROUPS = [
    ("RocksDB (librocksdb)", r"librocksdb"),
    ("libstdc++ (RocksDB's strings, locks)", r"libstdc\+\+"),
    ("HTTP parse (llhttp)", r"llhttp"),
    ("query parse, percent-decode (router)", r"router\.c:(dkv_query_parse|dkv_percent_decode|hexval|parse_count|dkv_query_cleanup|dkv_query_replication)"),
    ("routing, reply (router)", r"src/router/"),
    ("HTTP connection, response build (http.c)", r"src/http/"),
    ("coordinator (coord.c)", r"src/coord/"),
    ("RPC client/server/codec", r"src/rpc/"),
    ("replica + store (dkv code)", r"src/(replica|store)/"),
    ("record codec", r"src/common/record"),
    ("buffers, owned (common)", r"src/common/(buf|owned|uvwrite)"),
    ("metrics", r"src/metrics/"),
    ("xxHash", r"xxhash|XXH"),
    ("libsodium", r"sodium"),
    ("malloc / free", r"(^|[ :])(_int_malloc|_int_free|malloc|free|calloc|realloc|cfree|malloc_consolidate|tcache_\w+|unlink_chunk|__libc_malloc|__libc_free|__libc_calloc|__libc_realloc|_int_realloc|alloc_perturb|sysmalloc|_dl_\w*tls\w*)\b"),
    ("memcpy / memset / str*", r"(mem|str)\w*(avx|sse|evex|erms|unaligned)|memcpy|memmove|memset|memcmp|strlen|strchr"),
    ("libuv", r"libuv"),
    ("libc syscall wrappers, pthread", r"libc\.so|libc-|pthread"),
    ("dkv other", r"src/"),
]


def annotate(path, inclusive):
    return subprocess.run(["callgrind_annotate", "--auto=no", "--threshold=100",
                           f"--inclusive={'yes' if inclusive else 'no'}", path],
                          capture_output=True, text=True, check=True).stdout


def thread_files(prefix):
    """The node's thread profiles that are not RocksDB's background pools."""
    files = sorted(glob.glob(prefix + "-*")) or [prefix]
    return [f for f in files if "rocksdb::ThreadPoolImpl" not in annotate(f, True)]


def self_costs(path):
    out = subprocess.run(["callgrind_annotate", "--auto=no", "--threshold=100", "--inclusive=no", path],
                         capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+)\s+\([^)]*\)\s+(.*)$", line) or \
            re.match(r"\s*([\d,]+)\s+(.*)$", line)
        if not m or "PROGRAM TOTALS" in line or "file:function" in line:
            continue
        rows.append((int(m.group(1).replace(",", "")), m.group(2)))
    return rows


# Entry points whose inclusive cost is shown: (label, "file:function" as callgrind names it).
ENTRY = [
    ("event loop, all work on these threads (uv_run)", ":uv_run"),
    ("HTTP read callback (http.c on_read)", "http/http.c:on_read"),
    ("HTTP parse, llhttp with its callbacks", "api.c:llhttp_execute"),
    ("routing + query + coordinator + response (dkv_router_handle)", "router.c:dkv_router_handle"),
    ("query parse, percent-decode", "router.c:dkv_query_parse"),
    ("coordinator GET (dkv_coord_get, local read included)", "coord.c:dkv_coord_get"),
    ("store read: RocksDB + copy (dkv_store_get)", "store.c:dkv_store_get"),
    ("record decode", "record.c:dkv_record_decode"),
    ("value hashes for read repair (XXH3)", "proto.c:dkv_rpc_value_hash"),
    ("answer: op_answer -> response in the out buffer", "coord.c:op_answer"),
    ("response head (write_head)", "http.c:write_head"),
    ("latency histogram (observe_latency)", "http.c:observe_latency"),
    ("end-of-iteration flush (on_flush_check -> write)", "http.c:on_flush_check"),
    ("RPC: requests built and queued (dkv_rpc_client_call)", "client.c:dkv_rpc_client_call"),
    ("RPC: replies read and completed (client on_read)", "rpc/client.c:on_read"),
    ("RPC server: requests read and answered (server on_read)", "rpc/server.c:on_read"),
    ("RPC server: GET reply encoding", "proto.c:dkv_rpc_encode_get_reply"),
    ("RPC server: write out (sconn_flush)", "server.c:sconn_flush"),
]


def inclusive(path):
    out = annotate(path, True)
    got = {}
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+)\s+\([^)]*\)\s+(.*)$", line) or \
            re.match(r"\s*([\d,]+)\s+(.*)$", line)
        if not m:
            continue
        for label, fn in ENTRY:
            if re.search(re.escape(fn) + r"(\.part\.0)? ", m.group(2)) and label not in got:
                got[label] = int(m.group(1).replace(",", ""))
    return got


def main():
    reqs = float(sys.argv[1])
    nodes = [thread_files(p) for p in sys.argv[2:]]
    files = sys.argv[2:]
    table = {}
    totals = []
    for i, threads in enumerate(nodes):
        tot = 0
        for f in threads:
            for ir, name in self_costs(f):
                tot += ir
                g = next((g for g, rx in GROUPS if re.search(rx, name)), "other")
                table.setdefault(g, [0] * len(files))[i] += ir
        totals.append(tot)
    order = [g for g, _ in GROUPS] + ["other"]
    hdr = " | ".join(f"node{i}" for i in range(len(files)))
    print(f"| component | {hdr} | all |")
    print("|---|" + "---:|" * (len(files) + 1))
    for g in order:
        if g not in table:
            continue
        v = table[g]
        print(f"| {g} | " + " | ".join(f"{x / reqs / 1000:.2f}k" for x in v) +
              f" | {sum(v) / reqs / 1000:.2f}k |")
    print("| **total** | " + " | ".join(f"**{t / reqs / 1000:.2f}k**" for t in totals) +
          f" | **{sum(totals) / reqs / 1000:.2f}k** |")
    incs = []
    for threads in nodes:
        inc = {}
        for f in threads:
            for k, v in inclusive(f).items():
                inc[k] = inc.get(k, 0) + v
        incs.append(inc)
    print()
    print(f"| inclusive, per request | {hdr} | all |")
    print("|---|" + "---:|" * (len(files) + 1))
    for label, _ in ENTRY:
        v = [inc.get(label, 0) for inc in incs]
        if sum(v) == 0:
            continue
        print(f"| {label} | " + " | ".join(f"{x / reqs / 1000:.2f}k" for x in v) +
              f" | {sum(v) / reqs / 1000:.2f}k |")


if __name__ == "__main__":
    main()
