"""`elm-corpus stats` on a deduplicated corpus: duplicates as drop reasons and the cross-source overlap, in the
terminal, in `--json` and in the HTML report, against corpus.json's totals and the planted ground truth.

The session's planted corpus (tests/conftest.py) serves the module: source 'first' holds originals and a few
copies of them; source 'second' holds its own originals and most of the copies (tests/planted_duplicates.py).
"""
from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from browser import console_errors
from corpus.inspection.numbers import dropped_cell, percent, short_count
from corpus.inspection.report import CHARTS, OVERLAP_CHART, overlap_scale
from corpus.inspection.stats import dedup_note
from corpus.store.counts import DUPLICATE_EXACT, DUPLICATE_NEAR, DUPLICATE_REASONS
from corpus.store.layout import read_corpus_json
from pipelines.cli import main as cli_main
from planted_duplicates import SOURCES


@pytest.fixture
def planted(planted_corpus) -> tuple[Path, dict, list]:
    result, documents, plants = planted_corpus
    return Path(result.out_dir), documents, plants


def stats_json(capsys, corpus: Path) -> dict:
    assert cli_main(["stats", str(corpus), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def pairs_from_totals(index: dict) -> list[dict]:
    """The overlap pairs corpus.json's per-source totals give, in manifest order."""
    out = []
    for a in SOURCES:
        totals = index["sources"][a]["totals"]
        for b in SOURCES:
            if totals["duplicate_of"].get(b):
                out.append({"removed_from": a, "kept_in": b, "documents": totals["duplicate_of"][b],
                            "tokens": totals["duplicate_tokens_of"][b],
                            "share_of_read": totals["duplicate_of"][b] / totals["documents_read"]})
    return out


def overlap_rows(text: str) -> dict[str, dict[str, tuple[str, str]]]:
    """The terminal's overlap table as {row's source: {column heading: (documents line, tokens line)}}.

    The table has no vertical rules and right-aligned columns: a cell is the word ending at its heading's end.
    """
    lines = text[text.index("cross-source overlap"):].splitlines()
    h = next(i for i, line in enumerate(lines) if "removed from" in line)
    start = lines[h].index("→") + 1
    ends = {m.group(): start + m.end() for m in re.finditer(r"% read|\S+", lines[h][start:])}

    def at(line: str, end: int) -> str:
        before = line.ljust(end)[:end]
        return before.split()[-1] if before.strip() and not before.endswith(" ") else ""
    rows = {}
    for i in range(h + 2, len(lines) - 1):
        if lines[i][1:2].strip():  # a row's first line carries its label: "<number> <source>" or "total"
            name = lines[i].split()[-len(ends) - 1]
            rows[name] = {heading: (at(lines[i], end), at(lines[i + 1], end)) for heading, end in ends.items()}
            if name == "total":
                break
    return rows


# ---------------------------------------------------------------- --json

def test_json_overlap_pairs_are_corpus_jsons_duplicate_counts(planted, capsys):
    out, _, _ = planted
    numbers, index = stats_json(capsys, out), read_corpus_json(out)
    overlap = numbers["overlap"]
    assert overlap["pairs"] == pairs_from_totals(index)
    assert overlap["settings"] == index["manifest"]["dump"]["dedup"]
    assert overlap["decided"] == json.loads((out / "dedup" / "result.json").read_text())["removed"]
    assert (overlap["documents"], overlap["tokens"]) == (sum(p["documents"] for p in overlap["pairs"]),
                                                         sum(p["tokens"] for p in overlap["pairs"]))
    assert overlap["documents"] == sum(overlap["decided"].values())  # complete: every decided removal is counted


def test_duplicates_are_drop_reasons_with_their_tokens_and_add_up_to_the_pairs(planted, capsys):
    out, _, _ = planted
    numbers, index = stats_json(capsys, out), read_corpus_json(out)
    for s in numbers["sources"]:
        totals = index["sources"][s["name"]]["totals"]
        mine = [p for p in numbers["overlap"]["pairs"] if p["removed_from"] == s["name"]]
        for reason in DUPLICATE_REASONS:
            assert s["documents"]["dropped"].get(reason, 0) == totals["dropped"].get(reason, 0)
            assert s["tokens_dropped"].get(reason, 0) == totals["tokens_dropped"].get(reason, 0)
            assert reason not in s["chunks"]["dropped"]  # removed whole, never split
        assert sum(p["documents"] for p in mine) == sum(s["documents"]["dropped"].get(r, 0) for r in DUPLICATE_REASONS)
        assert sum(p["tokens"] for p in mine) == sum(s["tokens_dropped"].get(r, 0) for r in DUPLICATE_REASONS)
        assert s["documents"]["read"] == s["documents"]["kept"] + s["documents"]["dropped_total"] \
            + s["documents"]["quarantined"]


def test_json_overlap_matches_the_planted_ground_truth(planted, capsys):
    out, documents, plants = planted
    numbers = stats_json(capsys, out)
    pairs = {(p["removed_from"], p["kept_in"]): p for p in numbers["overlap"]["pairs"]}

    def planted_in(pair: tuple[str, str], keep) -> int:
        return sum(1 for p in plants if (SOURCES[p.copy[0]], SOURCES[p.original[0]]) == pair and keep(p))

    # every original is in 'first', so only ('first', 'first') and ('second', 'first') can lose documents
    assert set(pairs) == {(SOURCES[p.copy[0]], SOURCES[p.original[0]]) for p in plants if p.kind == "exact"}
    for pair, found in pairs.items():
        exact = planted_in(pair, lambda p: p.kind == "exact")
        near = planted_in(pair, lambda p: p.kind != "exact" and p.jaccard >= 0.9)
        unsure = planted_in(pair, lambda p: p.kind != "exact" and 0.5 < p.jaccard < 0.9)
        far = planted_in(pair, lambda p: p.kind != "exact" and p.jaccard <= 0.5)
        # test_dedup's quality bounds: every exact copy, at least 95% of near ones, at most 2% of far ones
        assert exact + math.ceil(0.95 * near) <= found["documents"] <= exact + near + unsure + math.floor(0.02 * far)
        read = sum(1 for s, _ in documents if SOURCES[s] == pair[0])
        assert found["share_of_read"] == found["documents"] / read
    for s in numbers["sources"]:
        exact = sum(1 for p in plants if p.kind == "exact" and SOURCES[p.copy[0]] == s["name"])
        assert s["documents"]["dropped"].get(DUPLICATE_EXACT, 0) == exact
    assert pairs[("second", "first")]["documents"] > pairs[("first", "first")]["documents"] > 0


def test_a_half_built_corpus_counts_the_overlap_of_its_finished_units(planted, tmp_path, capsys):
    out, _, _ = planted
    half = shutil.copytree(out, tmp_path / "half")
    index = json.loads((half / "corpus.json").read_text())
    index.update(status="building", finished_at=None)
    (half / "corpus.json").write_text(json.dumps(index))
    for path in sorted((half / "ledger" / "second").glob("*.json"))[2:]:  # 2 of its 4 units finished
        path.unlink()
    numbers = stats_json(capsys, half)
    second = [json.loads(p.read_text()) for p in sorted((half / "ledger" / "second").glob("*.json"))]
    finished = sum(e["duplicate_of"].get("first", 0) for e in second)
    lost = {p["kept_in"]: p["documents"] for p in numbers["overlap"]["pairs"] if p["removed_from"] == "second"}
    assert lost == {"first": finished} and 0 < finished < sum(read_corpus_json(out)["sources"]["second"]["totals"][
        "duplicate_of"].values())
    assert numbers["overlap"]["decided"] == stats_json(capsys, out)["overlap"]["decided"]  # the search's, unchanged


# ---------------------------------------------------------------- the terminal

def test_terminal_shows_the_settings_and_the_overlap_table(planted, capsys):
    out, _, _ = planted
    numbers = stats_json(capsys, out)
    assert cli_main(["stats", str(out)]) == 0
    text = capsys.readouterr().out
    overlap = numbers["overlap"]
    assert dedup_note(overlap) in text and "Jaccard >= 0.8" in text
    rows = overlap_rows(text)
    number = {name: str(i + 1) for i, name in enumerate(SOURCES)}
    # a column for each source holding kept copies: only 'first' here, the source listed first
    assert list(rows["total"]) == [number["first"], "all", "% read"]

    def cell(found: list[dict]) -> tuple[str, str]:
        documents = sum(p["documents"] for p in found)
        return (f"{documents:,}", short_count(sum(p["tokens"] for p in found))) if documents else ("-", "")
    for s in numbers["sources"]:
        mine = [p for p in overlap["pairs"] if p["removed_from"] == s["name"]]
        assert rows[s["name"]] == {
            number["first"]: cell([p for p in mine if p["kept_in"] == "first"]), "all": cell(mine),
            "% read": (percent(sum(p["documents"] for p in mine) / s["documents"]["read"]), "")}
    assert rows["total"]["all"] == (f"{overlap['documents']:,}", short_count(overlap["tokens"]))


def test_terminal_drop_table_gives_duplicates_documents_and_tokens_but_no_chunks(planted, capsys):
    out, _, _ = planted
    numbers = stats_json(capsys, out)
    assert cli_main(["stats", str(out)]) == 0
    text = capsys.readouterr().out
    for s in numbers["sources"]:
        cells = [dropped_cell(s, r) for r in DUPLICATE_REASONS]
        assert cells[1] == (f"{s['documents']['dropped'][DUPLICATE_NEAR]:,} / - / "
                            f"{short_count(s['tokens_dropped'][DUPLICATE_NEAR])}")
        line = next(line for line in text.splitlines() if line.startswith(f"│ {s['name']} ") and " / - / " in line)
        assert [c.strip() for c in line.strip("│").split("│")][1:] == cells


# ---------------------------------------------------------------- the HTML report

def test_report_shows_the_overlap_table_and_a_heatmap_that_fits_the_window(planted, tmp_path, chromium, capsys):
    out, _, _ = planted
    numbers = stats_json(capsys, out)
    assert cli_main(["stats", str(out), "--report", str(tmp_path / "report")]) == 0
    page = tmp_path / "report" / "index.html"
    html = page.read_text()
    assert "<h2>Cross-source overlap</h2>" in html and dedup_note(numbers["overlap"]).replace(">", "&gt;") in html
    for p in numbers["overlap"]["pairs"]:
        assert (f'<tr><td>{p["removed_from"]}</td><td>{p["kept_in"]}</td><td class="n">{p["documents"]:,}</td>'
                f'<td class="n">{percent(p["share_of_read"])}</td><td class="n">{p["tokens"]:,}</td></tr>') in html
    for s in numbers["sources"]:
        for reason in DUPLICATE_REASONS:
            assert f'<td class="n">{dropped_cell(s, reason)}</td>' in html
    assert json.loads((tmp_path / "report" / "stats.json").read_text()) == numbers

    seen = chromium.load(page, width=1200)
    assert console_errors(seen["events"]) == []
    images = {i["src"]: i for i in seen["dom"]["images"]}
    assert set(images) == {*CHARTS, OVERLAP_CHART[0]}
    from matplotlib.image import imread
    height, width = imread(tmp_path / "report" / OVERLAP_CHART[0]).shape[:2]
    heatmap = images[OVERLAP_CHART[0]]
    assert heatmap["complete"] and (heatmap["width"], heatmap["height"]) == (width, height)
    assert heatmap["figure"] == "overlap"
    dom = seen["dom"]
    assert dom["page_width"] <= 1200 and not [t["head"] for t in dom["tables"] if t["right"] > 1200]


def test_the_heatmaps_colour_scale_spans_the_shares_it_shows():
    shares = np.array([[0.05, np.nan], [0.43, np.nan]])
    assert overlap_scale(shares) == (0.05, 0.43)
    assert overlap_scale(np.array([[np.nan, 0.2]])) == (0.0, 0.2)  # one share alone: the top colour
    assert overlap_scale(np.full((2, 2), np.nan)) == (0.0, 1.0)
