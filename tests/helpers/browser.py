"""A real headless Chromium driven over its DevTools protocol, for tests of pages slimtok serves or
writes: open a URL, wait for a condition in the page, read the rendered DOM, take a screenshot.

Uses Debian's ``chromium`` (tools/ci/install-test-deps.sh installs it) and ``websocket-client``;
:func:`chromium_or_skip` skips a test, saying which is missing, where either is absent."""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest


def chromium_or_skip() -> str:
    """The Chromium executable, or skip the calling test naming what to install."""
    try:
        import websocket  # noqa: F401
    except ImportError:
        pytest.skip("websocket-client is not installed (tools/ci/install-test-deps.sh installs it)")
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no Chromium here (Debian's `chromium` package; tools/ci/install-test-deps.sh installs it as root)")


class Browser:
    """One headless Chromium with a private profile under ``work``, and its first page."""

    def __init__(self, executable: str, work: Path, width: int = 1400, height: int = 1600):
        profile = work / "chromium-profile"
        profile.mkdir(parents=True, exist_ok=True)
        port_file = profile / "DevToolsActivePort"
        port_file.unlink(missing_ok=True)  # an earlier browser's port, not this one's
        # --no-sandbox: the tests run as root in CI, where Chromium's sandbox refuses to start
        self.process = subprocess.Popen(
            [executable, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
             f"--window-size={width},{height}", "--remote-debugging-port=0", f"--user-data-dir={profile}",
             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.ws: Any = None
        try:
            self._connect(profile, port_file)
        except BaseException:
            self.close()
            raise

    def _connect(self, profile: Path, port_file: Path) -> None:
        import websocket

        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"Chromium did not start (exit {self.process.returncode})")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as r:
            pages = [t for t in json.load(r) if t["type"] == "page"]
        self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        self.ids = itertools.count(1)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command; its result (events arriving meanwhile are dropped)."""
        mine = next(self.ids)
        self.ws.send(json.dumps({"id": mine, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == mine:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return message["result"]

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-serialisable values only)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60.0) -> Any:
        """Poll ``expression`` until it is truthy; its value (fails after ``timeout`` s). While a
        page loads it may throw (no body yet): that counts as not yet."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(f"(() => {{ try {{ return ({expression}); }} catch (e) {{ return null; }} }})()")
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"the page never satisfied {expression} within {timeout} s")

    def screenshot(self, path: Path) -> Path:
        """A PNG of the whole page."""
        size = self.call("Page.getLayoutMetrics")["cssContentSize"]
        shot = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                         clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1})
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def close(self) -> None:
        """Close the connection and end the browser with every process it started (its own group)."""
        if self.ws is not None:
            self.ws.close()
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: JavaScript: every table of the page as {table id: {row key: {column: cell text}}}.
TABLES_JS = """(() => {
  const out = {};
  for (const t of document.querySelectorAll("table[data-table]")) {
    const rows = {};
    for (const r of t.querySelectorAll("tr[data-row]")) {
      const cells = {};
      for (const c of r.querySelectorAll("td[data-col]")) cells[c.dataset.col] = c.textContent;
      rows[r.dataset.row] = cells;
    }
    out[t.dataset.table] = rows;
  }
  return out;
})()"""

#: JavaScript: {chart id: [series names]} of the page's SVG charts.
SERIES_JS = """(() => {
  const out = {};
  for (const s of document.querySelectorAll("svg[data-chart]")) {
    out[s.dataset.chart] = Array.from(s.querySelectorAll("[data-series]"), (p) => p.dataset.series);
  }
  return out;
})()"""
