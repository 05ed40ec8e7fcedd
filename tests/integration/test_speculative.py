"""Speculative reads (--read-fanout speculative) seen from outside, on real 3-node clusters.

A speculative GET asks `ack` of the key's `from` replicas first (this node for the data when it is
one of them, the others for a digest) and the next replica only when one is slow or fails, or
reads the data of a replica whose digest is newer (coord/coord.h). What is checked here:

* With one replica stopped by SIGSTOP (it accepts connections and never answers), every default
  quorum GET still answers with the right value well before the 1 s replica timeout, and the
  coordinator counts the replicas it asked in place of the stopped one.
* A GET through a node whose own copy is stale answers the newer version (a value, or a
  tombstone's 404), never its own older one, and read repair then fixes that node's copy.
* A replica whose digest is older than the data is repaired, within the record's replica set.
* Bad flag values exit 2 with a message.

Counters come from GET /metrics; copies from each node's own `GET /v0/entities` (local data).
Every wait is a poll against a deadline; the only sleep-like waits are the SIGSTOP itself.
"""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

import dkvharness as h
from dkvharness import entity_target

N = 3
SPEC = ("--read-fanout", "speculative")
SETTLE_S = 20.0
PROBE = b"\x01probe-never-written"


def request(nd: h.Node, method: str, target: str, body: bytes | None = None,
            timeout_s: float = h.IO_TIMEOUT_S) -> h.Response:
    with nd.client(timeout_s) as c:
        return c.request(method, target, body=body)


def PUT(nd, key, value, *params) -> int:
    return request(nd, "PUT", entity_target(key, *params), h.to_bytes(value)).status


def DELETE(nd, key, *params) -> int:
    return request(nd, "DELETE", entity_target(key, *params)).status


def GET(nd, key, *params) -> tuple[int, bytes]:
    r = request(nd, "GET", entity_target(key, *params))
    return r.status, r.body


def metric(nd: h.Node, name: str) -> float:
    body = request(nd, "GET", "/metrics").body.decode()
    m = re.search(r"^%s (\S+)$" % re.escape(name), body, re.M)
    assert m is not None, "%s not in /metrics of %s" % (name, nd.name)
    return float(m.group(1))


def verbose(nd: h.Node) -> dict:
    import json
    r = request(nd, "GET", "/v0/status?verbose=1")
    assert r.status == 200
    return json.loads(r.body)


def start_cluster(cluster_factory, *args: str, **kw) -> h.Cluster:
    """A fresh cluster whose nodes all report "state":"ready" (see test_convergence.py)."""
    c = cluster_factory(N, *args, **kw)
    for nd in c:
        h.wait_until(lambda: verbose(nd).get("state", "ready") == "ready", SETTLE_S,
                     what="%s to be ready" % nd.name)
    return c


def settle(c: h.Cluster):
    """Every node reads 3/3 on its I/O threads again (a key never written: nothing repaired)."""
    for nd in c:
        def ok():
            st, _ = GET(nd, PROBE, "ack=3", "from=3")
            return st == 404 and all(p["breaker"] == "closed" for p in verbose(nd)["peers"])
        h.wait_until(ok, SETTLE_S, what="%s to reach every peer" % nd.name)


def holders(c: h.Cluster, key: bytes) -> dict[int, bytes]:
    return {i: v for i, nd in enumerate(c)
            if nd.running() and (v := h.local_value(nd, key)) is not None}


@pytest.mark.timeout_s(120)
def test_quorum_gets_answer_promptly_and_right_with_one_replica_stopped(cluster_factory):
    c = start_cluster(cluster_factory, *SPEC)
    a, stopped = c[0], c[2]
    keys = [b"spec-stop-%03d" % i for i in range(150)]
    for k in keys:
        assert PUT(a, k, b"v-" + k, "ack=3", "from=3") == 201
    for k in keys[:50]:  # the coordinator times its peers' replies
        assert GET(a, k) == (200, b"v-" + k)
    retries0 = metric(a, "dkv_speculative_retries_total")
    os.kill(stopped.pid, signal.SIGSTOP)
    try:
        slowest = 0.0
        for k in keys:
            t0 = time.monotonic()
            assert GET(a, k) == (200, b"v-" + k)  # default ack=2 of from=3
            slowest = max(slowest, time.monotonic() - t0)
        # The replica timeout is 1 s; a GET that waited for the stopped node would take it.
        assert slowest < 0.5, slowest
        print("\nslowest of %d quorum GETs with one replica stopped: %.1f ms"
              % (len(keys), 1000 * slowest))
        # Some of those GETs asked the stopped node first and then the next replica.
        assert metric(a, "dkv_speculative_retries_total") > retries0
    finally:
        os.kill(stopped.pid, signal.SIGCONT)
    settle(c)
    for k in keys[:20]:
        assert GET(stopped, k) == (200, b"v-" + k)


@pytest.mark.timeout_s(120)
def test_get_through_a_stale_replica_answers_the_newer_version_and_repairs_it(cluster_factory):
    # Hints off: the restarted node stays stale until a read repairs it.
    c = start_cluster(cluster_factory, *SPEC, "--hinted-handoff", "off")
    a, stale = c[0], c[2]
    values = {b"spec-stale-%02d" % i: b"v1" for i in range(10)}
    deleted = [b"spec-del-%02d" % i for i in range(5)]
    for k in list(values) + deleted:
        assert PUT(a, k, b"v1", "ack=3", "from=3") == 201
    assert stale.stop() == 0
    for k in values:
        assert PUT(a, k, b"v2") == 201
    for k in deleted:
        assert DELETE(a, k) == 202
    stale.start()
    settle(c)
    for k in list(values) + deleted:
        assert h.local_value(stale, k) == b"v1", k
    fetches0 = metric(stale, "dkv_digest_fetches_total")
    # Through the stale node itself: its own (older) copy is the data in hand, the peer's digest
    # is newer, so it must read the peer's data first.
    for k in values:
        assert GET(stale, k) == (200, b"v2"), k
    for k in deleted:
        assert GET(stale, k)[0] == 404, k
    assert metric(stale, "dkv_digest_fetches_total") >= fetches0 + len(values) + len(deleted)
    # Read repair fixed the stale node's own copy: the new value, and the deletes.
    h.wait_until(lambda: all(h.local_value(stale, k) == b"v2" for k in values), 10,
                 what="the stale node's values repaired")
    h.wait_until(lambda: all(h.local_value(stale, k) is None for k in deleted), 10,
                 what="the stale node's deletes repaired")


@pytest.mark.timeout_s(120)
def test_an_older_digest_is_repaired_within_the_records_replica_set(cluster_factory):
    c = start_cluster(cluster_factory, *SPEC, "--hinted-handoff", "off")
    # Keys written 2/2 whose replica set is node 2 and one other node.
    placed = {}
    for i in range(40):
        k = b"spec-rs-%02d" % i
        assert PUT(c[0], k, b"v1", "ack=2", "from=2") == 201
        hs = holders(c, k)
        assert len(hs) == 2, (k, hs)
        if 2 in hs:
            placed[k] = (set(hs) - {2}).pop()
        if len(placed) == 4:
            break
    assert len(placed) == 4, placed
    assert c[2].stop() == 0
    for k, other in placed.items():
        assert PUT(c[other], k, b"v2", "ack=1", "from=2") == 201
    c[2].start()
    settle(c)
    for k, other in placed.items():
        (third,) = set(range(N)) - {2, other}
        assert holders(c, k) == {other: b"v2", 2: b"v1"}
        # ack=2 of from=2 through the replica that has v2: its own data plus node 2's digest,
        # which is older, so the answer is at once v2 and node 2 is repaired.
        assert GET(c[other], k, "ack=2", "from=2") == (200, b"v2")
        h.wait_until(lambda: h.local_value(c[2], k) == b"v2", 10, what="node 2 repaired")
        # The third node never gets a copy: it is outside the record's replica set.
        assert GET(c[third], k, "ack=2", "from=2") == (200, b"v2")
        assert h.local_value(c[third], k) is None
        assert holders(c, k) == {other: b"v2", 2: b"v2"}


@pytest.mark.parametrize("args, words", [
    (["--read-fanout", "sometimes"], ["--read-fanout", "sometimes", "all or speculative"]),
    (["--read-fanout"], ["--read-fanout"]),
    (["--speculative-retry-ms", "x"], ["--speculative-retry-ms", "'x'"]),
    (["--speculative-retry-ms", "600001"], ["--speculative-retry-ms", "600001"]),
])
def test_bad_speculative_flags_exit_2_with_a_message(dkv_bin, tmp_path, args, words):
    r = h.run_dkv(args, tmp_path)
    err = r.stderr.decode("utf-8", "replace")
    assert r.returncode == 2, (args, r.returncode, err)
    for w in words:
        assert w in err, (args, err)
    assert not (tmp_path / "data").exists(), "a node that refused its flags created its data"
