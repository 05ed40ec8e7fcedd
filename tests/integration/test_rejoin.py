"""Honest rejoin: a node whose data directory was lost never answers "absent" as if authoritative.

A node keeps an identity (random node id) in its data directory and tells peers in the RPC
handshake. A node that starts on an empty directory is "joining" until a peer says whether data
was lost; a peer that knew it under another id (or a ready peer holding data) makes it
"rebuilding": it takes writes but answers replica reads "not ready", which coordinators count as
a failure (504 when too few replicas answer), never as a 404. POST /v0/admin/rebuild-done ends it.
"""

from __future__ import annotations

import json
import shutil
import time

import pytest

import dkvharness as h

N = 3


def status(nd: h.Node) -> dict:
    with nd.client() as cl:
        r = cl.request("GET", "/v0/status?verbose=1")
    assert r.status == 200, r
    return json.loads(r.body)


def state(nd: h.Node) -> str:
    return status(nd)["state"]


def wait_state(nd: h.Node, want: str, timeout_s: float = 10.0):
    h.wait_until(lambda: state(nd) == want, timeout_s, what="%s to be %s" % (nd.name, want))


def metric(nd: h.Node, series: str) -> float:
    """The value of one series of the node's /metrics, written as it appears on the page."""
    with nd.client() as cl:
        r = cl.request("GET", "/metrics")
    assert r.status == 200, r
    for line in r.body.decode().splitlines():
        if line.startswith(series + " "):
            return float(line[len(series) + 1:])
    raise AssertionError("%s: no %s in /metrics" % (nd.name, series))


def local(nd: h.Node, key: bytes) -> bytes | None:
    """The node's own live value of `key` via /v0/entities (strict chunk framing), or None."""
    return h.local_value(nd, key)


def test_a_new_cluster_starts_ready_and_every_node_knows_its_peers(cluster_factory):
    c = cluster_factory(N)
    for nd in c:
        wait_state(nd, "ready")
    ids = {status(nd)["node_id"] for nd in c}
    assert len(ids) == N and all(len(i) == 32 for i in ids), ids
    # The ids are kept in the data directory: a restart keeps them.
    before = status(c[1])["node_id"]
    c[1].restart()
    assert status(c[1])["node_id"] == before
    assert state(c[1]) == "ready"


@pytest.mark.timeout_s(120)
def test_wiped_node_never_turns_an_acknowledged_write_into_a_404_or_an_old_value(
        cluster_factory, uniq):
    # Read repair and the automatic rebuild off, so that nothing refills the wiped node behind
    # the test's back: the node must stay honest by itself.
    c = cluster_factory(N, "--read-repair", "off", "--auto-rebuild", "off")
    for nd in c:
        wait_state(nd, "ready")
    victim = c[2]
    keys22 = [uniq("two-%d" % i) for i in range(60)]
    keys33 = [uniq("three-%d" % i) for i in range(30)]
    for i, k in enumerate(keys22):
        with c[i % 2].client() as cl:
            assert cl.put(k, b"v1", ack=2, **{"from": 2}).status == 201
    for i, k in enumerate(keys33):
        with c[i % 2].client() as cl:
            assert cl.put(k, b"old", ack=3, **{"from": 3}).status == 201
            assert cl.put(k, b"new", ack=3, **{"from": 3}).status == 201
    deleted = keys33[:10]
    for k in deleted:
        with c[0].client() as cl:
            assert cl.delete(k, ack=3, **{"from": 3}).status == 202
    # The victim held copies: a 2/2 key's replicas include it for about 2/3 of the keys.
    held = [k for k in keys22 if local(victim, k) == b"v1"]
    assert len(held) >= 20, len(held)

    victim.stop()
    shutil.rmtree(victim.data_dir)
    victim.start()
    wait_state(victim, "rebuilding")
    assert b"REBUILDING" in victim.log_bytes()

    wrong = []
    honest_504 = 0
    for nd in c:
        with nd.client() as cl:
            for k in keys22:
                # API.md 5.6: 1/2 must see the 2/2 write; 1/1 reads the first replica alone,
                # which held it: the wiped node's share of those can only be an honest 504.
                for frm in (2, 1):
                    r = cl.get(k, ack=1, **{"from": frm})
                    if r.status == 504:
                        honest_504 += 1
                    elif (r.status, r.body) != (200, b"v1"):
                        wrong.append((nd.name, k, frm, r.status, r.body))
            for k in keys33:
                r = cl.get(k, ack=1, **{"from": 3})  # not guaranteed to see it, but never "old"
                want = (404, b"") if k in deleted else (200, b"new")
                if r.status == 504:
                    honest_504 += 1
                elif r.status != want[0] or (want[0] == 200 and r.body != want[1]):
                    wrong.append((nd.name, k, r.status, r.body))
    assert wrong == [], wrong[:10]
    # Reads that needed the wiped node alone, through it, could only be honest failures.
    assert honest_504 > 0

    # Writes still reach the rebuilding node (it misses nothing new) ...
    k = uniq("after")
    with c[0].client() as cl:
        assert cl.put(k, b"fresh", ack=3, **{"from": 3}).status == 201
    assert local(victim, k) == b"fresh"
    # ... and the operator's word makes it ready again.
    with victim.client() as cl:
        assert cl.request("GET", "/v0/admin/rebuild-done").status == 405
        r = cl.request("POST", "/v0/admin/rebuild-done")
        assert r.status == 200, r
    assert state(victim) == "ready"
    with victim.client() as cl:
        assert (cl.get(k, ack=1, **{"from": 3}).status, 200) == (200, 200)
    # The rebuilding state survives a restart until it is ended: check with a second wipe.
    victim.stop()
    shutil.rmtree(victim.data_dir)
    victim.start()
    wait_state(victim, "rebuilding")
    victim.restart()
    assert state(victim) == "rebuilding"


def test_wiped_node_with_every_peer_down_stays_joining_and_answers_504(cluster_factory, uniq):
    c = cluster_factory(N, "--auto-rebuild", "off")
    k = uniq()
    with c[0].client() as cl:
        assert cl.put(k, b"v", ack=3, **{"from": 3}).status == 201
    for nd in c:
        nd.stop()
    shutil.rmtree(c[1].data_dir)
    c[1].start()
    assert state(c[1]) == "joining"
    with c[1].client() as cl:
        assert cl.get(k, ack=1, **{"from": 3}).status == 504  # not a 404
    c[0].start()
    wait_state(c[1], "rebuilding")  # c[0] knew it under its old id


def test_identity_without_database_refuses_to_start(cluster_factory):
    c = cluster_factory(N)
    nd = c[0]
    nd.stop()
    shutil.rmtree(nd.data_dir / "db")
    with pytest.raises(h.NodeStartError) as e:
        nd.start()
    assert e.value.returncode == 2
    assert b"identity but no database" in nd.log_bytes()
    nd.expected_dead = True


def test_another_nodes_data_directory_refuses_to_start(cluster_factory):
    c = cluster_factory(N)
    a, b = c[0], c[1]
    a.stop()
    b.stop()
    a_dir = a.data_dir
    a.data_dir = b.data_dir  # node a started on node b's directory
    try:
        with pytest.raises(h.NodeStartError) as e:
            a.start()
        assert e.value.returncode == 2
        assert b"belongs to" in a.log_bytes()
    finally:
        a.data_dir = a_dir
        a.expected_dead = True
    a.start()
    b.start()


def pipelined(port: int, method: str, targets_bodies: list, want: int, batch: int = 64):
    """Sends many requests pipelined on one connection; each must answer `want`."""
    with h.RawConn(port) as c:
        for i in range(0, len(targets_bodies), batch):
            part = targets_bodies[i: i + batch]
            c.send(b"".join(h.http_request(method, t, b) for t, b in part))
            for t, _ in part:
                r = c.read_response()
                assert r.status == want, (method, t[:80], r.status, r.body[:200])


def local_all(nd: h.Node, prefix: bytes) -> dict:
    return h.local_records(nd, prefix, prefix[:-1] + bytes([prefix[-1] + 1]))


@pytest.mark.timeout_s(150)
def test_wiped_node_rebuilds_every_record_from_its_peers_with_no_client_read(cluster_factory):
    # No hints, no read repair: only the rebuild can refill the node.
    c = cluster_factory(N, "--hinted-handoff", "off", "--read-repair", "off")
    for nd in c:
        wait_state(nd, "ready")
    victim = c[2]
    p3 = b"rb3/"
    p2 = b"rb2/"
    # 5,000 keys on all three replicas, 500 of them then deleted; 1,000 keys with from=2, which
    # the victim holds only where it is one of the key's first two nodes.
    k3 = [p3 + b"%05d" % i for i in range(5000)]
    k2 = [p2 + b"%05d" % i for i in range(1000)]
    pipelined(c[0].port, "PUT", [(h.entity_target(k, "ack=3", "from=3"), b"v-" + k) for k in k3], 201)
    pipelined(c[1].port, "PUT", [(h.entity_target(k, "ack=2", "from=2"), b"w-" + k) for k in k2], 201)
    deleted = k3[::10]
    pipelined(c[0].port, "DELETE", [(h.entity_target(k, "ack=3", "from=3"), b"") for k in deleted],
              202)
    want3 = {k: b"v-" + k for k in k3 if k not in set(deleted)}
    assert local_all(victim, p3) == want3
    want2 = local_all(victim, p2)
    assert 500 < len(want2) < 1000, len(want2)  # about 2/3 of them

    victim.stop()
    shutil.rmtree(victim.data_dir)
    victim.start()
    t0 = time.monotonic()
    h.wait_until(lambda: state(victim) == "ready", 60, interval_s=0.1,
                 what="the wiped node to rebuild and become ready")
    took = time.monotonic() - t0
    rb = status(victim)["rebuild"]
    assert rb["completed"] == 1 and rb["peers_done"] == N - 1, rb
    # Exactly its records back, deletes included (nothing resurrected), nothing outside its
    # replica sets; and no client read happened before this check.
    assert local_all(victim, p3) == want3
    assert local_all(victim, p2) == want2
    print("rebuilt %d records in %.1f s: %s" % (len(want3) + len(want2), took, rb))
    # The tombstones came back too: each of the two peers streamed all 5,000 from=3 records
    # (500 of them tombstones), and the one peer sharing each from=2 key with the victim.
    assert rb["records_kept"] == 2 * len(k3) + len(want2), rb
    # Of each from=3 record's two copies, the one that came second was already held at that
    # version and not written again.
    assert rb["records_already_held"] == len(k3), rb


def ready_cluster_with_keys(cluster_factory, uniq, n_keys: int = 50):
    """A 3-node cluster with only the rebuild to refill nodes (no hints, no read repair), every
    node ready, and `n_keys` keys written 3/3 with the value b"v"."""
    c = cluster_factory(N, "--hinted-handoff", "off", "--read-repair", "off")
    for nd in c:
        wait_state(nd, "ready")
    keys = [uniq(i) for i in range(n_keys)]
    with c[0].client() as cl:
        for k in keys:
            assert cl.put(k, b"v", ack=3, **{"from": 3}).status == 201
    return c, keys


def test_rebuild_waits_for_every_peer_and_says_which(cluster_factory, uniq):
    c, keys = ready_cluster_with_keys(cluster_factory, uniq)
    victim, down = c[2], c[1]
    victim.stop()
    down.stop()
    shutil.rmtree(victim.data_dir)
    victim.start()
    wait_state(victim, "rebuilding")

    def streamed_one_waits_for_the_other():
        rb = status(victim)["rebuild"]
        return rb["peers_done"] == 1 and rb["waiting_for"] == [down.url]
    h.wait_until(streamed_one_waits_for_the_other, 10,
                 what="the rebuild to stream the live peer and name the one it waits for")
    assert state(victim) == "rebuilding"  # one peer streamed is not enough
    down.start()
    wait_state(victim, "ready", 30)
    assert all(local(victim, k) == b"v" for k in keys)


def test_two_wiped_nodes_do_not_rebuild_from_each_other(cluster_factory, uniq):
    c, keys = ready_cluster_with_keys(cluster_factory, uniq)
    for nd in c:
        nd.stop()
    for nd in (c[1], c[2]):
        shutil.rmtree(nd.data_dir)
    c[1].start()
    c[2].start()
    # Two empty nodes are a majority of three: they may take themselves for a new cluster, but
    # only on probation. The survivor remembers both under their old ids: both must rebuild,
    # from it, since neither will serve its (empty) data to the other while not ready.
    c[0].start()
    for nd in (c[1], c[2]):
        h.wait_until(lambda: status(nd)["rebuild"]["completed"] >= 1 and state(nd) == "ready",
                     30, what="%s to rebuild from the survivor" % nd.name)
        assert all(local(nd, k) == b"v" for k in keys), nd.name
        assert b"knew this node under another id" in nd.log_bytes()


@pytest.mark.timeout_s(120)
def test_rebuild_reports_progress_against_the_peers_record_counts_and_an_eta(cluster_factory):
    """A throttled rebuild (64 KB/s) of 3,000 records: while it runs the status shows the total
    from the peers' own record counts (TREE STATS: 3,000 each), a progress between 0 and 100 %
    and an ETA; when it is done, 100 %."""
    c = cluster_factory(N, "--hinted-handoff", "off", "--read-repair", "off",
                        "--anti-entropy-max-bytes-per-s", "65536")
    for nd in c:
        wait_state(nd, "ready")
    victim = c[2]
    keys = [b"pg/%05d" % i for i in range(3000)]
    pipelined(c[0].port, "PUT", [(h.entity_target(k, "ack=3", "from=3"), b"x" * 100)
                                 for k in keys], 201)
    victim.stop()
    shutil.rmtree(victim.data_dir)
    victim.start()
    seen = {}
    partial = []

    def midway():
        # A progress is shown only once both peers' counts are in (TREE STATS): a fraction
        # over one peer's 3,000 would run ahead while the other's records stream too.
        rb = status(victim)["rebuild"]
        if rb["running"] and rb["progress_pct"] is not None:
            if rb["records_total_estimate"] != 2 * len(keys) or rb["peers_counted"] != 2:
                partial.append(rb)
            if 0 < rb["progress_pct"] < 100:
                seen.update(rb)
                return True
        return False
    h.wait_until(midway, 30, interval_s=0.02,
                 what="the rebuild to report progress midway against both peers' counts")
    assert not partial, partial
    assert seen["records_total_estimate"] == 2 * len(keys), seen
    assert seen["eta_ms"] > 0, seen
    # /metrics shows the same estimate as a ratio while the node is rebuilding.
    h.wait_until(lambda: metric(victim, 'dkv_node_state{state="rebuilding"}') == 1
                 and 0 < metric(victim, "dkv_rebuild_progress_ratio") < 1, 30, interval_s=0.05,
                 what="dkv_rebuild_progress_ratio midway")
    h.wait_until(lambda: state(victim) == "ready", 60, interval_s=0.1,
                 what="the rebuild to finish")
    rb = status(victim)["rebuild"]
    assert rb["progress_pct"] == 100 and rb["eta_ms"] is None, rb
    assert metric(victim, "dkv_rebuild_progress_ratio") == 1
