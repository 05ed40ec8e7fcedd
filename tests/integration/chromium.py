"""Headless Chromium (Debian `chromium`) driven over the DevTools protocol on a pipe.

`chromium --remote-debugging-pipe` reads protocol commands from file descriptor 3 and writes
replies and events to descriptor 4, each message one JSON object followed by a NUL byte
(https://chromedevtools.github.io/devtools-protocol/). That is all this module speaks: it opens
a page, evaluates JavaScript in it, and takes screenshots, so a test can wait for a condition in
a live page (the status page polls) instead of dumping the DOM after a fixed delay.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str | None:
    """The path of a Chromium binary, or None. DKV_CHROMIUM overrides the search."""
    env = os.environ.get("DKV_CHROMIUM")
    if env:
        return env if os.access(env, os.X_OK) else None
    for name in CHROMIUM_NAMES:
        p = shutil.which(name)
        if p:
            return p
    return None


class ChromiumError(RuntimeError):
    pass


class Chromium:
    """One headless browser with one page. Use as a context manager; close() always reaps it."""

    def __init__(self, binary: str, width: int = 1280, height: int = 900,
                 timeout_s: float = 30.0):
        self.timeout_s = timeout_s
        self.profile = tempfile.mkdtemp(prefix="dkv-chromium-")
        cmd_r, self._cmd_w = os.pipe()  # our commands -> its fd 3
        self._res_r, res_w = os.pipe()  # its fd 4 -> our replies
        # Move the child's ends above 9, so the shell's `3<&X 4>&Y` cannot overwrite one with the
        # other whatever numbers the pipes got.
        for name in ("cmd_r", "res_w"):
            fd = cmd_r if name == "cmd_r" else res_w
            high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
            os.close(fd)
            if name == "cmd_r":
                cmd_r = high
            else:
                res_w = high
        self.log_path = os.path.join(self.profile, "chromium.log")
        args = [binary, "--headless=new", "--no-sandbox", "--disable-gpu",
                "--remote-debugging-pipe", "--user-data-dir=" + self.profile,
                "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                "--hide-scrollbars", "--window-size=%d,%d" % (width, height), "about:blank"]
        # bash (dash takes single-digit descriptors only) puts the pipes where Chromium wants them.
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            ["bash", "-c", 'exec "$@" 3<&%d 4>&%d' % (cmd_r, res_w), "bash"] + args,
            pass_fds=(cmd_r, res_w), stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        os.close(cmd_r)
        os.close(res_w)
        self._buf = b""
        self._next_id = 0
        self.session: str | None = None
        self.width = width
        self.height = height

    # -- protocol ---------------------------------------------------------------------------

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ChromiumError("no reply from chromium within %.0f s" % self.timeout_s)
            ready, _, _ = select.select([self._res_r], [], [], left)
            if not ready:
                continue
            data = os.read(self._res_r, 1 << 16)
            if not data:
                raise ChromiumError("chromium closed its pipe (exit code %s): %s"
                                    % (self.proc.wait(5), self.log_tail()))
            self._buf += data
        msg, _, self._buf = self._buf.partition(b"\0")
        return json.loads(msg)

    def call(self, method: str, params: dict | None = None, session: bool = True) -> dict:
        """Sends one command and returns its result; raises ChromiumError on a protocol error."""
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params or {}}
        if session and self.session is not None:
            msg["sessionId"] = self.session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout_s
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") != self._next_id:
                continue  # an event, or a reply to nothing we wait for
            if "error" in reply:
                raise ChromiumError("%s: %s" % (method, reply["error"]))
            return reply.get("result", {})

    # -- what tests use ---------------------------------------------------------------------

    def open(self, url: str, init_script: str | None = None) -> None:
        """Opens `url` in a new page and attaches to it; `init_script` runs in the page before
        any of its own scripts."""
        target = self.call("Target.createTarget", {"url": "about:blank"}, session=False)
        attached = self.call("Target.attachToTarget",
                             {"targetId": target["targetId"], "flatten": True}, session=False)
        self.session = attached["sessionId"]
        self.call("Page.enable")
        self.call("Runtime.enable")
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": self.width, "height": self.height, "deviceScaleFactor": 1,
                   "mobile": False})
        if init_script:
            self.call("Page.addScriptToEvaluateOnNewDocument", {"source": init_script})
        self.call("Page.navigate", {"url": url})

    def eval(self, expression: str):
        """Evaluates a JavaScript expression in the page and returns its value (JSON-able)."""
        res = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in res:
            raise ChromiumError("page threw: %s" % res["exceptionDetails"])
        return res.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout_s: float, what: str, interval_s: float = 0.1):
        """Evaluates `expression` until it is truthy; returns its value. Raises AssertionError
        with the last value at the deadline."""
        deadline = time.monotonic() + timeout_s
        last = None
        while True:
            ok = False
            try:
                last = self.eval(expression)
                ok = bool(last)
            except ChromiumError as e:  # e.g. the page is still navigating
                last = "error: %s" % e
            if ok:
                return last
            if time.monotonic() >= deadline:
                raise AssertionError("page: %s not reached within %.0f s (last: %r)"
                                     % (what, timeout_s, last))
            time.sleep(interval_s)

    def screenshot(self, path: str) -> None:
        """Writes a PNG of the viewport to `path`."""
        data = self.call("Page.captureScreenshot", {"format": "png"})["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def log_tail(self, max_bytes: int = 4096) -> str:
        """The end of Chromium's own output (stdout and stderr)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, os.path.getsize(self.log_path) - max_bytes))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                try:
                    self.call("Browser.close", session=False)
                except (ChromiumError, OSError):
                    pass
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, 9)
                    self.proc.wait(10)
        finally:
            for fd in (self._cmd_w, self._res_r):
                try:
                    os.close(fd)
                except OSError:
                    pass
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
