"""HTTP conformance details (RFC 9110/9112) and log hygiene.

HEAD is allowed wherever GET is and carries no body; request lines of versions other than
HTTP/1.0 and HTTP/1.1 get 505; a folded header line (obs-fold) gets 400; an HTTP/1.0 client never gets a chunked response (RFC 9112 §6.1:
the range stream is close-delimited instead); a peer-supplied URL reaches the log without control
characters; a peer that claims this node's own URL is refused.
"""

from __future__ import annotations

import socket
import struct
import time

import dkvharness as h


def raw_exchange(port: int, data: bytes, timeout_s: float = h.IO_TIMEOUT_S) -> bytes:
    """Sends `data`, reads until the server closes, returns everything it sent."""
    s = socket.create_connection((h.HOST, port), timeout=timeout_s)
    try:
        s.sendall(data)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk
    finally:
        s.close()


def test_head_is_allowed_wherever_get_is_and_has_no_body(node, uniq):
    k = uniq()
    with node.client() as cl:
        assert cl.put(k, b"twelve bytes").status == 201
    with node.raw() as c:
        r = c.request("HEAD", "/v0/status")
        assert r.status == 200 and r.body == b"", r
        r = c.request("HEAD", h.entity_target(k))
        assert r.status == 200 and r.body == b"", r
        assert r.header("content-length") == "12", r.headers
        r = c.request("HEAD", h.entity_target(uniq("absent")))
        assert r.status == 404 and r.body == b"", r
        r = c.request("HEAD", h.entities_target(k))
        assert r.status == 200 and r.body == b"" and r.header("transfer-encoding") == "chunked"
        # The connection is still in step: a GET after the HEADs gets its own answer.
        r = c.request("GET", h.entity_target(k))
        assert (r.status, r.body) == (200, b"twelve bytes")


def test_http_versions_other_than_1_0_and_1_1_get_505(node):
    for version in (b"HTTP/2.0", b"HTTP/1.2", b"HTTP/3.0"):
        out = raw_exchange(node.port, b"GET /v0/status " + version + b"\r\nHost: x\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 505 "), (version, out[:80])


def send_in_pieces(port: int, pieces: list[bytes], timeout_s: float = h.IO_TIMEOUT_S) -> bytes:
    """Sends each piece as its own segment (TCP_NODELAY, a pause between), reads until close."""
    s = socket.create_connection((h.HOST, port), timeout=timeout_s)
    try:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for p in pieces:
            s.sendall(p)
            time.sleep(0.05)  # separate reads on the server: the fold straddles two buffers
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk
    finally:
        s.close()


def test_obs_fold_is_rejected_with_400_even_across_reads_and_nothing_is_stored(node, uniq):
    """RFC 9112 §5.2: a folded header line (obs-fold) gets 400. llhttp hands a fold over as more
    value bytes, so "Content-Length:\r\n 3" would be read as Content-Length 3."""
    k = uniq()
    target = h.entity_target(k).encode()
    folded = [
        b"Content-Length:\r\n 3\r\n\r\nabc",
        b"Content-Length: 3\r\n\t0\r\n\r\nabc",
        b"Transfer-Encoding:\r\n chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"X-Anything: a\r\n  b\r\nContent-Length: 3\r\n\r\nabc",
    ]
    for rest in folded:
        req = b"PUT " + target + b" HTTP/1.1\r\nHost: x\r\n" + rest
        out = raw_exchange(node.port, req)
        assert out.startswith(b"HTTP/1.1 400 "), (rest, out[:80])
        # The same with the fold's continuation line starting a new read on the server.
        cut = req.index(b"\r\n", req.index(b"Host")) + 2
        cut = req.index(b"\r\n", cut) + 2
        out = send_in_pieces(node.port, [req[:cut], req[cut:]])
        assert out.startswith(b"HTTP/1.1 400 "), (rest, out[:80])
    with node.client() as cl:
        assert cl.get(k).status == 404
        # Unfolded, split anywhere, the same request is fine.
        req = b"PUT " + target + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
    for cut in (len(b"PUT " + target + b" HTTP/1.1\r\nHost: x\r\nContent-Length:"),
                len(b"PUT " + target + b" HTTP/1.1\r\nHost: x\r\nContent-Length: ")):
        s = socket.create_connection((h.HOST, node.port), timeout=h.IO_TIMEOUT_S)
        try:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall(req[:cut])
            time.sleep(0.05)
            s.sendall(req[cut:])
            assert s.recv(65536).startswith(b"HTTP/1.1 201 ")
        finally:
            s.close()


def test_http_1_0_range_is_close_delimited_never_chunked(node, uniq):
    k1, k2 = uniq("a"), uniq("b")
    with node.client() as cl:
        assert cl.put(k1, b"x1").status == 201
        assert cl.put(k2, b"x2").status == 201
    target = h.entities_target(min(k1, k2), max(k1, k2) + b"\x00").encode()
    out = raw_exchange(node.port, b"GET " + target + b" HTTP/1.0\r\n\r\n")
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert b"transfer-encoding" not in head.lower() and b"content-length" not in head.lower()
    assert b"connection: close" in head.lower()
    assert body == min(k1, k2) + b"\nx" + (b"1" if k1 < k2 else b"2") + max(k1, k2) + b"\nx" + \
        (b"2" if k1 < k2 else b"1")
    # A plain response to HTTP/1.0 keeps its Content-Length.
    out = raw_exchange(node.port, b"GET /v0/status HTTP/1.0\r\n\r\n")
    assert b"Content-Length: 3" in out and out.endswith(b"OK\n"), out


def hello(url: bytes, fp: int) -> bytes:
    payload = struct.pack(">Q", fp) + struct.pack(">H", len(url)) + url
    body = bytes([1, 0x01]) + struct.pack(">Q", 1) + payload
    return bytes([0xD7]) + struct.pack(">I", len(body)) + body


def test_a_hello_of_another_protocol_version_gets_a_version_1_hello_reject(node_factory):
    """docs/protocol.md 8: a newer peer's HELLO is answered with a HELLO_REJECT it can read (so it
    can fall back during a rolling upgrade), then the connection closes."""
    nd = node_factory()
    v2 = bytearray(hello(b"http://x:1", 0))
    v2[5] = 2  # the version byte after magic and length
    out = raw_exchange(nd.port, bytes(v2))
    assert out[0] == 0xD7 and out[5] == 1 and out[6] == 0xC1, out  # v1 HELLO_REJECT
    assert b"unsupported protocol version 2 (this node speaks 1)" in out, out
    assert b"a HELLO of protocol version 2" in nd.log_bytes()


def test_peer_claiming_this_nodes_url_is_refused_and_urls_are_logged_without_controls(
        cluster_factory):
    c = cluster_factory(3)
    nd = c[0]
    # The fingerprint, from a refusal that names it.
    out = raw_exchange(nd.port, hello(b"http://x:1", 0))
    fp = int(out[out.index(b"mine ") + 5: out.index(b"mine ") + 21], 16)
    out = raw_exchange(nd.port, hello(nd.url.encode(), fp))
    assert out[6] == 0xC1 and b"that URL is mine" in out, out  # HELLO_REJECT
    assert b"claims this node's own URL" in nd.log_bytes()
    # A forged log line through the URL: the newline and ESC arrive as '?'.
    out = raw_exchange(nd.port, hello(b"http://evil:1\nERROR forged line\x1b[31m", fp))
    assert out[6] == 0xC1
    log = nd.log_bytes()
    assert b"http://evil:1?ERROR forged line?[31m" in log
    assert b"\nERROR forged line" not in log


def test_connections_that_send_nothing_are_closed_after_the_first_byte_timeout(node_factory):
    nd = node_factory("--first-byte-timeout-ms", "300", "--idle-timeout-ms", "60000")
    silent = [socket.create_connection((h.HOST, nd.port), timeout=h.IO_TIMEOUT_S)
              for _ in range(50)]
    with nd.client() as cl:  # a connection that talks stays, until the idle timeout
        assert cl.status().status == 200
        t0 = time.monotonic()
        for s in silent:
            assert s.recv(1) == b""  # closed by the server
        took = time.monotonic() - t0
        assert took < 5.0, took  # not the 60 s idle timeout
        time.sleep(0.5)  # well past 300 ms: a connection that sent a request is not cut
        assert cl.status().status == 200
    for s in silent:
        s.close()
