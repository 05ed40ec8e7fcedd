"""GET /metrics (Prometheus text format 0.0.4), GET /v0/health and GET /v0/ready.

The metrics tests send a known number of requests through one node of a 3-node cluster and check
that the counters moved by exactly that much, that every histogram is cumulative with +Inf equal
to its count, that the page parses (prometheus_client's parser and a strict line check of our
own) and passes `promtool check metrics`, and that a real Prometheus scrapes the three nodes.
The readiness tests build the states /v0/ready must tell apart: a healthy cluster (200), a node
whose peers refuse its handshake (another cluster secret: 503), a rebuilding node (503), a node
that lost its quorum (503); /v0/health answers 200 in every one of them.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

import dkvharness as h

N = 3
PROM_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# One sample line: name, optional {labels}, value (we never emit timestamps).
LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\\\|\\"|\\n)*"'
SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:%s)(?:,%s)*\})? (\S+)$' % (LABEL, LABEL))
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def unescape(v: str) -> str:
    return re.sub(r'\\(.)', lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), v)


def parse_strict(text: str) -> dict:
    """Our own strict reading of the format: every line is HELP, TYPE or a sample; each family
    has HELP then TYPE before its samples and appears once; a sample's name is its family's name
    (plus _bucket/_sum/_count for a histogram); no series twice. Returns
    {(name, frozenset(labels.items())): float}."""
    assert text.endswith("\n"), "the page must end with a line feed"
    samples = {}
    types = {}
    family = None
    seen_families = set()
    for line in text.split("\n")[:-1]:
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert name not in seen_families, "family %s twice" % name
            seen_families.add(name)
            family = name
            continue
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split(" ")
            assert name == family, "TYPE %s not right after its HELP" % name
            assert typ in ("counter", "gauge", "histogram"), line
            types[name] = typ
            continue
        m = SAMPLE_RE.match(line)
        assert m, "not a sample line: %r" % line
        name, labels, value = m.group(1), m.group(2) or "", m.group(3)
        assert family is not None and family in types, "sample before its TYPE: %r" % line
        allowed = {family}
        if types[family] == "histogram":
            allowed = {family + s for s in ("_bucket", "_sum", "_count")}
        assert name in allowed, "%s is outside family %s" % (name, family)
        if types[family] == "counter":
            assert family.endswith("_total"), "counter %s without _total" % family
        lab = {k: unescape(v) for k, v in LABEL_RE.findall(labels)}
        key = (name, frozenset(lab.items()))
        assert key not in samples, "series twice: %r" % line
        v = float(value)
        assert not math.isnan(v)
        samples[key] = v
    return samples


def scrape(nd: h.Node) -> tuple[str, dict]:
    with nd.client() as cl:
        r = cl.request("GET", "/metrics")
    assert r.status == 200, r
    assert r.headers["content-type"] == PROM_CONTENT_TYPE
    text = r.body.decode()
    return text, parse_strict(text)


def val(samples: dict, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def check_histograms(samples: dict) -> int:
    """Every histogram series: buckets cumulative (monotonic in le), +Inf == _count. Returns how
    many series were checked."""
    series = {}
    for (name, labels), v in samples.items():
        if name.endswith("_bucket"):
            d = dict(labels)
            le = d.pop("le")
            key = (name[:-len("_bucket")], frozenset(d.items()))
            series.setdefault(key, []).append((math.inf if le == "+Inf" else float(le), v))
    for (base, labels), buckets in series.items():
        buckets.sort()
        counts = [c for _, c in buckets]
        assert counts == sorted(counts), "%s %s buckets not monotonic: %r" % (base, labels, buckets)
        assert buckets[-1][0] == math.inf
        assert buckets[-1][1] == samples[(base + "_count", labels)], (base, labels)
        assert samples[(base + "_sum", labels)] >= 0
    return len(series)


def ready(nd: h.Node, method: str = "GET") -> h.Response:
    with nd.client() as cl:
        return cl.request(method, "/v0/ready")


def health(nd: h.Node) -> int:
    with nd.client() as cl:
        return cl.request("GET", "/v0/health").status


def wait_ready_status(nd: h.Node, want: int, contains: str = "", timeout_s: float = 20.0):
    """Polls /v0/ready until it answers `want` with `contains` in a reason; returns the body."""
    last = []

    def check():
        r = ready(nd)
        body = json.loads(r.body)
        last[:] = [r.status, body]
        assert body["ready"] == (r.status == 200)
        if r.status == want and any(contains in x for x in body["reasons"] + [""]):
            return body
        return None

    try:
        return h.wait_until(check, timeout_s, 0.1, "/v0/ready %d %r" % (want, contains))
    except TimeoutError:
        raise AssertionError("%s: /v0/ready never answered %d %r; last %r"
                             % (nd.name, want, contains, last))


# ---- metrics ----

@pytest.mark.timeout_s(120)
def test_counters_move_by_exactly_the_requests_sent(cluster_factory, uniq):
    # Every GET asks both peers (the full fan-out): the replica request counts below are exact
    # only then. A speculative GET asks one peer, and a second one only when the first is slower
    # than its observed p99, which no test can predict.
    c = cluster_factory(N, "--read-fanout", "all")
    nd = c[0]
    scrapes = [0]

    def counted_scrape():
        scrapes[0] += 1
        return scrape(nd)

    _, before = counted_scrape()
    puts, gets, misses, deletes, ranges = 20, 15, 5, 5, 3
    keys = [uniq("k%d" % i) for i in range(puts)]
    with nd.client() as cl:
        for k in keys:
            assert cl.put(k, b"value").status == 201
        for k in keys[:gets]:
            assert cl.get(k).status == 200
        for i in range(misses):
            assert cl.get(uniq("missing%d" % i)).status == 404
        for k in keys[:deletes]:
            assert cl.delete(k).status == 202
        for _ in range(ranges):
            r = cl.request("GET", h.entities_target(b"a", b"b"))
            assert r.status == 200
        assert cl.request("POST", "/v0/entity?id=x").status == 405

    # Every replica request to both peers must have ended (the third replica of a quorum may
    # answer after the client did): poll for the total, then demand it exactly.
    peers = [p.url for p in c if p is not nd]
    per_peer = gets + misses + puts + deletes

    def replica_ok(s):
        return [val(s, "dkv_replica_requests_total", peer=p, outcome="ok")
                - val(before, "dkv_replica_requests_total", peer=p, outcome="ok") for p in peers]

    h.wait_until(lambda: replica_ok(counted_scrape()[1]) == [per_peer] * 2, 20, 0.1,
                 "every replica request counted")
    text, after = counted_scrape()
    assert replica_ok(after) == [per_peer] * 2

    def delta(name, **labels):
        return val(after, name, **labels) - val(before, name, **labels)

    assert delta("dkv_http_requests_total", method="PUT", status="201") == puts
    # The GETs, the ranges, and this test's scrapes but the last (a scrape is counted once its
    # page is written, so each one shows in the next).
    assert delta("dkv_http_requests_total", method="GET", status="200") == (
        gets + ranges + scrapes[0] - 1)
    assert delta("dkv_http_requests_total", method="GET", status="404") == misses
    assert delta("dkv_http_requests_total", method="DELETE", status="202") == deletes
    assert delta("dkv_http_requests_total", method="POST", status="405") == 1
    assert delta("dkv_http_request_duration_seconds_count", op="get") == gets + misses
    assert delta("dkv_http_request_duration_seconds_count", op="put") == puts
    assert delta("dkv_http_request_duration_seconds_count", op="delete") == deletes
    assert delta("dkv_http_request_duration_seconds_count", op="range") == ranges
    for p in peers:
        for outcome in ("timeout", "unavailable", "error", "rejected", "not_ready"):
            assert delta("dkv_replica_requests_total", peer=p, outcome=outcome) == 0
        assert delta("dkv_replica_request_duration_seconds_count", peer=p) == per_peer
        assert val(after, "dkv_peer_breaker_state", peer=p) == 0
        assert val(after, "dkv_peer_connected", peer=p) == 1
        assert val(after, "dkv_hints_pending", peer=p) == 0
    assert val(after, "dkv_http_requests_in_flight") == 1  # this scrape
    assert delta("dkv_http_overload_rejections_total") == 0
    assert delta("dkv_wal_syncs_total") >= 1
    assert delta("dkv_wal_synced_bytes_total") >= puts * len(b"value")
    assert val(after, "dkv_store_writable") == 1
    assert val(after, "dkv_node_state", state="ready") == 1
    assert val(after, "dkv_rocksdb_memtable_bytes", cf="data") > 0
    assert val(after, "dkv_rocksdb_block_cache_capacity_bytes") > 0
    memtables = sum(val(after, "dkv_rocksdb_memtable_bytes", cf=cf)
                    for cf in ("data", "hints", "digest"))
    assert val(after, "dkv_rocksdb_memtable_limit_bytes") >= memtables > 0
    assert ("dkv_rocksdb_table_readers_bytes", frozenset({("cf", "data")})) in after
    assert check_histograms(after) == 4 + len(peers)

    # The other nodes coordinated nothing: their client-facing counters did not move.
    _, other = scrape(c[1])
    assert val(other, "dkv_http_requests_total", method="PUT", status="201") == 0
    assert val(other, "dkv_http_request_duration_seconds_count", op="get") == 0

    # prometheus_client's parser reads the same page (skipped if the package is missing).
    try:
        from prometheus_client.parser import text_string_to_metric_families
    except ImportError:
        return
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    # The client library strips _total from counter family names.
    reqs = fams["dkv_http_requests"]
    assert reqs.type == "counter"
    got = {(s.labels["method"], s.labels["status"]): s.value for s in reqs.samples
           if s.name == "dkv_http_requests_total"}
    assert got[("DELETE", "202")] == val(after, "dkv_http_requests_total", method="DELETE",
                                         status="202")
    assert fams["dkv_http_request_duration_seconds"].type == "histogram"


def test_every_node_lists_the_whole_ring_with_each_nodes_share(cluster_factory):
    """dkv_ring_primary_share names every node (self included) with its ownership at from=1,
    identical on every node; dkvctl reads the cluster and `ring` from it."""
    c = cluster_factory(N, "--vnodes", "512")
    pages = [scrape(nd)[1] for nd in c]
    shares = {dict(labels)["node"]: v for (name, labels), v in pages[0].items()
              if name == "dkv_ring_primary_share"}
    assert set(shares) == set(c.urls)
    assert abs(sum(shares.values()) - 1.0) < 1e-9, shares
    # With 512 tokens each node's share is within a few points of 1/3 (and never 0 or 1).
    assert all(0.2 < v < 0.47 for v in shares.values()), shares
    for s in pages:
        assert {dict(labels)["node"]: v for (name, labels), v in s.items()
                if name == "dkv_ring_primary_share"} == shares
        assert val(s, "dkv_ring_vnodes") == 512
        assert val(s, "dkv_rebuild_progress_ratio") == 0  # no rebuild ran
    # The shares are where from=1 keys land: 600 keys, 3 sigma is about 6 points.
    keys = [b"own/%04d" % i for i in range(600)]
    with c[0].client() as cl:
        for k in keys:
            assert cl.put(k, b"x", "ack=1", "from=1").status == 201
    for nd in c:
        landed = len(h.local_records(nd, b"own/", b"own0")) / len(keys)
        assert abs(landed - shares[nd.url]) < 0.07, (nd.url, landed, shares)


def test_promtool_accepts_the_page(cluster_factory):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus; scripts/install-deps.sh)")
    c = cluster_factory(N)
    with c[0].client() as cl:
        assert cl.put(b"p", b"v").status == 201
        assert cl.get(b"p").status == 200
    text, _ = scrape(c[0])
    p = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True,
                       timeout=30)
    assert p.returncode == 0, (p.stdout + p.stderr).decode()
    # And promtool can fail: a counter without _total and a label with a bad escape.
    p = subprocess.run([promtool, "check", "metrics"], input=b"# HELP x y\n# TYPE x counter\nx 1\n",
                       capture_output=True, timeout=30)
    assert p.returncode != 0


@pytest.mark.timeout_s(120)
def test_a_real_prometheus_scrapes_every_node(cluster_factory, tmp_path):
    prom = shutil.which("prometheus")
    if prom is None:
        pytest.skip("prometheus not installed (Debian package prometheus; scripts/install-deps.sh)")
    c = cluster_factory(N)
    for nd in c:
        with nd.client() as cl:
            assert cl.put(b"prom-" + nd.name.encode(), b"v").status == 201
    port = h.free_port()
    targets = ", ".join("'%s:%d'" % (nd.host, nd.port) for nd in c)
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
                   "scrape_configs:\n  - job_name: dkv\n    static_configs:\n"
                   "      - targets: [%s]\n" % targets)
    log = open(tmp_path / "prometheus.log", "wb")
    proc = subprocess.Popen([prom, "--config.file=%s" % cfg,
                             "--storage.tsdb.path=%s" % (tmp_path / "tsdb"),
                             "--web.listen-address=127.0.0.1:%d" % port],
                            stdout=log, stderr=log, cwd=str(tmp_path),
                            preexec_fn=h._child_setup)
    try:
        def query(q):
            url = "http://127.0.0.1:%d/api/v1/query?query=%s" % (port, urllib.parse.quote(q))
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    return json.loads(r.read())
            except OSError:
                assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
                return None

        def instances():
            res = query('dkv_http_requests_total{method="PUT",status="201"}')
            if res is None or res.get("status") != "success":
                return None
            got = {s["metric"]["instance"] for s in res["data"]["result"]}
            return got if len(got) == N else None

        got = h.wait_until(instances, 60, 0.25, "Prometheus to hold every node's series")
        assert got == {"%s:%d" % (nd.host, nd.port) for nd in c}
        # Every target is up and scraped without errors.
        res = query("up")
        assert sorted(float(s["value"][1]) for s in res["data"]["result"]) == [1.0] * N
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


# ---- health and readiness ----

def test_a_healthy_cluster_is_ready_and_head_works(cluster_factory):
    c = cluster_factory(N)
    for nd in c:
        assert health(nd) == 200
        body = wait_ready_status(nd, 200)
        assert body == {"ready": True, "reasons": []}
        r = ready(nd, "HEAD")
        assert r.status == 200 and r.body == b""
        with nd.client() as cl:
            assert cl.request("HEAD", "/v0/health").status == 200
            assert cl.request("POST", "/v0/ready").status == 405
            assert cl.request("DELETE", "/v0/health").status == 405
            assert cl.request("PUT", "/metrics").status == 405
            # /v0/status keeps its behaviour.
            r = cl.status()
            assert (r.status, r.body) == (200, b"OK\n")


def test_a_node_whose_peers_refuse_its_handshake_is_not_ready(cluster_factory, tmp_path):
    good = tmp_path / "good"
    bad = tmp_path / "bad"
    good.write_text("g" * 64 + "\n")
    bad.write_text("b" * 64 + "\n")
    good.chmod(0o600)
    bad.chmod(0o600)
    c = cluster_factory(N, per_node_args={0: ["--cluster-secret-file", str(good)],
                                          1: ["--cluster-secret-file", str(good)],
                                          2: ["--cluster-secret-file", str(bad)]})
    odd = c[2]
    # Both peers refuse it once each has been dialled (they may start after it: until then a
    # peer is "unreachable"); poll until both say so.
    def both_refuse():
        body = wait_ready_status(odd, 503, "refuses our handshake")
        return body if sum("refuses our handshake" in x for x in body["reasons"]) == 2 else None
    body = h.wait_until(both_refuse, 20, 0.1, "both peers to refuse the odd node's handshake")
    assert any("1 of 3 replicas reachable" in x for x in body["reasons"]), body
    assert health(odd) == 200
    # The two nodes that share a secret make a quorum of two.
    for nd in c[:2]:
        wait_ready_status(nd, 200)
        assert health(nd) == 200
    # The odd node's breaker view says so in the metrics too: never connected.
    _, s = scrape(odd)
    for p in c[:2]:
        assert val(s, "dkv_peer_connected", peer=p.url) == 0


@pytest.mark.timeout_s(120)
def test_a_rebuilding_node_is_not_ready_until_rebuild_done(cluster_factory, uniq):
    c = cluster_factory(N, "--auto-rebuild", "off")
    with c[0].client() as cl:
        for i in range(20):
            assert cl.put(uniq(i), b"v").status == 201
    victim = c[2]
    wait_ready_status(victim, 200)
    victim.stop()
    shutil.rmtree(victim.data_dir)
    victim.start()
    body = wait_ready_status(victim, 503, "rebuilding")
    assert health(victim) == 200
    _, s = scrape(victim)
    assert val(s, "dkv_node_state", state="rebuilding") == 1
    # The others still make a quorum with each other.
    wait_ready_status(c[0], 200)
    with victim.client() as cl:
        assert cl.request("POST", "/v0/admin/rebuild-done").status == 200
    wait_ready_status(victim, 200)
    assert body["ready"] is False


@pytest.mark.timeout_s(120)
def test_a_node_that_lost_its_quorum_is_not_ready_and_recovers(cluster_factory):
    c = cluster_factory(N)
    nd = c[0]
    wait_ready_status(nd, 200)
    c[1].kill()
    c[2].kill()
    body = wait_ready_status(nd, 503, "1 of 3 replicas reachable")
    assert any(c[1].url in x for x in body["reasons"]), body
    assert health(nd) == 200
    c[1].start()
    wait_ready_status(nd, 200)
