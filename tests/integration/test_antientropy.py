"""Anti-entropy (issue 8): hash-tree exchanges between replicas, rebuild of a wiped node without
client reads, repair-gated tombstone GC.

What is checked (README "Convergence", GET/POST /v0/admin/repair, POST /v0/admin/compact):
- a node whose data directory was deleted holds every record again, deletes included, through
  anti-entropy alone (hints, read repair and the rebuild stream off), with no client read;
- divergence planted with hints and read repair off is found and fixed in both directions, with
  exact per-peer counts; a repair of identical replicas moves only tree bytes;
- tombstones are purged only after a repair covered every replica (plus the grace period), leave
  the disk after a compaction, and a key deleted while a replica was down never comes back.
Every copy count comes from the nodes' own local data (GET /v0/entities), never from a client
read that could repair it.
"""
from __future__ import annotations

import json
import time

import pytest

import dkvharness as h
from test_convergence import (DELETE, GET, PUT, assert_all, bulk_split, jget, local_all,
                              map_diff, request, settle, start_cluster, verbose, wait_local)

QUIET = ("--hinted-handoff", "off", "--read-repair", "off")


def repair(nd: h.Node, timeout_ms: int = 60000) -> tuple[int, dict | str]:
    r = request(nd, "POST", "/v0/admin/repair?timeout_ms=%d" % timeout_ms, timeout_s=120)
    body = r.body.decode()
    return r.status, (json.loads(body) if body.startswith("{") else body)


def ae(nd: h.Node) -> dict:
    return jget(nd, "/v0/admin/repair")


def peer_stat(doc: dict, target: h.Node) -> dict:
    for p in doc["peers"]:
        if p["url"] == target.url:
            return p
    raise AssertionError("%s not in %r" % (target.url, doc["peers"]))


def compact(nd: h.Node):
    r = request(nd, "POST", "/v0/admin/compact?timeout_ms=60000", timeout_s=120)
    assert r.status == 200, (nd.name, r.status, r.body)


def v(tag: bytes, i: int) -> bytes:
    return b"%s-%05d\x00\r\n\xff" % (tag, i)


@pytest.mark.timeout_s(120)
def test_divergence_in_both_directions_is_found_and_repaired_with_exact_counts(cluster_factory):
    c = start_cluster(cluster_factory, *QUIET, "--anti-entropy-interval-ms", "0")
    a, b, cc = c
    base = [("PUT", b"base%04d" % i, v(b"base", i), ()) for i in range(1000)]
    assert_all(bulk_split(a, b, base), base, 201)
    want = {k: val for _, k, val, _ in base}
    for nd in c:
        wait_local(nd, want, 10, "every node to hold the base keys")

    # Node 2 misses 100 writes (through node 0), then node 0 misses 50 (through node 1).
    assert cc.stop() == 0
    only_ab = [("PUT", b"ab%04d" % i, v(b"ab", i), ()) for i in range(100)]
    assert_all(bulk_split(a, b, only_ab), only_ab, 201)
    cc.start()
    settle(c)
    assert a.stop() == 0
    only_bc = [("PUT", b"bc%04d" % i, v(b"bc", i), ()) for i in range(50)]
    assert_all(bulk_split(b, cc, only_bc), only_bc, 201)
    a.start()
    settle(c)
    want.update((k, val) for _, k, val, _ in only_ab + only_bc)
    assert len(local_all(a)) == 1100 and len(local_all(cc)) == 1050

    # One repair round on node 2 pulls the 100 it lacks (from whichever peer it meets first:
    # the round goes in ring order) and pushes the 50 node 0 lacks; nothing else moves.
    st, doc = repair(cc)
    assert st == 200, (st, doc)
    pa, pb = peer_stat(doc, a), peer_stat(doc, b)
    assert pa["records_sent"] == 50 and pb["records_sent"] == 0, (pa, pb)
    assert pa["records_received"] + pb["records_received"] == 100, (pa, pb)
    assert pa["keys_repaired"] + pb["keys_repaired"] == 150, (pa, pb)
    assert pa["last_error"] == "" and pb["last_error"] == ""
    for nd in c:
        got = local_all(nd)
        assert got == want, "%s: %s" % (nd.name, map_diff(got, want))

    # Identical replicas now: a repair moves the branch level only (one request, 256 hashes).
    before = {p["url"]: p for p in ae(a)["peers"]}
    st, doc = repair(a)
    assert st == 200, (st, doc)
    for p in doc["peers"]:
        d = {k: p[k] - before[p["url"]][k] for k in ("segments_compared", "keys_repaired",
                                                     "records_sent", "records_received",
                                                     "bytes_sent", "bytes_received",
                                                     "exchanges_ok")}
        assert d["exchanges_ok"] == 1 and d["segments_compared"] == 0 and \
            d["keys_repaired"] == 0, d
        assert d["bytes_sent"] < 100 and d["bytes_received"] < 2048 + 100, d
