"""dkvctl, the command-line client, driven as a user would: a real 3-node cluster, the binary run
as a subprocess, stdout/stderr/exit code checked.

The binary is looked for next to DKV_BIN (both are built into the same directory); the module is
skipped with a message when it is missing. What dkvctl stores is checked through the harness's own
HTTP client too, so an encoding bug that happens to be symmetric (e.g. a '+' sent raw and read back
raw) still fails. Fake endpoints (a socket that never answers, a server that answers 503) test
failover and backoff without timing guesses: the server records when each request arrived.

Every wait is a poll against a deadline; every subprocess has a timeout.
"""

from __future__ import annotations

import http.server
import os
import re
import socket
import subprocess
import threading
import time

import pytest

import dkvharness as h

CTL = os.path.join(os.path.dirname(os.path.abspath(h.DKV_BIN)), "dkvctl")
N = 3
RUN_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def ctl_bin():
    if not os.access(CTL, os.X_OK):
        pytest.skip("dkvctl not found at %s: build it next to dkv (make build, or cmake --build "
                    "<dir> --target dkvctl)" % CTL)
    return CTL


def run(args, input: bytes | None = None, endpoints=None, timeout_s: float = RUN_TIMEOUT_S):
    """Runs dkvctl; `endpoints` (list of URLs) becomes --endpoints. Returns CompletedProcess."""
    argv = [CTL]
    if endpoints is not None:
        argv += ["--endpoints", ",".join(endpoints)]
    argv += [a if isinstance(a, bytes) else str(a) for a in args]
    env = {k: v for k, v in os.environ.items() if k != "DKV_ENDPOINTS"}
    p = subprocess.run(argv, input=input if input is not None else b"", capture_output=True,
                       timeout=timeout_s, env=env)
    for marker in h.SANITIZER_MARKERS:
        assert marker not in p.stderr, p.stderr.decode(errors="replace")
    return p


def one_line_error(p) -> str:
    """A failure's stderr: exactly one line, starting with 'dkvctl: '."""
    err = p.stderr.decode(errors="replace")
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("dkvctl: "), err
    return lines[0]


@pytest.fixture(scope="module")
def _cluster(ctl_bin, dkv_bin, tmp_path_factory):
    c = h.Cluster(tmp_path_factory.mktemp("ctl"), N, ["--io-threads", "1"])
    c.start()
    yield c
    problems = c.close()
    assert not problems, problems


@pytest.fixture
def c3(_cluster):
    """The module's cluster with every node running (a test may stop nodes)."""
    for nd in _cluster:
        if not nd.running():
            nd.start()
    marks = [nd.log_size() for nd in _cluster]
    yield _cluster
    for nd, mark in zip(_cluster, marks):
        assert not nd.sanitizer_report(mark), "sanitizer report in %s's log" % nd.name


def unescape(field: bytes) -> bytes:
    """Reverses dkvctl scan's escaping (\\\\ \\t \\n \\r \\xHH)."""
    out = bytearray()
    i = 0
    while i < len(field):
        c = field[i]
        if c != 0x5C:
            out.append(c)
            i += 1
            continue
        n = field[i + 1]
        if n == ord("x"):
            out.append(int(field[i + 2: i + 4], 16))
            i += 4
        else:
            out.append({ord("\\"): 0x5C, ord("t"): 9, ord("n"): 10, ord("r"): 13}[n])
            i += 2
    return bytes(out)


# --------------------------------------------------------------------------------------------
# help and usage
# --------------------------------------------------------------------------------------------


def test_help_lists_commands_and_each_command_has_its_own(ctl_bin):
    p = run(["--help"])
    assert p.returncode == 0
    out = p.stdout.decode()
    for cmd in ("get", "put", "delete", "scan", "status", "ring", "hints", "repair"):
        assert re.search(r"^  %s " % cmd, out, re.M), out
    assert "DKV_ENDPOINTS" in out

    p = run(["get", "--help"])
    assert p.returncode == 0
    assert p.stdout.decode().startswith("usage: dkvctl [options] get KEY")
    assert run(["help", "scan"]).stdout.decode().startswith("usage: dkvctl [options] scan")

    p = run(["frobnicate"])
    assert p.returncode == 2
    assert "unknown command" in one_line_error(p)
    p = run(["get"])
    assert p.returncode == 2
    p = run(["get", "k", "--raw"])
    assert p.returncode == 2
    assert "--raw does not apply to get" in one_line_error(p)


# --------------------------------------------------------------------------------------------
# keys and values
# --------------------------------------------------------------------------------------------


def test_binary_value_with_all_256_bytes_round_trips_through_every_node(c3):
    value = bytes(range(256)) * 3
    key = "bin/all-bytes"
    p = run(["put", key, "-", "--ack", 3, "--from", 3], input=value, endpoints=[c3[0].url])
    assert p.returncode == 0, p.stderr
    assert p.stdout == b""
    for nd in c3:
        p = run(["get", key, "--ack", 1, "--from", 3], endpoints=[nd.url])
        assert p.returncode == 0, p.stderr
        assert p.stdout == value
    with c3[1].client() as cl:
        assert cl.get(key).body == value


KEYS = [b"a b", b"a+b", b"a/b", b"100%", b"%41", b"a&b=c", b"?x#y", b"~._-",
        "ключ ☃ 鍵".encode(), bytes(range(1, 256))]


def test_keys_with_reserved_and_non_ascii_bytes_round_trip(c3):
    # Distinct values per key: 'a+b' and 'a b' (or '%41' and 'A') must stay different keys.
    for i, key in enumerate(KEYS):
        p = run(["put", key, b"value-%d" % i], endpoints=[c3[i % N].url])
        assert p.returncode == 0, (key, p.stderr)
    with c3[0].client() as cl:
        for i, key in enumerate(KEYS):
            # The harness encodes every byte itself: this checks what dkvctl stored, not only
            # that dkvctl agrees with itself.
            r = cl.get(key)
            assert (r.status, r.body) == (200, b"value-%d" % i), key
        assert cl.get(b"A").status == 404
    for i, key in enumerate(KEYS):
        p = run(["get", key], endpoints=[c3[(i + 1) % N].url])
        assert (p.returncode, p.stdout) == (0, b"value-%d" % i), (key, p.stderr)


def test_get_of_a_missing_key_exits_1_with_nothing_on_stdout(c3):
    p = run(["get", "never/written"], endpoints=[c3[0].url])
    assert p.returncode == 1
    assert p.stdout == b""
    assert "not found" in one_line_error(p)


def test_delete_then_get_exits_1(c3):
    assert run(["put", "del/k", "v"], endpoints=[c3[0].url]).returncode == 0
    assert run(["get", "del/k"], endpoints=[c3[1].url]).stdout == b"v"
    p = run(["delete", "del/k", "--ack", 3, "--from", 3], endpoints=[c3[2].url])
    assert (p.returncode, p.stdout) == (0, b""), p.stderr
    p = run(["get", "del/k"], endpoints=[c3[0].url])
    assert (p.returncode, p.stdout) == (1, b"")


def test_put_reads_stdin_when_value_is_missing_or_dash_and_empty_value_is_not_absent(c3):
    data = b"line1\nline2\r\n\x00tail"
    assert run(["put", "stdin/a"], input=data, endpoints=[c3[0].url]).returncode == 0
    assert run(["put", "stdin/b", "-"], input=data, endpoints=[c3[0].url]).returncode == 0
    assert run(["get", "stdin/a"], endpoints=[c3[1].url]).stdout == data
    assert run(["get", "stdin/b"], endpoints=[c3[2].url]).stdout == data
    assert run(["put", "stdin/empty"], input=b"", endpoints=[c3[0].url]).returncode == 0
    p = run(["get", "stdin/empty"], endpoints=[c3[1].url])
    assert (p.returncode, p.stdout) == (0, b"")


def test_replication_parameters_are_sent_and_a_504_is_a_failure(c3):
    c3[2].stop()
    p = run(["put", "repl/k", "v", "--ack", 3, "--from", 3], endpoints=[c3[0].url])
    assert p.returncode == 3
    assert "504" in one_line_error(p)
    p = run(["put", "repl/k", "v", "--ack", 2, "--from", 3], endpoints=[c3[0].url])
    assert p.returncode == 0, p.stderr
    p = run(["get", "repl/k", "--ack", 4], endpoints=[c3[0].url])  # ack > from: 400
    assert p.returncode == 3
    assert "400" in one_line_error(p)


# --------------------------------------------------------------------------------------------
# failover and retries
# --------------------------------------------------------------------------------------------


def test_fails_over_to_the_next_endpoint_when_the_first_is_down(c3):
    dead = "http://127.0.0.1:%d" % h.free_port()  # nothing listens: connection refused
    c3[0].stop()
    eps = [dead, c3[0].url, c3[1].url]
    p = run(["put", "fo/k", "v1"], endpoints=eps)
    assert p.returncode == 0, p.stderr
    p = run(["-v", "get", "fo/k"], endpoints=eps)
    assert (p.returncode, p.stdout) == (0, b"v1"), p.stderr
    assert b"trying " + c3[1].url.encode() in p.stderr  # -v says where it went

    p = run(["get", "fo/k"], endpoints=[dead, c3[0].url])
    assert p.returncode == 3
    line = one_line_error(p)
    assert "no endpoint answered" in line and dead in line and c3[0].url in line


def test_an_endpoint_that_accepts_but_never_answers_times_out_and_is_skipped(c3):
    # A listening socket that is never accepted: the kernel completes the handshake, so only
    # the request timeout can save the client.
    silent = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    silent.bind((h.HOST, 0))
    silent.listen(8)
    try:
        url = "http://%s:%d" % silent.getsockname()
        assert run(["put", "to/k", "v"], endpoints=[c3[0].url]).returncode == 0
        t0 = time.monotonic()
        p = run(["--timeout-ms", "400", "get", "to/k"], endpoints=[url, c3[1].url])
        assert (p.returncode, p.stdout) == (0, b"v"), p.stderr
        assert time.monotonic() - t0 >= 0.4
    finally:
        silent.close()


class _Busy(http.server.BaseHTTPRequestHandler):
    """Answers 503 to the first `busy` requests, then 200 "ok"; records arrival times."""

    protocol_version = "HTTP/1.1"

    def do_GET(self):
        srv = self.server
        srv.arrivals.append(time.monotonic())
        if len(srv.arrivals) <= srv.busy:
            body, status = b"Service Unavailable: overloaded\n", 503
        else:
            body, status = b"ok", 200
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _busy_server(busy: int):
    srv = http.server.ThreadingHTTPServer((h.HOST, 0), _Busy)
    srv.arrivals = []
    srv.busy = busy
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    return srv, "http://%s:%d" % srv.server_address


def test_503_is_retried_with_exponential_backoff_then_succeeds(ctl_bin):
    srv, url = _busy_server(busy=3)
    try:
        p = run(["--backoff-ms", "50", "get", "k"], endpoints=[url])
        assert (p.returncode, p.stdout) == (0, b"ok"), p.stderr
        a = srv.arrivals
        assert len(a) == 4
        gaps = [a[i + 1] - a[i] for i in range(3)]
        # 50, 100, 200 ms: each wait at least its backoff (sleeps never end early).
        for gap, want in zip(gaps, (0.05, 0.1, 0.2)):
            assert gap >= want, gaps
    finally:
        srv.shutdown()
        srv.server_close()


def test_503_retries_are_bounded(ctl_bin):
    srv, url = _busy_server(busy=1000)
    try:
        p = run(["--retries", "2", "--backoff-ms", "10", "get", "k"], endpoints=[url])
        assert p.returncode == 3
        assert "503" in one_line_error(p)
        assert len(srv.arrivals) == 3  # the first try and two retries
    finally:
        srv.shutdown()
        srv.server_close()


# --------------------------------------------------------------------------------------------
# scan
# --------------------------------------------------------------------------------------------


def test_scan_prints_the_nodes_local_records_escaped_and_raw(c3):
    recs = {b"scan/a": b"plain", b"scan/b": b"tab\there\nnewline\\slash", b"scan/c": b"",
            b"scan/d": bytes(range(256)), b"scan/e f+g/%h": b"\r\n0\r\n\r\n"}
    for k, v in recs.items():
        assert run(["put", k, "-", "--ack", 3, "--from", 3], input=v,
                   endpoints=[c3[0].url]).returncode == 0
    other = b"scan0"  # past the end: must not be printed
    assert run(["put", other, "x"], endpoints=[c3[0].url]).returncode == 0

    p = run(["scan", "scan/", "scan0"], endpoints=[c3[1].url])
    assert p.returncode == 0, p.stderr
    lines = p.stdout.split(b"\n")
    assert lines[-1] == b""
    got = {}
    for line in lines[:-1]:
        k, v = line.split(b"\t")
        got[unescape(k)] = unescape(v)
    assert got == recs
    assert got == h.local_records(c3[1], b"scan/", b"scan0")

    p = run(["scan", "scan/", "scan0", "--raw"], endpoints=[c3[2].url])
    assert p.returncode == 0, p.stderr
    out, got = p.stdout, {}
    while out:
        head, out = out.split(b"\n", 1)
        klen, vlen = (int(x) for x in head.split(b" "))
        k, v, nl, out = out[:klen], out[klen:klen + vlen], out[klen + vlen:klen + vlen + 1], \
            out[klen + vlen + 1:]
        assert nl == b"\n"
        got[k] = v
    assert got == recs

    p = run(["scan", "nothing/here/", "nothing/here0"], endpoints=[c3[0].url])
    assert (p.returncode, p.stdout) == (0, b"")


class _Canned:
    """A one-shot HTTP server: reads a request head, answers `response` bytes, closes."""

    def __init__(self, response: bytes):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((h.HOST, 0))
        self.sock.listen(4)
        self.url = "http://%s:%d" % self.sock.getsockname()
        self.response = response
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(10)
            data = b""
            while b"\r\n\r\n" not in data:
                got = conn.recv(4096)
                if not got:
                    return
                data += got
            conn.sendall(self.response)

    def close(self):
        self.sock.close()
        self.thread.join(5)


@pytest.mark.parametrize("response, why", [
    # A 200 whose body is not chunked cannot be split into records (API.md §10).
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nk\nv\r\n",
     "malformed response"),
    # Chunk framing that breaks after one good record: the record is printed, then the error.
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nk\nv\r\nzz\r\n",
     "malformed response"),
    # A record without the key's LF.
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nkv\r\n0\r\n\r\n",
     "malformed response"),
    # The connection ends before the last chunk.
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
     b"3\r\nk\nv\r\n", ""),
])
def test_scan_refuses_a_malformed_range_response_with_one_line(ctl_bin, response, why):
    srv = _Canned(response)
    try:
        p = run(["scan", "a"], endpoints=[srv.url])
    finally:
        srv.close()
    assert p.returncode == 3, (p.stdout, p.stderr)
    line = one_line_error(p)
    assert srv.url in line and why in line, line
    assert p.stdout in (b"", b"k\tv\n"), p.stdout  # at most the good record


def test_scan_splits_at_chunk_boundaries_not_at_bytes_that_look_like_framing(ctl_bin):
    # A record whose value holds CRLF and a "0" line, a chunk extension, a trailer: the split is
    # llhttp's reading of the framing, not a guess from the bytes.
    body = b"5;x=y\r\na\n\r\n0\r\n" b"2\r\nb\n\r\n" b"0\r\nTrailer: t\r\n\r\n"
    srv = _Canned(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    try:
        p = run(["scan", "a", "--raw"], endpoints=[srv.url])
    finally:
        srv.close()
    assert p.returncode == 0, p.stderr
    assert p.stdout == b"1 3\na\r\n0\n" b"1 0\nb\n"


# --------------------------------------------------------------------------------------------
# cluster views
# --------------------------------------------------------------------------------------------


def _status_rows(out: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in out.splitlines()
            if line.startswith("http://") and " is down: " not in line
            and " is not ready: " not in line}


def test_status_shows_every_node_and_a_stopped_node_as_down(c3):
    p = run(["status"], endpoints=[c3[0].url])
    assert p.returncode == 0, p.stderr
    out = p.stdout.decode()
    assert out.splitlines()[0].split() == ["NODE", "STATUS", "READY", "STATE", "VERSION", "UPTIME",
                                           "DATA", "HINTS", "REPAIRED", "STORAGE", "BREAKERS"]
    rows = _status_rows(out)
    assert set(rows) == set(c3.urls)
    for url in c3.urls:
        assert rows[url][1:4] == ["up", "yes", "ready"], rows[url]
        assert rows[url][7] == "0" and rows[url][9] == "ok", rows[url]  # hints, storage
    assert "3 of 3 nodes up" in out

    c3[2].stop()
    # Through an endpoint list whose first entry is the stopped node itself.
    p = run(["status"], endpoints=[c3[2].url, c3[1].url])
    assert p.returncode == 0, p.stderr
    out = p.stdout.decode()
    rows = _status_rows(out)
    assert rows[c3[2].url][1] == "down", out
    assert rows[c3[0].url][1:3] == ["up", "yes"] and rows[c3[1].url][1:3] == ["up", "yes"], out
    assert "%s is down: " % c3[2].url in out
    assert "2 of 3 nodes up" in out


def test_status_says_why_a_node_is_not_ready(c3):
    c3[1].stop()
    c3[2].stop()

    def lone_node_not_ready():
        p = run(["status"], endpoints=[c3[0].url])
        assert p.returncode == 0, p.stderr
        out = p.stdout.decode()
        return out if _status_rows(out)[c3[0].url][1:3] == ["up", "no"] else None

    out = h.wait_until(lone_node_not_ready, 20, 0.2, "the lone node to be not ready")
    line = [x for x in out.splitlines() if x.startswith("%s is not ready: " % c3[0].url)]
    assert len(line) == 1, out
    assert "too few replicas reachable for the default quorum" in line[0], out
    assert c3[1].url in line[0] and c3[2].url in line[0], out  # the peers it cannot reach
    assert "1 of 3 nodes up" in out


def test_ring_shares_sum_to_100_and_match_where_keys_land(c3):
    p = run(["ring"], endpoints=[c3[0].url])
    assert p.returncode == 0, p.stderr
    shares = {}
    for line in p.stdout.decode().splitlines():
        m = re.match(r"^(http://\S+)\s+(\d+)\s+([\d.]+)%$", line)
        if m:
            assert int(m.group(2)) == 8192  # the nodes run the default --vnodes
            shares[m.group(1)] = float(m.group(3))
    assert set(shares) == set(c3.urls)
    assert abs(sum(shares.values()) - 100.0) < 0.05, shares
    # from=1 stores a key only on its first replica: where 900 such keys land is a sample of
    # the ownership dkvctl computed (3 sigma of 900 samples is about 5 points).
    items = [(b"ring/%04d" % i, b"x") for i in range(900)]
    with h.RawConn(c3[0].port) as conn:
        for i in range(0, len(items), 100):
            part = items[i: i + 100]
            conn.send(b"".join(h.http_request("PUT", h.entity_target(k, ack=1, **{"from": 1}), v)
                               for k, v in part))
            for _ in part:
                assert conn.read_response().status == 201
    for nd in c3:
        landed = 100.0 * len(h.local_records(nd, b"ring/", b"ring0")) / len(items)
        assert abs(landed - shares[nd.url]) < 6.0, (nd.url, landed, shares)


def test_hints_sync_and_repair_on_every_node(c3):
    c3[2].stop()
    for i in range(20):
        assert run(["put", "hint/%d" % i, "v"], endpoints=[c3[0].url]).returncode == 0
    p = run(["hints"], endpoints=[c3[0].url])
    assert p.returncode == 3  # a node is down
    rows = _status_rows(p.stdout.decode())
    assert int(rows[c3[0].url][1]) > 0, p.stdout  # hints for the stopped node
    assert "down" in rows[c3[2].url], p.stdout

    p = run(["repair", "--node", c3[0].url, "--wait-ms", "5000"], endpoints=[c3[1].url])
    assert p.returncode == 3, p.stdout
    out = p.stdout.decode()
    assert _status_rows(out)[c3[0].url][1] == "failed", out
    assert "failed with: " + c3[2].url.split("://")[1] in out, out  # whose exchange failed

    c3[2].start()
    p = run(["hints", "sync", "--wait-ms", "20000"], endpoints=[c3[0].url])
    assert p.returncode == 0, (p.stdout, p.stderr)
    rows = _status_rows(p.stdout.decode())
    assert {u: r[1:3] for u, r in rows.items()} == {u: ["ok", "0"] for u in c3.urls}
    for i in range(20):
        assert h.local_value(c3[2], b"hint/%d" % i) == b"v"  # from=3: every node is a replica
    p = run(["hints"], endpoints=[c3[0].url])
    assert p.returncode == 0
    assert int(_status_rows(p.stdout.decode())[c3[0].url][1]) == 0

    p = run(["repair", "--wait-ms", "20000"], endpoints=[c3[1].url])
    assert p.returncode == 0, (p.stdout, p.stderr)
    rows = _status_rows(p.stdout.decode())
    assert {u: r[1] for u, r in rows.items()} == {u: "ok" for u in c3.urls}
    p = run(["repair", "status"], endpoints=[c3[1].url])
    assert p.returncode == 0
    assert "never" not in p.stdout.decode()
    assert set(_status_rows(p.stdout.decode())) == set(c3.urls)
