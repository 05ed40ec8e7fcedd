#!/usr/bin/env python3
"""Groups a callgrind profile's instructions by component (self cost of each function, grouped by
its source file or library), per request: bench/getprofile.sh's companion (docs/benchmarks.md,
"GET floor").

  bench/cg_groups.py REQUESTS callgrind.out.node0 [callgrind.out.node1 ...]

REQUESTS is the number of client requests the profiles cover (wrk's count). Prints one row per
component, instructions per request for each file and their sum, and the inclusive cost per
request of a few entry points (dkv_store_get, llhttp_execute, ...)."""
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


def self_costs(path):
    out = subprocess.run(["callgrind_annotate", "--threshold=100", "--inclusive=no", path],
                         capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+)\s+\([^)]*\)\s+(.*)$", line) or \
            re.match(r"\s*([\d,]+)\s+(.*)$", line)
        if not m or "PROGRAM TOTALS" in line or "file:function" in line:
            continue
        rows.append((int(m.group(1).replace(",", "")), m.group(2)))
    return rows


def inclusive(path, names):
    out = subprocess.run(["callgrind_annotate", "--threshold=100", "--inclusive=yes", path],
                         capture_output=True, text=True, check=True).stdout
    got = {}
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+)\s+\([^)]*\)\s+(.*)$", line) or \
            re.match(r"\s*([\d,]+)\s+(.*)$", line)
        if not m:
            continue
        for n in names:
            if re.search(r"[:*]" + re.escape(n) + r"(\b|'|$)", m.group(2)) and n not in got:
                got[n] = int(m.group(1).replace(",", ""))
    return got


def main():
    reqs = float(sys.argv[1])
    files = sys.argv[2:]
    table = {}
    totals = []
    for i, f in enumerate(files):
        tot = 0
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
    names = ["dkv_store_get", "rocksdb_get", "llhttp_execute", "dkv_router_handle",
             "dkv_coord_get", "dkv_record_decode", "on_flush_check", "uv__io_poll", "uv_run",
             "dkv_metrics_observe", "dkv_uvwrite"]
    for i, f in enumerate(files):
        inc = inclusive(f, names)
        print(f"node{i} inclusive per request: " +
              ", ".join(f"{n} {inc[n] / reqs / 1000:.2f}k" for n in names if n in inc))


if __name__ == "__main__":
    main()
