"""What `elm-train eval` says of the corpus a run was trained on: which evaluated tasks it was checked for, and
how many of their items it held.

A run's run.json names its corpus (`corpus.dir`: a folder or a URI). Two records there speak of a task:

- a report of `elm-corpus contamination` (`contamination/<key>.json`; the newest that has the task): K of the
  task's N items share a word n-gram with the corpus as it was built;
- corpus.json's `decontamination`, when the corpus's manifest had a `decontaminate` block: the build found K of
  the items and dropped every document that held one, so the corpus holds none of them (at that n).

A report measures the corpus as it is, so where both speak, its count is the one shown, and the build's removal
beside it. A task neither speaks of was not checked: that says nothing either way. A model that is no run (an
export, Apple's release) or a run on a live stream has no corpus folder to look in.
"""
from __future__ import annotations

from typing import Any

from corpus.cleaning.contamination import REPORTS_DIR, task_reports
from corpus.store.layout import read_corpus_json
from model.source import ModelSource, run_field


def corpus_contamination(source: ModelSource, tasks: list[str]) -> dict[str, Any] | None:
    """`{"corpus": dir, "tasks": {task: mark}}` for the evaluated `tasks` the run's corpus has a record of (see the
    module docstring); `{"corpus": dir, "unreadable": why}` when the corpus cannot be read; None without a corpus.

    A mark holds the task's `items`, `contaminated` (items in the corpus), `ngram`, `sources` (items per source)
    and `report` (its file in the corpus) from a report, and `removed` (items whose documents the build dropped)
    from the build."""
    corpus = run_field(source.run, "corpus.dir")
    if not isinstance(corpus, str):
        return None
    try:
        reports = task_reports(corpus)
        built = read_corpus_json(corpus).get("decontamination") or {}
    except (OSError, ValueError) as e:  # moved, deleted, or a store out of reach: say so, the scores still stand
        return {"corpus": corpus, "unreadable": f"{type(e).__name__}: {e}"}
    marks = {}
    for task in tasks:
        report, removed = reports.get(task), (built.get("tasks") or {}).get(task)
        if report is not None:
            marks[task] = {"items": report["items"], "contaminated": report["contaminated"],
                           "ngram": report["ngram"], "sources": report.get("sources", {}),
                           "report": f"{REPORTS_DIR}/{report['report']}"}
        elif removed is not None:
            marks[task] = {"items": removed["items"], "contaminated": 0, "ngram": built.get("ngram"), "sources": {}}
        if removed is not None:
            marks[task]["removed"] = removed["contaminated"]
    return {"corpus": corpus, "tasks": marks}


def contamination_cell(mark: dict[str, Any] | None) -> str:
    """A task's cell in eval's table: `K of N`, with `(R removed)` when the build decontaminated it; `-` when the
    corpus has no record of the task."""
    if mark is None:
        return "-"
    cell = f"{mark['contaminated']} of {mark['items']}"
    return cell + (f" ({mark['removed']} removed)" if "removed" in mark else "")
