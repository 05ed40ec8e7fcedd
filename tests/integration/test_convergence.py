"""Convergence of dkv replicas: hinted handoff and read repair, seen as a user and an operator.

What is checked (see README "Convergence" flags, GET /v0/admin/hints, POST /v0/admin/hints/sync,
the "hints" and "read_repair" objects of GET /v0/status?verbose=1):

* A replica that was down while writes and deletes went on gets every one of them back from the
  coordinators' hints once it is up again, with no client read at all; the hints survive a kill -9
  of the coordinator that holds them; they are bounded by --hint-window-ms and --max-hints-bytes
  (dropped hints are counted, writes still succeed); they only ever target the write's replica set.
* With hints off, a restarted replica stays stale until reads repair it: one quorum GET per key is
  enough, deletes included; read repair only writes inside the newest record's own replica set.
* Under random kill -9 / SIGSTOP / restart of one node at a time during writes, every node ends up
  with identical local data holding the outcome of every acknowledged write, through hints alone.

Every copy count comes from the nodes' own local data, `GET /v0/entities?start=%01` (every key,
chunk framing parsed strictly), compared as whole maps with what the test wrote. Every wait is a
poll against a deadline; the only sleeps are fault durations (how long a node stays SIGSTOPped or
dead) and pacing between writes.

Fresh clusters are used only once every node reports "state":"ready" (start_cluster): with the
node-identity work in progress, a node that answers /v0/status while still "joining" and learns
that a ready peer already holds data (the test wrote right after start-up) declares its own data
lost, goes "rebuilding" and answers replica reads "not ready" until POST /v0/admin/rebuild-done,
which is not what these tests are about.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import dkvharness as h
from dkvharness import entity_target

N = 3

# How long a restarted cluster may take until every coordinator reaches every peer again.
SETTLE_S = 20.0

HINT_KEYS = {"enabled", "pending_count", "pending_bytes", "written", "replayed", "dropped_expired",
             "replay_failures", "dropped_window", "dropped_quota", "peers"}
PEER_KEYS = {"url", "count", "bytes", "oldest_age_ms"}
RR_KEYS = {"enabled", "reads_repaired", "writes", "failures", "failed_writes_without_hint"}

PROBE = b"\x01probe-never-written"  # GET 3/3 of it touches no data (all replicas say absent)


# =================================================================================================
# Helpers
# =================================================================================================


def local_all(nd: h.Node) -> dict[bytes, bytes]:
    """Every live record of the node's own data: `GET /v0/entities?start=%01`, one chunk each."""
    return h.local_records(nd, b"\x01", timeout_s=30)


def local(nd: h.Node, key: bytes) -> bytes | None:
    return h.local_value(nd, key)


def holders(c: h.Cluster, key: bytes) -> dict[int, bytes]:
    """{node index: local value} over the running nodes that hold a live copy of `key`."""
    return {i: v for i, nd in enumerate(c) if nd.running() and (v := local(nd, key)) is not None}


def map_diff(got: dict, want: dict, limit: int = 5) -> str:
    missing = [k for k in want if k not in got]
    extra = [k for k in got if k not in want]
    wrong = [k for k in want if k in got and got[k] != want[k]]
    return ("%d records, want %d: %d missing %r, %d extra %r, %d wrong %r"
            % (len(got), len(want), len(missing), missing[:limit], len(extra), extra[:limit],
               len(wrong), [(k, got[k][:40], want[k][:40]) for k in wrong[:limit]]))


def request(nd: h.Node, method: str, target: str, body: bytes | None = None,
            timeout_s: float = h.IO_TIMEOUT_S) -> h.Response:
    """One request on a fresh connection (safe across restarts)."""
    with nd.client(timeout_s) as c:
        return c.request(method, target, body=body)


def jget(nd: h.Node, target: str) -> dict:
    r = request(nd, "GET", target)
    assert r.status == 200, (nd.name, target, r.status, r.body[:200])
    return json.loads(r.body)


def hints(nd: h.Node) -> dict:
    return jget(nd, "/v0/admin/hints")


def peer_hints(doc: dict, target: h.Node) -> dict:
    for p in doc["peers"]:
        if p["url"] == target.url:
            return p
    raise AssertionError("%s not in peers %r" % (target.url, doc["peers"]))


def pending_for(nd: h.Node, target: h.Node) -> int:
    return peer_hints(hints(nd), target)["count"]


def verbose(nd: h.Node) -> dict:
    return jget(nd, "/v0/status?verbose=1")


def rr(nd: h.Node) -> dict:
    return verbose(nd)["read_repair"]


def sync(nd: h.Node, timeout_ms: int | str | None = None, method: str = "POST"):
    """POST /v0/admin/hints/sync[?timeout_ms=T] -> (status, seconds taken, body)."""
    target = "/v0/admin/hints/sync" + ("" if timeout_ms is None else "?timeout_ms=%s" % timeout_ms)
    t0 = time.monotonic()
    r = request(nd, method, target, timeout_s=120)
    return r.status, time.monotonic() - t0, r.body


def PUT(nd, key, value, *params) -> int:
    return request(nd, "PUT", entity_target(key, *params), h.to_bytes(value)).status


def DELETE(nd, key, *params) -> int:
    return request(nd, "DELETE", entity_target(key, *params)).status


def GET(nd, key, *params) -> tuple[int, bytes]:
    r = request(nd, "GET", entity_target(key, *params))
    return r.status, r.body


def bulk(nd: h.Node, ops: list, batch: int = 64) -> list[tuple[int, bytes]]:
    """Pipelined requests on one connection: ops are (method, key, value or None, params)."""
    out = []
    with nd.raw(timeout_s=60) as c:
        for i in range(0, len(ops), batch):
            part = ops[i: i + batch]
            c.send(b"".join(h.http_request(m, entity_target(k, *p), v) for m, k, v, p in part))
            for _ in part:
                r = c.read_response()
                out.append((r.status, r.body))
    return out


def bulk_split(a: h.Node, b: h.Node, ops: list) -> list[tuple[int, bytes]]:
    """ops[i] goes through `a` when i is even and through `b` when odd, both streams at once.
    Returns the answers in ops order."""
    with ThreadPoolExecutor(max_workers=2) as ex:
        fa = ex.submit(bulk, a, ops[0::2])
        fb = ex.submit(bulk, b, ops[1::2])
        ra, rb = fa.result(timeout=120), fb.result(timeout=120)
    out = [None] * len(ops)
    out[0::2] = ra
    out[1::2] = rb
    return out


def assert_all(results: list, ops: list, want: int):
    bad = [(op[0], op[1], st, body[:100]) for op, (st, body) in zip(ops, results) if st != want]
    assert not bad, "%d of %d answers were not %d: %r" % (len(bad), len(ops), want, bad[:5])


def reaches_every_peer(nd: h.Node) -> bool:
    """Every I/O thread of `nd` has a closed breaker to every peer (after a restart, a thread
    that has not talked to the restarted peer yet still shows its old open breaker)."""
    return all(p["breaker"] == "closed" for p in verbose(nd)["peers"])


def start_cluster(cluster_factory, *args: str, **kw) -> h.Cluster:
    """A fresh cluster whose nodes have all settled their identity ("state":"ready" in the
    verbose status, where the build reports one) before the test writes anything. A node still
    "joining" when a peer already holds data takes itself for a node whose disk was lost and
    refuses replica reads (see the module docstring)."""
    c = cluster_factory(N, *args, **kw)
    for nd in c:
        h.wait_until(lambda: verbose(nd).get("state", "ready") == "ready", SETTLE_S,
                     interval_s=0.02, what="%s to be ready" % nd.name)
    return c


def settle(c: h.Cluster, timeout_s: float = SETTLE_S):
    """Waits until every node can read 3/3 on each of its I/O threads. Uses GET 3/3 of a key
    that was never written: all replicas answer "absent", so nothing is repaired or written."""
    for nd in c:
        def ok():
            st, _ = GET(nd, PROBE, "ack=3", "from=3")  # a fresh connection: some I/O thread
            assert st in (404, 504), (nd.name, st)
            return st == 404 and reaches_every_peer(nd)
        h.wait_until(ok, timeout_s, interval_s=0.02, what="%s to reach every peer" % nd.name)


def wait_local(nd: h.Node, want: dict, timeout_s: float, what: str) -> float:
    """Polls the node's local data until it equals `want` exactly; returns the seconds taken."""
    t0 = time.monotonic()
    last = {}

    def equal():
        nonlocal last
        last = local_all(nd)
        return last == want
    try:
        h.wait_until(equal, timeout_s, interval_s=0.1, what=what)
    except TimeoutError as e:
        raise AssertionError("%s: %s; %s" % (e, nd.name, map_diff(last, want))) from None
    return time.monotonic() - t0


def val(tag: bytes, i: int) -> bytes:
    # Binary bytes, CR LF and a newline inside values: the range parse must keep them exact.
    return b"%s-%05d\x00\r\n\n\xff" % (tag, i)


# =================================================================================================
# A node misses writes and deletes while it is down
# =================================================================================================

N_INITIAL = 1000
N_OVERWRITE = 500    # initial keys overwritten while C is down (before being deleted)
N_RECREATE = 200     # initial keys written again after their delete
N_NEW = 10000 - N_OVERWRITE - N_RECREATE  # new keys: 10,000 PUTs in all while C is down


def k_initial(i: int) -> bytes:
    return b"k%05d" % i


def k_new(i: int) -> bytes:
    return b"n%05d" % i


def initial_map() -> dict:
    return {k_initial(i): val(b"v1", i) for i in range(N_INITIAL)}


def down_workload(c: h.Cluster) -> dict:
    """With all up: 1,000 PUTs. Then node 2 stops and, through nodes 0 and 1 at the default
    quorum: 500 overwrites of initial keys, DELETE of all 1,000 initial keys, 200 of them written
    again, 9,300 new keys (10,000 PUTs and 1,000 DELETEs while node 2 is down). A key always goes
    through the same coordinator, so its writes are ordered. Returns the expected live map."""
    a, b, cc = c[0], c[1], c[2]
    ops = [("PUT", k, v, ()) for k, v in initial_map().items()]
    assert_all(bulk_split(a, b, ops), ops, 201)
    # 2/3 answered before node 2 necessarily stored it: wait for its copy before stopping it.
    wait_local(cc, initial_map(), 10, "node 2 to hold the initial keys")
    assert cc.stop() == 0

    phases = [
        [("PUT", k_initial(i), val(b"v2", i), ()) for i in range(N_OVERWRITE)],
        [("DELETE", k_initial(i), None, ()) for i in range(N_INITIAL)],
        [("PUT", k_initial(i), val(b"v3", i), ()) for i in range(N_RECREATE)],
        [("PUT", k_new(i), val(b"new", i), ()) for i in range(N_NEW)],
    ]
    assert sum(len(p) for p in phases if p[0][0] == "PUT") == 10000
    for ops in phases:
        assert_all(bulk_split(a, b, ops), ops, 201 if ops[0][0] == "PUT" else 202)
    want = {k_initial(i): val(b"v3", i) for i in range(N_RECREATE)}
    want.update((k_new(i), val(b"new", i)) for i in range(N_NEW))
    # The two live replicas acknowledged every write (2/3 with only two up): exact already.
    for nd in (a, b):
        got = local_all(nd)
        assert got == want, "%s: %s" % (nd.name, map_diff(got, want))
    return want


N_DOWN_WRITES = 10000 + N_INITIAL  # PUTs and DELETEs while node 2 was down


@pytest.mark.timeout_s(150)
def test_node_down_during_writes_and_deletes_holds_all_of_them_after_restart_without_reads(
        cluster_factory):
    c = start_cluster(cluster_factory)
    a, b, cc = c
    want = down_workload(c)

    # One hint per write for the stopped node, none for the live one, exactly.
    h.wait_until(lambda: pending_for(a, cc) + pending_for(b, cc) >= N_DOWN_WRITES, 20,
                 what="a hint for every write")
    ha, hb = hints(a), hints(b)
    assert peer_hints(ha, cc)["count"] + peer_hints(hb, cc)["count"] == N_DOWN_WRITES, (ha, hb)
    assert ha["written"] + hb["written"] == N_DOWN_WRITES, (ha, hb)
    assert peer_hints(ha, b)["count"] == 0 and peer_hints(hb, a)["count"] == 0, (ha, hb)
    assert ha["dropped_window"] + ha["dropped_quota"] + hb["dropped_window"] + \
        hb["dropped_quota"] == 0, (ha, hb)

    cc.start()
    took = wait_local(cc, want, 30, "the restarted node to hold every write, with no read")
    print("\nrestarted node held all %d records (10,000 PUTs and 1,000 DELETEs missed) "
          "%.2f s after it answered /v0/status" % (len(want), took))

    # It was the hints, all of them: no read repair, every hint delivered and deleted.
    for nd in c:
        assert rr(nd)["reads_repaired"] == 0 and rr(nd)["writes"] == 0, nd.name
    h.wait_until(lambda: hints(a)["pending_count"] + hints(b)["pending_count"] == 0, 10,
                 what="no pending hints")
    ha, hb = hints(a), hints(b)
    assert ha["replayed"] + hb["replayed"] == N_DOWN_WRITES, (ha, hb)
    assert ha["pending_bytes"] == 0 and hb["pending_bytes"] == 0, (ha, hb)
    for nd in c:
        got = local_all(nd)
        assert got == want, "%s: %s" % (nd.name, map_diff(got, want))


@pytest.mark.timeout_s(150)
def test_without_hints_a_restarted_node_stays_stale_until_one_quorum_read_per_key_repairs_it(
        cluster_factory):
    # The full fan-out: a quorum GET asks all three replicas, so one read per key sees node 2 and
    # repairs it. A speculative GET asks `ack` of them and repairs only those (anti-entropy
    # covers the rest; test_speculative.py checks what it repairs).
    c = start_cluster(cluster_factory, "--hinted-handoff", "off", "--read-fanout", "all")
    a, b, cc = c
    want = down_workload(c)
    cc.start()
    settle(c)

    # No hints: the restarted node holds exactly what it had when it stopped, deleted keys too.
    got = local_all(cc)
    assert got == initial_map(), "node 2 should be stale: %s" % map_diff(got, initial_map())
    for nd in c:
        assert hints(nd) == {"enabled": False}, nd.name

    # One default-quorum (2/3) GET of every key, deleted ones included, through nodes 0 and 1.
    keys = [k_initial(i) for i in range(N_INITIAL)] + [k_new(i) for i in range(N_NEW)]
    ops = [("GET", k, None, ()) for k in keys]
    t0 = time.monotonic()
    results = bulk_split(a, b, ops)
    for k, (st, body) in zip(keys, results):
        assert (st, body if st == 200 else None) == \
            ((200, want[k]) if k in want else (404, None)), (k, st, body[:60])
    took = wait_local(cc, want, 10, "read repair to bring node 2 up to date")
    print("\nread repair: node 2 held all %d records %.2f s after the %d GETs started "
          "(%.2f s after they ended)" % (len(want), time.monotonic() - t0, len(keys), took))

    # Exactly one repair write per key (node 2 was stale on every key), none failed.
    ra, rb, rc = rr(a), rr(b), rr(cc)
    assert ra["reads_repaired"] + rb["reads_repaired"] == len(keys), (ra, rb)
    assert ra["writes"] + rb["writes"] == len(keys), (ra, rb)
    assert ra["failures"] + rb["failures"] == 0, (ra, rb)
    assert rc["reads_repaired"] == 0 and rc["writes"] == 0, rc
    for nd in (a, b):
        got = local_all(nd)
        assert got == want, "%s: %s" % (nd.name, map_diff(got, want))


@pytest.mark.timeout_s(90)
def test_hints_survive_kill_9_of_the_coordinator_and_are_replayed_after_its_restart(
        cluster_factory):
    c = start_cluster(cluster_factory)
    a, b, cc = c
    old = {b"d%04d" % i: val(b"old", i) for i in range(100)}
    ops = [("PUT", k, v, ()) for k, v in old.items()]
    assert_all(bulk(a, ops), ops, 201)
    wait_local(cc, old, 10, "node 2 to hold the keys to be deleted")
    assert cc.stop() == 0

    # Through node 0 only: 300 new keys and the DELETE of the 100 keys node 2 holds.
    new = {b"w%04d" % i: val(b"w", i) for i in range(300)}
    ops = [("PUT", k, v, ()) for k, v in new.items()]
    assert_all(bulk(a, ops), ops, 201)
    ops = [("DELETE", k, None, ()) for k in old]
    assert_all(bulk(a, ops), ops, 202)
    n_writes = len(new) + len(old)
    h.wait_until(lambda: pending_for(a, cc) >= n_writes, 10, what="node 0's hints")
    assert pending_for(a, cc) == n_writes
    assert hints(b)["written"] == 0 and hints(b)["pending_count"] == 0  # only node 0 coordinated

    a.kill()
    cc.start()
    # Node 0 is dead and node 1 has no hint: node 2 still lacks every write it missed.
    got = local_all(cc)
    assert got == old, "node 2 got writes before node 0 came back: %s" % map_diff(got, old)
    assert hints(b)["pending_count"] == 0

    a.start()
    doc = hints(a)  # loaded from node 0's disk; the replay may already have begun
    assert doc["pending_count"] + doc["replayed"] == n_writes, doc
    took = wait_local(cc, new, 30, "node 2 to get node 0's hints from its disk")
    print("\nnode 2 held all %d writes %.2f s after node 0's restart" % (n_writes, took))
    st, _, body = sync(a, 20000)
    assert st == 200, body
    doc = hints(a)
    assert (doc["pending_count"], doc["replayed"]) == (0, n_writes), doc
    for nd in c:
        got = local_all(nd)
        assert got == new, "%s: %s" % (nd.name, map_diff(got, new))


# =================================================================================================
# Hint bounds
# =================================================================================================


@pytest.mark.timeout_s(60)
def test_hints_for_a_peer_down_longer_than_the_hint_window_are_dropped_and_counted(
        cluster_factory):
    window_ms = 500
    c = start_cluster(cluster_factory, "--hint-window-ms", str(window_ms))
    a, b, cc = c
    assert cc.stop() == 0
    assert PUT(a, b"first", b"hinted") == 201
    h.wait_until(lambda: pending_for(a, cc) == 1, 10, what="the first hint")
    # Node 2's oldest hint gets older than the window: no new hint for it from now on.
    h.wait_until(lambda: peer_hints(hints(a), cc)["oldest_age_ms"] > window_ms, 10,
                 interval_s=0.05, what="the oldest hint to pass the window")
    late = {b"late%03d" % i: val(b"late", i) for i in range(30)}
    ops = [("PUT", k, v, ()) for k, v in late.items()]
    assert_all(bulk(a, ops), ops, 201)  # writes still succeed at the default quorum
    h.wait_until(lambda: hints(a)["dropped_window"] >= 30, 10, what="30 dropped hints")
    doc = hints(a)
    assert (doc["dropped_window"], doc["dropped_quota"], doc["written"],
            doc["pending_count"], peer_hints(doc, cc)["count"]) == (30, 0, 1, 1, 1), doc
    assert rr(a)["failed_writes_without_hint"] == 30

    cc.start()
    st, _, body = sync(a, 20000)
    assert st == 200, body
    # Node 2 got the one hinted write; the 30 dropped ones never reached it (no reads here).
    assert local_all(cc) == {b"first": b"hinted"}, local_all(cc)
    assert local_all(a) == local_all(b) == {b"first": b"hinted", **late}

    # Delivered: node 2 has no old hint any more, so the next outage gets hints again.
    assert cc.stop() == 0
    assert PUT(a, b"again", b"hinted-too") == 201
    h.wait_until(lambda: hints(a)["written"] >= 2, 10, what="a new hint")
    doc = hints(a)
    assert (doc["written"], doc["dropped_window"], doc["pending_count"]) == (2, 30, 1), doc


@pytest.mark.timeout_s(60)
def test_hints_past_max_hints_bytes_are_dropped_and_counted_while_writes_still_succeed(
        cluster_factory):
    quota = 20000
    c = start_cluster(cluster_factory, "--max-hints-bytes", str(quota))
    a, b, cc = c
    assert cc.stop() == 0
    n = 200
    items = {b"q%04d" % i: val(b"q", i) + b"x" * 200 for i in range(n)}
    ops = [("PUT", k, v, ()) for k, v in items.items()]
    assert_all(bulk(a, ops), ops, 201)
    h.wait_until(lambda: (lambda d: d["written"] + d["dropped_quota"] >= n)(hints(a)), 10,
                 what="a hint or a drop for every write")
    doc = hints(a)
    kept = doc["written"]
    assert kept + doc["dropped_quota"] == n, doc
    assert doc["dropped_quota"] > 0 and doc["dropped_window"] == 0, doc
    assert doc["pending_bytes"] <= quota, doc
    assert doc["pending_count"] == kept and peer_hints(doc, cc)["count"] == kept, doc
    assert peer_hints(doc, cc)["bytes"] == doc["pending_bytes"], doc
    # The quota is used, not wasted: one more hint of this size would not have fit.
    assert doc["pending_bytes"] + doc["pending_bytes"] / kept > quota, doc
    assert rr(a)["failed_writes_without_hint"] == doc["dropped_quota"]

    cc.start()
    st, _, body = sync(a, 20000)
    assert st == 200, body
    got = local_all(cc)
    assert len(got) == kept, (len(got), kept)
    assert all(items[k] == v for k, v in got.items()), "a hinted value arrived altered"
    doc = hints(a)
    assert (doc["pending_count"], doc["pending_bytes"], doc["replayed"]) == (0, 0, kept), doc

    # Delivered hints free the quota: a new outage gets hints again.
    assert cc.stop() == 0
    assert PUT(a, b"after", b"fits") == 201
    h.wait_until(lambda: hints(a)["pending_count"] == 1, 10, what="a new hint")
    assert hints(a)["written"] == kept + 1


@pytest.mark.timeout_s(60)
def test_hint_replay_is_throttled_by_hint_replay_bytes_per_s(cluster_factory):
    rate = 100 * 1024
    c = start_cluster(cluster_factory, "--hint-replay-bytes-per-s", str(rate))
    a, b, cc = c
    assert cc.stop() == 0
    items = {b"r%04d" % i: val(b"r", i) + b"y" * 300 for i in range(2000)}
    ops = [("PUT", k, v, ()) for k, v in items.items()]
    assert_all(bulk(a, ops), ops, 201)
    h.wait_until(lambda: hints(a)["pending_count"] >= len(items), 10, what="the hints")
    doc = hints(a)
    total, per_hint = doc["pending_bytes"], doc["pending_bytes"] / doc["pending_count"]
    cc.start()
    t0 = time.monotonic()
    st, _, body = sync(a, 60000)
    took = time.monotonic() - t0
    assert st == 200, body
    # A token bucket of `rate` bytes per second holding at most one second: by time t at most
    # rate * (1 + t) bytes, plus one batch (<= 256 hints) of overdraft, can have gone out.
    floor = (total - rate - 256 * per_hint) / rate
    print("\n%d bytes of hints at %d B/s took %.2f s (at least %.2f s expected)"
          % (total, rate, took, floor))
    assert floor > 3 and took >= floor, (total, took, floor)
    assert took < 3 * floor + 5, (total, took, floor)
    assert local_all(cc) == items


# =================================================================================================
# Admin API
# =================================================================================================


@pytest.mark.timeout_s(60)
def test_admin_hints_counts_pending_hints_per_peer_exactly_and_sync_waits_for_delivery(
        cluster_factory):
    c = start_cluster(cluster_factory)
    a, b, cc = c
    for nd in c:
        doc = hints(nd)
        assert set(doc) == HINT_KEYS, doc
        assert doc["enabled"] is True and doc["pending_count"] == 0 and doc["written"] == 0, doc
        assert sorted(p["url"] for p in doc["peers"]) == sorted(o.url for o in c if o is not nd)
        assert all(set(p) == PEER_KEYS and (p["count"], p["bytes"], p["oldest_age_ms"]) ==
                   (0, 0, 0) for p in doc["peers"]), doc
        st, took, _ = sync(nd, 200)  # nothing pending: at once
        assert st == 200 and took < 1.0, (nd.name, st, took)

    assert cc.stop() == 0
    ops = [("PUT", b"a%03d" % i, b"v%d" % i, ()) for i in range(50)]
    assert_all(bulk(a, ops), ops, 201)
    h.wait_until(lambda: hints(a)["pending_count"] >= 50, 10, what="50 hints")
    doc = hints(a)
    pc, pb = peer_hints(doc, cc), peer_hints(doc, b)
    assert (doc["pending_count"], doc["written"], pc["count"], pb["count"], pb["bytes"]) == \
        (50, 50, 50, 0, 0), doc
    assert pc["bytes"] == doc["pending_bytes"] > 50 * 10, doc
    assert pc["oldest_age_ms"] >= 0 and pb["oldest_age_ms"] == 0, doc
    doc_b = hints(b)  # a replica, never the coordinator
    assert (doc_b["pending_count"], doc_b["written"]) == (0, 0), doc_b
    # The verbose status carries the same object.
    v = verbose(a)["hints"]
    strip = lambda d: {**d, "peers": [{**p, "oldest_age_ms": 0} for p in d["peers"]]}  # noqa
    assert strip(v) == strip(hints(a)), (v, hints(a))
    # The age grows while the peer stays down.
    age0 = pc["oldest_age_ms"]
    h.wait_until(lambda: peer_hints(hints(a), cc)["oldest_age_ms"] >= age0 + 100, 5,
                 what="the oldest hint to age")

    # Node 2 is down: a sync cannot finish and times out promptly.
    for t_ms, lo in ((200, 0.2), (0, 0.0)):
        st, took, body = sync(a, t_ms)
        assert st == 504 and lo <= took < 2.0, (t_ms, st, took, body)
    assert hints(a)["pending_count"] == 50

    # An operator's sync, started while node 2 is down, answers 200 once it got everything.
    with ThreadPoolExecutor(max_workers=1) as ex:
        fut = ex.submit(sync, a, 30000)
        time.sleep(0.3)  # the sync is waiting before node 2 starts (pacing, not a condition)
        assert not fut.done(), fut.result()
        cc.start()
        st, took, body = fut.result(timeout=60)
    assert st == 200, (st, took, body)
    doc = hints(a)
    assert (doc["pending_count"], doc["pending_bytes"], doc["replayed"], doc["written"]) == \
        (0, 0, 50, 50), doc
    assert all((p["count"], p["bytes"], p["oldest_age_ms"]) == (0, 0, 0) for p in doc["peers"])
    assert local_all(cc) == {k: v for _, k, v, _ in ops}
    for t_ms in (None, 0, 3600000):
        st, took, body = sync(a, t_ms)
        assert st == 200 and took < 1.0, (t_ms, st, took, body)


def test_admin_hints_sync_rejects_bad_timeouts_and_other_methods(cluster_factory):
    c = start_cluster(cluster_factory)
    a = c[0]
    for bad in ("abc", "3600001", "", "-1", "1e3", "99999999999999999999", "%20"):
        st, _, body = sync(a, bad)
        assert st == 400, (bad, st, body)
    for method in ("GET", "PUT", "DELETE"):
        st, _, body = sync(a, 100, method=method)
        assert st == 405, (method, st, body)
        st, _, body = sync(a, None, method=method)
        assert st == 405, (method, st, body)
    for method in ("POST", "PUT", "DELETE"):
        r = request(a, method, "/v0/admin/hints", b"" if method != "DELETE" else None)
        assert r.status == 405, (method, r.status, r.body)
    # Nothing above changed any hint state; the node still works.
    doc = hints(a)
    assert (doc["pending_count"], doc["written"]) == (0, 0), doc
    assert PUT(a, b"k", b"v") == 201


# =================================================================================================
# Replica sets: read repair and hints only write within the record's own replica set
# =================================================================================================


def place_from2(c: h.Cluster, n_keys: int, prefix: bytes) -> dict[bytes, frozenset]:
    """Writes keys 2/2 with all nodes up and returns {key: the two nodes that hold it}."""
    out = {}
    for i in range(n_keys):
        k = prefix + b"%03d" % i
        assert PUT(c[0], k, b"v1", "ack=2", "from=2") == 201
        hs = holders(c, k)
        assert len(hs) == 2 and set(hs.values()) == {b"v1"}, (k, hs)
        out[k] = frozenset(hs)
    return out


def wait_rr_reads(nd: h.Node, before: dict, n: int) -> dict:
    """Waits until nd has finished `n` more diverged reads (its repair pass ran); returns rr."""
    return h.wait_until(lambda: (lambda d: d if d["reads_repaired"] >= before["reads_repaired"] + n
                                 else None)(rr(nd)), 10, what="the GET's repair pass")


@pytest.mark.timeout_s(90)
def test_read_repair_writes_only_within_the_replica_set_of_the_newest_record(cluster_factory):
    # Hints off, so a stale replica stays stale until a read repairs it.
    c = start_cluster(cluster_factory, "--hinted-handoff", "off")
    placed = place_from2(c, 12, b"rs")

    # 1. A from=2 record read with from=3 through the third node: it answers "absent" but is
    #    outside the record's replica set, so it gets nothing.
    k, pair = next(iter(placed.items()))
    (third,) = set(range(N)) - pair
    t = c[third]
    before = rr(t)
    assert GET(t, k, "ack=3", "from=3") == (200, b"v1")
    after = wait_rr_reads(t, before, 1)
    assert (after["writes"], after["failures"]) == (before["writes"], before["failures"]), after
    assert holders(c, k) == {i: b"v1" for i in pair}

    # 2. A stale replica inside the from=2 set is repaired by the same kind of read; the third
    #    node still gets nothing. The key's replica that is not node 2 stays up.
    k2 = next(kk for kk, p in placed.items() if kk != k and 2 in p)
    pair2 = placed[k2]
    (up,) = pair2 - {2}
    (third2,) = set(range(N)) - pair2
    assert c[2].stop() == 0
    assert PUT(c[up], k2, b"v2", "ack=1", "from=2") == 201
    c[2].start()
    settle(c)
    assert local(c[2], k2) == b"v1"  # stale
    before = rr(c[third2])
    assert GET(c[third2], k2, "ack=3", "from=3") == (200, b"v2")
    after = wait_rr_reads(c[third2], before, 1)
    assert after["writes"] == before["writes"] + 1, (before, after)  # node 2 only
    h.wait_until(lambda: local(c[2], k2) == b"v2", 10, what="node 2 repaired")
    assert holders(c, k2) == {up: b"v2", 2: b"v2"}

    # 3. A from=3 record: the replica that missed it is repaired by a 3/3 read.
    k3 = b"rs-from3"
    assert PUT(c[0], k3, b"v1", "ack=3", "from=3") == 201
    assert c[1].stop() == 0
    assert PUT(c[0], k3, b"v2") == 201
    c[1].start()
    settle(c)
    assert local(c[1], k3) == b"v1"
    before = rr(c[2])
    assert GET(c[2], k3, "ack=3", "from=3") == (200, b"v2")
    after = wait_rr_reads(c[2], before, 1)
    assert after["writes"] == before["writes"] + 1, (before, after)
    h.wait_until(lambda: local(c[1], k3) == b"v2", 10, what="node 1 repaired")
    assert holders(c, k3) == {0: b"v2", 1: b"v2", 2: b"v2"}

    # 4. The newest record was written with from=1: its replica set is its first node only, so
    #    the other two keep their older from=3 copy even though the read saw them differ.
    k4 = b"rs-from1"
    assert PUT(c[0], k4, b"old", "ack=3", "from=3") == 201
    assert PUT(c[0], k4, b"new", "ack=1", "from=1") == 201
    hs = holders(c, k4)
    firsts = [i for i, v in hs.items() if v == b"new"]
    assert len(firsts) == 1 and len(hs) == 3, hs
    for nd in c:
        before = rr(nd)
        assert GET(nd, k4, "ack=3", "from=3") == (200, b"new")
        after = wait_rr_reads(nd, before, 1)
        assert after["writes"] == before["writes"], (nd.name, before, after)
    assert holders(c, k4) == hs


@pytest.mark.timeout_s(60)
def test_read_repair_waits_for_a_hung_replica_but_never_delays_the_answer(cluster_factory):
    c = start_cluster(cluster_factory, "--hinted-handoff", "off")
    a, b, cc = c
    k = b"slow-repair"
    assert PUT(a, k, b"v1", "ack=3", "from=3") == 201
    assert b.stop() == 0
    assert PUT(a, k, b"v2") == 201  # node 1 misses it
    b.start()
    settle(c)
    assert local(b, k) == b"v1"
    before = rr(a)
    os.kill(cc.pid, signal.SIGSTOP)  # node 2 accepts but never answers: a 1 s replica timeout
    try:
        t0 = time.monotonic()
        assert GET(a, k) == (200, b"v2")  # 2/3: nodes 0 and 1 answer at once
        took = time.monotonic() - t0
        assert took < 0.5, took
        # The repair runs once node 2 timed out, and fixes node 1 while node 2 is still stopped.
        h.wait_until(lambda: local(b, k) == b"v2", 10, what="node 1 repaired")
        after = rr(a)
        assert (after["reads_repaired"], after["writes"]) == \
            (before["reads_repaired"] + 1, before["writes"] + 1), (before, after)
    finally:
        os.kill(cc.pid, signal.SIGCONT)
    assert local(cc, k) == b"v2"


@pytest.mark.timeout_s(60)
def test_read_repair_off_leaves_a_stale_replica_stale(cluster_factory):
    # Node 0 has --read-repair off, node 1 the default (on): the flag is the coordinator's.
    c = start_cluster(cluster_factory, "--hinted-handoff", "off",
                      per_node_args={0: ["--read-repair", "off"]})
    assert rr(c[0])["enabled"] is False and rr(c[1])["enabled"] is True
    for k in (b"off", b"on"):
        assert PUT(c[0], k, b"v1", "ack=3", "from=3") == 201
    assert c[2].stop() == 0
    for k in (b"off", b"on"):
        assert PUT(c[0], k, b"v2") == 201
    c[2].start()
    settle(c)
    assert GET(c[0], b"off", "ack=3", "from=3") == (200, b"v2")  # node 0: no repair
    assert GET(c[1], b"on", "ack=3", "from=3") == (200, b"v2")   # node 1: repairs node 2
    h.wait_until(lambda: local(c[2], b"on") == b"v2", 10, what="node 1's repair")
    assert local(c[2], b"off") == b"v1"
    r0 = rr(c[0])
    assert (r0["reads_repaired"], r0["writes"]) == (0, 0), r0
    assert (rr(c[1])["reads_repaired"], rr(c[1])["writes"]) == (1, 1)


@pytest.mark.timeout_s(60)
def test_a_hint_never_creates_a_copy_outside_the_replica_set(cluster_factory):
    c = start_cluster(cluster_factory)
    placed = place_from2(c, 30, b"hs")
    down = 2
    # Keys whose from=2 set holds node 2; each is written through the other replica of its set
    # (a replica coordinator) or through the node outside its set (a proxying coordinator).
    with_down = [(k, p) for k, p in placed.items() if down in p]
    by_replica = [(k, next(iter(p - {down}))) for k, p in with_down[0::2]]
    by_outsider = [(k, next(iter(set(range(N)) - p))) for k, p in with_down[1::2]]
    assert len(by_replica) >= 3 and len(by_outsider) >= 3, with_down
    deleted = {k for k, _ in by_outsider[:2]}

    assert c[down].stop() == 0
    per_coord = {0: 0, 1: 0}
    for k, coord in by_replica + by_outsider:
        if k in deleted:
            assert DELETE(c[coord], k, "ack=1", "from=2") == 202
        else:
            assert PUT(c[coord], k, b"v2", "ack=1", "from=2") == 201
        per_coord[coord] += 1
    for coord, n in per_coord.items():
        h.wait_until(lambda: pending_for(c[coord], c[down]) >= n, 10, what="hints")
        doc = hints(c[coord])
        assert (doc["pending_count"], peer_hints(doc, c[down])["count"],
                peer_hints(doc, c[1 - coord])["count"]) == (n, n, 0), doc
    # A hint is no replica data: the proxying coordinator does not show the key.
    for k, coord in by_outsider:
        assert local(c[coord], k) is None, (k, coord)

    c[down].start()
    for coord in per_coord:
        st, _, body = sync(c[coord], 20000)
        assert st == 200, body
    for k, _ in by_replica + by_outsider:
        want = {} if k in deleted else {i: b"v2" for i in placed[k]}
        assert holders(c, k) == want, (k, sorted(placed[k]), holders(c, k))


# =================================================================================================
# Fault injection
# =================================================================================================


def idle(nd: h.Node, samples: int = 8) -> bool:
    """No coordinator operation open on the node. The verbose status shows the operations of the
    I/O thread that serves it, so several fresh connections sample the threads."""
    return all(verbose(nd)["inflight"] == 0 for _ in range(samples))


class History:
    """Per key, every write in issue order: (kind, value or None for DELETE, outcome), outcome
    "ack" (201/202), "fail" (504) or "unknown" (no answer)."""

    def __init__(self):
        self.ops: dict[bytes, list] = {}

    def allowed(self, k: bytes) -> set:
        """The local states (value, or None for absent) a converged node may hold for `k`: the
        latest acknowledged write's, or that of any later write that was not acknowledged."""
        ops = self.ops.get(k, [])
        last_ack = max((i for i, op in enumerate(ops) if op[2] == "ack"), default=None)
        states = {op[1] for op in ops[(last_ack if last_ack is not None else 0):]}
        if last_ack is None:
            states.add(None)
        return states


@pytest.mark.timeout_s(120)
def test_random_kills_stops_and_restarts_during_writes_converge_through_hints_alone(
        cluster_factory):
    seed = int(os.environ.get("DKV_TEST_SEED", time.time_ns() % 1000000))
    print("\nseed %d (DKV_TEST_SEED to repeat)" % seed)
    rng = random.Random(seed)
    c = start_cluster(cluster_factory)
    writers, keys_per_writer, fault_rounds = 4, 40, 9
    min_key_gap_s = 0.06  # API.md §6: writes to one key through different nodes 50 ms apart

    lock = threading.Lock()
    live = [True] * N
    inflight = [0] * N
    stop = threading.Event()
    hist = History()
    unexpected = []

    def writer(w: int):
        wrng = random.Random(seed * 10 + w)
        keys = [b"f%d-%02d" % (w, i) for i in range(keys_per_writer)]
        last = {k: 0.0 for k in keys}
        seq = 0
        while not stop.is_set():
            k = keys[seq % len(keys)]
            seq += 1
            wait = last[k] + min_key_gap_s - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            with lock:
                up = [i for i in range(N) if live[i]]
                via = wrng.choice(up)
                inflight[via] += 1
            try:
                target = entity_target(k)
                if wrng.random() < 0.2:
                    kind, value = "DELETE", None
                else:
                    kind = "PUT"
                    value = b"w%d-%06d-" % (w, seq) + wrng.randbytes(wrng.randrange(40))
                try:
                    st = request(c[via], kind, target, value).status
                except (OSError, http.client.HTTPException):
                    st = None
                last[k] = time.monotonic()
                if st in (201, 202):
                    outcome = "ack"
                elif st == 504:
                    outcome = "fail"
                elif st is None:
                    outcome = "unknown"
                else:
                    unexpected.append((k, kind, via, st))
                    outcome = "unknown"
                hist.ops.setdefault(k, []).append((kind, value, outcome))
            finally:
                with lock:
                    inflight[via] -= 1

    def drain(v: int):
        # No new client request goes to node v, and none it coordinates is still open (the
        # coordinator's own fan-out included): a kill -9 of a coordinator in the middle of a
        # write can leave a replica without the write and without a hint (nobody saw it fail),
        # which only anti-entropy could repair. That is not what this test is about.
        with lock:
            live[v] = False
        h.wait_until(lambda: inflight[v] == 0, 15, what="client requests to node %d" % v)
        h.wait_until(lambda: idle(c[v]), 15, what="node %d's operations to finish" % v)

    faults = []
    t_start = time.monotonic()
    with ThreadPoolExecutor(max_workers=writers) as ex:
        futs = [ex.submit(writer, w) for w in range(writers)]
        try:
            time.sleep(0.5)
            for _ in range(fault_rounds):
                v = rng.randrange(N)
                kind = rng.choice(["kill", "sigstop", "restart"])
                faults.append((kind, v))
                drain(v)
                nd = c[v]
                if kind == "kill":
                    nd.kill()
                    time.sleep(rng.uniform(0.3, 1.5))  # how long it stays dead
                    nd.start()
                elif kind == "sigstop":
                    os.kill(nd.pid, signal.SIGSTOP)
                    try:
                        time.sleep(rng.uniform(0.8, 1.2))  # how long it stays stopped
                    finally:
                        os.kill(nd.pid, signal.SIGCONT)
                else:
                    nd.restart()
                with lock:
                    live[v] = True
                time.sleep(rng.uniform(0.2, 0.6))  # writes with every node up
                for f in futs:
                    if f.done():
                        f.result()  # a writer crashed: report it now
        finally:
            stop.set()
            for f in futs:
                f.result(timeout=60)
    t_faults = time.monotonic() - t_start
    assert not unexpected, unexpected[:10]

    # Quiesce: every node up, no coordinator operation open, then every node's hints delivered.
    for nd in c:
        assert nd.running(), nd.name
    for nd in c:
        h.wait_until(lambda: idle(nd), 15, what="%s idle" % nd.name)
    for nd in c:
        st, took, body = sync(nd, 30000)
        assert st == 200, (nd.name, st, took, body)
    for nd in c:
        # No operation is open, so no hint can appear after the sync: none may be left. (A hint
        # left here while the sync said 200 is one the replay cursor skipped: it became visible
        # in the store after a hint with a later sequence had been delivered.)
        doc = hints(nd)
        assert doc["pending_count"] == 0, ("hint left after sync 200", nd.name, doc)
        assert rr(nd)["reads_repaired"] == 0, nd.name  # no client read: no repair

    data = [local_all(nd) for nd in c]
    for i in (1, 2):
        assert data[i] == data[0], "node %d differs from node 0: %s" % (i, map_diff(data[i],
                                                                               data[0]))
    bad = []
    for k in hist.ops:
        if data[0].get(k) not in hist.allowed(k):
            bad.append((k, data[0].get(k), hist.ops[k][-3:]))
    assert not bad, "%d keys hold a state no acknowledged write explains: %r" % (len(bad), bad[:5])
    assert set(data[0]) <= set(hist.ops), "a key nobody wrote"
    outcomes = [op[2] for ops in hist.ops.values() for op in ops]
    n_ack = outcomes.count("ack")
    must = sum(1 for ops in hist.ops.values() if ops[-1][2] == "ack")
    print("faults %r in %.1f s: %d writes, %d acknowledged, %d 504, %d unanswered; %d keys whose "
          "last write was acknowledged, %d records on every node; hints written %r"
          % (faults, t_faults, len(outcomes), n_ack, outcomes.count("fail"),
             outcomes.count("unknown"), must, len(data[0]), [hints(nd)["written"] for nd in c]))
    assert n_ack >= 500 and must >= 100, (n_ack, must)
    assert {k for k in hist.ops if hist.ops[k][-1][2] == "ack" and hist.ops[k][-1][0] == "PUT"} \
        <= set(data[0])


# =================================================================================================
# Flags and status
# =================================================================================================


@pytest.mark.parametrize("args, words", [
    (["--read-repair", "maybe"], ["--read-repair", "maybe"]),
    (["--hinted-handoff", "yes"], ["--hinted-handoff", "yes"]),
    (["--hint-window-ms", "0"], ["--hint-window-ms", "0"]),
    (["--hint-window-ms", "abc"], ["--hint-window-ms", "abc"]),
    (["--max-hints-bytes", "0"], ["--max-hints-bytes", "0"]),
    (["--hint-replay-bytes-per-s", "1023"], ["--hint-replay-bytes-per-s", "1023"]),
    (["--read-repair"], ["--read-repair"]),
])
def test_bad_convergence_flags_exit_2_with_a_message(dkv_bin, tmp_path, args, words):
    r = h.run_dkv(args, tmp_path)
    err = r.stderr.decode("utf-8", "replace")
    assert r.returncode == 2, (args, r.returncode, err)
    for w in words:
        assert w in err, (args, err)
    assert not (tmp_path / "data").exists(), "a node that refused its flags created its data"


def test_verbose_status_shows_hints_and_read_repair_as_the_flags_set_them(cluster_factory):
    c = start_cluster(cluster_factory, per_node_args={
        1: ["--hinted-handoff", "off", "--read-repair", "off"],
        2: ["--hint-window-ms", "1", "--max-hints-bytes", "1", "--hint-replay-bytes-per-s",
            "1024", "--hinted-handoff", "on", "--read-repair", "on"]})
    for i, nd in enumerate(c):
        doc = verbose(nd)
        assert set(doc["read_repair"]) == RR_KEYS, doc["read_repair"]
        assert doc["read_repair"] == {"enabled": i != 1, "reads_repaired": 0, "writes": 0,
                                      "failures": 0, "failed_writes_without_hint": 0}, doc
        if i == 1:
            assert doc["hints"] == {"enabled": False}, doc["hints"]
            assert hints(nd) == {"enabled": False}
        else:
            assert set(doc["hints"]) == HINT_KEYS and doc["hints"]["enabled"] is True, doc
            assert len(doc["hints"]["peers"]) == N - 1, doc
