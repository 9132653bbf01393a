"""`elm-corpus stats NAME --report DIR`: an HTML page and PNG charts of where a corpus's text went.

The folder is self-contained: ``index.html`` refers only to the PNGs next to it (by
relative name) and carries its style inline; no script, font or image comes from the
network. ``stats.json`` beside them holds the numbers the page shows (docs/stats.md).

Charts (matplotlib, drawn on ``Figure`` objects so no global pyplot state is touched):
``funnel.png``, ``mixture.png``, ``chunk_lengths.png``, ``drops.png``, ``quarantine.png``; with dedup, also
``overlap.png`` (the cross-source overlap heatmap).
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
from matplotlib.ticker import MaxNLocator, PercentFormatter

from corpus.inspection.numbers import dropped_cell, grouped, human_bytes, never_counted, percent, short_count
from corpus.inspection.stats import CorpusStats, dedup_note, progress_note, quarantine_examples
from corpus.store import location
from corpus.store.counts import DUPLICATE_REASONS

CHARTS = {
    "funnel.png": "Token funnel per source: tokens (BOS and EOS included) of the chunks that pass the character "
                  "rule, then left after the min_tokens rule and after each extra filter, down to the tokens kept "
                  "in the shards. Colour is the share of the encoded tokens still left. Chunks dropped by the "
                  "character rule are never tokenized, so they are counted in chunks instead (on the right, and "
                  "in the drops chart). Documents removed as duplicates leave first, as in the build: they are "
                  "encoded whole to count their tokens, short pieces included.",
    "mixture.png": "Target share of each source (from the manifest) against the share of the corpus's tokens it "
                   "holds now.",
    "chunk_lengths.png": "Tokens per kept chunk (BOS and EOS included), per source; the dashed line is the "
                         "manifest's min_tokens, the solid one the median.",
    "drops.png": "Documents and chunks dropped, per source and reason (a document is dropped when none of its "
                 "chunks is kept, under the reason of its first chunk; a duplicate is removed whole, before it is "
                 "split, so it counts no chunk).",
    "quarantine.png": "Records quarantined (unreadable or without text), per source and reason; examples below.",
}
# drawn only for a corpus built with dedup, so not among CHARTS (which every report has)
OVERLAP_CHART = ("overlap.png", "Documents removed as duplicates, as a share of the documents read from the source "
                                "on the left, by the source holding the copy that was kept (the diagonal: within a "
                                "source). The colour scale spans the shares shown; blank: none removed.")
_EXAMPLES_PER_SOURCE = 5
_DPI = 100


def _reason_colors(reasons: list[str]) -> dict[str, tuple]:
    from matplotlib import colormaps
    cmap = colormaps["tab10" if len(reasons) <= 10 else "tab20"]
    return {r: cmap(i % cmap.N) for i, r in enumerate(reasons)}


def figure(width: float, height: float):
    """A matplotlib figure for the project's HTML reports (no pyplot state; constrained layout)."""
    from matplotlib.figure import Figure
    return Figure(figsize=(width, height), dpi=_DPI, layout="constrained")


def inline_png(fig) -> str:
    """A figure as a `data:` URI, for a page that must be one file (no chart beside it to lose or to fetch)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _rows_height(n: int, per_row: float = 0.42, base: float = 1.6) -> float:
    return base + per_row * max(n, 1)


def _filter_order(corpus_json: dict, sources: list[dict]) -> list[str]:
    """Extra-filter names in the order the build applies them (manifest order), then any others seen."""
    order: list[str] = []
    for source in ((corpus_json.get("manifest") or {}).get("dump") or {}).get("sources", []):
        for f in source.get("filters") or []:
            if f.get("type") not in order:
                order.append(f.get("type"))
    seen = sorted({r for s in sources for r in (s.get("tokens_dropped") or {})
                   if r != "too_few_tokens" and r not in DUPLICATE_REASONS})  # duplicates have their own stages
    return order + [r for r in seen if r not in order]


def funnel_scale(shares: np.ndarray) -> tuple[float, float]:
    """The colour scale of the funnel: from the smallest share of tokens left to the largest, so that a corpus whose
    filters drop a few percent still shows its stages apart (a fixed 0..1 scale paints them one colour)."""
    values = shares[np.isfinite(shares)]
    if values.size == 0:
        return 0.0, 1.0
    low, high = float(values.min()), float(values.max())
    return (low, high) if high - low > 1e-3 else (high - 0.05, high + 1e-3)


def _chart_funnel(stats: CorpusStats, path: Path, filters: list[str]) -> None:
    sources = stats.sources
    filters = [f for f in filters if any((s.get("tokens_dropped") or {}).get(f) for s in sources)]
    # the build removes duplicates before it splits documents, so they leave the funnel first
    duplicates = [r for r in DUPLICATE_REASONS if any((s.get("tokens_dropped") or {}).get(r) for s in sources)]
    stages = ["encoded\n(>= min_chars)", *[f"after\n{r}" for r in duplicates], "after\nmin_tokens",
              *[f"after\n{f}" for f in filters], "kept\n(in shards)"]
    counts = np.full((len(sources), len(stages)), np.nan)
    for i, s in enumerate(sources):
        dropped = s.get("tokens_dropped")
        if dropped is None or s.get("tokens_after_chars") is None:
            continue  # shards from a build that did not record dropped tokens: no funnel to draw
        left_now = s["tokens_after_chars"]
        row = [left_now]
        for reason in (*duplicates, "too_few_tokens", *filters):
            left_now -= dropped.get(reason, 0)
            row.append(left_now)
        counts[i] = [*row, s["tokens"]]  # kept, from the .idx: every drop is named above, so it equals left_now
    base = counts[:, [0]]
    left = np.divide(counts, base, out=np.zeros_like(counts), where=base > 0)
    fig = figure(max(9, 1.6 * len(stages) + 4), _rows_height(len(sources), 0.45, 2.2))
    ax = fig.add_subplot()
    shown = np.where(np.isnan(counts), np.nan, left)
    low, high = funnel_scale(shown)
    image = ax.imshow(shown, cmap="viridis", vmin=low, vmax=high, aspect="auto")
    for i in range(len(sources)):
        for j in range(len(stages)):
            text = "-" if np.isnan(counts[i, j]) else short_count(int(counts[i, j]))
            dark = np.isnan(counts[i, j]) or (left[i, j] - low) / (high - low) < 0.6  # viridis is dark below 0.6
            ax.text(j, i, text, ha="center", va="center", fontsize=9, color="white" if dark else "black")
    ax.set_xticks(range(len(stages)), stages, fontsize=9)
    ax.set_yticks(range(len(sources)), [s["name"] for s in sources])
    ax.xaxis.tick_top()
    right = ax.secondary_yaxis("right")
    right.set_yticks(range(len(sources)), [f"< min_chars, not tokenized: "
                                           f"{s['chunks']['dropped'].get('too_few_chars', 0):,} chunks"
                                           for s in sources], fontsize=8)
    fig.colorbar(image, ax=ax, label="share of the encoded tokens still left", shrink=0.8, pad=0.02)
    ax.set_title("tokens per source, stage by stage (BOS/EOS included)")
    fig.supxlabel("chunks dropped by the character rule (too_few_chars) are never tokenized: they are counted "
                  "in chunks, on the right and in drops.png", fontsize=9)
    fig.savefig(path)


def _chart_mixture(stats: CorpusStats, path: Path) -> None:
    sources = stats.sources
    names = [s["name"] for s in sources]
    target = [100 * (s["share"]["target"] or 0) for s in sources]
    got = [100 * (s["share"]["achieved"] or 0) for s in sources]
    y = np.arange(len(sources))
    fig = figure(9, _rows_height(len(sources), 0.5))
    ax = fig.add_subplot()
    ax.barh(y - 0.2, target, height=0.4, label="target (manifest)", color="#9aa5b1")
    ax.barh(y + 0.2, got, height=0.4, label="achieved (tokens on disk)", color="#2b7bba")
    for yi, want, value in zip(y, target, got):
        ax.text(want, yi - 0.2, f" {want:.1f}%", va="center", fontsize=8, color="#52606d")
        ax.text(value, yi + 0.2, f" {value:.1f}%", va="center", fontsize=8)
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlabel("share of the corpus's tokens (%)")
    ax.set_xlim(0, max([*target, *got, 1]) * 1.15)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=2)
    ax.set_title("target vs achieved mixture")
    fig.savefig(path)


def _chart_lengths(stats: CorpusStats, path: Path, min_tokens: int | None) -> None:
    sources = stats.sources
    cols = min(3, max(len(sources), 1))
    rows = max(1, math.ceil(len(sources) / cols))
    fig = figure(4.2 * cols, 2.6 * rows + 0.6)
    everything = [v for s in sources for v in stats.lengths.get(s["name"], {})]
    top = max(everything) if everything else 1
    bins = np.linspace(0, top + 1, 41)
    for k, s in enumerate(sources):
        ax = fig.add_subplot(rows, cols, k + 1)
        lengths = stats.lengths.get(s["name"], Counter())
        if lengths:
            ax.hist(list(lengths), bins=bins, weights=list(lengths.values()), color="#2b7bba")
            ax.axvline(s["tokens_per_chunk"]["median"], color="black", linewidth=1)
        else:
            ax.text(0.5, 0.5, "no chunks yet", ha="center", va="center", transform=ax.transAxes)
        if min_tokens:
            ax.axvline(min_tokens, color="#c0392b", linestyle="--", linewidth=1)
        ax.set_title(f"{s['name']} ({s['chunks']['kept']:,} chunks)", fontsize=10)
        ax.set_xlabel("tokens per chunk", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle("chunk lengths per source")
    fig.savefig(path)


def _stacked(ax, names: list[str], by_reason: list[dict], colors: dict, title: str) -> None:
    y = np.arange(len(names))
    left = np.zeros(len(names))
    for reason, color in colors.items():
        values = np.array([d.get(reason, 0) for d in by_reason], dtype=float)
        if values.any():
            ax.barh(y, values, left=left, color=color, label=reason)
            left += values
    for yi, total in zip(y, left):
        ax.text(total, yi, f" {int(total):,}", va="center", fontsize=8)
    ax.set_yticks(y, names)
    if not ax.yaxis_inverted():  # axes sharing y invert together; flipping twice would undo it
        ax.invert_yaxis()
    ax.set_xlim(0, max(left.max() if len(left) else 0, 1) * 1.15)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title, fontsize=10)


def _chart_drops(stats: CorpusStats, path: Path) -> None:
    sources = stats.sources
    names = [s["name"] for s in sources]
    reasons = sorted({r for s in sources for r in s["chunks"]["dropped"]} |
                     {r for s in sources for r in s["documents"]["dropped"]})
    colors = _reason_colors(reasons)
    fig = figure(12, _rows_height(len(sources), 0.45, 2.2))
    if not reasons:
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "nothing dropped", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    else:
        ax1, ax2 = fig.subplots(1, 2, sharey=True)
        _stacked(ax1, names, [s["documents"]["dropped"] for s in sources], colors, "documents dropped")
        _stacked(ax2, names, [s["chunks"]["dropped"] for s in sources], colors, "chunks dropped")
        fig.legend(*ax2.get_legend_handles_labels(), loc="outside lower center", ncols=min(len(reasons), 5))
    fig.suptitle("drops by reason")
    fig.savefig(path)


def _chart_quarantine(stats: CorpusStats, path: Path) -> None:
    sources = stats.sources
    names = [s["name"] for s in sources]
    reasons = sorted({r for s in sources for r in s["documents"]["quarantined_by_reason"]})
    fig = figure(9, _rows_height(len(sources), 0.45, 2.0))
    ax = fig.add_subplot()
    if not reasons:
        ax.text(0.5, 0.5, "nothing quarantined: every record read was a document", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
    else:
        colors = _reason_colors(reasons)
        _stacked(ax, names, [s["documents"]["quarantined_by_reason"] for s in sources], colors,
                 "records quarantined")
        fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=min(len(reasons), 5))
    fig.suptitle("quarantine by reason")
    fig.savefig(path)


def overlap_scale(shares: np.ndarray) -> tuple[float, float]:
    """The colour scale of the overlap heatmap: from the smallest share removed to the largest (a cell with none
    removed is blank), so that a 0.1% overlap is told apart from a 1% one; a single share takes the top colour."""
    values = shares[np.isfinite(shares)]
    if values.size == 0:
        return 0.0, 1.0
    low, high = float(values.min()), float(values.max())
    return (low, high) if high - low > 1e-9 else (0.0, high)


def _chart_overlap(stats: CorpusStats, path: Path) -> None:
    names = [s["name"] for s in stats.sources]
    at = {name: i for i, name in enumerate(names)}
    documents = np.zeros((len(names), len(names)), dtype=np.int64)
    shares = np.full((len(names), len(names)), np.nan)
    for p in stats.numbers["overlap"]["pairs"]:
        i, j = at[p["removed_from"]], at[p["kept_in"]]
        documents[i, j], shares[i, j] = p["documents"], p["share_of_read"]
    low, high = overlap_scale(shares)
    fig = figure(min(12.0, 4.0 + 0.9 * len(names)), _rows_height(len(names), 0.55, 2.6))
    ax = fig.add_subplot()
    image = ax.imshow(shares, cmap="viridis", vmin=low, vmax=high, aspect="auto")
    for i, j in zip(*np.nonzero(documents)):
        dark = (shares[i, j] - low) / (high - low) < 0.6  # viridis is dark below 0.6
        docs = f"{documents[i, j]:,} doc" + ("s" if documents[i, j] != 1 else "")
        ax.text(j, i, f"{100 * shares[i, j]:.3g}%\n{docs}", ha="center", va="center", fontsize=8,
                color="white" if dark else "black")
    ax.set_xticks(range(len(names)), names, rotation=30 if len(names) > 3 else 0, ha="right" if len(names) > 3
                  else "center", fontsize=9)
    ax.set_yticks(range(len(names)), names, fontsize=9)
    ax.set_xlabel("kept in: the source holding the copy kept")
    ax.set_ylabel("removed from")
    fig.colorbar(image, ax=ax, label="share of the row's documents read", shrink=0.8, pad=0.02,
                 format=PercentFormatter(1.0))
    ax.set_title("documents removed as duplicates, by where the kept copy is", fontsize=10)
    fig.savefig(path)


# ---------------------------------------------------------------- the page

# The look of the project's HTML reports (the ablation report shares it).
REPORT_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #1f2933; padding: 0 1rem; }
h1 { margin-bottom: 0.2rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #d9e2ec; }
table { border-collapse: collapse; font-size: 0.8rem; margin: 0.6rem 0; }
th, td { padding: 0.2rem 0.4rem; border-bottom: 1px solid #e4e7eb; }
th { background: #f0f4f8; text-align: left; vertical-align: bottom; max-width: 6rem; } td:first-child { white-space: nowrap; }
.scroll { overflow-x: auto; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
tr.total td { font-weight: bold; border-top: 2px solid #9aa5b1; }
figure { margin: 1rem 0; } figure img { max-width: 100%; border: 1px solid #e4e7eb; }
figcaption { font-size: 0.85rem; color: #52606d; max-width: 900px; }
.status { display: inline-block; padding: 0.1rem 0.5rem; border-radius: 0.3rem; color: white; }
.complete { background: #2f8132; } .building, .partial { background: #b7791f; }
.failed, .damaged { background: #c0392b; }
.planned { background: #52606d; }
code, .mono { font-family: ui-monospace, monospace; font-size: 0.85em; word-break: break-all; }
.excerpt { white-space: pre-wrap; max-width: 36rem; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.2rem 1rem; font-size: 0.9rem; }
dt { color: #52606d; }
"""


def _e(value) -> str:
    return html.escape("-" if value is None else str(value))


def _sources_table(numbers: dict) -> str:
    heads = ["source", "units done / total", "failed", "docs read", "docs kept", "docs dropped", "quarantined",
             "chunks split", "chunks kept", "tokens", "mean tokens / chunk", "median tokens / chunk", "share", "target share",
             "shards on disk"]
    rows = []
    for s in [*numbers["sources"], {"name": "total", **numbers["total"]}]:
        d, ch, u, per = s["documents"], s["chunks"], s["units"], s["tokens_per_chunk"]
        cells = [f"{u['done']:,}/{u['total']:,}", grouped(u["failed"]), grouped(d["read"]), grouped(d["kept"]),
                 grouped(d["dropped_total"]), grouped(d["quarantined"]), grouped(ch["split"]), grouped(ch["kept"]), grouped(s["tokens"]),
                 grouped(per["mean"], 1), grouped(per["median"], 1), percent(s["share"]["achieved"]),
                 percent(s["share"]["target"]), human_bytes(s["bytes_on_disk"]["shards"])]
        cls = ' class="total"' if s["name"] == "total" else ""
        rows.append(f"<tr{cls}><td>{_e(s['name'])}</td>" + "".join(f'<td class="n">{_e(c)}</td>' for c in cells)
                    + "</tr>")
    return ("<table><thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in heads) + "</tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")


def _groups_table(numbers: dict) -> str:
    heads = ["group", "sources", "units done / total", "tokens", "share", "target share"]
    rows = []
    for g in numbers["groups"]:
        cells = [f"{g['units']['done']:,}/{g['units']['total']:,}", grouped(g["tokens"]),
                 percent(g["share"]["achieved"]), percent(g["share"]["target"])]
        rows.append(f"<tr><td>{_e(g['name'])}</td><td>{_e(', '.join(g['sources']))}</td>"
                    + "".join(f'<td class="n">{_e(c)}</td>' for c in cells) + "</tr>")
    return ("<table><thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in heads) + "</tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")


def _reasons_table(numbers: dict) -> str:
    sources = [*numbers["sources"], {"name": "total", **numbers["total"]}]
    drops = sorted({r for s in sources for r in (*s["chunks"]["dropped"], *s["documents"]["dropped"])})
    bad = sorted({r for s in sources for r in s["documents"]["quarantined_by_reason"]})
    details = sorted({r for s in sources for r in s["filter_details"]})
    if not (drops or bad or details):
        return "<p>Nothing was dropped or quarantined.</p>"
    heads = ["source"] + [f"dropped: {r} (docs / chunks / tokens)" for r in drops] \
        + [f"quarantined: {r}" for r in bad] + [f"filter detail: {r} (chunks)" for r in details]
    rows = []
    for s in sources:
        cells = [dropped_cell(s, r) for r in drops]
        cells += [f"{s['documents']['quarantined_by_reason'].get(r, 0):,}" for r in bad]
        cells += [f"{s['filter_details'].get(r, 0):,}" for r in details]
        cls = ' class="total"' if s["name"] == "total" else ""
        rows.append(f"<tr{cls}><td>{_e(s['name'])}</td>" + "".join(f'<td class="n">{c}</td>' for c in cells)
                    + "</tr>")
    never = f"<p>{_e(never_counted(drops))}.</p>" if never_counted(drops) else ""
    return ("<table><thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in heads) + "</tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>" + never)


def _overlap_section(numbers: dict) -> str:
    """The dedup settings, each pair of sources that lost documents (one row each, so any number of sources fits the
    page) and the heatmap; nothing without dedup."""
    overlap = numbers.get("overlap")
    if overlap is None:
        return ""
    head = f"<h2>Cross-source overlap</h2><p>{_e(dedup_note(overlap))}.</p>"
    if not overlap["pairs"]:
        none = "" if overlap["decided"] is None else \
            "<p>No document has been removed as a duplicate in the units built so far.</p>"
        return head + none
    read = {s["name"]: s["documents"]["read"] for s in numbers["sources"]}
    heads = ["removed from", "kept in", "documents", "share of its documents read", "tokens"]
    rows = [f"<tr><td>{_e(p['removed_from'])}</td><td>{_e(p['kept_in'])}</td><td class=\"n\">{p['documents']:,}</td>"
            f"<td class=\"n\">{percent(p['share_of_read'])}</td><td class=\"n\">{p['tokens']:,}</td></tr>"
            for p in overlap["pairs"]]
    every = sum(read.values())
    rows.append(f"<tr class=\"total\"><td>total</td><td></td><td class=\"n\">{overlap['documents']:,}</td>"
                f"<td class=\"n\">{percent(overlap['documents'] / every if every else None)}</td>"
                f"<td class=\"n\">{overlap['tokens']:,}</td></tr>")
    name, caption = OVERLAP_CHART
    return (head + "<p>Documents and tokens removed from one source as duplicates of a copy kept in another (or in "
            "the same) source; pairs that lost none are left out.</p>"
            "<div class=\"scroll\"><table><thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in heads)
            + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table></div>"
            f'<figure id="{Path(name).stem}"><img src="{name}" alt="{_e(caption)}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _quarantine_table(examples: dict[str, list[dict]]) -> str:
    if not examples:
        return "<p>No record was quarantined.</p>"
    rows = []
    for source, items in examples.items():
        for q in items:
            where = f"byte {q['byte']}" if "byte" in q else (f"row {q['row']}" if "row" in q else "-")
            rows.append(f"<tr><td>{_e(source)}</td><td>{_e(q.get('reason'))}</td><td class=\"mono\">"
                        f"{_e(q.get('file'))}</td><td>{_e(where)}</td><td>{_e(q.get('detail'))}</td>"
                        f"<td class=\"mono excerpt\">{_e(q.get('excerpt') or '')}</td></tr>")
    return ("<table><thead><tr><th>source</th><th>reason</th><th>file</th><th>where</th><th>detail</th>"
            "<th>excerpt</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def _failed_section(numbers: dict) -> str:
    parts = []
    warned = [s for s in numbers["sources"] if s.get("warning")]
    if warned:
        items = "".join(f"<li><code>{_e(s['name'])}</code> {_e(s['warning'])}</li>" for s in warned)
        parts.append(f"<h2>Sources that give little or nothing</h2><ul>{items}</ul>")
    if numbers["failed_units"]:
        items = "".join(f"<li><code>{_e(f['source'])}/{_e(f['unit'])}</code>: {_e(f['error'])}</li>"
                        for f in numbers["failed_units"])
        parts.append(f"<h2>Failed units</h2><p>Rerun <code>elm-corpus build</code> to retry them.</p><ul>{items}</ul>")
    if numbers.get("damaged_units"):
        items = "".join(f"<li><code>{_e(d['source'])}/{_e(d['unit'])}</code> (<code>{_e(d['shard'])}</code>): "
                        f"{_e('; '.join(d['problems']))}</li>" for d in numbers["damaged_units"])
        parts.append(f"<h2>Damaged units</h2><p>Their files disagree with their ledger entries. Run "
                     f"<code>elm-corpus verify {_e(numbers['corpus']['path'])}</code> to check every shard, then "
                     f"with <code>--repair</code>, and rerun the build it prints.</p><ul>{items}</ul>")
    if numbers["problems"]:
        items = "".join(f"<li>{_e(p)}</li>" for p in numbers["problems"])
        parts.append(f"<h2>Problems found on disk</h2><ul>{items}</ul>")
    return "".join(parts)


def _page(stats: CorpusStats, examples: dict[str, list[dict]]) -> str:
    n = stats.numbers
    c, t = n["corpus"], n["total"]
    status = c["status"]
    note = ""
    advice = progress_note(status, c.get("build_running"), c.get("build_pid"), c["path"])
    if status == "damaged":
        note = (f"<p><strong>This corpus is damaged:</strong> {len(n['damaged_units']):,} finished work unit(s) "
                f"have files that disagree with their ledger entries (listed at the end). {_e(advice)}.</p>")
    elif advice:
        note = (f"<p><strong>This corpus is {_e(status)}:</strong> {t['units']['done']:,} of "
                f"{t['units']['total']:,} work units are done; the numbers below count those. {_e(advice)}.</p>")
    facts = [("folder", c["path"]), ("manifest", c["manifest_path"]),
             ("manifest fingerprint", c["manifest_fingerprint"]),
             ("tokenizer", c["tokenizer"]["spec"]), ("tokenizer sha256", c["tokenizer"]["sha256"]),
             ("started", c["started_at"]), ("finished", c["finished_at"]),
             ("units", f"{t['units']['done']:,} done, {t['units']['failed']:,} failed, "
                       f"{t['units']['pending']:,} pending of {t['units']['total']:,}"),
             ("tokens", f"{t['tokens']:,}"), ("folder size", human_bytes(t["bytes_on_disk"]["folder"]))]
    figures = "".join(f'<figure id="{Path(name).stem}"><img src="{name}" alt="{_e(caption)}">'
                      f"<figcaption>{_e(caption)}</figcaption></figure>" for name, caption in CHARTS.items())
    heading = f'{_e(c["name"])} <span class="status {_e(status)}">{_e(status)}</span>'
    return html_page(f"{c['name']}: corpus report", f"""<h1>{heading}</h1>
{note}
<dl>{''.join(f'<dt>{_e(k)}</dt><dd class="mono">{_e(v)}</dd>' for k, v in facts)}</dl>
<h2>Per source</h2>
<div class="scroll">{_sources_table(n)}</div>
<h2>Per group</h2>
<div class="scroll">{_groups_table(n)}</div>
<h2>Drops and quarantine by reason</h2>
<div class="scroll">{_reasons_table(n)}</div>
{_overlap_section(n)}
<h2>Charts</h2>
{figures}
<h2>Quarantined records (first {_EXAMPLES_PER_SOURCE} per source)</h2>
<div class="scroll">{_quarantine_table(examples)}</div>
{_failed_section(n)}
<p><small>Numbers as JSON: <a href="stats.json">stats.json</a> (schema: docs/stats.md in elm-corpus).</small></p>
""")


def html_page(title: str, body: str, css: str = REPORT_CSS) -> str:
    """One self-contained HTML page of the project's reports (the corpus report, the ablation report, runs
    compared): ``title`` is escaped here, ``body`` is markup already."""
    return (f'<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{_e(title)}</title>\n'
            f"<style>{css}</style>\n</head>\n<body>\n{body}</body>\n</html>\n")


def write_report(stats: CorpusStats, out_dir: str | Path) -> Path:
    """Write ``index.html``, the PNG charts and ``stats.json`` into ``out_dir``; return the page's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    corpus_json = location.read_json(location.at(stats.path) / "corpus.json") or {}
    rules = corpus_json.get("text_rules", {})
    _chart_funnel(stats, out / "funnel.png", _filter_order(corpus_json, stats.sources))
    _chart_mixture(stats, out / "mixture.png")
    _chart_lengths(stats, out / "chunk_lengths.png", rules.get("min_tokens"))
    _chart_drops(stats, out / "drops.png")
    _chart_quarantine(stats, out / "quarantine.png")
    overlap = stats.numbers.get("overlap")
    if overlap and overlap["pairs"]:
        _chart_overlap(stats, out / OVERLAP_CHART[0])
    else:  # a report written again into the same folder must not keep a stale heatmap
        (out / OVERLAP_CHART[0]).unlink(missing_ok=True)
    (out / "stats.json").write_text(json.dumps(stats.numbers, indent=2) + "\n")
    page = out / "index.html"
    page.write_text(_page(stats, quarantine_examples(stats.path, _EXAMPLES_PER_SOURCE)), encoding="utf-8")
    return page
