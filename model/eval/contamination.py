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

Records and eval's rows need not name the same level of a group (see :func:`resolve_mark`): a report made for
`mmlu` marks the rows of its subtasks, and reports made per subtask mark the `mmlu` row. Which tasks a name holds
is read from lm-eval's task index (`corpus.tasks.groups`), names only.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from corpus.cleaning.contamination import REPORTS_DIR, task_reports
from corpus.store.layout import read_corpus_json
from model.source import ModelSource, run_field

Leaves = Callable[[str], "tuple[str, ...]"]  # a task name -> the lm-eval tasks it holds (itself, for a task)


def corpus_contamination(source: ModelSource, rows: list[str], leaves: Leaves | None = None
                         ) -> dict[str, Any] | None:
    """`{"corpus": dir, "tasks": {row: mark}}` for the rows of eval's results (tasks, groups, subtasks) the run's
    corpus has a record of (see the module docstring); `{"corpus": dir, "unreadable": why}` when the corpus cannot
    be read; None without a corpus. `leaves` says which tasks a name holds (default: each name only itself).

    A mark holds the row's `items`, `contaminated` (items in the corpus), `ngram`, `sources` (items per source)
    and `report` (its file in the corpus; `reports` when several made a sum) from a report, and `removed` (items
    whose documents the build dropped) from the build; `summed`/`subtasks` or `within` when the count is not the
    row's own record (:func:`resolve_mark`)."""
    corpus = run_field(source.run, "corpus.dir")
    if not isinstance(corpus, str):
        return None
    try:
        reports = task_reports(corpus)
        built = read_corpus_json(corpus).get("decontamination") or {}
    except (OSError, ValueError) as e:  # moved, deleted, or a store out of reach: say so, the scores still stand
        return {"corpus": corpus, "unreadable": f"{type(e).__name__}: {e}"}
    leaves = leaves or (lambda name: (name,))
    found = {name: {**entry, "report": f"{REPORTS_DIR}/{entry['report']}"} for name, entry in reports.items()}
    dropped = {name: {**entry, "ngram": built.get("ngram")} for name, entry in (built.get("tasks") or {}).items()}
    marks = {}
    for row in rows:
        mark, removed = resolve_mark(row, found, leaves), resolve_mark(row, dropped, leaves)
        if mark is None and removed is not None:  # the build's count alone: it left none of the items it found
            mark = {**removed, "contaminated": 0, "sources": {}}
        if removed is not None and _same_scope(mark, removed):
            mark["removed"] = removed["contaminated"]
        if mark is not None:
            marks[row] = mark
    return {"corpus": corpus, "tasks": marks}


def resolve_mark(row: str, records: dict[str, dict], leaves: Leaves) -> dict[str, Any] | None:
    """The mark of eval's row `row` from `records` (task name -> a record's entry: `items`, `contaminated`,
    `subtasks`, and for a group measured whole its `per_subtask` counts), or None when they say nothing of it:

    - a record named `row`: its counts;
    - else, when records count each of the row's tasks on its own (a record of the task, or its line in a group's
      `per_subtask`): the sum of those tasks' `items` and `contaminated` (and `sources` where known), with `summed`
      (tasks counted) and `subtasks` (tasks the row holds): a group row gets the sum over its subtasks;
    - else, when a record of a group holds all of the row's tasks but has no count of them alone: the smallest such
      group's counts, with `within` naming it (the items of the group, not of the row);
    - else, when records count some of the row's tasks: their sum, as above, `summed` less than `subtasks`.
    """
    if row in records:
        return _mark(records[row])
    held = leaves(row)
    own = {}
    for task in held:
        if task in records and _tasks_of(task, records[task], leaves) == (task,):
            own[task] = records[task]
        else:
            groups = [r for r in records.values() if task in (r.get("per_subtask") or {})]
            if groups:  # the newest report's count of the task
                group = max(groups, key=lambda r: r.get("created_at") or "")
                own[task] = {**group["per_subtask"][task], "ngram": group.get("ngram"), "report": group.get("report")}
    if held == (row,) and row in own:  # a task's own count, from a group's report
        return _mark(own[row])
    enclosing = [(len(_tasks_of(name, r, leaves)), name) for name, r in records.items()
                 if set(held) <= set(_tasks_of(name, r, leaves))]
    if own and (len(own) == len(held) or not enclosing):
        return _summed(list(own.values()), len(held))
    if enclosing:
        name = min(enclosing)[1]  # the smallest group that holds the row
        return {**_mark(records[name]), "within": name}
    return None


def _tasks_of(name: str, record: dict, leaves: Leaves) -> tuple[str, ...]:
    """The tasks a record counted: as it recorded them when it was made, else as the index has them now."""
    return tuple(sorted(record.get("subtasks") or ())) or leaves(name)


def _mark(record: dict) -> dict[str, Any]:
    mark = {"items": record["items"], "contaminated": record["contaminated"], "ngram": record.get("ngram"),
            "sources": record.get("sources", {})}
    if record.get("report"):
        mark["report"] = record["report"]
    return mark


def _summed(records: list[dict], subtasks: int) -> dict[str, Any]:
    sources: dict[str, int] = {}
    for r in records:
        for name, k in (r.get("sources") or {}).items():
            sources[name] = sources.get(name, 0) + k
    ngrams = sorted({r["ngram"] for r in records if r.get("ngram") is not None})
    reports = sorted({r["report"] for r in records if r.get("report")})
    mark = {"items": sum(r["items"] for r in records), "contaminated": sum(r["contaminated"] for r in records),
            "ngram": ngrams[0] if len(ngrams) == 1 else ngrams or None,
            "sources": dict(sorted(sources.items(), key=lambda kv: (-kv[1], kv[0]))),
            "summed": len(records), "subtasks": subtasks}
    if len(reports) == 1:
        mark["report"] = reports[0]
    elif reports:
        mark["reports"] = reports
    return mark


def _same_scope(mark: dict | None, removed: dict) -> bool:
    """Whether the build's count is of the same items as the mark's, so that it may stand beside it."""
    return mark is not None and (mark.get("within"), mark["items"]) == (removed.get("within"), removed["items"])


def contamination_cell(mark: dict[str, Any] | None) -> str:
    """A task's cell in eval's table: `K of N`, with `(R removed)` when the build decontaminated it; `(k/n
    subtasks)` when the count is a sum over only k of the row's n subtasks; `in G` when it is the count of the
    group G that holds the row; `-` when the corpus has no record of the task."""
    if mark is None:
        return "-"
    cell = f"{mark['contaminated']} of {mark['items']}"
    if "within" in mark:
        cell += f" in {mark['within']}"
    elif mark.get("summed", 0) < mark.get("subtasks", 0):
        cell += f" ({mark['summed']}/{mark['subtasks']} subtasks)"
    return cell + (f" ({mark['removed']} removed)" if "removed" in mark else "")
