"""`elm-corpus stats NAME --report DIR`: a self-contained page that a real browser renders cleanly.

The browser check drives Debian's headless Chromium over the DevTools protocol on a pipe
(``--remote-debugging-pipe``: no port, no extra package), loads the page from disk and
records every console message, script exception, failed load and network request.
"""
from __future__ import annotations

import fcntl
import html
import json
import os
import re
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from pipelines.cli import main as cli_main
from corpus.inspection.report import CHARTS

REPO = Path(__file__).resolve().parent.parent
SETUP_CHROMIUM = REPO / "tests" / "setup_chromium.sh"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- headless Chromium over a DevTools pipe

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

    def load(self, page: Path) -> dict:
        self.events = events = []
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page", "Network"):
            self.send(f"{domain}.enable", session=session)
        self.send("Page.navigate", {"url": page.resolve().as_uri()}, session=session)
        self.wait_for(lambda m: m.get("method") == "Page.loadEventFired" and m.get("sessionId") == session, events)
        probe = ("JSON.stringify({title: document.title, images: Array.from(document.images).map(i => ({"
                 "src: i.getAttribute('src'), complete: i.complete, width: i.naturalWidth, height: i.naturalHeight,"
                 " figure: i.closest('figure') && i.closest('figure').id}))})")
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


@pytest.fixture(scope="module")
def chromium():
    binary = find_chromium()
    if binary is None and SETUP_CHROMIUM.exists():
        subprocess.run(["bash", str(SETUP_CHROMIUM)], check=False, timeout=600)
        binary = find_chromium()
    if binary is None:
        pytest.skip("no Chromium: /usr/bin/chromium is absent and tests/setup_chromium.sh could not install "
                    "Debian's chromium here (needs apt-get and root or password-less sudo)")
    browser = HeadlessChromium(binary)
    yield browser
    browser.close()


# ---------------------------------------------------------------- reports the tests look at

def write_report(corpus_dir: Path, out: Path, capsys) -> Path:
    assert cli_main(["stats", str(corpus_dir), "--report", str(out)]) == 0
    assert f"report: {out / 'index.html'}" in capsys.readouterr().out
    return out / "index.html"


@pytest.fixture(scope="module")
def sample_dir(sample_corpus) -> Path:
    return Path(sample_corpus.out_dir)


@pytest.fixture(scope="module")
def sample_report(sample_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "openelm-sample"
    assert cli_main(["stats", str(sample_dir), "--report", str(out), "--json"]) == 0
    return out / "index.html"


def half_built_copy(sample_dir: Path, dst: Path, keep: int) -> Path:
    """The folder a build killed mid-way leaves: status building, later units without ledger entries."""
    shutil.copytree(sample_dir, dst)
    corpus = json.loads((dst / "corpus.json").read_text())
    corpus.update(status="building", finished_at=None)
    (dst / "corpus.json").write_text(json.dumps(corpus))
    for path in sorted((dst / "ledger").glob("*/*.json"))[keep:]:
        path.unlink()
    return dst


# ---------------------------------------------------------------- the tests

def test_report_writes_a_page_every_chart_and_the_numbers(sample_report, sample_dir, capsys):
    folder = sample_report.parent
    for name in CHARTS:
        assert (folder / name).read_bytes()[:8] == PNG_SIGNATURE, name
    assert cli_main(["stats", str(sample_dir), "--json"]) == 0
    assert json.loads((folder / "stats.json").read_text()) == json.loads(capsys.readouterr().out)


def test_report_opens_in_headless_chromium_with_every_chart_and_no_console_error(sample_report, chromium):
    seen = chromium.load(sample_report)
    assert console_errors(seen["events"]) == []
    images = {i["src"]: i for i in seen["dom"]["images"]}
    assert set(images) == set(CHARTS)
    for name, image in images.items():
        from matplotlib.image import imread
        height, width = imread(sample_report.parent / name).shape[:2]
        assert image["complete"] and (image["width"], image["height"]) == (width, height), name
        assert image["figure"] == Path(name).stem
    assert seen["dom"]["title"].startswith("openelm")


def test_report_loads_nothing_from_outside_its_folder(sample_report, chromium):
    seen = chromium.load(sample_report)
    folder = sample_report.parent.resolve().as_uri() + "/"
    urls = requested_urls(seen["events"])
    assert urls and all(u.startswith(folder) for u in urls), urls
    page = sample_report.read_text()
    assert not re.search(r"(?i)\b(?:src|href)\s*=\s*\"(?:https?:)?//", page)
    for ref in re.findall(r"(?:src|href)=\"([^\"#]+)\"", page):
        assert (sample_report.parent / ref).is_file(), ref


def test_report_shows_every_source_and_quarantined_examples(sample_report, sample_dir):
    page = sample_report.read_text()
    numbers = json.loads((sample_report.parent / "stats.json").read_text())
    for s in numbers["sources"]:
        assert f"<td>{s['name']}</td>" in page
    assert f"{numbers['total']['tokens']:,}" in page
    first = json.loads(sorted((sample_dir / "quarantine").glob("*/*.jsonl"))[0].read_text().splitlines()[0])
    assert html.escape(first["excerpt"]) in page and first["reason"] in page


def test_a_half_built_corpus_gets_a_report_that_says_how_far_it_got(sample_dir, tmp_path, chromium, capsys):
    corpus_dir = half_built_copy(sample_dir, tmp_path / "half", keep=9)
    page = write_report(corpus_dir, tmp_path / "report", capsys)
    text = page.read_text()
    planned = len(json.loads((corpus_dir / "plan.json").read_text())["units"])
    assert "This corpus is building" in text and f"9 of {planned} work units are done" in text
    seen = chromium.load(page)
    assert console_errors(seen["events"]) == []
    assert {i["src"] for i in seen["dom"]["images"] if i["complete"] and i["width"]} == set(CHARTS)


def test_markup_in_a_quarantined_record_is_shown_as_text(sample_dir, tmp_path, chromium, capsys):
    corpus_dir = tmp_path / "hostile"
    shutil.copytree(sample_dir, corpus_dir)
    path = sorted((corpus_dir / "quarantine").glob("*/*.jsonl"))[0]
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    hostile = "<img src=x onerror=\"console.error('ran')\"><script>console.error('ran')</script>"
    rows[0]["excerpt"] = hostile
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    page = write_report(corpus_dir, tmp_path / "report", capsys)
    seen = chromium.load(page)
    assert console_errors(seen["events"]) == []
    assert html.escape(hostile) in page.read_text()
    assert len(seen["dom"]["images"]) == len(CHARTS)
