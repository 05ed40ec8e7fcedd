"""pytest fixtures for dkv integration tests: real nodes on 127.0.0.1, ephemeral ports, temp dirs.

The process and HTTP helpers live in dkvharness.py (importable by every test module); this file
wires them into fixtures, gives every test a timeout, and attaches node logs to failure reports.

Timeouts: pytest-timeout is not assumed. Each test's call phase gets a soft SIGALRM timeout
(default DKV_TEST_TIMEOUT_S=60 s, or @pytest.mark.timeout_s(N)) that raises in the test, so its
fixtures still clean up; a watchdog thread well past that (covering setup and teardown too) dumps
every thread's stack and exits. Child nodes die with the runner (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import faulthandler
import itertools
import os
import signal
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dkvharness as h  # noqa: E402

DEFAULT_TEST_TIMEOUT_S = float(os.environ.get("DKV_TEST_TIMEOUT_S", "60"))
HARD_TIMEOUT_GRACE_S = 60.0


class TestTimeout(Exception):
    pass


def pytest_configure(config):
    config.addinivalue_line("markers", "timeout_s(seconds): soft timeout for the test's call phase")
    config._dkv_watchdog = _Watchdog(config)


def _test_timeout(item) -> float:
    m = item.get_closest_marker("timeout_s")
    scale = float(os.environ.get("DKV_TEST_TIMEOUT_SCALE", "1"))
    return (float(m.args[0]) if m else DEFAULT_TEST_TIMEOUT_S) * scale


class _Watchdog:
    """Hard backstop for a whole test (setup + call + teardown): if it is still running long
    after its timeout, print every thread's stack and the nodes' log tails to the real stderr,
    kill the nodes and exit the runner."""

    def __init__(self, config):
        self.config = config
        self.timer: threading.Timer | None = None

    def arm(self, seconds: float, nodeid: str):
        self.disarm()
        self.timer = threading.Timer(seconds, self._fire, args=(seconds, nodeid))
        self.timer.daemon = True
        self.timer.start()

    def disarm(self):
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _fire(self, seconds: float, nodeid: str):
        capman = self.config.pluginmanager.getplugin("capturemanager")
        try:
            if capman is not None:
                capman.suspend_global_capture(in_=True)  # back to the real stderr
        except Exception:  # noqa: BLE001 - we are about to exit anyway
            pass
        err = sys.stderr
        err.write("\n*** HARD TIMEOUT: %s still running after %.0fs; exiting\n" % (nodeid, seconds))
        faulthandler.dump_traceback(file=err, all_threads=True)
        for nd in h.Node.all_nodes:
            if nd.running():
                err.write("\n--- log tail of %s (%s) ---\n%s\n" % (nd.name, nd.url,
                                                                  nd.log_tail(4 * h.KIB)))
                nd.proc.kill()
        err.flush()
        os._exit(3)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    wd = item.config._dkv_watchdog
    wd.arm(_test_timeout(item) + 2 * h.START_TIMEOUT_S + HARD_TIMEOUT_GRACE_S, item.nodeid)
    try:
        yield
    finally:
        wd.disarm()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    timeout_s = _test_timeout(item)

    def on_alarm(signum, frame):
        raise TestTimeout("test exceeded its %.0fs timeout" % timeout_s)

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# --- node logs in failure reports ---------------------------------------------------------------


@pytest.fixture(autouse=True)
def _dkv_log_marks(request):
    """Remembers how far each node's log had got when the test started."""
    request.node._dkv_log_marks = {id(nd): nd.log_size() for nd in h.Node.all_nodes}
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if not rep.failed or getattr(item, "_dkv_logs_attached", False):
        return
    marks = getattr(item, "_dkv_log_marks", {})
    for nd in h.Node.all_nodes:
        start = marks.get(id(nd), 0)
        if nd.log_size() > start:
            rep.sections.append(("dkv log %s (%s)" % (nd.name, nd.url),
                                 nd.log_tail(32 * h.KIB, offset=start)))
            item._dkv_logs_attached = True


# --- binary, nodes, clusters --------------------------------------------------------------------


@pytest.fixture(scope="session")
def dkv_bin() -> str:
    if not os.access(h.DKV_BIN, os.X_OK):
        pytest.fail("dkv binary not found at %s (set DKV_BIN or run `make build`)" % h.DKV_BIN,
                    pytrace=False)
    return h.DKV_BIN


def _close_all(things) -> None:
    problems = []
    for t in things:
        problems += t.close()
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


@pytest.fixture
def cluster_factory(dkv_bin, tmp_path):
    """make(n, *extra_args, per_node_args=None, per_node_env=None) -> started Cluster; all are
    stopped afterwards. per_node_env: {index: environment}, e.g. h.faketime_env("+1h").

    Teardown fails the test if a node died unexpectedly, exited non-zero on SIGTERM, or printed
    a sanitizer report.
    """
    made = []
    counter = itertools.count()

    def make(n: int, *extra_args: str, per_node_args=None, per_node_env=None,
             start: bool = True) -> h.Cluster:
        c = h.Cluster(tmp_path / ("c%d" % next(counter)), n, extra_args, per_node_args,
                      per_node_env=per_node_env)
        made.append(c)
        return c.start() if start else c

    yield make
    _close_all(made)


@pytest.fixture
def node_factory(cluster_factory):
    """make(*extra_args) -> a fresh, started single node (N=1) with its own port and data dir."""

    def make(*extra_args: str) -> h.Node:
        return cluster_factory(1, *extra_args)[0]

    return make


@pytest.fixture
def fresh_node(node_factory) -> h.Node:
    """A new single node with default flags, empty data dir."""
    return node_factory()


class _Shared:
    def __init__(self, factory):
        self.factory = factory
        self.node: h.Node | None = None
        self.dead: list[h.Node] = []

    def get(self) -> h.Node:
        if self.node is None or not self.node.running():
            if self.node is not None:
                self.dead.append(self.node)
            self.node = self.factory()
        return self.node


@pytest.fixture(scope="module")
def _shared(dkv_bin, tmp_path_factory):
    counter = itertools.count()

    def factory():
        c = h.Cluster(tmp_path_factory.mktemp("shared%d" % next(counter)), 1, name="shared")
        return c.start()[0]

    s = _Shared(factory)
    yield s
    _close_all([s.node] if s.node else [])


@pytest.fixture
def node(_shared) -> h.Node:
    """A single node shared by the module's tests (use unique keys: see `uniq`).

    If an earlier test crashed it, a new one is started. A test during which it dies or logs a
    sanitizer report fails in teardown.
    """
    nd = _shared.get()
    start = nd.log_size()
    yield nd
    if not nd.running():
        nd.expected_dead = True  # reported here, not again at module teardown
        pytest.fail("shared node died during the test (rc %s)" % nd.proc.returncode,
                    pytrace=False)
    if nd.sanitizer_report(start):
        pytest.fail("sanitizer report in the shared node's log", pytrace=False)


@pytest.fixture
def client(node):
    c = node.client()
    yield c
    c.close()


_uniq_counter = itertools.count()


@pytest.fixture
def uniq(request):
    """uniq(suffix=b"") -> a key unique to this test (bytes), for tests sharing a node."""
    base = request.node.name.encode()

    def make(suffix: bytes | str = b"") -> bytes:
        return b"%s/%d/%s" % (base, next(_uniq_counter), h.to_bytes(suffix))

    return make
