"""A node whose data directory runs out of space: writes answer 507, reads go on, nothing crashes,
and writes resume by themselves once space returns, with every acknowledged write kept.

The data directory is a 64 MiB tmpfs (mounting needs root: the tests skip otherwise), filled to
the brim with a filler file; deleting the filler gives the space back. The node checks for space
every second (main.c), so every wait below is a poll against a deadline.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess

import pytest

import dkvharness as h

TMPFS_SIZE = "64m"
RESUME_TIMEOUT_S = 20.0  # the node checks every second; ASan reopens take well under that
VALUE = b"v" * 4096  # large enough to fill the write-ahead log's last page quickly


class DiskFull:
    """A tmpfs mounted at node0's data directory of a cluster under `base`, plus its filler."""

    def __init__(self, base):
        self.base = base
        self.data = base / "node0" / "data"  # where h.Cluster puts node 0's data
        self.filler = self.data / "filler"
        self.mounted = False
        self.clusters: list[h.Cluster] = []

    def mount(self):
        self.data.mkdir(parents=True)
        if os.geteuid() != 0:
            pytest.skip("disk-full tests mount a tmpfs, which needs root")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=" + TMPFS_SIZE, "tmpfs",
                            str(self.data)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=h.IO_TIMEOUT_S)
        if r.returncode != 0:
            pytest.skip("cannot mount a tmpfs here (%s): disk-full tests skipped"
                        % r.stderr.decode(errors="replace").strip())
        self.mounted = True

    def cluster(self, n: int) -> h.Cluster:
        c = h.Cluster(self.base, n)
        self.clusters.append(c)
        return c.start()

    def fill(self):
        """Writes the filler until the file system says ENOSPC, down to single pages."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            for chunk in (1 << 20, 4096, 1):
                buf = b"\0" * chunk
                while True:
                    try:
                        os.write(fd, buf)
                    except OSError as e:
                        if e.errno != errno.ENOSPC:
                            raise
                        break
        finally:
            os.close(fd)
        st = os.statvfs(self.data)
        assert st.f_bavail == 0, "tmpfs still has %d free blocks" % st.f_bavail

    def free(self):
        self.filler.unlink()

    def close(self) -> list[str]:
        problems = []
        for c in self.clusters:
            problems += c.close()
        if self.mounted:
            subprocess.run(["umount", str(self.data)], timeout=h.IO_TIMEOUT_S)
        return problems


@pytest.fixture
def disk(tmp_path):
    d = DiskFull(tmp_path / "c")
    d.mount()
    yield d
    problems = d.close()
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


def storage(node: h.Node) -> dict:
    with node.client() as c:
        r = c.request("GET", "/v0/status?verbose=1")
    assert r.status == 200
    return json.loads(r.body)["storage"]


def put_until_refused(c: h.Client, acked: dict, prefix: str, refused: int = 507,
                      max_puts: int = 400, **kw) -> h.Response:
    """PUTs new keys until one gets `refused`, which is returned; every answer before is 201
    (recorded in `acked`)."""
    for i in range(max_puts):
        key = "%s-%d" % (prefix, i)
        r = c.put(key, VALUE + key.encode(), **kw)
        if r.status == refused:
            return r
        assert r.status == 201, "PUT %s: %d %r" % (key, r.status, r.body)
        acked[key] = VALUE + key.encode()
    raise AssertionError("no %d after %d PUTs on a full disk" % (refused, max_puts))


def assert_all_readable(node: h.Node, acked: dict, **kw):
    with node.client() as c:
        for key, value in acked.items():
            r = c.get(key, **kw)
            assert (r.status, r.body) == (200, value), "GET %s after the disk filled up" % key


def wait_writable(c: h.Client, key: str, refused: int = 507, **kw) -> None:
    """Polls PUTs of `key` until one is 201; until then each must be `refused`."""

    def put_ok():
        r = c.put(key, b"after", **kw)
        assert r.status in (201, refused), "PUT while resuming: %d %r" % (r.status, r.body)
        return r.status == 201

    h.wait_until(put_ok, RESUME_TIMEOUT_S, interval_s=0.1, what="writes to resume")


def test_full_disk_refuses_writes_with_507_serves_reads_and_resumes(disk):
    node = disk.cluster(1)[0]
    acked: dict = {}
    log_start = node.log_size()
    with node.client() as c:
        for i in range(20):
            key = "early-%d" % i
            assert c.put(key, VALUE + key.encode()).status == 201
            acked[key] = VALUE + key.encode()
        assert c.delete("early-0").status == 202
        del acked["early-0"]
        disk.fill()
        r = put_until_refused(c, acked, "filling")
        # The write went into the WAL buffer; the flush before the answer failed, and the 201
        # waiting for it was turned into this 507.
        assert b"could not be made durable" in r.body, r

        # Refused from now on, whatever the write: never a 201, never a dropped connection.
        for i in range(20):
            r = c.put("refused-%d" % i, b"x")
            assert r.status == 507, r
            assert b"Insufficient Storage" in r.body
        assert c.delete("early-1").status == 507
        assert node.running()

        # Reads go on, the status says why, and the log said it once, not once per request.
        assert_all_readable(node, acked)
        assert c.get("refused-3").status == 404
        assert c.get("early-0").status == 404
        assert c.status().status == 200
        st = storage(node)
        assert st["writable"] is False and st["no_space"] is True, st
        assert "No space left on device" in st["error"], st
        assert st["write_errors"] >= 21 and st["since_ms"] > 0, st
        log = node.log_bytes(log_start)
        assert log.count(b"writes are refused") == 1, log.decode(errors="replace")

        disk.free()
        wait_writable(c, "resumed")
        acked["resumed"] = b"after"
        st = storage(node)
        assert st["writable"] is True and st["error"] is None and st["resumes"] == 1, st
        for i in range(20):
            key = "later-%d" % i
            assert c.put(key, key).status == 201
            acked[key] = key.encode()
        assert c.delete("early-1").status == 202
        del acked["early-1"]

    assert_all_readable(node, acked)
    node.restart(kill=True)
    assert_all_readable(node, acked)
    with node.client() as c:
        assert c.get("early-0").status == 404
        assert c.get("early-1").status == 404
        assert c.put("after-restart", b"z").status == 201
    assert node.sanitizer_report() is False


def test_restart_while_disk_is_full_serves_reads_and_resumes(disk):
    node = disk.cluster(1)[0]
    acked: dict = {}
    with node.client() as c:
        for i in range(10):
            key = "k-%d" % i
            assert c.put(key, key).status == 201
            acked[key] = key.encode()
        disk.fill()
        put_until_refused(c, acked, "filling")

    # Killed and started again on the full disk: it comes up (no abort), serves reads, refuses
    # writes; also after a plain SIGTERM stop, which flushes nothing it could not.
    for kill in (True, False):
        node.restart(kill=kill)
        assert_all_readable(node, acked)
        with node.client() as c:
            assert c.put("while-full", b"x").status == 507
        assert storage(node)["writable"] is False

    disk.free()
    with node.client() as c:
        wait_writable(c, "resumed")
    acked["resumed"] = b"after"
    node.restart(kill=True)
    assert_all_readable(node, acked)


def test_full_replica_in_a_cluster(disk):
    """Node 0 of three is full: through it a write that needs it answers 507 (its own disk),
    through a peer 504 (a replica failed); writes that reach ack elsewhere succeed. The disk
    fills under writes coordinated by node 1, so node 0's first failure is a WAL flush after
    it encoded its PUT_REPLY OK, which must reach node 1 as an error."""
    cl = disk.cluster(3)
    n0, n1 = cl[0], cl[1]
    acked: dict = {}
    with n0.client() as c0, n1.client() as c1:
        assert c0.put("before", b"b", ack=3, **{"from": 3}).status == 201
        acked["before"] = b"b"
        disk.fill()
        put_until_refused(c1, acked, "filling", refused=504, ack=3, **{"from": 3})
        assert storage(n0)["no_space"] is True

        assert c0.put("k", b"x", ack=3, **{"from": 3}).status == 507
        assert c1.put("k", b"x", ack=3, **{"from": 3}).status == 504
        assert c0.put("k2", b"y").status == 201  # ack=2: the two peers
        acked["k2"] = b"y"
        assert c1.get("before", ack=3, **{"from": 3}).status == 200  # node 0 still reads
        assert n0.running()

        disk.free()
        wait_writable(c1, "resumed", refused=504, ack=3, **{"from": 3})
        acked["resumed"] = b"after"
    for nd in cl:
        assert_all_readable(nd, acked, ack=2, **{"from": 3})
