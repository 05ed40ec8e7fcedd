"""Write-ahead log durability beyond a clean kill -9: a torn final WAL record (a write cut off by a
crash half-way through) must be detected by its checksum and discarded at start-up, keeping
every record before it (API.md §11)."""

from pathlib import Path

import dkvharness as h


def _newest_wal(data_dir: Path) -> Path:
    logs = sorted((data_dir / "db").glob("*.log"), key=lambda p: p.stat().st_mtime)
    assert logs, "no write-ahead log file in %s" % (data_dir / "db")
    return logs[-1]


def test_torn_final_wal_record_is_discarded_and_earlier_writes_survive(fresh_node):
    node = fresh_node
    with node.client() as c:
        for i in range(200):
            assert c.put(b"torn-%03d" % i, b"value-%03d" % i).status == 201
        assert c.put(b"torn-last", b"x" * 4096).status == 201
    node.kill()

    wal = _newest_wal(node.data_dir)
    size = wal.stat().st_size
    assert size > 4096, "the last write should be in the WAL (size %d)" % size
    # Cut the last record in the middle, as a crash during its write(2) would.
    with open(wal, "r+b") as f:
        f.truncate(size - 1000)

    node.start()
    with node.client() as c:
        for i in range(200):
            r = c.get(b"torn-%03d" % i)
            assert (r.status, r.body) == (200, b"value-%03d" % i), "key torn-%03d lost" % i
        assert c.get(b"torn-last").status == 404, "a torn record must be discarded, not half-read"
        # The node keeps working after the recovery, and the new write is durable too.
        assert c.put(b"torn-after", b"ok").status == 201
    node.kill()
    node.start()
    with node.client() as c:
        assert c.get(b"torn-after").body == b"ok"


def test_garbage_appended_to_the_wal_does_not_stop_the_node(fresh_node):
    node = fresh_node
    with node.client() as c:
        assert c.put(b"g-key", b"g-value").status == 201
    node.kill()
    with open(_newest_wal(node.data_dir), "ab") as f:
        f.write(b"\xde\xad\xbe\xef" * 64)
    node.start()
    with node.client() as c:
        r = c.get(b"g-key")
        assert (r.status, r.body) == (200, b"g-value")
