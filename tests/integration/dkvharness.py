"""Test harness for dkv integration tests: node processes, clusters and HTTP clients.

Everything here is plain standard library so cluster tests can reuse it: `Node` runs one dkv
process, `Cluster` runs N of them with one --cluster list, `Client` is a keep-alive HTTP client
built on http.client, and `RawConn` speaks HTTP/1.1 over a bare socket for malformed, pipelined
or slowly read traffic and checks response framing exactly (one chunk at a time).

DESIGN: every blocking call has a bound. Sockets get timeouts, waits are loops against a
monotonic deadline, and child processes are stopped with a timeout and then killed. Children also
get PR_SET_PDEATHSIG so they die with the test runner even if it is killed by a hard timeout.
"""

from __future__ import annotations

import ctypes
import http.client
import os
import re
import select
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterable, NamedTuple

REPO_ROOT = Path(__file__).resolve().parents[2]
DKV_BIN = os.environ.get("DKV_BIN", str(REPO_ROOT / "build" / "dkv"))
HOST = "127.0.0.1"

# Generous enough for an ASan build on a loaded 2-core machine; every wait is a poll, so a healthy
# server never makes a test wait this long.
IO_TIMEOUT_S = float(os.environ.get("DKV_TEST_IO_TIMEOUT_S", "10"))
START_TIMEOUT_S = float(os.environ.get("DKV_TEST_START_TIMEOUT_S", "30"))
STOP_TIMEOUT_S = float(os.environ.get("DKV_TEST_STOP_TIMEOUT_S", "20"))

MIB = 1 << 20
KIB = 1 << 10

SANITIZER_MARKERS = (
    b"ERROR: AddressSanitizer",
    b"ERROR: LeakSanitizer",
    b"runtime error:",  # UBSan
    b"ThreadSanitizer",
)


# --------------------------------------------------------------------------------------------
# Small utilities
# --------------------------------------------------------------------------------------------


def to_bytes(x: bytes | str | int) -> bytes:
    if isinstance(x, bytes):
        return x
    if isinstance(x, bytearray):
        return bytes(x)
    return str(x).encode()


def pct(data: bytes | str) -> str:
    """Percent-encodes every byte as %XX, so any key (NUL, '&', '=', '%', 0xFF) is safe."""
    return "".join("%%%02X" % b for b in to_bytes(data))


def entity_target(key: bytes | str | None, *params: str, **kw) -> str:
    """Builds `/v0/entity?id=<pct(key)>[&p...]`.

    `params` are raw `name=value` strings appended as given (tests use them for malformed input);
    `kw` are appended as `name=value` without encoding, in order. key=None omits `id`.
    """
    parts = []
    if key is not None:
        parts.append("id=" + pct(key))
    parts.extend(params)
    parts.extend("%s=%s" % (k, v) for k, v in kw.items())
    return "/v0/entity?" + "&".join(parts)


def entities_target(start: bytes | str | None, end: bytes | str | None = None, *params: str) -> str:
    parts = []
    if start is not None:
        parts.append("start=" + pct(start))
    if end is not None:
        parts.append("end=" + pct(end))
    parts.extend(params)
    return "/v0/entities" + ("?" + "&".join(parts) if parts else "")


class Deadline:
    """A monotonic deadline; `remaining()` never goes below a small positive floor."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def remaining(self, floor: float = 0.001) -> float:
        return max(floor, self.end - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self.end


def wait_until(pred, timeout_s: float, interval_s: float = 0.02, what: str = "condition"):
    """Polls `pred()` until it returns a truthy value (returned) or raises TimeoutError."""
    dl = Deadline(timeout_s)
    while True:
        v = pred()
        if v:
            return v
        if dl.expired():
            raise TimeoutError("timed out after %.1fs waiting for %s" % (timeout_s, what))
        time.sleep(interval_s)


_used_ports: set[int] = set()


def free_port() -> int:
    """An ephemeral port that was free a moment ago (bind 0, close). Callers retry on a race."""
    for _ in range(100):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        finally:
            s.close()
        if port not in _used_ports:
            _used_ports.add(port)
            return port
    raise RuntimeError("no free port found")


def port_refuses(port: int, timeout_s: float = 2.0) -> bool:
    try:
        s = socket.create_connection((HOST, port), timeout=timeout_s)
    except ConnectionRefusedError:
        return True
    s.close()
    return False


# PR_SET_PDEATHSIG: resolved before any fork so the child runs no Python import machinery.
try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _prctl = _libc.prctl
except (OSError, AttributeError):  # pragma: no cover - non-Linux
    _prctl = None


def _child_setup():
    if _prctl is not None:
        _prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


# --------------------------------------------------------------------------------------------
# HTTP over http.client
# --------------------------------------------------------------------------------------------


class Response(NamedTuple):
    status: int
    headers: dict  # lower-case name -> value (last one wins)
    body: bytes


class Client:
    """Keep-alive HTTP/1.1 client for one node. Not thread-safe: one per thread."""

    def __init__(self, port: int, host: str = HOST, timeout_s: float = IO_TIMEOUT_S):
        self.host = host
        self.port = port
        self.conn = http.client.HTTPConnection(host, port, timeout=timeout_s)

    def request(self, method: str, target: str, body: bytes | None = None,
                headers: dict | None = None) -> Response:
        self.conn.request(method, target, body=body, headers=headers or {})
        r = self.conn.getresponse()
        data = r.read()
        hdrs = {k.lower(): v for k, v in r.getheaders()}
        return Response(r.status, hdrs, data)

    # Convenience wrappers; `key` is bytes or str and is percent-encoded byte by byte.
    def status(self) -> Response:
        return self.request("GET", "/v0/status")

    def get(self, key, *params, **kw) -> Response:
        return self.request("GET", entity_target(key, *params, **kw))

    def put(self, key, value: bytes | str, *params, **kw) -> Response:
        return self.request("PUT", entity_target(key, *params, **kw), body=to_bytes(value))

    def delete(self, key, *params, **kw) -> Response:
        return self.request("DELETE", entity_target(key, *params, **kw))

    def entities(self, start, end=None, *params) -> Response:
        return self.request("GET", entities_target(start, end, *params))

    @property
    def sock(self):
        return self.conn.sock

    def close(self):
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------------------------
# HTTP over a raw socket
# --------------------------------------------------------------------------------------------


class FramingError(AssertionError):
    """The server sent bytes that are not a well-framed HTTP/1.1 response."""


class RawResponse(NamedTuple):
    version: bytes
    status: int
    reason: bytes
    headers: list  # [(lower-case name: str, value: str)]
    body: bytes
    chunks: list | None  # chunk payloads (without the last chunk) when chunked, else None

    def header(self, name: str, default=None):
        name = name.lower()
        for k, v in self.headers:
            if k == name:
                return v
        return default

    def header_all(self, name: str) -> list:
        name = name.lower()
        return [v for k, v in self.headers if k == name]

    @property
    def closes(self) -> bool:
        return any("close" in v.lower() for v in self.header_all("connection"))


def http_request(method: str, target: str, body: bytes | None = None,
                 headers: Iterable[tuple[str, str]] | dict | None = None,
                 chunks: list[bytes] | None = None, host: str = "dkv") -> bytes:
    """Serialises one HTTP/1.1 request. `chunks` sends the body with chunked encoding."""
    if isinstance(headers, dict):
        headers = list(headers.items())
    lines = ["%s %s HTTP/1.1" % (method, target), "Host: %s" % host]
    lines += ["%s: %s" % kv for kv in (headers or [])]
    payload = b""
    if chunks is not None:
        lines.append("Transfer-Encoding: chunked")
        payload = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks if c) + b"0\r\n\r\n"
    elif body is not None:
        lines.append("Content-Length: %d" % len(body))
        payload = body
    elif method in ("PUT", "POST", "PATCH"):
        lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload


_CHUNK_SIZE_RE = re.compile(rb"^([0-9A-Fa-f]+)[ \t]*(;.*)?$")


class RawConn:
    """One TCP connection with a read buffer and a strict HTTP/1.1 response parser."""

    def __init__(self, port: int, host: str = HOST, timeout_s: float = IO_TIMEOUT_S,
                 rcvbuf: int | None = None):
        self.timeout_s = timeout_s
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.settimeout(timeout_s)
        s.connect((host, port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = s
        self.buf = bytearray()
        self.eof = False

    # -- sending --
    def send(self, data: bytes):
        self.sock.sendall(data)

    def request(self, method: str, target: str, body: bytes | None = None, **kw) -> RawResponse:
        self.send(http_request(method, target, body, **kw))
        return self.read_response(head=(method == "HEAD"))

    # -- receiving --
    def _fill(self, n: int = 65536) -> bool:
        if self.eof:
            return False
        data = self.sock.recv(n)
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def _read_line(self, limit: int = 64 * KIB) -> bytes:
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[: i + 2]
                return line
            if len(self.buf) > limit:
                raise FramingError("line longer than %d bytes: %r" % (limit, bytes(self.buf[:200])))
            if not self._fill():
                raise FramingError("connection closed mid-line, have %r" % bytes(self.buf[:200]))

    def _read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill(max(65536, n - len(self.buf))):
                raise FramingError("connection closed: wanted %d body bytes, have %d"
                                   % (n, len(self.buf)))
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def read_head(self):
        """Reads a status line and headers. Raises EOFError if the peer closed before a byte."""
        if not self.buf and not self._fill():
            raise EOFError("connection closed before a response")
        line = self._read_line()
        m = re.match(rb"^(HTTP/1\.[01]) (\d{3})(?: (.*))?$", line)
        if not m:
            raise FramingError("bad status line %r" % line)
        headers = []
        while True:
            h = self._read_line()
            if h == b"":
                break
            if b":" not in h:
                raise FramingError("bad header line %r" % h)
            k, v = h.split(b":", 1)
            headers.append((k.decode("latin-1").strip().lower(), v.decode("latin-1").strip()))
        return m.group(1), int(m.group(2)), m.group(3) or b"", headers

    def iter_chunks(self):
        """After read_head() of a chunked response: yields each chunk payload, then trailers."""
        while True:
            size_line = self._read_line()
            m = _CHUNK_SIZE_RE.match(size_line)
            if not m:
                raise FramingError("bad chunk size line %r" % size_line)
            size = int(m.group(1), 16)
            if size == 0:
                while self._read_line() != b"":  # trailers
                    pass
                return
            data = self._read_exact(size)
            crlf = self._read_exact(2)
            if crlf != b"\r\n":
                raise FramingError("chunk of %d bytes not followed by CRLF but %r" % (size, crlf))
            yield data

    def read_response(self, head: bool = False) -> RawResponse:
        version, status, reason, headers = self.read_head()
        te = [v.lower() for k, v in headers if k == "transfer-encoding"]
        cl = [v for k, v in headers if k == "content-length"]
        chunks = None
        if te and cl:
            raise FramingError("both Transfer-Encoding and Content-Length: %r" % headers)
        if head or status in (204, 304) or 100 <= status < 200:
            body = b""
        elif te:
            if te[-1] != "chunked":
                raise FramingError("unsupported Transfer-Encoding %r" % te)
            chunks = list(self.iter_chunks())
            body = b"".join(chunks)
        elif cl:
            if len(set(cl)) != 1 or not cl[0].isdigit():
                raise FramingError("bad Content-Length %r" % cl)
            body = self._read_exact(int(cl[0]))
        else:
            raise FramingError("response %d has neither Content-Length nor chunked framing: %r"
                               % (status, headers))
        return RawResponse(version, status, reason, headers, body, chunks)

    def read_final_response(self) -> RawResponse:
        """Like read_response(), skipping interim 1xx responses (e.g. 100 Continue)."""
        while True:
            r = self.read_response()
            if r.status >= 200:
                return r

    def wait_closed(self, timeout_s: float) -> bytes:
        """Reads until the peer closes (EOF or reset) and returns what arrived meanwhile.

        Raises TimeoutError if the connection is still open after `timeout_s`.
        """
        dl = Deadline(timeout_s)
        got = bytes(self.buf)
        self.buf.clear()
        while not self.eof:
            if dl.expired():
                raise TimeoutError("connection still open after %.1fs (got %r)"
                                   % (timeout_s, got[:200]))
            self.sock.settimeout(min(0.2, dl.remaining()))
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except (ConnectionResetError, BrokenPipeError):
                break
            finally:
                self.sock.settimeout(self.timeout_s)
            if not data:
                self.eof = True
            got += data
        return got

    def is_open_now(self) -> bool:
        """True if nothing (no data, no EOF) is pending on the socket right now."""
        r, _, _ = select.select([self.sock], [], [], 0)
        return not r

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def parse_records(chunks: list[bytes]) -> list[tuple[bytes, bytes]]:
    """Splits /v0/entities chunk payloads `key\\nvalue` into (key, value) pairs."""
    out = []
    for c in chunks:
        if b"\n" not in c:
            raise FramingError("range chunk without a newline: %r" % c[:200])
        k, v = c.split(b"\n", 1)
        out.append((k, v))
    return out


def local_records(node: "Node", start: bytes, end: bytes | None = None,
                  timeout_s: float = IO_TIMEOUT_S) -> dict[bytes, bytes]:
    """The node's own live records in [start, end) (to the last key without `end`) through
    `GET /v0/entities`, checking the framing strictly: chunked with one record per chunk (or an
    empty body), keys in order and each once."""
    with node.raw(timeout_s=timeout_s) as c:
        r = c.request("GET", entities_target(start, end))
    assert r.status == 200, (node.name, r.status, r.body[:200])
    if r.chunks is None:
        assert r.body == b"", "non-chunked range response with a body: %r" % r.body[:200]
        return {}
    recs = parse_records(r.chunks)
    keys = [k for k, _ in recs]
    assert keys == sorted(keys), "%s: range not in key order" % node.name
    assert len(set(keys)) == len(keys), "%s: a key appears twice in the range" % node.name
    return dict(recs)


def local_value(node: "Node", key: bytes) -> bytes | None:
    """The node's own live value of `key` (None: absent or a tombstone), via local_records()."""
    recs = local_records(node, key, key + b"\x00")
    assert set(recs) <= {key}, recs
    return recs.get(key)


def bulk_put(port: int, items: list[tuple[bytes, bytes]], batch: int = 64) -> None:
    """PUTs many records fast: `batch` pipelined requests per write on one connection."""
    with RawConn(port) as c:
        for i in range(0, len(items), batch):
            part = items[i: i + batch]
            c.send(b"".join(http_request("PUT", entity_target(k), v) for k, v in part))
            for k, _ in part:
                r = c.read_response()
                if r.status != 201:
                    raise AssertionError("PUT %r -> %d %r" % (k[:60], r.status, r.body[:200]))


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


class NodeStartError(RuntimeError):
    def __init__(self, msg: str, node: "Node", returncode: int | None):
        super().__init__(msg)
        self.node = node
        self.returncode = returncode

    @property
    def bind_failed(self) -> bool:
        tail = self.node.log_bytes()[-4096:].lower()
        return any(m in tail for m in (b"in use", b"eaddrinuse", b"bind"))


def run_dkv(args: list[str], cwd: Path | str, timeout_s: float = IO_TIMEOUT_S
            ) -> subprocess.CompletedProcess:
    """Runs the binary to completion (for --help, bad flags...) in `cwd`, with a timeout."""
    return subprocess.run([DKV_BIN, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          stdin=subprocess.DEVNULL, cwd=str(cwd), timeout=timeout_s,
                          preexec_fn=_child_setup)


class Node:
    """One dkv process. Start/stop/kill/restart keep its port, URL, cluster list and data dir.

    Call start()/restart() from the main thread: PR_SET_PDEATHSIG is tied to the forking thread.
    """

    all_nodes: list["Node"] = []  # every node ever created, for log reporting by the fixtures

    def __init__(self, name: str, port: int, cluster_urls: list[str], data_dir: Path,
                 log_path: Path, extra_args: Iterable[str] = (), host: str = HOST,
                 env: dict | None = None):
        self.name = name
        self.host = host
        self.port = port
        self.cluster_urls = list(cluster_urls)
        self.data_dir = Path(data_dir)
        self.log_path = Path(log_path)
        self.extra_args = list(extra_args)
        # Extra environment of the process (e.g. faketime_env()); applies from the next start.
        self.env: dict = dict(env or {})
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.last_returncode: int | None = None
        self.expected_dead = False  # set after a deliberate stop/kill: teardown does not complain
        Node.all_nodes.append(self)

    @property
    def url(self) -> str:
        return "http://%s:%d" % (self.host, self.port)

    def argv(self) -> list[str]:
        return [DKV_BIN, "--listen", "%s:%d" % (self.host, self.port), "--self", self.url,
                "--cluster", ",".join(self.cluster_urls), "--data", str(self.data_dir),
                *self.extra_args]

    # -- lifecycle --
    def spawn(self):
        assert not self.running(), "%s already running" % self.name
        self.starts += 1
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            env_note = "".join("%s=%s " % kv for kv in sorted(self.env.items()))
            log.write(b"=== %s start #%d: %s%s\n" % (self.name.encode(), self.starts,
                                                     env_note.encode(),
                                                     " ".join(self.argv()).encode()))
            log.flush()
            # cwd is the node's own directory, so stray files never land in the repository.
            self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=log, cwd=str(self.log_path.parent),
                                         env=dict(os.environ, **self.env) if self.env else None,
                                         preexec_fn=_child_setup)
        self.expected_dead = False

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S):
        """Polls GET /v0/status until 200; fails fast if the process exits."""
        dl = Deadline(timeout_s)
        last = "no answer"
        while True:
            rc = self.proc.poll()
            if rc is not None:
                self.last_returncode = rc
                raise NodeStartError("%s exited with %d before ready; log tail:\n%s"
                                     % (self.name, rc, self.log_tail()), self, rc)
            try:
                with Client(self.port, self.host, timeout_s=min(2.0, dl.remaining(0.1))) as c:
                    r = c.status()
                if r.status == 200:
                    return
                last = "status %d" % r.status
            except (OSError, http.client.HTTPException) as e:
                last = repr(e)
            if dl.expired():
                raise NodeStartError("%s not ready after %.1fs (%s); log tail:\n%s"
                                     % (self.name, timeout_s, last, self.log_tail()), self, None)
            time.sleep(0.02)

    def start(self, timeout_s: float = START_TIMEOUT_S, bind_retry_s: float = 5.0):
        """Starts and waits until ready. A bind failure (port still busy) is retried briefly."""
        dl = Deadline(bind_retry_s)
        while True:
            self.spawn()
            try:
                self.wait_ready(timeout_s)
                return self
            except NodeStartError as e:
                if e.returncode is None or not e.bind_failed or dl.expired():
                    self.kill()
                    raise
            time.sleep(0.1)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, timeout_s: float = STOP_TIMEOUT_S, sig=signal.SIGTERM) -> int:
        """Sends SIGTERM (or `sig`) and waits; kills -9 and raises if it does not exit in time."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT_S)
                self.last_returncode = self.proc.returncode
                raise AssertionError("%s did not exit within %.1fs of %s; killed"
                                     % (self.name, timeout_s, signal.Signals(sig).name))
        self.expected_dead = True
        self.last_returncode = self.proc.returncode
        return self.proc.returncode

    def kill(self) -> int | None:
        """SIGKILL and reap."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT_S)
        self.expected_dead = True
        self.last_returncode = self.proc.returncode
        return self.proc.returncode

    def restart(self, kill: bool = False, timeout_s: float = START_TIMEOUT_S):
        if kill:
            self.kill()
        else:
            rc = self.stop()
            assert rc == 0, "%s exited with %d on SIGTERM; log tail:\n%s" % (
                self.name, rc, self.log_tail())
        return self.start(timeout_s)

    def close(self) -> list[str]:
        """Teardown: stops the node if running. Returns problems found (exit code, sanitizers)."""
        problems = []
        if self.proc is None:
            return problems
        was_running = self.proc.poll() is None
        if was_running:
            try:
                rc = self.stop()
                if rc != 0:
                    problems.append("%s exited with %d on SIGTERM" % (self.name, rc))
            except AssertionError as e:
                problems.append(str(e))
        elif not self.expected_dead:
            problems.append("%s had died unexpectedly (rc %s)"
                            % (self.name, self.proc.returncode))
        self.kill()
        if self.sanitizer_report():
            problems.append("%s: sanitizer report in log" % self.name)
        return problems

    # -- clients --
    def client(self, timeout_s: float = IO_TIMEOUT_S) -> Client:
        return Client(self.port, self.host, timeout_s)

    def raw(self, timeout_s: float = IO_TIMEOUT_S, rcvbuf: int | None = None) -> RawConn:
        return RawConn(self.port, self.host, timeout_s, rcvbuf)

    # -- logs --
    def log_bytes(self, offset: int = 0) -> bytes:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read()
        except FileNotFoundError:
            return b""

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_tail(self, max_bytes: int = 16 * KIB, offset: int = 0) -> str:
        data = self.log_bytes(offset)
        if len(data) > max_bytes:
            data = b"[... %d bytes cut ...]\n" % (len(data) - max_bytes) + data[-max_bytes:]
        return data.decode("utf-8", "replace")

    def sanitizer_report(self, offset: int = 0) -> bool:
        data = self.log_bytes(offset)
        return any(m in data for m in SANITIZER_MARKERS)

    def __repr__(self):
        return "<Node %s %s>" % (self.name, self.url)


class Cluster:
    """N nodes sharing one --cluster list; node i lives in base_dir/node<i>.

    start() picks fresh ports and, if a port was taken in the meantime (bind race), retries with
    new ports. Nodes are spawned all at once and then waited for, so start-up never depends on
    the order in which peers come up.
    """

    def __init__(self, base_dir: Path, n: int, extra_args: Iterable[str] = (),
                 per_node_args: dict[int, list[str]] | None = None, name: str = "node",
                 per_node_env: dict[int, dict] | None = None):
        self.base_dir = Path(base_dir)
        self.n = n
        self.extra_args = list(extra_args)
        self.per_node_args = per_node_args or {}
        self.per_node_env = per_node_env or {}
        self.name = name
        self.nodes: list[Node] = []

    @property
    def urls(self) -> list[str]:
        return [nd.url for nd in self.nodes]

    def prepare(self):
        """Picks ports and creates the Node objects without starting any process."""
        ports = [free_port() for _ in range(self.n)]
        urls = ["http://%s:%d" % (HOST, p) for p in ports]
        self.nodes = []
        for i, p in enumerate(ports):
            d = self.base_dir / ("%s%d" % (self.name, i))
            self.nodes.append(Node("%s%d" % (self.name, i), p, urls, d / "data", d / "dkv.log",
                                   self.extra_args + self.per_node_args.get(i, []),
                                   env=self.per_node_env.get(i)))

    def start(self, attempts: int = 4, timeout_s: float = START_TIMEOUT_S,
              only: Iterable[int] | None = None) -> "Cluster":
        """Starts all nodes (or the indexes in `only`; the others stay down but are listed in
        --cluster) and waits until each answers /v0/status."""
        for attempt in range(attempts):
            self.prepare()
            todo = [self.nodes[i] for i in only] if only is not None else self.nodes
            try:
                for nd in todo:
                    nd.spawn()
                for nd in todo:
                    nd.wait_ready(timeout_s)
                return self
            except NodeStartError as e:
                for nd in self.nodes:
                    nd.kill()
                if e.returncode is None or not e.bind_failed or attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def __getitem__(self, i: int) -> Node:
        return self.nodes[i]

    def __len__(self):
        return len(self.nodes)

    def __iter__(self):
        return iter(self.nodes)

    def close(self) -> list[str]:
        problems = []
        for nd in self.nodes:
            problems += nd.close()
        return problems


FAKETIME_LIBS = ("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
                 "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
                 "/usr/lib/faketime/libfaketimeMT.so.1")


def faketime_lib() -> str | None:
    """The multi-threaded libfaketime (Debian package `faketime`), or None when not installed."""
    for p in FAKETIME_LIBS:
        if os.path.exists(p):
            return p
    return None


def faketime_env(offset: str) -> dict:
    """Environment that runs a node with its wall clock shifted by `offset` (libfaketime syntax:
    "+1h", "-30s"). Only the wall clock moves: monotonic clocks (timers, timeouts) are left
    alone, and an ASan build accepts libfaketime loaded ahead of its runtime."""
    lib = faketime_lib()
    assert lib is not None, "libfaketime not installed (scripts/install-deps.sh installs it)"
    return {"LD_PRELOAD": lib, "FAKETIME": offset, "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            "ASAN_OPTIONS": ":".join(filter(None, [os.environ.get("ASAN_OPTIONS", ""),
                                                   "verify_asan_link_order=0"]))}


def sigstop(pid: int, timeout_s: float = IO_TIMEOUT_S) -> None:
    """SIGSTOPs process `pid` and returns once every one of its threads is stopped.

    kill(2) only queues the signal: a thread busy on another core may still answer a request or
    two. Waiting for the 'T' state of each thread in /proc makes "the node is hung" a fact.
    """
    os.kill(pid, signal.SIGSTOP)

    def all_stopped() -> bool:
        try:
            tids = os.listdir("/proc/%d/task" % pid)
        except FileNotFoundError:
            return True
        for tid in tids:
            try:
                with open("/proc/%d/task/%s/stat" % (pid, tid)) as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
            except (FileNotFoundError, IndexError):
                continue
            if state not in ("T", "t"):
                return False
        return True

    wait_until(all_stopped, timeout_s, interval_s=0.001, what="pid %d to stop" % pid)
