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


def local(nd: h.Node, key: bytes) -> bytes | None:
    """The node's own live value of `key` via /v0/entities (strict chunk framing), or None."""
    with nd.raw() as c:
        r = c.request("GET", h.entities_target(key, key + b"\x00"))
    assert r.status == 200, (nd.name, r.status, r.body[:200])
    if r.chunks is None:
        return None
    return dict(h.parse_records(r.chunks)).get(key)


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
    # Read repair off, so that nothing refills the wiped node behind the test's back: the node
    # must stay honest by itself.
    c = cluster_factory(N, "--read-repair", "off")
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
    c = cluster_factory(N)
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
