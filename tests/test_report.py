"""`elm-corpus stats NAME --report DIR`: a self-contained page that a real browser renders cleanly.

The browser check (tests/browser.py, the `chromium` fixture) loads the page from disk in
headless Chromium and records every console message, script exception, failed load and request.
"""
from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path

import pytest

from browser import console_errors, requested_urls
from corpus.inspection.report import CHARTS, OVERLAP_CHART
from pipelines.cli import main as cli_main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


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
    assert seen["dom"]["title"] == "openelm-sample: corpus report"  # one name: the folder's, as --corpus says


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


def test_a_corpus_built_without_dedup_has_no_overlap_section(sample_report):
    numbers = json.loads((sample_report.parent / "stats.json").read_text())
    assert numbers["overlap"] is None
    assert "overlap" not in sample_report.read_text().lower()
    assert not (sample_report.parent / OVERLAP_CHART[0]).exists()


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


def test_report_fits_a_1200_pixel_window_without_hiding_a_column(sample_report, chromium):
    seen = chromium.load(sample_report, width=1200)
    dom = seen["dom"]
    assert dom["window_width"] == 1200 and dom["tables"]
    assert dom["page_width"] <= 1200, dom["page_width"]
    wide = [(t["head"][:60], t["right"]) for t in dom["tables"] if t["right"] > 1200]
    assert not wide, wide


def test_the_funnels_colour_scale_spans_the_shares_it_shows():
    import numpy as np
    from corpus.inspection.report import funnel_scale
    shares = np.array([[1.0, 0.97, 0.95, 0.95], [1.0, 0.99, np.nan, 0.92]])
    assert funnel_scale(shares) == (0.92, 1.0)
    low, high = funnel_scale(np.array([[1.0, 1.0]]))
    assert low < 1.0 < high
    assert funnel_scale(np.full((2, 2), np.nan)) == (0.0, 1.0)
