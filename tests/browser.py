"""Headless Chromium for the HTML page tests, driven over the DevTools protocol on a pipe.

``--remote-debugging-pipe``: no port, no extra package. Debian's chromium is installed by
tests/setup_chromium.sh when absent; without it the page tests skip and say why. The
`chromium` fixture (tests/conftest.py) starts one browser per test session.
"""
from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SETUP_CHROMIUM = REPO / "tests" / "setup_chromium.sh"


def find_chromium() -> str | None:
    for candidate in (os.environ.get("ELM_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


class HeadlessChromium:
    """One headless Chromium; ``load(path)`` opens a page in a fresh tab and returns what happened."""

    FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--remote-debugging-pipe"]

    def __init__(self, binary: str, timeout: float = 30.0):
        self.timeout, self.next_id, self.buffer, self.events = timeout, 0, b"", []
        self.profile = tempfile.mkdtemp(prefix="elm-chromium-")
        to_browser, self.from_us = os.pipe()
        self.from_browser, to_us = os.pipe()

        def wire_fds():  # Chromium reads commands on fd 3 and writes replies on fd 4
            r = fcntl.fcntl(to_browser, fcntl.F_DUPFD, 10)
            w = fcntl.fcntl(to_us, fcntl.F_DUPFD, 10)
            os.dup2(r, 3)
            os.dup2(w, 4)

        self.process = subprocess.Popen([binary, *self.FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                                        pass_fds=(3, 4), preexec_fn=wire_fds, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        os.close(to_browser)
        os.close(to_us)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.from_us, json.dumps(message).encode() + b"\0")
        reply = self.wait_for(lambda m: m.get("id") == self.next_id, self.events)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def wait_for(self, predicate, events: list | None = None, timeout: float | None = None) -> dict | None:
        """Read messages until one matches; events on the way go to ``events``. None when ``timeout`` ends it."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        while True:
            while b"\0" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "method" in message and events is not None:
                    events.append(message)
                if predicate(message):
                    return message
            left = deadline - time.monotonic()
            if left <= 0:
                if timeout is not None:
                    return None
                raise TimeoutError("Chromium did not answer in time")
            ready, _, _ = select.select([self.from_browser], [], [], left)
            if ready:
                data = os.read(self.from_browser, 1 << 16)
                if not data:
                    tail = self.process.stderr.read().decode(errors="replace")[-2000:]
                    raise RuntimeError(f"Chromium exited: {tail}")
                self.buffer += data

    def load(self, page: Path, width: int | None = None) -> dict:
        """Open `page` (in a window `width` CSS pixels wide if given); its title, images, and how wide it lays out:
        the page's scroll width and each table's right edge."""
        self.events = events = []
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page", "Network"):
            self.send(f"{domain}.enable", session=session)
        if width is not None:
            self.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": 900, "deviceScaleFactor": 1,
                                                             "mobile": False}, session=session)
        self.send("Page.navigate", {"url": page.resolve().as_uri()}, session=session)
        self.wait_for(lambda m: m.get("method") == "Page.loadEventFired" and m.get("sessionId") == session, events)
        probe = ("JSON.stringify({title: document.title, images: Array.from(document.images).map(i => ({"
                 "src: i.getAttribute('src'), complete: i.complete, width: i.naturalWidth, height: i.naturalHeight,"
                 " figure: i.closest('figure') && i.closest('figure').id})),"
                 " page_width: document.documentElement.scrollWidth, window_width: window.innerWidth,"
                 " tables: Array.from(document.querySelectorAll('table')).map(t => ({"
                 "right: Math.ceil(t.getBoundingClientRect().right), head: t.rows[0] ? t.rows[0].innerText : ''}))})")
        result = self.send("Runtime.evaluate", {"expression": probe, "returnByValue": True}, session=session)
        self.wait_for(lambda m: False, events, timeout=0.3)  # late console messages
        self.send("Target.closeTarget", {"targetId": target})
        return {"dom": json.loads(result["result"]["value"]), "events": events}

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for fd in (self.from_us, self.from_browser):
            os.close(fd)
        shutil.rmtree(self.profile, ignore_errors=True)


def console_errors(events: list[dict]) -> list[str]:
    errors = []
    for e in events:
        method, p = e["method"], e.get("params", {})
        if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            errors.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in p.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            errors.append("exception: " + json.dumps(p.get("exceptionDetails", {}))[:300])
        elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            errors.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
        elif method == "Network.loadingFailed":
            errors.append(f"load failed: {p.get('errorText')}")
    return errors


def requested_urls(events: list[dict]) -> list[str]:
    return [e["params"]["request"]["url"] for e in events if e["method"] == "Network.requestWillBeSent"]
