"""Cluster (N=3) behaviour of dkv: placement, replication, failures and recovery (API.md §5, §6,
§8, §9).

Most tests share one 3-node cluster per module (`c3`) and use keys unique to the test (`uniq`).
Tests may stop, kill or restart its nodes: the fixture starts any stopped node again and waits
until every node can write 3/3 before the next test. Tests that need special flags (one I/O
thread, short timeouts, a mismatched --cluster list, SIGSTOP) start their own cluster.

Which nodes hold a key cannot be computed here (placement hashes with xxh3), so holders are found
through each node's node-local range `GET /v0/entities?start=<k>&end=<k>\\0` (§10).

Every wait is a poll against a deadline. The only sleeps are the 60 ms gaps API.md §6 allows
between conflicting writes sent through different nodes (`gap()`).
"""

from __future__ import annotations

import json
import os
import random
import signal
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import pytest

import dkvharness as h
from dkvharness import entity_target

N = 3
Q = N // 2 + 1  # default quorum

# §6: conflicting writes through different nodes at least 50 ms apart are ordered as issued.
WRITE_GAP_S = 0.06

# §8: a refused replica fails at once; "well under 1 s" (normally milliseconds).
PROMPT_S = 0.5

# §8: an unresponsive replica is given up after at most ~2-3 s (default --replica-timeout-ms 1000).
HUNG_BOUND_S = 3.0

# How long a cluster may take to become fully writable again after restarts.
SETTLE_S = 15.0


# =================================================================================================
# Helpers
# =================================================================================================


class Res(NamedTuple):
    status: int
    body: bytes
    elapsed: float


def rf(ack: int | None, frm: int | None) -> tuple[str, ...]:
    """Query parameters for ack/from (None leaves a parameter out)."""
    out = []
    if ack is not None:
        out.append("ack=%d" % ack)
    if frm is not None:
        out.append("from=%d" % frm)
    return tuple(out)


def call(nd: h.Node, method: str, key: bytes, value: bytes | None = None,
         ack: int | None = None, frm: int | None = None,
         timeout_s: float = h.IO_TIMEOUT_S) -> Res:
    """One request on a fresh connection (safe across node restarts), timed client-side."""
    target = entity_target(key, *rf(ack, frm))
    t0 = time.monotonic()
    with nd.client(timeout_s) as c:
        r = c.request(method, target, body=value)
    return Res(r.status, r.body, time.monotonic() - t0)


def GET(nd, key, ack=None, frm=None, **kw) -> Res:
    return call(nd, "GET", key, None, ack, frm, **kw)


def PUT(nd, key, value, ack=None, frm=None, **kw) -> Res:
    return call(nd, "PUT", key, h.to_bytes(value), ack, frm, **kw)


def DELETE(nd, key, ack=None, frm=None, **kw) -> Res:
    return call(nd, "DELETE", key, None, ack, frm, **kw)


def gap():
    """The pause API.md §6 allows between conflicting writes sent through different nodes."""
    time.sleep(WRITE_GAP_S)


def prefix_end(prefix: bytes) -> bytes:
    assert prefix and prefix[-1] != 0xFF
    return prefix[:-1] + bytes([prefix[-1] + 1])


def local_range(nd: h.Node, start: bytes, end: bytes) -> dict[bytes, bytes]:
    """The node's own records in [start, end) via /v0/entities, with strict chunk framing."""
    return h.local_records(nd, start, end)


def local(nd: h.Node, key: bytes) -> bytes | None:
    """The node's local live value for `key` (None: absent or tombstoned)."""
    return h.local_value(nd, key)


def holders(c: h.Cluster, key: bytes) -> dict[int, bytes]:
    """{node index: local value} over the running nodes that hold a live copy of `key`."""
    out = {}
    for i, nd in enumerate(c):
        if nd.running():
            v = local(nd, key)
            if v is not None:
                out[i] = v
    return out


def peer_view(nd: h.Node, peer_url: str) -> dict:
    """The `peers` entry for `peer_url` in nd's verbose status (one I/O thread's view)."""
    with nd.client() as c:
        r = c.request("GET", "/v0/status?verbose=1")
    assert r.status == 200, r
    doc = json.loads(r.body)
    for p in doc["peers"]:
        if p["url"] == peer_url:
            return p
    raise AssertionError("%s not in %s's peers: %r" % (peer_url, nd.name, doc["peers"]))


def settle(c: h.Cluster, timeout_s: float = SETTLE_S):
    """Waits until every node can write 3/3 (all peers reachable from every coordinator)."""
    for i, nd in enumerate(c):
        h.wait_until(lambda: PUT(nd, b"__settle__", b"%d" % i, N, N).status == 201, timeout_s,
                     interval_s=0.05, what="%s to write 3/3" % nd.name)


def start_all(c: h.Cluster):
    for nd in c:
        if not nd.running():
            nd.start()


def stop_all(c: h.Cluster):
    for nd in c:
        if nd.running():
            assert nd.stop() == 0, "%s exited non-zero on SIGTERM" % nd.name


def each_node_alone(c: h.Cluster, probe) -> dict:
    """Stops every node, then starts each node alone (its peers down) and calls probe(i, node).

    Returns {i: probe result}. Leaves every node stopped; the caller (or the fixture) restarts.
    """
    stop_all(c)
    out = {}
    for i, nd in enumerate(c):
        nd.start()
        try:
            out[i] = probe(i, nd)
        finally:
            assert nd.stop() == 0, "%s exited non-zero on SIGTERM" % nd.name
    return out


def others(i: int) -> list[int]:
    return [j for j in range(N) if j != i]


# =================================================================================================
# Fixtures
# =================================================================================================


@pytest.fixture(scope="module")
def _c3_module(dkv_bin, tmp_path_factory):
    c = h.Cluster(tmp_path_factory.mktemp("cluster3"), N, name="c3n")
    c.start()
    yield c
    problems = c.close()
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


@pytest.fixture
def c3(_c3_module):
    """The module's shared 3-node cluster, all nodes up and mutually reachable.

    A test may stop/kill/restart nodes; stopped ones are started again before the next test.
    A node that dies unexpectedly or logs a sanitizer report fails the test in teardown.
    """
    c = _c3_module
    start_all(c)
    settle(c)
    marks = [nd.log_size() for nd in c]
    yield c
    problems = []
    for nd, mark in zip(c, marks):
        if nd.proc is not None and nd.proc.poll() is not None and not nd.expected_dead:
            problems.append("%s died unexpectedly (rc %s)" % (nd.name, nd.proc.returncode))
            nd.expected_dead = True  # reported here, not again at module teardown
        if nd.sanitizer_report(mark):
            problems.append("sanitizer report in %s's log" % nd.name)
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


# =================================================================================================
# §9 Behaviour with nodes stopped
# =================================================================================================


@pytest.mark.parametrize("stopped", range(N))
def test_unreachable_replicas_n_of_n_is_504_promptly(c3, uniq, stopped):
    k = uniq()
    assert PUT(c3[0], k, b"v", N, N).status == 201
    c3[stopped].stop()
    # Several rounds: the first requests meet a refused connection, later ones may meet an
    # open circuit breaker; both are immediate failures.
    for rnd in range(3):
        for j in others(stopped):
            for method, value in (("GET", None), ("PUT", b"w"), ("DELETE", None)):
                r = call(c3[j], method, k, value, N, N)
                assert r.status == 504, (rnd, j, method, r)
                assert r.elapsed < PROMPT_S, (rnd, j, method, r)


@pytest.mark.parametrize("order", [(2, 1), (0, 2)], ids=["stop2then1", "stop0then2"])
def test_default_quorum_while_nodes_are_stopped_one_by_one(c3, uniq, order):
    def check_success(alive: list[int], tag: bytes):
        for j in alive:
            k = uniq(tag + b"%d" % j)
            v = b"val-" + k
            w = alive[(alive.index(j) + 1) % len(alive)]  # read through another live node
            assert PUT(c3[j], k, v).status == 201
            assert GET(c3[w], k)[:2] == (200, v)
            gap()
            assert DELETE(c3[w], k).status == 202
            assert GET(c3[j], k).status == 404

    alive = list(range(N))
    check_success(alive, b"all")
    first, second = order
    c3[first].stop()
    alive.remove(first)
    assert len(alive) >= Q
    check_success(alive, b"one-down")
    c3[second].stop()
    alive.remove(second)
    assert len(alive) < Q
    (last,) = alive
    k = uniq(b"two-down")
    for method, value in (("PUT", b"x"), ("GET", None), ("DELETE", None)):
        r = call(c3[last], method, k, value)
        assert r.status == 504, (method, r)
        assert r.elapsed < PROMPT_S, (method, r)


@pytest.mark.parametrize("i", range(N))
def test_tolerate_one_failure(c3, uniq, i):
    k = uniq()
    assert PUT(c3[i], k, b"value", N, N).status == 201
    c3[i].stop()
    for j in others(i):
        assert GET(c3[j], k, N - 1, N)[:2] == (200, b"value")
    gap()
    assert DELETE(c3[others(i)[0]], k, N - 1, N).status == 202
    for j in others(i):
        assert GET(c3[j], k, N - 1, N).status == 404


@pytest.mark.parametrize("i", range(N))
def test_missed_write(c3, uniq, i):
    k = uniq()
    j = others(i)[0]
    c3[i].stop()
    assert PUT(c3[j], k, b"written while down", N - 1, N).status == 201
    c3[i].start()
    # i's "absent" is older than the value one of the other replicas returns.
    assert GET(c3[i], k, 2, N)[:2] == (200, b"written while down")


@pytest.mark.parametrize("i", range(N))
def test_missed_overwrite(c3, uniq, i):
    k = uniq()
    j, m = others(i)
    assert PUT(c3[i], k, b"v1", N, N).status == 201
    c3[i].stop()
    gap()
    assert PUT(c3[j], k, b"v2", N - 1, N).status == 201
    c3[i].start()
    assert GET(c3[i], k, N, N)[:2] == (200, b"v2")
    assert GET(c3[m], k, N, N)[:2] == (200, b"v2")


@pytest.mark.parametrize("i", range(N))
def test_missed_delete(c3, uniq, i):
    k = uniq()
    j, m = others(i)
    assert PUT(c3[j], k, b"stale", N, N).status == 201
    c3[i].stop()
    gap()
    assert DELETE(c3[m], k, N - 1, N).status == 202
    c3[i].start()
    # The newer tombstone beats i's stale value.
    assert GET(c3[i], k, N, N).status == 404
    assert GET(c3[j], k, N, N).status == 404


@pytest.mark.parametrize("i", range(N))
def test_missed_recreate(c3, uniq, i):
    k = uniq()
    j, m = others(i)
    assert PUT(c3[i], k, b"v1", N, N).status == 201
    assert DELETE(c3[i], k, N, N).status == 202
    c3[i].stop()
    gap()
    assert PUT(c3[j], k, b"v2", N - 1, N).status == 201
    c3[i].start()
    # The newer value beats i's older tombstone.
    assert GET(c3[i], k, N, N)[:2] == (200, b"v2")
    assert GET(c3[m], k, N, N)[:2] == (200, b"v2")


def test_single_copy(c3, uniq):
    k = uniq()
    assert PUT(c3[0], k, b"via0", 1, 1).status == 201
    gap()
    assert PUT(c3[1], k, b"via1", 1, 1).status == 201
    # Exactly one node stores the key, whichever coordinator wrote it, with the latest value.
    hs = holders(c3, k)
    assert list(hs.values()) == [b"via1"], hs
    (holder,) = hs
    for nd in c3:  # every node proxies to the one replica
        assert GET(nd, k, 1, 1)[:2] == (200, b"via1")

    results = each_node_alone(c3, lambda i, nd: GET(nd, k, 1, 1))
    for i, r in results.items():
        if i == holder:
            assert r[:2] == (200, b"via1"), (i, r)
        else:
            assert r.status == 504, (i, r)  # no copy, no caching at the coordinator
            assert r.elapsed < PROMPT_S, (i, r)


def test_two_copies(c3, uniq):
    k = uniq()
    assert PUT(c3[2], k, b"twice", 2, 2).status == 201
    hs = holders(c3, k)
    assert sorted(hs.values()) == [b"twice", b"twice"], hs

    results = each_node_alone(c3, lambda i, nd: GET(nd, k, 1, 2))
    answered = sorted(i for i, r in results.items() if r.status == 200)
    assert answered == sorted(hs), results
    for i, r in results.items():
        if i in hs:
            assert r.body == b"twice"
        else:
            assert r.status == 504 and r.elapsed < PROMPT_S, (i, r)


def test_write_one_read_all(c3, uniq):
    k = uniq()
    assert PUT(c3[0], k, b"v1", 1, N).status == 201
    for nd in c3:
        assert GET(nd, k, N, N)[:2] == (200, b"v1"), nd.name
    gap()
    assert PUT(c3[1], k, b"v2", 1, N).status == 201
    for nd in c3:
        assert GET(nd, k, N, N)[:2] == (200, b"v2"), nd.name


def test_write_all_read_one(c3, uniq):
    k = uniq()
    assert PUT(c3[2], k, b"everywhere", N, N).status == 201
    for nd in c3:
        assert GET(nd, k, 1, N)[:2] == (200, b"everywhere"), nd.name
        assert local(nd, k) == b"everywhere", nd.name


def test_delete_all_read_one(c3, uniq):
    k = uniq()
    assert PUT(c3[0], k, b"doomed", N, N).status == 201
    gap()
    assert DELETE(c3[1], k, N, N).status == 202
    for nd in c3:
        assert GET(nd, k, 1, N).status == 404, nd.name
        assert local(nd, k) is None, nd.name


def test_delete_one_read_all(c3, uniq):
    k = uniq()
    assert PUT(c3[0], k, b"doomed", N, N).status == 201
    gap()
    assert DELETE(c3[2], k, 1, N).status == 202
    for nd in c3:  # the tombstone wins over any copy still holding the value
        assert GET(nd, k, N, N).status == 404, nd.name


def test_quorum_write_then_quorum_read(c3, uniq):
    k = uniq()
    assert PUT(c3[0], k, b"quorum", Q, N).status == 201
    for nd in c3:
        assert GET(nd, k, Q, N)[:2] == (200, b"quorum"), nd.name
    gap()
    assert DELETE(c3[2], k, Q, N).status == 202
    for nd in c3:
        assert GET(nd, k, Q, N).status == 404, nd.name


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_restart_keeps_the_nodes_copy(c3, uniq, how):
    k_val, k_empty, k_del = uniq(b"val"), uniq(b"empty"), uniq(b"del")
    assert PUT(c3[0], k_val, b"kept", N, N).status == 201
    assert PUT(c3[0], k_empty, b"", N, N).status == 201
    assert PUT(c3[0], k_del, b"gone", N, N).status == 201
    assert DELETE(c3[0], k_del, N, N).status == 202
    nd = c3[1]
    nd.restart(kill=(how == "sigkill"))
    # Its own copy, via the local range and via the node.
    assert local(nd, k_val) == b"kept"
    assert local(nd, k_empty) == b""
    assert local(nd, k_del) is None
    for ack in (1, N):
        assert GET(nd, k_val, ack, N)[:2] == (200, b"kept")
        assert GET(nd, k_empty, ack, N)[:2] == (200, b"")
        assert GET(nd, k_del, ack, N).status == 404


def test_full_restart_each_node_alone_serves_the_latest_state_from_its_own_copy(c3, uniq):
    p = uniq(b"")
    expected: dict[bytes, bytes | None] = {}

    def put(via, k, v):
        assert PUT(c3[via], p + k, v, N, N).status == 201
        expected[k] = v

    def delete(via, k):
        assert DELETE(c3[via], p + k, N, N).status == 202
        expected[k] = None

    put(0, b"plain", b"plain value")
    put(1, b"empty", b"")
    put(2, b"binary", bytes(range(256)) + b"\r\n\r\n\x00")
    put(0, b"over", b"first")
    gap()
    put(1, b"over", b"second")
    gap()
    put(2, b"over", b"")  # overwritten with an empty value
    put(0, b"deleted", b"soon gone")
    gap()
    delete(1, b"deleted")
    delete(2, b"never-written")
    put(0, b"recreated", b"old")
    gap()
    delete(1, b"recreated")
    gap()
    put(2, b"recreated", b"new")
    live = {k: v for k, v in expected.items() if v is not None}

    def probe(i, nd):
        got_local = local_range(nd, p, prefix_end(p))
        got = {k: GET(nd, p + k, 1, N) for k in expected}
        return got_local, got

    results = each_node_alone(c3, probe)
    for i, (got_local, got) in results.items():
        assert got_local == {p + k: v for k, v in live.items()}, i
        for k, v in expected.items():
            r = got[k]
            if v is None:
                assert r.status == 404, (i, k, r)
            else:
                assert r[:2] == (200, v), (i, k, r)


# =================================================================================================
# §5 Placement: exactly `from` copies, prefix property, spread
# =================================================================================================


def test_exactly_from_copies_and_replica_sets_are_prefixes(c3, uniq):
    n_keys = 150
    p = uniq(b"")
    keys = [p + b"%04d" % i for i in range(n_keys)]
    clients = [nd.client() for nd in c3]
    try:
        def write_all(value: bytes, f: int, shift: int):
            for i, k in enumerate(keys):
                r = clients[(i + shift) % N].put(k, value, *rf(f, f))
                assert r.status == 201, (k, f, r.status)

        def holder_sets(value: bytes) -> dict[bytes, frozenset]:
            per_node = [local_range(nd, p, prefix_end(p)) for nd in c3]
            out = {}
            for k in keys:
                out[k] = frozenset(i for i in range(N) if per_node[i].get(k) == value)
                others_vals = {per_node[i].get(k) for i in range(N) if i not in out[k]}
                assert others_vals <= {None}, (k, others_vals)
            return out

        # from=1: one copy per key, wherever the request entered.
        write_all(b"f1", 1, 0)
        h1 = holder_sets(b"f1")
        assert all(len(s) == 1 for s in h1.values()), [s for s in h1.values() if len(s) != 1]
        # The same placement through a different coordinator: the same single node.
        write_all(b"f1b", 1, 1)
        h1b = holder_sets(b"f1b")
        assert h1b == h1
        # Keys spread over all nodes (expected 50 each; sigma ~5.8).
        share = [sum(1 for s in h1.values() if i in s) for i in range(N)]
        assert all(20 <= s <= 80 for s in share), share

        # from=2: two copies, a superset of the from=1 copy.
        write_all(b"f2", 2, 2)
        h2 = holder_sets(b"f2")
        for k in keys:
            assert len(h2[k]) == 2 and h1[k] < h2[k], (k, h1[k], h2[k])

        # from=3: everywhere.
        write_all(b"f3", 3, 0)
        h3 = holder_sets(b"f3")
        assert all(s == frozenset(range(N)) for s in h3.values())

        # Fresh keys written once with from=1/2/3 also get exactly `from` copies.
        for f in (1, 2, 3):
            fk = [p + b"fresh%d/%03d" % (f, i) for i in range(30)]
            for i, k in enumerate(fk):
                assert clients[i % N].put(k, b"x", *rf(f, f)).status == 201
            per_node = [local_range(nd, p + b"fresh%d/" % f, p + b"fresh%d0" % f) for nd in c3]
            counts = {k: sum(1 for i in range(N) if k in per_node[i]) for k in fk}
            assert set(counts.values()) == {f}, (f, counts)
    finally:
        for cl in clients:
            cl.close()


# =================================================================================================
# §8 Recovery after a restart, hung peers, circuit breaker, handshake
# =================================================================================================


@pytest.mark.parametrize("io_threads", [1, 2])
def test_coordinator_reaches_a_restarted_peer_on_the_very_next_request(cluster_factory, uniq,
                                                                       io_threads):
    # A long breaker cooldown, so the breaker's own half-open timer cannot be what saves the
    # request: the coordinator must notice the restart by itself.
    c = cluster_factory(N, "--io-threads", str(io_threads), "--breaker-cooldown-ms", "30000")
    k = uniq()
    assert PUT(c[0], k, b"v0", N, N).status == 201
    c[2].kill()
    for coord in (c[0], c[1]):
        if io_threads == 1:
            def opened():
                assert PUT(coord, k, b"x", N, N).status == 504
                return peer_view(coord, c[2].url)["breaker"] == "open"
            h.wait_until(opened, 10, interval_s=0, what="%s's breaker to open" % coord.name)
        else:  # fresh connections land on both I/O threads
            for _ in range(24):
                assert PUT(coord, k, b"x", N, N).status == 504
    c[2].start()  # returns once its /v0/status answers 200
    for n, coord in enumerate((c[0], c[1], c[0], c[1])):
        r = PUT(coord, k, b"after-restart-%d" % n, N, N)
        assert r.status == 201, (coord.name, n, r)
    for nd in c:
        assert GET(nd, k, N, N)[:2] == (200, b"after-restart-3")


def test_hung_peer_requests_finish_within_bounds_and_recover(cluster_factory, uniq):
    # Default --replica-timeout-ms (1000): a hung replica is given up well within 3 s.
    c = cluster_factory(N)
    keys = {name: uniq(name) for name in
            (b"put23", b"get23", b"del23", b"put33", b"get33", b"del33")}
    for k in keys.values():
        assert PUT(c[0], k, b"old", N, N).status == 201
    ops = [  # (name, coordinator, method, value, ack, expected status)
        (b"put23", 0, "PUT", b"new", 2, 201),
        (b"get23", 1, "GET", None, 2, 200),
        (b"del23", 0, "DELETE", None, 2, 202),
        (b"put33", 1, "PUT", b"new", 3, 504),
        (b"get33", 0, "GET", None, 3, 504),
        (b"del33", 1, "DELETE", None, 3, 504),
    ]

    def run(op):
        name, coord, method, value, ack, _ = op
        return call(c[coord], method, keys[name], value, ack, N, timeout_s=HUNG_BOUND_S + 5)

    h.sigstop(c[2].pid)
    try:
        # All at once (many requests stuck on the hung peer), then one by one.
        with ThreadPoolExecutor(max_workers=len(ops)) as ex:
            concurrent = list(ex.map(run, ops))
        sequential = [run(op) for op in ops]
        for results in (concurrent, sequential):
            for op, r in zip(ops, results):
                assert r.status == op[5], (op[0], r)
                assert r.elapsed < HUNG_BOUND_S, (op[0], r)
        assert concurrent[1].body == b"old"
    finally:
        os.kill(c[2].pid, signal.SIGCONT)
    # Recovery: soon every node serves 3/3 again. Each I/O thread has its own breaker, which
    # may stay open for its cooldown after the peer resumes (the peer did not restart, so §8's
    # "very next request" does not apply): until then 504 means "not yet", anything else but
    # the right answer fails at once. Fresh connections land on the nodes' different threads.
    def recovered() -> bool:
        for nd in c:
            for _ in range(4):
                r = PUT(nd, keys[b"put33"], b"recovered", N, N)
                if r.status == 504:
                    return False
                assert r.status == 201, (nd.name, r)
        for nd in c:
            for _ in range(2):
                for name, expected in ((b"put33", (200, b"recovered")), (b"put23", (200, b"new")),
                                       (b"del23", (404, None))):
                    r = GET(nd, keys[name], N, N)
                    if r.status == 504:
                        return False
                    assert r.status == expected[0], (nd.name, name, r)
                    if expected[1] is not None:
                        assert r.body == expected[1], (nd.name, name, r)
        return True
    h.wait_until(recovered, SETTLE_S, interval_s=0.05, what="3/3 everywhere after SIGCONT")


def _open_breaker_and_time_fast_failures(c: h.Cluster, k: bytes, victim: h.Node, max_tries: int):
    coord = c[0]
    tries = 0
    with coord.client() as cl:
        def opened():
            nonlocal tries
            tries += 1
            assert cl.put(k, b"x", *rf(N, N)).status == 504
            return peer_view(coord, victim.url)["breaker"] == "open"
        h.wait_until(opened, 20, interval_s=0, what="the breaker to open")
        assert tries <= max_tries, tries
        times = []
        for _ in range(5):
            t0 = time.monotonic()
            r = cl.put(k, b"x", *rf(N, N))
            times.append(time.monotonic() - t0)
            assert r.status == 504
        view = peer_view(coord, victim.url)
        # A request that does not need the victim still succeeds.
        assert cl.put(k, b"y", *rf(N - 1, N)).status == 201
    return times, view


def test_breaker_opens_for_a_killed_peer_and_then_fails_fast(cluster_factory, uniq):
    c = cluster_factory(N, "--io-threads", "1")
    k = uniq()
    assert PUT(c[0], k, b"v", N, N).status == 201
    c[2].kill()
    times, view = _open_breaker_and_time_fast_failures(c, k, c[2], max_tries=5 + 3)
    assert view["breaker"] == "open" and view["connected"] is False, view
    assert statistics.median(times) < 0.050, times


def test_breaker_opens_for_a_hung_peer_and_then_fails_fast(cluster_factory, uniq):
    # --replica-timeout-ms 300 only makes the failures that open the breaker quicker.
    c = cluster_factory(N, "--io-threads", "1", "--replica-timeout-ms", "300")
    k = uniq()
    assert PUT(c[0], k, b"v", N, N).status == 201
    h.sigstop(c[2].pid)
    try:
        times, view = _open_breaker_and_time_fast_failures(c, k, c[2], max_tries=5 + 3)
    finally:
        os.kill(c[2].pid, signal.SIGCONT)
    assert view["breaker"] == "open", view
    assert statistics.median(times) < 0.050, times  # instead of the 300 ms timeout
    h.wait_until(lambda: PUT(c[0], k, b"back", N, N).status == 201, SETTLE_S, interval_s=0.05,
                 what="3/3 after SIGCONT")


def test_node_with_a_different_cluster_list_is_refused(cluster_factory, uniq):
    c = cluster_factory(N, start=False)
    c.prepare()
    extra = "http://%s:%d" % (h.HOST, h.free_port())  # never started
    c[2].cluster_urls = c[2].cluster_urls + [extra]
    for nd in c:
        nd.start()
    k = uniq()
    for coord, ack, frm in ((c[0], 3, 3), (c[1], 3, 3), (c[2], 3, 3), (c[2], 4, 4)):
        for method, value in (("PUT", b"v"), ("GET", None)):
            r = call(coord, method, k, value, ack, frm)
            assert r.status == 504, (coord.name, method, ack, frm, r)
            assert r.elapsed < PROMPT_S, (coord.name, method, r)
    # Nodes 0 and 1 agree with each other: a request they can serve alone succeeds.
    assert PUT(c[0], k, b"v", 2, 3).status == 201
    assert GET(c[1], k, 2, 3)[:2] == (200, b"v")

    def logs_say_it():
        l0, l1, l2 = (nd.log_bytes().lower() for nd in c)
        return (b"refus" in l0 and b"refus" in l1 and b"refus" in l2
                and b"cluster mismatch" in l0 + l1 + l2)
    h.wait_until(logs_say_it, 5, what="the refusal in the logs")


def test_node_answers_status_at_once_with_all_peers_down(cluster_factory):
    # Whatever a start could wait for from its peers (a connection, a handshake, a reply) is
    # bounded by --replica-timeout-ms; set far beyond the assertion, a start that waited on its
    # absent peers would take at least 30 s, one that does not is done in about a second (the
    # bound leaves room for a loaded machine under ASan: this asserts behaviour, not speed).
    c = cluster_factory(N, "--replica-timeout-ms", "30000", start=False)
    c.prepare()
    nd = c[1]  # peers 0 and 2 never start
    t0 = time.monotonic()
    nd.spawn()
    nd.wait_ready(h.START_TIMEOUT_S)
    elapsed = time.monotonic() - t0
    assert elapsed < 10.0, elapsed
    r = PUT(nd, b"k", b"v")  # default 2/3 is impossible alone: 504, at once
    assert r.status == 504 and r.elapsed < PROMPT_S, r
    # 1/3 needs one answer, but a node that started on an empty data directory cannot tell a new
    # cluster from a lost disk until a peer tells it: it is "joining", and its "absent" would not
    # be authoritative, so the honest answer is 504, at once (not a 404).
    r = GET(nd, b"never-written", 1, N)
    assert r.status == 504 and r.elapsed < PROMPT_S, r
    assert b'"state":"joining"' in nd.client().request("GET", "/v0/status?verbose=1").body
    # A peer, also new, settles it (with it, a majority of the cluster): a new cluster, and the
    # 1/3 read is a 404.
    c[0].start()
    h.wait_until(lambda: b'"state":"ready"' in
                 nd.client().request("GET", "/v0/status?verbose=1").body, 10, what="ready")
    r = GET(nd, b"never-written", 1, N)
    assert r.status == 404 and r.elapsed < PROMPT_S, r


# =================================================================================================
# §11 Concurrency; §6 convergence and timestamps
# =================================================================================================


def test_64_concurrent_keep_alive_connections_across_the_cluster(c3, uniq):
    n_conns, rounds = 64, 10
    barrier = threading.Barrier(n_conns, timeout=30)
    prefixes = [uniq(b"t%d/" % t) for t in range(n_conns)]

    def worker(t: int):
        rng = random.Random(t)
        nd = c3[t % N]
        with nd.client() as cl:
            assert cl.status().status == 200  # connection open before everyone starts
            barrier.wait()
            for i in range(rounds):
                k = prefixes[t] + b"%d" % (i % 3)
                v = b"%d:%d:" % (t, i) + rng.randbytes(rng.randrange(3000))
                r = cl.put(k, v)
                assert r.status == 201, (t, i, r.status)
                r = cl.get(k)
                assert (r.status, r.body) == (200, v), (t, i, r.status)
                r = cl.get(k, *rf(N, N))
                assert (r.status, r.body) == (200, v), (t, i, r.status)
                if i % 4 == 3:
                    assert cl.delete(k).status == 202
                    assert cl.get(k).status == 404
        return t

    with ThreadPoolExecutor(max_workers=n_conns) as ex:
        futs = [ex.submit(worker, t) for t in range(n_conns)]
        dl = h.Deadline(50)
        for f in futs:
            f.result(timeout=dl.remaining())


def test_concurrent_writers_through_different_nodes_converge(c3, uniq):
    k = uniq()
    n_writers, ops = 6, 15
    barrier = threading.Barrier(n_writers, timeout=30)

    def writer(t: int):
        rng = random.Random(100 + t)
        nd = c3[t % N]
        with nd.client() as cl:
            barrier.wait()
            for i in range(ops):
                ack = rng.choice((1, 2, 3))
                if rng.random() < 0.15:
                    assert cl.delete(k, *rf(ack, N)).status == 202
                else:
                    v = b"w%d-%02d-" % (t, i) + rng.randbytes(rng.randrange(64))
                    assert cl.put(k, v, *rf(ack, N)).status == 201

    with ThreadPoolExecutor(max_workers=n_writers) as ex:
        futs = [ex.submit(writer, t) for t in range(n_writers)]
        dl = h.Deadline(40)
        for f in futs:
            f.result(timeout=dl.remaining())

    # Writes acknowledged by fewer than 3 replicas still reach the others: wait for the local
    # copies to agree, then every coordinator must give the same 3/3 answer.
    def copies_agree():
        vals = [local(nd, k) for nd in c3]
        return vals if len(set(vals)) == 1 else None
    vals = h.wait_until(copies_agree, 10, interval_s=0.05, what="local copies to agree")
    answers = [GET(nd, k, N, N)[:2] for nd in c3]
    assert len(set(answers)) == 1, answers
    if vals[0] is None:  # a tombstone is the newest version
        assert answers[0][0] == 404, answers
    else:
        assert answers[0] == (200, vals[0]), (answers, vals)


def test_back_to_back_writes_through_one_node_second_wins(c3, uniq):
    # The second value sorts after the first, so an equal timestamp would make the FIRST win
    # (§6 tie rule: smaller value wins); only a strictly greater timestamp makes the second win.
    for i, nd in enumerate(c3):
        with nd.client() as a, nd.client() as b:
            for rnd in range(10):
                k = uniq(b"%d" % i)
                assert a.put(k, b"a", *rf(N, N)).status == 201
                assert b.put(k, b"b", *rf(N, N)).status == 201  # another connection
                assert a.get(k, *rf(N, N)).body == b"b", (nd.name, rnd)
                assert a.delete(k, *rf(N, N)).status == 202
                assert a.put(k, b"c", *rf(N, N)).status == 201  # a tie would keep the tombstone
                r = a.get(k, *rf(N, N))
                assert (r.status, r.body) == (200, b"c"), (nd.name, rnd)
        # Pipelined on one connection: no pause at all between the two writes.
        with nd.raw() as rc:
            ks = [uniq(b"pipe%d" % j) for j in range(10)]
            batch = b"".join(h.http_request("PUT", entity_target(k, *rf(N, N)), v)
                             for k in ks for v in (b"1", b"2"))
            rc.send(batch)
            for _ in range(2 * len(ks)):
                assert rc.read_response().status == 201
        for k in ks:
            assert GET(nd, k, N, N)[:2] == (200, b"2"), (nd.name, k)


def test_writes_through_different_nodes_60ms_apart_are_ordered_as_issued(c3, uniq):
    k = uniq()
    seq = [0, 1, 2, 1, 0, 2, 0, 2, 1]
    for step, via in enumerate(seq):
        if step:
            gap()
        if step % 3 == 2:
            assert DELETE(c3[via], k, 1, N).status == 202
            expected = (404, None)
        else:
            # Values grow, so a tie would favour the OLDER value: only ordering by time passes.
            v = b"v%02d" % step
            assert PUT(c3[via], k, v, 1, N).status == 201
            expected = (200, v)
        for nd in c3:
            r = GET(nd, k, N, N)
            if expected[0] == 404:
                assert r.status == 404, (step, nd.name, r)
            else:
                assert r[:2] == expected, (step, nd.name, r)


@pytest.mark.timeout_s(60)
def test_a_write_its_client_abandoned_while_the_node_was_paused_is_not_applied(cluster_factory):
    """Issue 9 finding 9: a client sends a PUT to a paused node, gives up and closes; a newer
    write through another node is acknowledged; when the paused node resumes it must not apply
    the abandoned PUT (its fresh timestamp would overwrite the acknowledged write). A DELETE the
    same way. nginx logs such requests as 499."""
    c = cluster_factory(N)
    a, b = c[0], c[1]
    key_put, key_del = b"abandoned-put", b"abandoned-del"
    with b.client() as cl:
        assert cl.put(key_put, b"v1", ack=3, **{"from": 3}).status == 201
        assert cl.put(key_del, b"keep", ack=3, **{"from": 3}).status == 201
    h.sigstop(a.pid)
    try:
        for req in (h.http_request("PUT", entity_target(key_put, "ack=1", "from=3"), b"stale"),
                    h.http_request("DELETE", entity_target(key_del, "ack=1", "from=3"))):
            raw = h.RawConn(a.port)
            raw.send(req)
            raw.close()  # the client gives up before the node read its request
        with b.client() as cl:
            assert cl.put(key_put, b"v2", ack=2, **{"from": 3}).status == 201
    finally:
        os.kill(a.pid, signal.SIGCONT)
    # The resumed node reads both requests, finds their clients gone, and drops them: two 499
    # lines in its log. Only then do the replicas' answers mean something.
    h.wait_until(lambda: a.log_path.read_bytes().count(b"http: 499:") == 2, 20,
                 what="the resumed node to drop both abandoned writes")
    with b.client() as cl:
        r1 = cl.get(key_put, ack=3, **{"from": 3})
        r2 = cl.get(key_del, ack=3, **{"from": 3})
    assert (r1.status, r1.body) == (200, b"v2"), r1
    assert (r2.status, r2.body) == (200, b"keep"), r2
