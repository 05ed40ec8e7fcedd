"""Bounded clocks (issue 9 item 2): peers' clock offsets measured over the RPC connections, a
node whose clock is off the majority refusing to coordinate writes, and the hybrid logical
clock's upper bound persisted in DATA/hlc across restarts.

Skewed clocks come from libfaketime (Debian package `faketime`, h.faketime_env): only the node's
wall clock moves; its timers, and every other node, keep the real time.
"""

from __future__ import annotations

import json
import time

import pytest

import dkvharness as h

MAX_OFFSET_MS = 500  # the default --max-clock-offset-ms
HOUR_MS = 3600 * 1000

pytestmark = pytest.mark.skipif(h.faketime_lib() is None,
                                reason="libfaketime not installed (scripts/install-deps.sh)")


def status(nd: h.Node) -> dict:
    with nd.client() as cl:
        r = cl.request("GET", "/v0/status?verbose=1")
    assert r.status == 200, r
    return json.loads(r.body)


def peer(st: dict, url: str) -> dict:
    return next(p for p in st["peers"] if p["url"] == url)


def refusing(nd: h.Node):
    st = status(nd)
    return st if st["clock"]["writes_refused"] else None


def all_measured(nd: h.Node, n_peers: int, refused: bool):
    """The node's status once it has a fresh estimate of every peer and the expected verdict."""
    st = status(nd)
    c = st["clock"]
    if c["peers_measured"] == n_peers and c["writes_refused"] == refused:
        return st
    return None


def local(nd: h.Node, key: bytes) -> bytes | None:
    return h.local_value(nd, key)


def bound_file(nd: h.Node) -> int:
    text = (nd.data_dir / "hlc").read_text()
    assert text.startswith("hlc.v1 ") and text.endswith("\n"), repr(text)
    return int(text.split()[1])


def test_a_node_an_hour_ahead_refuses_to_coordinate_writes_until_its_clock_is_back(
        cluster_factory, uniq):
    c = cluster_factory(3, per_node_env={2: h.faketime_env("+1h")})
    good, other, skewed = c[0], c[1], c[2]

    # The skewed node measures both peers an hour behind it and stops coordinating writes.
    st = h.wait_until(lambda: all_measured(skewed, 2, True), 30, interval_s=0.1,
                      what="the skewed node to refuse writes")
    for nd in (good, other):
        p = peer(st, nd.url)
        assert abs(p["clock_offset_ms"] + HOUR_MS) < 60_000, p
        assert 0 <= p["rtt_ms"] < 5_000 and p["clock_uncertainty_ms"] >= p["rtt_ms"] / 2, p
    clock = st["clock"]
    assert clock["peers_off"] == 2
    assert "off the majority of the cluster" in clock["reason"], clock
    # The correct nodes see it an hour ahead and keep coordinating (one of three is not a
    # majority against them).
    for nd in (good, other):
        st = h.wait_until(lambda: all_measured(nd, 2, False), 30, interval_s=0.1,
                          what="%s to measure its peers" % nd.name)
        assert abs(peer(st, skewed.url)["clock_offset_ms"] - HOUR_MS) < 60_000
        assert abs(peer(st, (other if nd is good else good).url)["clock_offset_ms"]) < MAX_OFFSET_MS
        assert st["clock"]["peers_off"] == 1

    # A PUT or DELETE through the skewed node is refused with the reason; nothing is stored.
    k = uniq(b"skewed-put")
    with skewed.client() as cl:
        for r in (cl.put(k, b"from-the-future", ack=1, **{"from": 3}),
                  cl.delete(k, ack=1, **{"from": 3})):
            assert r.status == 503, r
            assert b"this node's clock is" in r.body and b"off the majority of the cluster" in r.body
            assert b"--max-clock-offset-ms" in r.body, r.body
    assert all(local(nd, k) is None for nd in c)
    assert b"refusing to coordinate writes" in skewed.log_bytes()
    assert status(skewed)["clock"]["refused_writes"] >= 2

    # Acknowledged writes through the correct nodes are not lost: a PUT through one and a DELETE
    # through the other win on every replica, the skewed one included; its reads still work.
    with good.client() as cl:
        assert cl.put(k, b"honest", ack=3, **{"from": 3}).status == 201
    with skewed.client() as cl:
        r = cl.get(k, ack=3, **{"from": 3})
        assert (r.status, r.body) == (200, b"honest")
    with other.client() as cl:
        assert cl.delete(k, ack=3, **{"from": 3}).status == 202
    for nd in c:
        with nd.client() as cl:
            assert cl.get(k, ack=3, **{"from": 3}).status == 404
        assert local(nd, k) is None

    # Its clock is right again after a restart without faketime: it coordinates again, and its
    # writes are not stamped an hour ahead (the peers accept them, and a later write through a
    # correct node still wins).
    skewed.stop()
    skewed.env = {}
    skewed.start()
    h.wait_until(lambda: all_measured(skewed, 2, False), 30, interval_s=0.1,
                 what="the restarted node to measure its peers")
    k2 = uniq(b"after")
    with skewed.client() as cl:
        assert cl.put(k2, b"back", ack=3, **{"from": 3}).status == 201
    with good.client() as cl:
        assert cl.get(k2, ack=3, **{"from": 3}).body == b"back"
        assert cl.put(k2, b"later", ack=3, **{"from": 3}).status == 201
    with skewed.client() as cl:
        assert cl.get(k2, ack=3, **{"from": 3}).body == b"later"
    for nd in c:
        assert status(nd)["clock"]["future_refused"] == 0


def test_no_evidence_no_refusal_a_single_node_or_one_without_reachable_peers(
        cluster_factory, uniq):
    # A cluster of one has nobody to be off from.
    single = cluster_factory(1, per_node_env={0: h.faketime_env("+1h")})[0]
    k = uniq()
    with single.client() as cl:
        assert cl.put(k, b"v").status == 201
        assert cl.get(k).body == b"v"
    clock = status(single)["clock"]
    assert clock["writes_refused"] is False and clock["peers_measured"] == 0

    # A node whose peers are all down has no estimate either: it is not refused (its write
    # succeeds on itself with ack=1), and its status says it measured nobody.
    c = cluster_factory(3, per_node_env={2: h.faketime_env("+1h")}, start=False)
    c.start(only=[2])
    nd = c[2]
    with nd.client() as cl:
        r = cl.put(k, b"alone", ack=1, **{"from": 3})
        assert r.status == 201, r
    st = status(nd)
    assert st["clock"]["writes_refused"] is False and st["clock"]["peers_measured"] == 0
    assert all(p["clock_offset_ms"] is None for p in st["peers"])


@pytest.mark.parametrize("step_back", ["-1h", "-30s"])
def test_a_restart_with_the_wall_clock_stepped_back_keeps_new_writes_newest(
        node_factory, uniq, step_back):
    # Before the bound was persisted: PUT 201, GET old (the restarted clock stamped below).
    nd = node_factory()
    k = uniq()
    t0_ms = int(time.time() * 1000)
    with nd.client() as cl:
        assert cl.put(k, b"old").status == 201
    nd.stop()
    assert bound_file(nd) > t0_ms
    nd.env = h.faketime_env(step_back)
    nd.start()
    with nd.client() as cl:
        assert cl.put(k, b"new").status == 201
        r = cl.get(k)
        assert (r.status, r.body) == (200, b"new")
        assert cl.delete(k).status == 202
        assert cl.get(k).status == 404
    # DATA/hlc holds a bound ahead of the node's (stepped back) wall clock and of every
    # timestamp so far, and the start was not held up waiting for the wall clock to catch up.
    clock = status(nd)["clock"]
    assert clock["hlc_bound_ms"] > clock["wall_ms"], clock
    assert bound_file(nd) == clock["hlc_bound_ms"]
    assert bound_file(nd) > t0_ms
    assert clock["bound_persist_failures"] == 0
    assert b"persisted upper bound is" in nd.log_bytes()
    assert b"waiting" not in nd.log_bytes()


def test_writes_fail_rather_than_pass_a_bound_that_cannot_be_persisted(node_factory, uniq):
    nd = node_factory()
    k = uniq()
    with nd.client() as cl:
        assert cl.put(k, b"before").status == 201
    # The bound is written through DATA/hlc.tmp: a directory in its place makes every write of
    # it fail. Within about a second the clock reaches its last bound, and writes stop.
    blocker = nd.data_dir / "hlc.tmp"
    blocker.mkdir()

    def refused():
        with nd.client() as cl:
            r = cl.put(k, b"during")
        assert r.status in (201, 503), r
        return r if r.status == 503 else None

    r = h.wait_until(refused, 20, interval_s=0.05, what="a write refused at the bound")
    assert b"cannot persist its clock's upper bound" in r.body, r.body
    assert b"cannot persist the clock's upper bound" in nd.log_bytes()
    bound = bound_file(nd)
    clock = status(nd)["clock"]
    assert clock["bound_persist_failures"] >= 1 and clock["hlc_bound_ms"] == bound
    with nd.client() as cl:
        assert cl.get(k).status == 200  # reads still work
    # The disk recovers: writes go on, newest last.
    blocker.rmdir()
    with nd.client() as cl:
        assert cl.put(k, b"after").status == 201
        assert cl.get(k).body == b"after"
    assert bound_file(nd) > bound


def test_a_damaged_or_unwritable_bound_refuses_to_start(tmp_path):
    def run(name: str, prepare) -> "subprocess.CompletedProcess":
        port = h.free_port()
        url = "http://127.0.0.1:%d" % port
        data = tmp_path / name
        data.mkdir()
        prepare(data)
        return h.run_dkv(["--listen", "127.0.0.1:%d" % port, "--self", url, "--cluster", url,
                          "--data", str(data)], tmp_path)

    r = run("damaged", lambda d: (d / "hlc").write_text("hlc.v1 not-a-number\n"))
    assert r.returncode == 2 and b"cannot read the clock's upper bound" in r.stderr, r
    r = run("unwritable", lambda d: (d / "hlc.tmp").mkdir())
    assert r.returncode == 2 and b"cannot write the clock's upper bound" in r.stderr, r
