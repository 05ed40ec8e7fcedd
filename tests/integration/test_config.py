"""Configuration and deployment: --replication-factor, --config FILE, `make install`, and
backups with POST /v0/admin/checkpoint (and the restore procedure of docs/deploy.md).

A 5-node cluster with --replication-factor 3 keeps exactly 3 copies of a default write and
reads them with a quorum of those 3; a request may still ask for up to N. A node starts from a
config file alone, flags override it, and a bad line stops it with file:line. `make install`
stages exactly the binary, the systemd unit and the sample config. A checkpoint is a database a
node opens; a checkpoint restored into a cluster node rebuilds it from its peers before it
answers reads.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import dkvharness as h

REPO = h.REPO_ROOT


def status(nd: h.Node) -> dict:
    with nd.client() as cl:
        r = cl.request("GET", "/v0/status?verbose=1")
    assert r.status == 200, r
    return json.loads(r.body)


def wait_state(nd: h.Node, want: str, timeout_s: float = 20.0):
    h.wait_until(lambda: status(nd)["state"] == want, timeout_s,
                 what="%s to be %s" % (nd.name, want))


def holders(c: h.Cluster, key: bytes, value: bytes) -> list[int]:
    """Indexes of the running nodes whose own data holds `key` = `value`."""
    return [i for i, nd in enumerate(c) if nd.running() and h.local_value(nd, key) == value]


# --------------------------------------------------------------------------------------------
# --replication-factor
# --------------------------------------------------------------------------------------------


@pytest.mark.timeout_s(180)
def test_replication_factor_3_of_5_keeps_three_copies_and_reads_a_quorum_of_them(
        cluster_factory, uniq):
    c = cluster_factory(5, "--replication-factor", "3")
    for nd in c:
        wait_state(nd, "ready")
    assert status(c[0])["replication_factor"] == 3

    keys = [uniq("rf3-%d" % i) for i in range(20)]
    with c[0].client() as cl:
        for k in keys:
            assert cl.put(k, b"v-" + k).status == 201
    for k in keys:
        assert len(holders(c, k, b"v-" + k)) == 3, (k, holders(c, k, b"v-" + k))

    # A request may still ask for more copies, up to N, and not past it.
    k4 = uniq("from4")
    with c[1].client() as cl:
        assert cl.put(k4, b"four", **{"from": 4}).status == 201
        assert cl.get(k4, **{"from": 4}).body == b"four"
        assert cl.put(uniq("from6"), b"x", **{"from": 6}).status == 400
        assert cl.get(k4, **{"from": 6}).status == 400
        assert cl.get(k4, ack=4).status == 400  # ack > the default from (3)
        assert cl.get(k4, ack=4, **{"from": 5}).status in (200, 404)
    assert len(holders(c, k4, b"four")) == 4

    # The default read asks the key's 3 replicas and needs 2 of them (RF/2+1).
    key = keys[0]
    hold = holders(c, key, b"v-" + key)
    others = [i for i in range(5) if i not in hold]
    c[hold[0]].stop()
    with c[others[0]].client() as cl:
        r = cl.get(key)
        assert (r.status, r.body) == (200, b"v-" + key)
    c[hold[1]].stop()
    with c[others[0]].client() as cl:
        assert cl.get(key).status == 504  # 1 of the 3 replicas answers; 2 needed
        r = cl.get(key, ack=1)
        assert (r.status, r.body) == (200, b"v-" + key)


def test_replication_factor_outside_1_to_n_refuses_to_start(tmp_path):
    urls = ["http://127.0.0.1:%d" % p for p in (9101, 9102, 9103)]
    base = ["--listen", "127.0.0.1:9101", "--self", urls[0], "--cluster", ",".join(urls),
            "--data", str(tmp_path / "data")]
    r = h.run_dkv(base + ["--replication-factor", "4"], tmp_path)
    assert r.returncode == 2, r
    assert b"--replication-factor 4 is larger than the cluster" in r.stderr, r.stderr
    r = h.run_dkv(base + ["--replication-factor", "0"], tmp_path)
    assert r.returncode == 2, r
    assert b"--replication-factor" in r.stderr, r.stderr
    assert not (tmp_path / "data").exists()  # refused before touching anything


# --------------------------------------------------------------------------------------------
# --config FILE
# --------------------------------------------------------------------------------------------


class ConfigNode(h.Node):
    """A node whose command line is `dkv --config FILE [extra...]`: everything else, listen
    address and data directory included, comes from the file."""

    def __init__(self, name, port, config: Path, data_dir: Path, log_path: Path, extra=()):
        super().__init__(name, port, ["http://%s:%d" % (h.HOST, port)], data_dir, log_path,
                         extra)
        self.config = config

    def argv(self) -> list[str]:
        return [h.DKV_BIN, "--config", str(self.config), *self.extra_args]


@pytest.fixture
def config_nodes():
    made = []
    yield made
    problems = []
    for nd in made:
        problems += nd.close()
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


def test_node_starts_from_a_config_file_and_flags_override_it(dkv_bin, tmp_path, config_nodes):
    port = h.free_port()
    url = "http://%s:%d" % (h.HOST, port)
    cfg = tmp_path / "dkv.conf"
    cfg.write_text("# a test node\n"
                   "listen = %s:%d\n"
                   "self = %s\n"
                   "cluster = %s\n"
                   "\n"
                   "data = %s\n"
                   "max-body-bytes = 100\n"
                   "io-threads = 1\n"
                   "fsync = on\n" % (h.HOST, port, url, url, tmp_path / "data"))
    nd = ConfigNode("cfg0", port, cfg, tmp_path / "data", tmp_path / "dkv.log")
    config_nodes.append(nd)
    nd.start()
    with nd.client() as cl:
        assert cl.put(b"k", b"x" * 100).status == 201
        assert cl.put(b"k", b"x" * 101).status == 413  # the file's limit
        assert cl.get(b"k").body == b"x" * 100
    assert (tmp_path / "data" / "db" / "CURRENT").exists()  # the file's data directory

    # A flag on the command line wins over the same setting in the file.
    nd.stop()
    nd.extra_args = ["--max-body-bytes", "200"]
    nd.start()
    with nd.client() as cl:
        assert cl.put(b"k", b"y" * 200).status == 201
        assert cl.put(b"k", b"y" * 201).status == 413
        assert cl.get(b"k").body == b"y" * 200


@pytest.mark.parametrize("text,line,reason", [
    ("data = d\n\nvnode = 3\n", 3, b"unknown setting 'vnode'"),
    ("# c\nlisten = 127.0.0.1:9\nmax-inflight = lots\n", 3,
     b"--max-inflight: 'lots' is not a whole number"),
    ("fsync = yes\n", 1, b"--fsync: 'yes' is not on or off"),
    ("vnodes = 8\nvnodes = 9\n", 2, b"'vnodes' is already set on line 1"),
    ("just words\n", 1, b"expected 'name = value'"),
])
def test_a_bad_config_line_stops_the_node_with_file_and_line(dkv_bin, tmp_path, text, line,
                                                             reason):
    cfg = tmp_path / "bad.conf"
    cfg.write_text(text)
    r = h.run_dkv(["--config", str(cfg), "--data", str(tmp_path / "data")], tmp_path)
    assert r.returncode == 2, r
    assert (b"%s:%d: " % (str(cfg).encode(), line)) in r.stderr, r.stderr
    assert reason in r.stderr, r.stderr
    assert not (tmp_path / "data").exists()


def test_the_sample_config_is_valid(dkv_bin, tmp_path, config_nodes):
    """packaging/dkv.conf parses, every line of it: started with only the host-specific lines
    overridden (flags win), the node serves."""
    port = h.free_port()
    url = "http://%s:%d" % (h.HOST, port)
    secret = tmp_path / "cluster.secret"
    secret.write_text("ab" * 32 + "\n")
    secret.chmod(0o600)
    nd = ConfigNode("sample", port, REPO / "packaging" / "dkv.conf", tmp_path / "data",
                    tmp_path / "dkv.log",
                    ["--listen", "%s:%d" % (h.HOST, port), "--self", url, "--cluster", url,
                     "--data", str(tmp_path / "data"), "--backup-dir", str(tmp_path / "bk"),
                     "--cluster-secret-file", str(secret)])
    config_nodes.append(nd)
    nd.start()
    with nd.client() as cl:
        assert cl.put(b"k", b"v").status == 201
        r = cl.request("POST", "/v0/admin/checkpoint?dir=one")
        assert r.status == 200, r


# --------------------------------------------------------------------------------------------
# make install
# --------------------------------------------------------------------------------------------


def make_install(tmp_path: Path, build_dir: Path, *args: str) -> Path:
    dest = tmp_path / "dest"
    r = subprocess.run(["make", "-C", str(REPO), "install", "DESTDIR=%s" % dest,
                        "BUILD_DIR=%s" % build_dir, *args],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    assert r.returncode == 0, r.stdout.decode()
    return dest


def files_under(root: Path) -> dict[str, int]:
    return {"/" + str(p.relative_to(root)): p.stat().st_mode & 0o777
            for p in root.rglob("*") if p.is_file()}


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_install_stages_binaries_unit_and_sample_config(dkv_bin, tmp_path):
    build = tmp_path / "build"
    build.mkdir()
    os.symlink(dkv_bin, build / "dkv")
    dest = make_install(tmp_path, build)
    assert files_under(dest) == {
        "/usr/local/bin/dkv": 0o755,
        "/etc/systemd/system/dkv.service": 0o644,
        "/etc/dkv/dkv.conf.sample": 0o644,
    }
    assert (dest / "etc/dkv/dkv.conf.sample").read_bytes() == \
        (REPO / "packaging/dkv.conf").read_bytes()
    unit = (dest / "etc/systemd/system/dkv.service").read_text()
    assert "ExecStart=/usr/local/bin/dkv --config /etc/dkv/dkv.conf\n" in unit
    r = subprocess.run([str(dest / "usr/local/bin/dkv"), "--version"], stdout=subprocess.PIPE,
                       timeout=30)
    assert r.returncode == 0 and r.stdout.startswith(b"dkv "), r

    # dkvctl goes along when the build has one; PREFIX moves the binaries and ExecStart.
    (build / "dkvctl").write_text("#!/bin/sh\necho dkvctl\n")
    (build / "dkvctl").chmod(0o755)
    shutil.rmtree(dest)
    dest = make_install(tmp_path, build, "PREFIX=/opt/dkv")
    assert set(files_under(dest)) == {"/opt/dkv/bin/dkv", "/opt/dkv/bin/dkvctl",
                                      "/etc/systemd/system/dkv.service",
                                      "/etc/dkv/dkv.conf.sample"}
    unit = (dest / "etc/systemd/system/dkv.service").read_text()
    assert "ExecStart=/opt/dkv/bin/dkv --config /etc/dkv/dkv.conf\n" in unit

    # Nothing to install: a clear failure, nothing staged.
    r = subprocess.run(["make", "-C", str(REPO), "install", "DESTDIR=%s" % (tmp_path / "d2"),
                        "BUILD_DIR=%s" % (tmp_path / "nothing")],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    assert r.returncode != 0 and b"run make build first" in r.stdout, r.stdout
    assert not (tmp_path / "d2").exists()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_unit_verifies(dkv_bin, tmp_path):
    # verify checks that ExecStart exists: point it at the binary under test.
    unit = (REPO / "packaging/dkv.service").read_text().replace("/usr/local/bin/dkv", dkv_bin)
    assert unit != (REPO / "packaging/dkv.service").read_text()
    (tmp_path / "dkv.service").write_text(unit)
    r = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "dkv.service")],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    assert r.returncode == 0 and b"dkv.service" not in r.stdout, r.stdout.decode()


# --------------------------------------------------------------------------------------------
# POST /v0/admin/checkpoint
# --------------------------------------------------------------------------------------------


def checkpoint(nd: h.Node, name: str) -> h.Response:
    with nd.client(timeout_s=60) as cl:
        return cl.request("POST", "/v0/admin/checkpoint?dir=" + name)


def test_checkpoint_is_forbidden_without_backup_dir(node):
    r = checkpoint(node, "c1")
    assert r.status == 403, r
    assert b"--backup-dir" in r.body
    with node.client() as cl:
        assert cl.request("GET", "/v0/admin/checkpoint?dir=c1").status == 405


def test_checkpoint_refuses_names_that_leave_the_backup_dir(node_factory, tmp_path):
    bk = tmp_path / "bk"
    nd = node_factory("--backup-dir", str(bk))
    assert bk.is_dir()  # created at start
    bad = ["..", ".", "%2E%2E", "a%2Fb", "%2Fetc", "..%2Fescape", ".hidden", "a..b", "", "x" * 129,
           "sp%20ace", "nul%00"]
    for name in bad:
        r = checkpoint(nd, name)
        assert r.status == 400, (name, r)
    with nd.client() as cl:
        assert cl.request("POST", "/v0/admin/checkpoint").status == 400  # no dir at all
    assert list(bk.iterdir()) == []
    assert list(tmp_path.glob("escape*")) == []
    assert checkpoint(nd, "x" * 128).status == 200  # the longest name is fine


@pytest.mark.timeout_s(120)
def test_checkpoint_is_a_database_a_node_serves(node_factory, cluster_factory, tmp_path):
    bk = tmp_path / "bk"
    nd = node_factory("--backup-dir", str(bk))
    before = [(b"before-%04d" % i, b"v%d" % i * 50) for i in range(500)]
    h.bulk_put(nd.port, before)
    with nd.client() as cl:
        for k, _ in before[:50]:
            assert cl.delete(k).status == 202
    r = checkpoint(nd, "snap-1")
    assert r.status == 200, r
    body = json.loads(r.body)
    assert body["checkpoint"] == str(bk / "snap-1") and body["elapsed_ms"] >= 0
    snap = bk / "snap-1"
    assert (snap / "CURRENT").is_file() and list(snap.glob("MANIFEST-*"))
    assert list(snap.glob("*.sst")), "the memtables were flushed into the checkpoint"
    assert checkpoint(nd, "snap-1").status == 409  # never overwritten
    with nd.client() as cl:
        assert cl.put(b"after", b"later").status == 201
        assert cl.get(b"before-0100").status == 200  # the node goes on serving

    # A node started on a copy (as its data directory's db) serves what the checkpoint held.
    c = cluster_factory(1, start=False)
    c.prepare()
    copy = c[0]
    shutil.copytree(snap, copy.data_dir / "db")
    copy.start()
    with copy.client() as cl:
        for k, v in before[50:]:
            r = cl.get(k)
            assert (r.status, r.body) == (200, v), k
        for k, _ in before[:50]:
            assert cl.get(k).status == 404
        assert cl.get(b"after").status == 404  # written after the checkpoint
    assert len(h.local_records(copy, b"before-")) == 450


@pytest.mark.timeout_s(180)
def test_a_checkpoint_restored_into_a_cluster_node_rebuilds_before_it_answers(
        cluster_factory, tmp_path, uniq):
    """docs/deploy.md's restore: replace DATA/db, keep DATA/identity, write `rebuilding` to
    DATA/state. The node then streams what it missed from its peers and only then serves its
    data: no stale value and no 404 for a key written after the checkpoint."""
    c = cluster_factory(3, "--backup-dir", str(tmp_path / "bk"))
    for nd in c:
        wait_state(nd, "ready")
    victim = c[2]
    old = [uniq("old-%d" % i) for i in range(100)]
    h.bulk_put(c[0].port, [(k, b"v1") for k in old])
    assert checkpoint(victim, "before").status == 200
    new = [uniq("new-%d" % i) for i in range(100)]
    h.bulk_put(c[0].port, [(k, b"v1") for k in new] + [(k, b"v2") for k in old[:30]])
    with c[0].client() as cl:
        for k in old[30:40]:
            assert cl.delete(k).status == 202

    victim.stop()
    shutil.rmtree(victim.data_dir / "db")
    shutil.copytree(tmp_path / "bk" / "before", victim.data_dir / "db")
    assert (victim.data_dir / "identity").is_file()
    (victim.data_dir / "state").write_text("rebuilding\n")
    victim.start()
    wait_state(victim, "ready", 60)  # streamed from both peers, by itself
    assert status(victim)["rebuild"]["completed"] >= 1
    mine = h.local_records(victim, b"\x00")
    for k in new:
        assert mine.get(k) == b"v1", k
    for k in old[:30]:
        assert mine.get(k) == b"v2", k
    for k in old[30:40]:
        assert k not in mine, k  # the delete's tombstone won over the restored value
    for k in old[40:]:
        assert mine.get(k) == b"v1", k
    with victim.client() as cl:
        r = cl.get(old[0], ack=3)
        assert (r.status, r.body) == (200, b"v2")
