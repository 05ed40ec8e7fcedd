"""Cluster authentication of the inter-node RPC (--cluster-secret-file; docs/security.md).

Peers prove the shared secret with a mutual HMAC-SHA256 challenge-response in the handshake. An
impostor without the secret, even one claiming a member's URL, stores nothing and reads nothing;
with the right secret the same steps work, so the tests can fail. A raw-socket client speaks the
frames (docs/protocol.md) and computes the proofs with Python's hmac/hashlib.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import socket
import struct
import time

import pytest

import dkvharness as h

N = 3
MAGIC = 0xD7
HELLO, PUT, AUTH = 0x01, 0x03, 0x05
HELLO_OK, PUT_REPLY, HELLO_REJECT, HELLO_CHALLENGE = 0x81, 0x83, 0xC1, 0xC2


def secret_file(tmp_path, name: str, *lines: str) -> str:
    p = tmp_path / name
    p.write_text("".join(l + "\n" for l in lines))
    os.chmod(p, 0o600)
    return str(p)


def local(nd: h.Node, key: bytes) -> bytes | None:
    return h.local_value(nd, key)


# ---- a raw RPC peer ----

def frame(ftype: int, req_id: int, payload: bytes) -> bytes:
    body = bytes([1, ftype]) + struct.pack(">Q", req_id) + payload
    return bytes([MAGIC]) + struct.pack(">I", len(body)) + body


def hello_payload(fp: int, url: str, nonce: bytes | None) -> bytes:
    p = struct.pack(">Q", fp) + struct.pack(">H", len(url)) + url.encode()
    if nonce is not None:
        p += bytes(16) + bytes([0]) + bytes(16) + nonce  # identity block, then the nonce
    return p


def put_payload(key: bytes, value: bytes, ts: int) -> bytes:
    rec = bytes([2, 0]) + struct.pack(">Q", ts) + bytes([3]) + value
    return struct.pack(">H", len(key)) + key + struct.pack(">I", len(rec)) + rec


class RawPeer:
    def __init__(self, port: int):
        self.s = socket.create_connection((h.HOST, port), timeout=h.IO_TIMEOUT_S)
        self.buf = b""

    def send(self, data: bytes):
        self.s.sendall(data)

    def read_frame(self):
        """(type, req_id, payload), or None when the server closed the connection."""
        while True:
            if len(self.buf) >= 5:
                n = struct.unpack(">I", self.buf[1:5])[0]
                if len(self.buf) >= 5 + n:
                    f, self.buf = self.buf[:5 + n], self.buf[5 + n:]
                    return f[6], struct.unpack(">Q", f[7:15])[0], f[15:]
            try:
                chunk = self.s.recv(65536)
            except ConnectionResetError:
                return None
            if not chunk:
                return None
            self.buf += chunk

    def close(self):
        self.s.close()


def server_fingerprint(port: int) -> int:
    """A HELLO with a wrong fingerprint is refused with a reason that names the right one (it is
    derived from the public node list; the secret is what authenticates)."""
    p = RawPeer(port)
    try:
        p.send(frame(HELLO, 1, hello_payload(0, "http://x:1", None)))
        t, _, payload = p.read_frame()
        assert t == HELLO_REJECT, t
        return int(re.search(rb"mine ([0-9a-f]{16})", payload).group(1), 16)
    finally:
        p.close()


def handshake(port: int, fp: int, url: str, secret: bytes | None):
    """Runs the authenticated handshake; returns (peer, outcome) with outcome "ok",
    "server-proof-wrong" or "closed"."""
    p = RawPeer(port)
    nonce = os.urandom(32)
    hello = frame(HELLO, 1, hello_payload(fp, url, nonce))
    p.send(hello)
    t, _, payload = p.read_frame()
    assert t == HELLO_CHALLENGE, t
    ns, tag_s = payload[:32], payload[32:64]
    transcript = hashlib.sha256(hello).digest()
    key = hashlib.sha256(secret if secret is not None else b"not the secret, 32 bytes long..").digest()
    want_s = hmac.new(key, b"dkv1 server\x00" + transcript + ns, hashlib.sha256).digest()
    tag_c = hmac.new(key, b"dkv1 client\x00" + transcript + ns + tag_s, hashlib.sha256).digest()
    p.send(frame(AUTH, 2, tag_c))
    r = p.read_frame()
    if r is None:
        return p, "closed" if want_s != tag_s else "closed-despite-valid-proof"
    assert r[0] == HELLO_OK, r
    assert want_s == tag_s  # the server proved the same secret
    return p, "ok"


# ---- tests ----

def test_cluster_with_a_shared_secret_serves_every_request(cluster_factory, tmp_path, uniq):
    f = secret_file(tmp_path, "secret", "a" * 64)
    c = cluster_factory(N, "--cluster-secret-file", f)
    k = uniq()
    with c[0].client() as cl:
        assert cl.put(k, b"v", ack=3, **{"from": 3}).status == 201
    for nd in c:
        with nd.client() as cl:
            assert cl.get(k, ack=3, **{"from": 3}).body == b"v"
    assert b"peers authenticated" in c[0].log_bytes()


def test_impostor_with_a_wrong_secret_claiming_a_members_url_stores_nothing(
        cluster_factory, tmp_path, uniq):
    good = secret_file(tmp_path, "good", "g" * 64)
    bad = secret_file(tmp_path, "bad", "b" * 64)
    c = cluster_factory(N, "--cluster-secret-file", good)
    victim = c[2]
    victim.stop()
    impostor = h.Node("impostor", victim.port, victim.cluster_urls, tmp_path / "imp" / "data",
                      tmp_path / "imp" / "dkv.log", ["--cluster-secret-file", bad])
    impostor.start()
    try:
        k = uniq()
        with impostor.client() as cl:
            # Its peers refuse it: nothing reaches them, nothing comes back from them.
            assert cl.put(k, b"evil", ack=2, **{"from": 3}).status == 504
            assert cl.get(k, ack=2, **{"from": 3}).status == 504
        with c[0].client() as cl:
            assert cl.put(k + b"-real", b"v", ack=2, **{"from": 3}).status == 201
            # The members do not use it either.
            assert cl.put(k + b"-3", b"v", ack=3, **{"from": 3}).status == 504
        assert local(c[0], k) is None and local(c[1], k) is None
        assert local(impostor, k + b"-real") is None
        logs = c[0].log_bytes() + c[1].log_bytes()
        assert b"failed authentication" in logs or b"failed authentication" in impostor.log_bytes()
        assert b"g" * 64 not in logs and b"b" * 64 not in impostor.log_bytes()
    finally:
        impostor.stop()
        impostor.expected_dead = True
    # The same node with the right secret is a member (so the test above can fail).
    victim.start()
    k = uniq("after")
    with victim.client() as cl:
        assert cl.put(k, b"v", ack=3, **{"from": 3}).status == 201
    assert local(c[0], k) == b"v"


def test_raw_frames_without_the_secret_store_nothing_and_with_it_they_work(
        cluster_factory, tmp_path):
    secret = b"s" * 64
    f = secret_file(tmp_path, "secret", secret.decode())
    c = cluster_factory(N, "--cluster-secret-file", f)
    nd = c[0]
    fp = server_fingerprint(nd.port)
    member = c[1].url
    key = b"forged-key"

    # 1. No nonce: not an authenticated handshake: refused.
    p = RawPeer(nd.port)
    p.send(frame(HELLO, 1, hello_payload(fp, member, None))
           + frame(PUT, 2, put_payload(key, b"x", 1 << 40)))
    t, _, payload = p.read_frame()
    assert t == HELLO_REJECT and b"authentication" in payload, (t, payload)
    assert p.read_frame() is None  # closed, the PUT never answered
    p.close()

    # 2. A PUT pipelined behind the HELLO instead of the AUTH: closed.
    p = RawPeer(nd.port)
    p.send(frame(HELLO, 1, hello_payload(fp, member, os.urandom(32)))
           + frame(PUT, 2, put_payload(key, b"x", 1 << 40)))
    assert p.read_frame()[0] == HELLO_CHALLENGE
    assert p.read_frame() is None
    p.close()

    # 3. A wrong secret: the server's proof does not verify, and our AUTH is refused.
    p, outcome = handshake(nd.port, fp, member, None)
    assert outcome == "closed", outcome
    p.close()

    # 4. A replayed AUTH: a proof made for another connection's nonce is refused.
    p1 = RawPeer(nd.port)
    hello = frame(HELLO, 1, hello_payload(fp, member, os.urandom(32)))
    p1.send(hello)
    t, _, payload = p1.read_frame()
    key_ = hashlib.sha256(secret).digest()
    ns, tag_s = payload[:32], payload[32:64]
    tr = hashlib.sha256(hello).digest()
    stale = hmac.new(key_, b"dkv1 client\x00" + tr + ns + tag_s, hashlib.sha256).digest()
    p1.close()
    p2 = RawPeer(nd.port)
    p2.send(hello)  # the very same HELLO bytes again
    assert p2.read_frame()[0] == HELLO_CHALLENGE  # with a fresh nonce
    p2.send(frame(AUTH, 2, stale))
    assert p2.read_frame() is None
    p2.close()

    for n in c:
        assert local(n, key) is None
    # The server's log says who failed, never why in terms of the secret.
    assert b"failed authentication" in nd.log_bytes()

    # 5. With the secret, the same raw steps work: the PUT is stored.
    p, outcome = handshake(nd.port, fp, member, secret)
    assert outcome == "ok"
    p.send(frame(PUT, 3, put_payload(key, b"authentic", 1 << 40)))
    t, _, payload = p.read_frame()
    assert t == PUT_REPLY and payload == b"\x00", (t, payload)
    p.close()
    assert local(nd, key) == b"authentic"


def test_rotation_with_current_and_previous_secrets(cluster_factory, tmp_path, uniq):
    old, new = "o" * 64, "n" * 64
    both_old_first = secret_file(tmp_path, "phase1", old, new)
    both_new_first = secret_file(tmp_path, "phase2", new, old)
    # Nodes in the middle of a rotation: some still sign with the old secret, some with the new.
    c = cluster_factory(N, per_node_args={0: ["--cluster-secret-file", both_new_first],
                                          1: ["--cluster-secret-file", both_old_first],
                                          2: ["--cluster-secret-file", both_old_first]})
    k = uniq()
    for nd in c:
        with nd.client() as cl:
            assert cl.put(k, nd.name.encode(), ack=3, **{"from": 3}).status == 201


@pytest.mark.parametrize("listen, args, why", [
    ("0.0.0.0", [], b"cluster-secret-file"),
    ("127.0.0.1", ["--cluster-secret-file", "/nonexistent/secret"], b"cannot read"),
])
def test_unsafe_or_broken_secret_configuration_refuses_to_start(cluster_factory, tmp_path,
                                                                 listen, args, why):
    port = h.free_port()
    urls = ["http://127.0.0.1:%d" % port, "http://127.0.0.1:%d" % h.free_port()]
    r = h.run_dkv(["--listen", "%s:%d" % (listen, port), "--self", urls[0], "--cluster",
                   ",".join(urls), "--data", str(tmp_path / "d"), *args], tmp_path)
    assert r.returncode == 2, r
    assert why in r.stderr or why in r.stdout, r


def test_short_secret_refuses_to_start(tmp_path):
    f = secret_file(tmp_path, "short", "tooshort")
    port = h.free_port()
    urls = ["http://127.0.0.1:%d" % port, "http://127.0.0.1:%d" % h.free_port()]
    r = h.run_dkv(["--listen", "127.0.0.1:%d" % port, "--self", urls[0], "--cluster",
                   ",".join(urls), "--data", str(tmp_path / "d"), "--cluster-secret-file", f],
                  tmp_path)
    assert r.returncode == 2 and b"shorter than 32" in r.stderr, r


def test_a_record_stamped_far_in_the_future_is_refused_and_never_freezes_a_key(cluster_factory):
    # Before 0.2 a PUT stamped 2^64-1 made a key permanent and wrapped every replica's clock.
    c = cluster_factory(N)
    nd = c[0]
    fp = server_fingerprint(nd.port)
    p = RawPeer(nd.port)
    p.send(frame(HELLO, 1, hello_payload(fp, c[1].url, None)))
    assert p.read_frame()[0] == HELLO_OK
    now_ms = int(time.time() * 1000)
    cases = [(b"future-max", (1 << 64) - 1, 2), (b"future-1h", (now_ms + 3600_000) << 16, 2),
             (b"future-100ms", (now_ms + 100) << 16, 0)]
    for i, (key, ts, status) in enumerate(cases):
        p.send(frame(PUT, 10 + i, put_payload(key, b"forged", ts)))
        t, _, payload = p.read_frame()
        assert (t, payload) == (PUT_REPLY, bytes([status])), (key, t, payload)
    p.close()
    assert local(nd, b"future-max") is None and local(nd, b"future-1h") is None
    assert local(nd, b"future-100ms") == b"forged"  # within --max-clock-offset-ms (500)
    st = json.loads(nd.client().request("GET", "/v0/status?verbose=1").body)
    assert (st["clock"]["max_offset_ms"], st["clock"]["future_refused"]) == (500, 2), st["clock"]
    assert b"refused a record stamped" in nd.log_bytes()
    # The key is not frozen and the node's clock was not dragged: later writes win.
    with nd.client() as cl:
        assert cl.put(b"future-max", b"honest", ack=3, **{"from": 3}).status == 201
        assert cl.get(b"future-max", ack=3, **{"from": 3}).body == b"honest"
        assert cl.delete(b"future-max", ack=3, **{"from": 3}).status == 202
        assert cl.get(b"future-max", ack=3, **{"from": 3}).status == 404
