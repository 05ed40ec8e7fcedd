"""The status page (GET /) and the CORS header it relies on.

Checked over plain HTTP: GET / and HEAD / answer the embedded page with its headers (HTML,
no-cache, a Content-Security-Policy without 'unsafe-inline'), other methods 405; the read-only
observability GETs the page polls across origins carry `Access-Control-Allow-Origin: *`, and no
entity, admin or error answer does.

Checked as a person would: headless Chromium (Debian `chromium`, driven over the DevTools pipe by
chromium.py) loads the page from a live 3-node cluster with one node stopped, and the test waits,
polling the rendered DOM with a deadline, until it shows three node rows, the stopped one down,
the others up with their version and a numeric uptime, a requests/s and a p99 figure once traffic
flowed, the open (or half-open) breaker and the hints pending for the stopped node, and no
Content-Security-Policy violation. Skipped only where no Chromium is installed.
"""

from __future__ import annotations

import json
import re
import shutil
import time

import pytest

import dkvharness as h
from chromium import Chromium, find_chromium

CORS = "access-control-allow-origin"
OBSERVABILITY_GETS = ["/v0/status", "/v0/status?verbose=1", "/metrics", "/v0/health",
                      "/v0/ready"]


def test_page_is_served_with_its_headers(client):
    r = client.request("GET", "/")
    assert r.status == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert r.headers["cache-control"] == "no-cache"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert int(r.headers["content-length"]) == len(r.body)
    assert r.body.startswith(b"<!DOCTYPE html>")
    # Self-contained: the only resource it names is its empty favicon (no CDN, no other file).
    assert re.findall(rb'(?:src|href)\s*=\s*["\']?([^"\'\s>]*)', r.body) == [b"data:,"]
    csp = r.headers["content-security-policy"]
    directives = {d.split()[0]: d.split()[1:] for d in csp.split(";") if d.strip()}
    assert directives["default-src"] == ["'none'"]
    assert directives["connect-src"] == ["*"]
    assert len(directives["script-src"]) == 1 and directives["script-src"][0].startswith("'sha256-")
    assert len(directives["style-src"]) == 1 and directives["style-src"][0].startswith("'sha256-")
    assert "unsafe" not in csp
    assert CORS not in r.headers  # the page itself is not for other origins

    head = client.request("HEAD", "/")
    assert head.status == 200 and head.body == b""
    assert head.headers["content-length"] == r.headers["content-length"]
    assert head.headers["content-security-policy"] == csp

    assert client.request("GET", "/?interval_ms=500").body == r.body  # the page reads it itself
    for method in ("PUT", "POST", "DELETE", "PATCH"):
        got = client.request(method, "/", body=b"x")
        assert got.status == 405, (method, got)
        assert CORS not in got.headers


def test_cors_only_on_the_observability_gets(client, uniq):
    for target in OBSERVABILITY_GETS:
        for method in ("GET", "HEAD"):
            r = client.request(method, target)
            assert r.status == 200, (method, target, r)
            assert r.headers.get(CORS) == "*", (method, target)

    key = uniq()
    without = [
        ("PUT", h.entity_target(key), b"v"),
        ("GET", h.entity_target(key), None),
        ("DELETE", h.entity_target(key), None),
        ("GET", h.entities_target(b"a"), None),
        ("GET", "/v0/admin/hints", None),
        ("GET", "/v0/admin/repair", None),
        ("POST", "/v0/admin/repair?timeout_ms=0", None),
        ("POST", "/v0/admin/hints/sync?timeout_ms=0", None),
        ("PUT", "/v0/status", b"x"),
        ("DELETE", "/metrics", None),
        ("OPTIONS", "/v0/status", None),  # no preflight: cross-origin writes stay impossible
        ("GET", "/abracadabra", None),
    ]
    for method, target, body in without:
        r = client.request(method, target, body=body)
        assert r.status in (200, 201, 202, 404, 405, 400), (method, target, r)
        assert not any(k.startswith("access-control") for k in r.headers), (method, target, r)


# --- the page in a browser ------------------------------------------------------------------

# Records Content-Security-Policy violations before the page's own script runs.
CSP_WATCH = ("window.__csp = [];"
             "document.addEventListener('securitypolicyviolation',"
             " (e) => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));")

# What the test reads back from the rendered DOM, and only from it.
SNAPSHOT = r"""(() => {
  if (!document.getElementById('node-rows')) return null;  /* still loading */
  const text = (e) => (e ? e.textContent.trim() : null);
  const rows = Array.from(document.querySelectorAll('#node-rows tr.node')).map((tr) => ({
    url: tr.dataset.url,
    state: tr.dataset.state,
    version: text(tr.querySelector('td.version')),
    uptime_s: tr.querySelector('td.uptime').dataset.seconds ?? null,
    rps: tr.querySelector('td.rps').dataset.value,
    rps_text: text(tr.querySelector('td.rps .num')),
    p99: tr.querySelector('td.p99').dataset.value,
    p99_text: text(tr.querySelector('td.p99 .num')),
    sparklines: tr.querySelectorAll('svg.spark').length,
  }));
  const matrix = (id) => Array.from(document.querySelectorAll('#' + id + ' tr'))
      .map((tr) => Array.from(tr.children).map((c) => c.textContent.trim()));
  return {polls: Number(document.body.dataset.polls || 0), rows: rows,
          nodes_up: text(document.getElementById('s-up')),
          breakers: matrix('breakers'), hints: matrix('hints'), csp: window.__csp || []};
})()"""


def matrix_cell(m: list, row_label: str, col_label: str) -> str | None:
    """The cell of matrix `m` (header row first, labels in column 0) at (row, column)."""
    if not m:
        return None
    try:
        col = m[0].index(col_label)
    except ValueError:
        return None
    for row in m[1:]:
        if row and row[0] == row_label:
            return row[col]
    return None


def short(url: str) -> str:
    return url.split("://", 1)[1]


@pytest.mark.timeout_s(150)
def test_page_in_chromium_shows_nodes_up_down_and_rebuilding(cluster_factory):
    binary = find_chromium()
    if binary is None:
        pytest.skip("no chromium: `apt-get install chromium` (scripts/install-deps.sh does)")
    # --auto-rebuild off: a wiped node stays "rebuilding" until an operator says otherwise, so
    # the page can be watched showing it.
    c = cluster_factory(3, "--auto-rebuild", "off")
    h.bulk_put(c[0].port, [(b"page/%d" % i, b"v%d" % i) for i in range(300)])
    with c[0].client() as cl:
        status = json.loads(cl.request("GET", "/v0/status?verbose=1").body)
    version = status["version"]
    assert sorted(status["cluster"]) == sorted(c.urls)
    stopped = c[2]
    stopped.stop()
    live = [c[0], c[1]]
    started = time.monotonic()

    snap = None
    with Chromium(binary) as browser, c[0].client() as cl:
        browser.open(c[0].url + "/?interval_ms=300", init_script=CSP_WATCH)
        deadline = h.Deadline(90)
        i = 0
        while True:
            # Traffic through node 0 between looks at the page: writes reach the stopped replica
            # as failures (hints, breaker), and the counters move between the page's polls.
            for _ in range(20):
                key = b"page/live/%d" % i
                assert cl.put(key, b"x").status == 201
                assert cl.get(key).status == 200
                i += 1
            snap = browser.eval(SNAPSHOT)
            rows = {r["url"]: r for r in snap["rows"]} if snap else {}
            done = (len(rows) == 3
                    and rows.get(stopped.url, {}).get("state") == "down"
                    and all(rows.get(n.url, {}).get("state") == "up" for n in live)
                    and rows[c[0].url]["rps"] not in ("", None) and float(rows[c[0].url]["rps"]) > 0
                    and rows[c[0].url]["p99"] not in ("", None)
                    and matrix_cell(snap["breakers"], short(c[0].url), short(stopped.url))
                    in ("open", "half-open")
                    and int((matrix_cell(snap["hints"], short(c[0].url), short(stopped.url))
                             or "0").split()[0].replace(",", "")) > 0)
            if done:
                break
            if deadline.expired():
                raise AssertionError("the page never showed the expected state; last DOM "
                                     "snapshot: %s" % json.dumps(snap, indent=1))
            time.sleep(0.1)
        check_rendered(snap, status, version, stopped, live, c, started)

        # The stopped node comes back on an empty disk: the same page, still polling, shows it
        # rebuilding (its peers knew it under another id), with its new uptime.
        shutil.rmtree(stopped.data_dir)
        stopped.start()
        row = ("(() => { const tr = document.querySelector('tr.node[data-url=' + %s + ']');"
               " return tr ? {state: tr.dataset.state, uptime_s: tr.querySelector('td.uptime')"
               ".dataset.seconds, version: tr.querySelector('td.version').textContent} : null;"
               " })()" % json.dumps(json.dumps(stopped.url)))
        got = browser.wait_for(row + "?.state === 'rebuilding' && " + row, 60,
                               "the restarted, wiped node shown rebuilding")
        assert got["version"] == version and got["uptime_s"].isdigit()
        assert browser.eval("window.__csp") == []


def check_rendered(snap, status, version, stopped, live, c, started):
    """What the page showed once it had seen traffic with one node stopped."""
    assert snap["csp"] == [], "Content-Security-Policy violations: %s" % snap["csp"]
    assert snap["polls"] >= 2
    assert [r["url"] for r in snap["rows"]] == status["cluster"]  # every node, canonical order
    assert snap["nodes_up"] == "2 / 3"
    rows = {r["url"]: r for r in snap["rows"]}
    down = rows[stopped.url]
    assert down["version"] == "\u2013" and down["uptime_s"] is None and down["rps"] == ""
    elapsed = time.monotonic() - started
    for n in live:
        r = rows[n.url]
        assert r["version"] == version
        assert r["uptime_s"] is not None and r["uptime_s"].isdigit()
        # The nodes started before `started`; the ASan start-up bounds how much before.
        assert 0 <= int(r["uptime_s"]) <= elapsed + h.START_TIMEOUT_S + 5
        assert r["sparklines"] == 2
    r0 = rows[c[0].url]
    assert float(r0["rps"]) > 0
    assert r0["rps_text"] not in ("", "\u2013") and r0["rps_text"][0].isdigit()
    assert 0 < float(r0["p99"]) <= 10  # seconds: inside the histogram's finite buckets
    assert r0["p99_text"].endswith(("ms", "s"))
    # A node that does not answer reports nothing: its row of the matrices says so.
    assert matrix_cell(snap["breakers"], short(stopped.url), short(c[0].url)) == "no answer"
