"""Terminal views of the `elm-corpus` commands: the build's progress line, the corpora list, the per-source tables,
decoded chunks, the contamination table (rich)."""
from __future__ import annotations

import shlex
import time
from pathlib import Path

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from corpus.inspection.numbers import dropped_cell, grouped, human_bytes, never_counted, percent, short_count
from corpus.inspection.stats import dedup_note, progress_note

# Wide enough for the per-source table even when output goes to a file or a pipe (rich then assumes 80).
_MIN_WIDTH = 120


def _console() -> Console:
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, _MIN_WIDTH))
    return console


def _status_style(status: str) -> str:
    return {"complete": "green", "building": "yellow", "partial": "yellow", "failed": "red",
            "damaged": "red"}.get(status, "white")


def print_corpora(rows: list[dict], folder: Path) -> None:
    console = _console()
    if not rows:
        console.print(f"no corpora under {escape(str(folder))} (build one with 'elm-corpus build MANIFEST [--sample]')")
        return
    table = Table(title=f"corpora under {escape(str(folder))}", title_justify="left")
    for name, justify in (("name", "left"), ("status", "left"), ("sources", "right"), ("units done", "right"),
                          ("tokens", "right"), ("size", "right"), ("last build", "left")):
        table.add_column(name, justify=justify)
    for r in rows:
        status = _status_label(r["status"], r.get("build_running"))
        table.add_row(r["name"], Text(status, style=_status_style(r["status"])), str(r["sources"]),
                      f"{r['units']['done']}/{r['units']['total']}", short_count(r["tokens"]),
                      human_bytes(r["bytes_on_disk"]), r["last_build"] or "-")
    console.print(table)


def _status_label(status: str, running: bool | None) -> str:
    return "building (interrupted)" if status == "building" and running is False else status


def _header(numbers: dict) -> Panel:
    c, t = numbers["corpus"], numbers["total"]
    units = t["units"]
    lines = [
        f"[bold]{escape(str(c['name']))}[/bold]  {escape(c['path'])}",
        f"status [{_status_style(c['status'])}]{_status_label(c['status'], c.get('build_running'))}[/]"
        f"   units {units['done']}/{units['total']} done"
        f"   {units['failed']} failed   {units['pending']} pending",
        f"manifest {escape(c['manifest_path'] or '-')}   fingerprint {c['manifest_fingerprint'] or '-'}",
        f"tokenizer {escape(c['tokenizer']['spec'] or '-')}   sha256 {c['tokenizer']['sha256'] or '-'}",
        f"started {c['started_at'] or '-'}   finished {c['finished_at'] or '-'}",
    ]
    note = progress_note(c["status"], c.get("build_running"), c.get("build_pid"), c["path"])
    if note:
        lines.append(f"[yellow]{escape(note)}[/yellow]")
    return Panel("\n".join(lines), expand=False)


def _count_cells(s: dict) -> list[str]:
    d, ch, u = s["documents"], s["chunks"], s["units"]
    return [f"{u['done']:,}/{u['total']:,}", grouped(u["failed"]), grouped(d["read"]), grouped(d["kept"]),
            grouped(d["dropped_total"]), grouped(d["quarantined"]), grouped(ch["split"]), grouped(ch["kept"]),
            grouped(ch["dropped_total"])]


def _token_cells(s: dict) -> list[str]:
    per_chunk, share = s["tokens_per_chunk"], s["share"]
    return [grouped(s["tokens"]), grouped(per_chunk["mean"], 1), grouped(per_chunk["median"], 1),
            percent(share["achieved"]), percent(share["target"]), human_bytes(s["bytes_on_disk"]["shards"])]


def _table(title: str, heads: tuple[str, ...], cells, numbers: dict) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("source", no_wrap=True)
    for name in heads:
        table.add_column(name, justify="right", no_wrap=True)
    for s in numbers["sources"]:
        table.add_row(s["name"], *cells(s))
    table.add_section()
    table.add_row(Text("total", style="bold"), *cells(numbers["total"]))
    return table


def _groups_table(numbers: dict) -> Table:
    """Tokens and shares summed by the manifest's groups (whatever names the manifest gives them)."""
    table = Table(title="tokens and mixture by group", title_justify="left")
    table.add_column("group", no_wrap=True)
    for name in ("sources", "units done", "tokens", "share", "target share"):
        table.add_column(name, justify="right", no_wrap=True)
    for g in numbers["groups"]:
        units = f"{g['units']['done']:,}/{g['units']['total']:,}"
        table.add_row(g["name"] or "(unknown)", str(len(g["sources"])), units, grouped(g["tokens"]),
                      percent(g["share"]["achieved"]), percent(g["share"]["target"]))
    return table


def _sources_tables(numbers: dict) -> list[Table]:
    tables = [
        _table("work units, documents and chunks (pieces of at most split_words words)",
               ("units done", "failed", "docs read", "kept", "dropped", "quarantined", "chunks", "kept", "dropped"),
               _count_cells, numbers),
        _table("tokens and mixture", ("tokens", "tokens/chunk mean", "median", "share", "target share", "on disk"),
               _token_cells, numbers),
    ]
    if numbers["groups"]:  # none while a corpus has no source yet
        tables.append(_groups_table(numbers))
    return tables


def _by_reason_table(numbers: dict, title: str, reasons: list[str], cell) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("source", no_wrap=True)
    for r in reasons:
        table.add_column(r, justify="right")
    for s in numbers["sources"]:
        table.add_row(s["name"], *(cell(s, r) for r in reasons))
    table.add_section()
    table.add_row(Text("total", style="bold"), *(cell(numbers["total"], r) for r in reasons))
    return table


def _reason_tables(numbers: dict) -> list[Table | Text]:
    """Documents / chunks / tokens dropped by each reason (and what a '-' there means); quarantined records by
    reason."""
    everything = [*numbers["sources"], numbers["total"]]
    drops = sorted({r for s in everything for r in (*s["chunks"]["dropped"], *s["documents"]["dropped"])})
    bad = sorted({r for s in everything for r in s["documents"]["quarantined_by_reason"]})
    tables = []
    if drops:
        tables.append(_by_reason_table(numbers, "dropped by reason: documents / chunks / tokens", drops,
                                       dropped_cell))
        if never_counted(drops):
            tables.append(Text(never_counted(drops)))  # not a caption: that would wrap to the table's width
    if bad:
        tables.append(_by_reason_table(
            numbers, "quarantined records by reason", bad,
            lambda s, r: f"{s['documents']['quarantined_by_reason'].get(r, 0):,}"))
    return tables


def _overlap_table(numbers: dict) -> Table:
    """Rows: every source, numbered; columns: the numbers of the sources holding kept copies; each cell documents
    over tokens. Numbers for headings and no vertical rules keep thirteen sources within 120 characters."""
    overlap = numbers["overlap"]
    names = [s["name"] for s in numbers["sources"]]
    read = {s["name"]: s["documents"]["read"] for s in numbers["sources"]}
    at = {(p["removed_from"], p["kept_in"]): p for p in overlap["pairs"]}
    kept = [(i + 1, name) for i, name in enumerate(names) if any(p["kept_in"] == name for p in overlap["pairs"])]
    table = Table(title="cross-source overlap", title_justify="left", box=box.SIMPLE, collapse_padding=True,
                  pad_edge=False)
    table.add_column("removed from ↓  kept in →", no_wrap=True)
    for heading in [*(str(i) for i, _ in kept), "all", "% read"]:
        table.add_column(heading, justify="right", no_wrap=True)

    def cell(found: list[dict]) -> str:
        documents = sum(p["documents"] for p in found)
        return f"{documents:,}\n{short_count(sum(p['tokens'] for p in found))}" if documents else "-"
    for i, name in enumerate(names):
        mine = [p for p in overlap["pairs"] if p["removed_from"] == name]
        table.add_row(f"{i + 1} {name}", *(cell([at[(name, k)]] if (name, k) in at else []) for _, k in kept),
                      cell(mine), percent(sum(p["documents"] for p in mine) / read[name]) if read[name] else "-")
    table.add_section()
    every = sum(read.values())
    table.add_row(Text("total", style="bold"), *(cell([p for p in overlap["pairs"] if p["kept_in"] == k])
                                                 for _, k in kept),
                  cell(overlap["pairs"]), percent(overlap["documents"] / every) if every else "-")
    return table


def _print_overlap(console: Console, numbers: dict) -> None:
    """The dedup settings, then the overlap table (or a line saying nothing was removed); nothing without dedup."""
    overlap = numbers.get("overlap")
    if overlap is None:
        return
    console.print(escape(dedup_note(overlap)), soft_wrap=True, highlight=False)
    if overlap["pairs"]:
        console.print("documents (tokens below) removed from the row's source as duplicates of a copy kept in the "
                      "column's; % read: of the row's documents read", soft_wrap=True, highlight=False)
        console.print(_overlap_table(numbers))
    elif overlap["decided"] is not None:
        console.print("no document has been removed as a duplicate in the units built so far", highlight=False)


def print_corpus(numbers: dict) -> None:
    console = _console()
    console.print(_header(numbers))
    for table in _sources_tables(numbers):
        console.print(table)
    for table in _reason_tables(numbers):
        console.print(table)
    _print_overlap(console, numbers)
    for s in numbers["sources"]:
        if s.get("warning"):
            console.print(f"[yellow]warning[/yellow] source {escape(s['name'])} {escape(s['warning'])}",
                          soft_wrap=True, highlight=False)
    for f in numbers["failed_units"]:
        console.print(f"[red]failed[/red] {escape(f['source'])}/{escape(f['unit'])}: {escape(f['error'])}")
    for d in numbers.get("damaged_units", []):
        console.print(f"[red]damaged[/red] {escape(d['source'])}/{escape(d['unit'])} ({escape(d['shard'])}): "
                      f"{escape('; '.join(d['problems']))}")
    if numbers.get("damaged_units"):  # unwrapped, so the command can be copied whole
        console.print(f"next: elm-corpus verify {escape(shlex.quote(numbers['corpus']['path']))} (then --repair)",
                      soft_wrap=True, highlight=False)
    shown = tuple(f"{d['source']}/{d['unit']}: " for d in numbers.get("damaged_units", []))
    for p in numbers["problems"]:
        if not p.startswith(shown or ("\0",)):  # a damaged unit's problems are listed with it above
            console.print(f"[red]problem[/red] {escape(p)}")


def print_verification(result, target: str, repaired: bool) -> None:
    """`elm-corpus verify`: each damaged unit with what is wrong, a summary, and what to run next."""
    console = _console()

    def say(text: str) -> None:
        console.print(text, soft_wrap=True, highlight=False)  # unwrapped: paths and commands copy whole

    for d in result.damaged:
        say(f"[red]damaged[/red] {escape(d.source)}/{escape(d.unit)}  {escape(d.shard)}")
        for problem in d.problems:
            say(f"  - {escape(problem)}")
    for problem in result.problems:
        say(f"[red]problem[/red] {escape(problem)}")
    ids = (f"token ids below {result.vocab_size:,}" if result.vocab_size is not None
           else "token ids not checked (corpus.json records no vocabulary size)")
    say(f"{escape(str(result.path))}: {result.units_checked:,} units checked, {human_bytes(result.bytes_hashed)} "
        f"hashed, {short_count(result.tokens_checked)} tokens; {ids}")
    if not result.locked:
        say("[yellow]the folder could not be locked (read-only?): a build could have written it meanwhile[/yellow]")
    if result.ok and result.pending:
        say(f"[green]ok[/green] so far: every finished shard matches its sidecar, ledger entry and corpus.json; "
            f"{result.pending:,} of {result.planned:,} units await a build. To build them:")
        say(f"  {escape(result.next_command)}")
        return
    if result.ok:
        say("[green]ok[/green]: every shard matches its sidecar, ledger entry and corpus.json")
        return
    if result.problems:
        say("the next 'elm-corpus build' of the same manifest (with --out this folder) writes corpus.json afresh "
            "from plan.json and the ledger")
    if not result.damaged:
        return
    say(f"[red]{len(result.damaged):,} damaged unit(s)[/red]")
    if repaired:
        say(f"repaired: removed the ledger entries and files of {len(result.damaged):,} unit(s) "
            f"({len(result.repaired):,} files); they are pending now. Next, to rebuild exactly them:")
        say(f"  {escape(result.next_command)}")
    else:
        again = f"elm-corpus verify {shlex.quote(target)} --repair"
        say(f"run '{escape(again)}' to remove them, so that the next 'elm-corpus build' redoes exactly those units")


class VerifyProgress:
    """Units checked out of the ledger's, on one line to stderr (or nothing)."""

    def __init__(self, enabled: bool):
        self.enabled, self.task = enabled, None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
            self.bar = Progress(TextColumn("[bold]verify"), BarColumn(), MofNCompleteColumn(), TextColumn("units"),
                                TimeElapsedColumn(), console=Console(stderr=True), transient=True)
            self.bar.start()

    def update(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.task is None:
            self.task = self.bar.add_task("verify", total=total)
        self.bar.update(self.task, completed=done)

    def close(self) -> None:
        if self.enabled:
            self.bar.stop()


_PREVIEW_CHARS = 1200


def print_chunks(chunks: list, full: bool) -> None:
    """Each chunk's provenance, then its text (the first characters only unless ``full``)."""
    console = _console()
    for c in chunks:
        where = f"{c.location_kind} {c.location:,}" if c.location is not None else "location unknown"
        console.print(f"[bold]{escape(c.source)}[/bold] unit {escape(c.unit)}, chunk {c.index} of "
                      f"{escape(str(c.shard))}", highlight=False)
        console.print(f"  {c.num_tokens:,} tokens at token offset {c.token_offset:,}; "
                      f"from {escape(c.input_uri)} {where}, part {c.part} of that record", highlight=False)
        again = f"elm-corpus inspect --shard {shlex.quote(str(c.shard))} --index {c.index}"
        console.print(f"  this chunk alone: {escape(again)}", highlight=False, style="dim")
        text = c.text
        if not full and len(text) > _PREVIEW_CHARS:
            text = text[:_PREVIEW_CHARS] + f" [... {len(c.text) - _PREVIEW_CHARS:,} more characters]"
        console.print(Panel(Text(text)))


_TOP_SOURCES = 3


def print_contamination(report: dict) -> None:
    """Per task: items, those sharing an n-gram with the corpus, their share, and the sources holding most of them."""
    console = _console()
    n, scanned = report["ngram"], report["scanned"]
    table = Table(title=f"items sharing a {n}-word n-gram with {escape(report['corpus'])}", title_justify="left")
    table.add_column("task", no_wrap=True)
    for name in ("items", "contaminated", "%"):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("top sources (items)")
    for name, t in report["tasks"].items():
        top = ", ".join(f"{escape(s)} {k:,}" for s, k in list(t["sources"].items())[:_TOP_SOURCES])
        more = len(t["sources"]) - _TOP_SOURCES
        table.add_row(name, grouped(t["items"]), grouped(t["contaminated"]),
                      percent(t["contaminated"] / t["items"]) if t["items"] else "-",
                      (top or "-") + (f", {more} more" if more > 0 else ""))
    console.print(table)
    console.print(f"scanned {scanned['units']:,} units, {scanned['documents']:,} documents, "
                  f"{scanned['ngrams']:,} n-grams (corpus {scanned['corpus_status'] or '-'})", highlight=False)
    for name, t in report["tasks"].items():
        if t["short"]:
            console.print(f"[yellow]{escape(name)}: {t['short']:,} of its items have fewer than {n} words, so no "
                          f"{n}-gram, and are never counted as contaminated[/yellow]", highlight=False)


class BuildProgress:
    """Units finished and failed of the total, documents read and tokens written per second, the time since the
    build started (the summary's clock) and the ETA, on one line (or nothing with progress=False)."""

    def __init__(self, enabled: bool, total: int, done: int, started: float | None = None):
        self.enabled, self.started = enabled, started if started is not None else time.perf_counter()
        self.docs = self.tokens = self.failed = 0
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, \
            TimeRemainingColumn

        since = self.started

        class SinceStart(ProgressColumn):  # rich's elapsed column counts from the bar, not from the command
            def render(self, task):
                seconds = int(time.perf_counter() - since)
                return Text(f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}", style="cyan")

        self.bar = Progress(TextColumn("[bold]{task.fields[phase]}"), BarColumn(), MofNCompleteColumn(), TextColumn("units"),
                            TextColumn("{task.fields[failed]}"),
                            TextColumn("{task.fields[docs]} docs read/s  {task.fields[toks]} tokens written/s"),
                            SinceStart(), TextColumn("ETA"), TimeRemainingColumn(), transient=False)
        self.bar.start()
        self.task = self.bar.add_task("build", total=total, completed=done, docs="0", toks="0", failed="",
                                      phase="build")
        self.total, self.done = total, done

    def phase(self, label: str | None, done: int = 0) -> None:
        """Count units of another pass (deduplication's signatures) under ``label``; None: back to the build."""
        if self.enabled:
            self.bar.update(self.task, phase=label or "build", completed=self.done if label is None else done)

    def step(self) -> None:
        """One unit of the current other pass is done."""
        if self.enabled:
            self.bar.update(self.task, advance=1)

    def advance(self, summary: dict) -> None:
        failed = summary.get("status") == "failed"
        self.failed += failed
        self.docs += summary.get("documents_read", 0)
        self.tokens += summary.get("tokens", 0)
        if not self.enabled:
            return
        dt = max(time.perf_counter() - self.started, 1e-9)
        self.bar.update(self.task, advance=0 if failed else 1, docs=f"{self.docs / dt:,.0f}", toks=f"{self.tokens / dt:,.0f}",
                        failed=f"[red]{self.failed} failed[/red]" if self.failed else "")

    def close(self) -> None:
        if self.enabled:
            self.bar.stop()
