#!/usr/bin/python3
"""Takes the README's screenshot of the status page (docs/img/status-page.png).

Starts a 3-node cluster on --base-port.. (release binary), runs wrk load at fixed rates through
two nodes (reads through one, writes through the other, stepping the rates up as it goes), stops
the third node part way (after one anti-entropy round on every node), and screenshots GET / of the first node in headless Chromium once the
page has charted the run. Needs wrk and chromium (scripts/install-deps.sh --bench, and the base
deps). Usage:

  scripts/status-page-screenshot.py --bin build/dkv [--out docs/img/status-page.png]
      [--work-dir /tmp/dkv-shot] [--base-port 22000] [--seconds 150] [--stop-at 90]
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))

import dkvharness as h  # noqa: E402
from chromium import Chromium, find_chromium  # noqa: E402


def wrk(script: str, url: str, seconds: int, rate: int) -> subprocess.Popen:
    return subprocess.Popen(
        ["wrk", "-t1", "-c8", "-d%ds" % seconds, "-s", str(REPO / "bench" / "lua" / script), url,
         "--", "keys=20000", "rate=%d" % rate],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default=str(REPO / "build" / "dkv"))
    ap.add_argument("--out", default=str(REPO / "docs" / "img" / "status-page.png"))
    ap.add_argument("--work-dir", default="/tmp/dkv-shot")
    ap.add_argument("--base-port", type=int, default=22000)
    ap.add_argument("--seconds", type=int, default=150, help="run length before the screenshot")
    ap.add_argument("--stop-at", type=int, default=90, help="when to stop the third node")
    a = ap.parse_args()
    browser_bin = find_chromium()
    if browser_bin is None or shutil.which("wrk") is None:
        print("needs chromium and wrk", file=sys.stderr)
        return 2

    work = Path(a.work_dir)
    shutil.rmtree(work, ignore_errors=True)
    ports = [a.base_port + i for i in range(3)]
    urls = ["http://127.0.0.1:%d" % p for p in ports]
    nodes = [h.Node("node%d" % i, p, urls, work / ("node%d" % i) / "data",
                    work / ("node%d" % i) / "dkv.log", [])
             for i, p in enumerate(ports)]
    h.DKV_BIN = a.bin
    load: list[subprocess.Popen] = []
    try:
        for nd in nodes:
            nd.spawn()
        for nd in nodes:
            nd.wait_ready()
        h.bulk_put(ports[0], [(b"key%d" % i, b"v" * 100) for i in range(1, 20001)])
        with Chromium(browser_bin, width=1280, height=900) as browser:
            browser.open(urls[0] + "/")
            t0 = time.monotonic()
            # (start second, wrk script, node, rate/s): reads and writes stepping up.
            plan = [(0, "get.lua", 1, 300), (0, "put.lua", 0, 150),
                    (40, "get.lua", 1, 400), (70, "put.lua", 0, 250),
                    (110, "get.lua", 0, 300)]
            stopped = False
            repaired = False
            while time.monotonic() - t0 < a.seconds:
                now = time.monotonic() - t0
                while plan and plan[0][0] <= now:
                    _, script, node, rate = plan.pop(0)
                    load.append(wrk(script, urls[node], a.seconds + 5, rate))
                if not repaired and now >= a.stop_at / 2:
                    # One anti-entropy round per node, so the Repair column has a figure.
                    for nd in nodes:
                        with nd.client(timeout_s=60) as cl:
                            cl.request("POST", "/v0/admin/repair?timeout_ms=50000")
                    repaired = True
                if not stopped and now >= a.stop_at:
                    nodes[2].stop()
                    stopped = True
                time.sleep(0.2)
            browser.wait_for("document.querySelectorAll('tr.node.down').length === 1", 30,
                             "the stopped node shown down")
            Path(a.out).parent.mkdir(parents=True, exist_ok=True)
            browser.screenshot(a.out)
        print("wrote %s (%d bytes)" % (a.out, Path(a.out).stat().st_size))
        return 0
    finally:
        for p in load:
            p.send_signal(signal.SIGINT)
            p.wait(10)
        for nd in nodes:
            nd.close()


if __name__ == "__main__":
    sys.exit(main())
