"""Bounded inter-node RPC (docs/protocol.md §7): what a connection on the RPC side may cost a node.

RPC connections count against --max-peer-connections, apart from the clients' --max-connections;
a connection must complete its handshake within --first-byte-timeout-ms; replies that a peer
does not read stop the server from reading its requests (so a few KiB of pipelined GETs cannot
queue GiBs of replies); and the frame limit follows --max-body-bytes, so every value a client
may store also replicates. Raw connections speak the frames of docs/protocol.md with the helpers
of test_security.py.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import os
import select
import socket
import struct
import time

import dkvharness as h
from test_security import (HELLO, HELLO_CHALLENGE, HELLO_OK, MAGIC, PUT, PUT_REPLY, RawPeer,
                           frame, handshake, hello_payload, put_payload, secret_file,
                           server_fingerprint)

import pytest

GET, GET_REPLY = 0x02, 0x82


def get_payload(key: bytes) -> bytes:
    return struct.pack(">H", len(key)) + key


def rss_bytes(pid: int) -> int:
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS for pid %d" % pid)


def closed_now(s: socket.socket) -> bool:
    """True if the peer has closed `s` (EOF or reset is pending); never blocks."""
    r, _, _ = select.select([s], [], [], 0)
    if not r:
        return False
    try:
        return s.recv(65536, socket.MSG_PEEK) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


def plain_hello(port: int, fp: int, member_url: str) -> tuple[RawPeer, int | None]:
    """A HELLO without authentication claiming `member_url`: (peer, reply type or None if the
    server closed the connection instead)."""
    p = RawPeer(port)
    try:
        p.send(frame(HELLO, 1, hello_payload(fp, member_url, None)))
        r = p.read_frame()
    except (ConnectionResetError, BrokenPipeError):
        r = None
    return p, (r[0] if r is not None else None)


def test_peer_connections_past_their_cap_are_refused_while_clients_and_peers_are_served(
        cluster_factory, uniq):
    cap = 12
    # A long handshake timeout: only the cap closes connections here. One I/O loop, so that the
    # connections the warm-up opens are the ones later requests use.
    c = cluster_factory(3, "--max-peer-connections", str(cap), "--first-byte-timeout-ms", "120000",
                        "--io-threads", "1")
    target = c[1]
    fp = server_fingerprint(target.port)
    key = uniq()
    # The cluster's own connections to the target are up before the flood.
    with c[0].client() as cl:
        assert cl.put(key, b"v1", ack=3).status == 201
    with c[2].client() as cl:
        assert cl.put(key, b"v2", ack=3).status == 201
    mark = target.log_size()

    # Raw connections that never say HELLO: they are handed over to the RPC server by their
    # first byte, and everything past the cap is closed at once.
    n = cap + 30
    socks = []
    for _ in range(n):
        s = socket.create_connection((h.HOST, target.port), timeout=h.IO_TIMEOUT_S)
        s.sendall(bytes([MAGIC]))
        socks.append(s)

    def refusals():
        closed = [s for s in socks if closed_now(s)]
        return closed if len(closed) >= n - cap else None

    refused = h.wait_until(refusals, 20, what="refusals past the cap")
    kept = [s for s in socks if s not in refused]
    # The cap counts every server connection, the cluster's own included, so at most `cap` of
    # ours stay open; and it is not refusing everything (the peers hold at most 6 slots: the I/O
    # loop, hint replay and rebuild of each of two peers).
    assert len(kept) <= cap
    assert len(kept) >= cap - 6
    assert all(not closed_now(s) for s in kept)
    log = target.log_bytes(mark)
    lines = log.count(b"--max-peer-connections")
    assert 1 <= lines < len(refused), log[-2000:]

    # Clients are served, and the cluster's peers still reach the target (their connections
    # were up before the flood).
    with target.client() as cl:
        r = cl.get(key)
        assert (r.status, r.body) == (200, b"v2")
    with c[0].client() as cl:
        assert cl.put(key, b"v3", ack=3).status == 201
        assert cl.get(key, ack=3).body == b"v3"
    # A real handshake is refused too while the cap is full ...
    p, t = plain_hello(target.port, fp, c[0].url)
    p.close()
    assert t is None
    # ... and accepted once our connections are gone: the count goes down again.
    for s in socks:
        s.close()

    def hello_ok():
        p, t = plain_hello(target.port, fp, c[2].url)
        p.close()
        return t == HELLO_OK

    h.wait_until(hello_ok, 20, interval_s=0.1, what="a free peer slot")


def test_clients_at_their_cap_do_not_lock_out_peers(cluster_factory, uniq):
    max_conns = 6
    c = cluster_factory(3, "--max-connections", str(max_conns))
    target = c[1]
    fp = server_fingerprint(target.port)
    clients = [target.client() for _ in range(max_conns)]
    try:
        for cl in clients:  # every slot held by a keep-alive client
            assert cl.status().status == 200
        # One client more is closed: the client cap is full.
        with target.client(timeout_s=5) as extra:
            with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
                extra.status()
        # A peer still gets in: RPC connections have their own cap.
        p, t = plain_hello(target.port, fp, c[0].url)
        p.close()
        assert t == HELLO_OK
        # And the cluster's replication to the target still works.
        with c[0].client() as cl:
            assert cl.put(uniq(), b"x", ack=3).status == 201
    finally:
        for cl in clients:
            cl.close()


@pytest.mark.timeout_s(90)
def test_connections_that_do_not_complete_the_handshake_are_closed(cluster_factory, tmp_path):
    secret = b"h" * 64
    timeout_ms = 1500
    c = cluster_factory(2, "--cluster-secret-file", secret_file(tmp_path, "s", secret.decode()),
                        "--first-byte-timeout-ms", str(timeout_ms))
    nd = c[1]
    fp = server_fingerprint(nd.port)
    mark = nd.log_size()
    t0 = time.monotonic()
    # 1. Only the magic byte: handed over to the RPC server, then silence.
    silent = socket.create_connection((h.HOST, nd.port), timeout=h.IO_TIMEOUT_S)
    silent.sendall(bytes([MAGIC]))
    # 2. A HELLO asking for authentication, answered with a challenge, and no AUTH.
    stuck = RawPeer(nd.port)
    stuck.send(frame(HELLO, 1, hello_payload(fp, c[0].url, os.urandom(32))))
    assert stuck.read_frame()[0] == HELLO_CHALLENGE
    # 3. A complete handshake: not subject to the handshake timeout.
    done, outcome = handshake(nd.port, fp, c[0].url, secret)
    assert outcome == "ok"
    try:
        h.wait_until(lambda: closed_now(silent) and closed_now(stuck.s), 20,
                     what="unfinished handshakes to be closed")
        elapsed = time.monotonic() - t0
        assert elapsed >= timeout_ms / 1000 * 0.5, elapsed  # by the timeout, not at once
        assert not closed_now(done.s)
        done.send(frame(PUT, 3, put_payload(b"k", b"still served", 1 << 40)))
        t, _, payload = done.read_frame()
        assert (t, payload) == (PUT_REPLY, b"\x00")
        assert b"did not complete the handshake" in nd.log_bytes(mark)
    finally:
        silent.close()
        stuck.close()
        done.close()


@pytest.mark.timeout_s(90)
def test_idle_peer_connections_close_and_the_cluster_reconnects_without_failures(
        cluster_factory, tmp_path, uniq):
    secret = b"i" * 64
    idle_ms = 2000
    c = cluster_factory(2, "--cluster-secret-file", secret_file(tmp_path, "s", secret.decode()),
                        "--peer-idle-timeout-ms", str(idle_ms))
    nd = c[1]
    fp = server_fingerprint(nd.port)
    key = uniq()
    with c[0].client() as cl:
        assert cl.put(key, b"a", ack=2).status == 201
    idle, outcome = handshake(nd.port, fp, c[0].url, secret)
    assert outcome == "ok"
    try:
        t0 = time.monotonic()
        h.wait_until(lambda: closed_now(idle.s), 20, what="the idle connection to be closed")
        assert time.monotonic() - t0 >= idle_ms / 1000 * 0.5
    finally:
        idle.close()
    # The cluster's own connections went idle as long: their clients closed them first (after
    # half the server's timeout), and the next requests reconnect without a failure.
    with c[0].client() as cl:
        for i in range(5):
            assert cl.put(key, b"b%d" % i, ack=2).status == 201
            assert cl.get(key, ack=2).body == b"b%d" % i
    for nd_ in c:
        assert b"circuit breaker open" not in nd_.log_bytes()


@pytest.mark.timeout_s(120)
def test_pipelined_gets_of_a_large_value_never_read_keep_memory_bounded(
        cluster_factory, tmp_path, uniq):
    secret = b"a" * 64
    # One I/O loop: the loop that serves the attacker also serves everyone else, so a loop busy
    # queueing replies would show as a client that is not answered.
    c = cluster_factory(3, "--cluster-secret-file", secret_file(tmp_path, "s", secret.decode()),
                        "--io-threads", "1")
    nd = c[1]
    key = b"amp"  # short, so that one 64 KiB message holds 3,276 GETs (the finding)
    value = os.urandom(h.MIB)  # the default --max-body-bytes
    with c[0].client() as cl:
        assert cl.put(key, value, ack=3).status == 201
    fp = server_fingerprint(nd.port)
    baseline = rss_bytes(nd.pid)

    # A real peer (it knows the secret) pipelines GETs of the 1 MiB value and reads nothing:
    # 3.2 GiB of replies if the server answered them all.
    peer, outcome = handshake(nd.port, fp, c[0].url, secret)
    assert outcome == "ok"
    try:
        gets = b"".join(frame(GET, 3 + i, get_payload(key)) for i in range(3276))
        assert len(gets) <= 64 * h.KIB
        peer.send(gets)
        peak = 0
        for _ in range(20):  # two seconds in which an unbounded server queues GiBs
            peak = max(peak, rss_bytes(nd.pid))
            time.sleep(0.1)
        assert peak - baseline < 300 * h.MIB, (baseline, peak)

        # The node keeps serving clients and its peers while the attacker's connection stalls.
        with nd.client() as cl:
            r = cl.get(key)
            assert r.status == 200 and r.body == value
        with c[0].client() as cl:
            assert cl.put(b"other", b"small", ack=3).status == 201
            r = cl.get(key, ack=3)
            assert r.status == 200 and r.body == value
        assert rss_bytes(nd.pid) - baseline < 300 * h.MIB

        # The connection was only paused: reading drains it and the server goes on answering,
        # in order and in full.
        for i in range(8):
            t, req_id, payload = peer.read_frame()
            assert (t, req_id, payload[0]) == (GET_REPLY, 3 + i, 0)
            assert payload.endswith(value)
    finally:
        peer.close()


@pytest.mark.timeout_s(150)
def test_8mib_values_replicate_with_a_16mib_body_limit(cluster_factory, uniq):
    c = cluster_factory(3, "--max-body-bytes", str(16 * h.MIB), "--replica-timeout-ms", "30000")
    key = uniq()
    value = os.urandom(8 * h.MIB)
    with c[0].client(timeout_s=60) as cl:
        assert cl.put(key, value, ack=3).status == 201
        # The next requests on the same peer connections still work.
        small = uniq(b"small")
        assert cl.put(small, b"after", ack=3).status == 201
        assert cl.get(small, ack=3).body == b"after"
        # A quorum read moves the 8 MiB value over RPC in GET_REPLY frames.
        r = cl.get(key, ack=3)
        assert r.status == 200 and r.body == value
    for nd in c:
        assert h.local_value(nd, key) == value, nd.name
    # Every node coordinates a large write too (its peers answer from the other side).
    for i, nd in enumerate(c):
        v = os.urandom(8 * h.MIB - i)
        with nd.client(timeout_s=60) as cl:
            assert cl.put(key, v, ack=3).status == 201
            assert cl.get(key, ack=3).body == v


SCAN, SCAN_REPLY = 0x04, 0x84


def scan_payload(start: bytes = b"", exclusive: bool = False, max_records: int = 1024,
                 max_bytes: int = h.MIB) -> bytes:
    return (bytes([1 if exclusive else 0]) + struct.pack(">H", len(start)) + start +
            struct.pack(">H", 0) + struct.pack(">II", max_records, max_bytes))


def scan_count(payload: bytes) -> int:
    assert payload[0] == 0, payload[:1]  # OK
    return struct.unpack(">I", payload[1:5])[0]


@pytest.mark.timeout_s(120)
def test_bulk_reads_served_off_the_loop_keep_reply_order_and_survive_a_closing_peer(
        cluster_factory, uniq):
    # SCAN (like TREE SEGMENT) runs on a pool thread, not on the I/O loop (rpc/server.c): the
    # replies of a pipelined SCAN, GET, SCAN must still come back in request order (the client
    # matches them in order), and a peer that closes before its SCAN reply is ready must not
    # leave the server with a freed connection (ASan in teardown).
    c = cluster_factory(3, "--io-threads", "1")
    nd = c[1]
    keys = [uniq() for _ in range(200)]
    with c[0].client() as cl:
        for k in keys:
            assert cl.put(k, os.urandom(4 * h.KIB), ack=3).status == 201
    fp = server_fingerprint(nd.port)
    peer, t = plain_hello(nd.port, fp, c[0].url)
    try:
        assert t == HELLO_OK
        peer.send(frame(SCAN, 2, scan_payload()) + frame(GET, 3, get_payload(keys[0])) +
                  frame(SCAN, 4, scan_payload(max_records=7)))
        t, req_id, payload = peer.read_frame()
        assert (t, req_id) == (SCAN_REPLY, 2)
        assert scan_count(payload) >= len(keys)
        t, req_id, payload = peer.read_frame()
        assert (t, req_id, payload[0]) == (GET_REPLY, 3, 0)
        t, req_id, payload = peer.read_frame()
        assert (t, req_id, scan_count(payload)) == (SCAN_REPLY, 4, 7)
    finally:
        peer.close()

    # Peers that hang up with their SCAN in progress.
    for _ in range(30):
        p, t = plain_hello(nd.port, fp, c[0].url)
        assert t == HELLO_OK
        p.send(frame(SCAN, 2, scan_payload()) + frame(SCAN, 3, scan_payload()))
        p.close()
    # The node serves on, as a replica and to clients.
    with c[0].client() as cl:
        assert cl.put(keys[1], b"after", ack=3).status == 201
        assert cl.get(keys[1], ack=3).body == b"after"
    with nd.client() as cl:
        assert cl.get(keys[1]).body == b"after"
