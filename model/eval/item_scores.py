"""Every item's score on the multiple-choice tasks of an evaluation: acc, acc_norm and bpb, in doc order; and bpb
as a task's metric beside acc and acc_norm.

bpb (bits per byte) of an item is the gold continuation's negative log-likelihood given the context, in bits, per
byte of that continuation: `-loglikelihood(gold | context) / (ln 2 * len(gold.encode("utf-8")))`, the continuation
as the harness scored it (with the task's target delimiter, usually one space, in front). A task's bpb is the mean
of its items' bpb; a group's, the mean over the items of all its multiple-choice tasks. Lower is better. Unlike
accuracy it moves with every change in the gold answer's probability, not only when the argmax flips, which is why
it ranks corpora more reliably than accuracy at small scale (DataDecide, Magnusson et al. 2025; docs/eval.md).

The scores are read once, here, from the harness's own Task objects after they ran: each document's requests
(context, continuation) in order and the backend's answers (log-likelihood, is-greedy) as the task's filter left
them; so the torch and MLX backends, and any other, get them alike. acc and acc_norm per item are the task's own
`process_results` on those answers, so their mean is lm-eval's acc and acc_norm. The gold is read as lm-eval reads
it: `doc_to_target` (or `doc_to_text`, where each choice is a context of its own, as in Winogrande), an index or
the choice's text; of several golds, the first.

The results keep the items under `items` (:meth:`ItemScores.to_json`), for what bootstraps over items (an
ablation's confidence intervals); :func:`item_scores` reads them back from a results file or an `evals/` record.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

METRICS = ("acc", "acc_norm", "bpb")  # per item; bpb is this module's, the others the task's own
HIGHER_IS_BETTER: dict[str, bool] = {"acc": True, "acc_norm": True, "bpb": False}  # which way each improves


@dataclass(frozen=True)
class ItemScores:
    """One task's items, in doc order: the harness's doc ids (positions in the task's evaluation split) and per item
    acc, acc_norm (1.0 or 0.0; None where the task does not score it) and bpb (None where the gold cannot be read)."""
    doc_id: tuple[int, ...]
    acc: tuple[float | None, ...]
    acc_norm: tuple[float | None, ...]
    bpb: tuple[float | None, ...]
    filter: str = "none"  # the task's filter whose answers were scored (lm-eval's `,none` in metric keys)

    def to_json(self) -> dict[str, list]:
        """`{"doc_id": [...], "acc": [...], "acc_norm": [...], "bpb": [...]}`: arrays of one length, item k's
        scores at position k (null where not scored)."""
        return {"doc_id": list(self.doc_id), **{m: list(getattr(self, m)) for m in METRICS}}

    @classmethod
    def from_json(cls, data: dict[str, list]) -> "ItemScores":
        return cls(tuple(data["doc_id"]), *(tuple(data.get(m) or [None] * len(data["doc_id"])) for m in METRICS))

    def mean(self, metric: str) -> float | None:
        """The metric's mean over the items that have it; None when none has."""
        values = [v for v in getattr(self, metric) if v is not None]
        return sum(values) / len(values) if values else None


def score_tasks(tasks: dict[str, Any]) -> dict[str, ItemScores]:
    """`{task: its items' scores}` for the multiple-choice tasks among `tasks` (lm-eval Task objects, by name) that
    the harness ran (see the module docstring); the other tasks are left out."""
    return {name: _score_task(task) for name, task in tasks.items()
            if getattr(task, "OUTPUT_TYPE", None) == "multiple_choice" and task.instances
            and task.instances[0].filtered_resps}


def _score_task(task) -> ItemScores:
    by_doc = defaultdict(list)
    for request in task.instances:
        by_doc[request.doc_id].append(request)
    filters = task.instances[0].filtered_resps
    key = "none" if "none" in filters else next(iter(filters))
    ids, acc, acc_norm, bpb = [], [], [], []
    for doc_id in sorted(by_doc):
        requests = sorted(by_doc[doc_id], key=lambda r: r.idx)
        doc = requests[0].doc
        answers = [r.filtered_resps[key] for r in requests]
        metrics = task.process_results(doc, answers)
        ids.append(int(doc_id))
        acc.append(_number(metrics.get("acc")))
        acc_norm.append(_number(metrics.get("acc_norm")))
        gold = gold_choice(task, doc)
        bpb.append(None if gold is None or gold >= len(requests)
                   else bits_per_byte(answers[gold][0], requests[gold].arguments[1]))
    return ItemScores(tuple(ids), tuple(acc), tuple(acc_norm), tuple(bpb), key)


def gold_choice(task, doc: dict) -> int | None:
    """The index of the document's gold choice, as lm-eval's multiple-choice scoring reads it; the first of several
    golds; None when the gold names no choice."""
    if not hasattr(task, "doc_to_choice"):  # lm-eval's Python MultipleChoiceTask: the document names its gold
        gold, choices = doc.get("gold"), doc.get("choices") or []
    else:
        gold = task.doc_to_text(doc) if getattr(task, "multiple_input", 0) else task.doc_to_target(doc)
        choices = task.doc_to_choice(doc)
    if isinstance(gold, list):
        gold = gold[0] if gold else None
    if isinstance(gold, str):
        gold = choices.index(gold) if gold in choices else None
    return gold if isinstance(gold, int) and 0 <= gold < len(choices) else None


def bits_per_byte(loglikelihood: float, continuation: str) -> float | None:
    """Bits per UTF-8 byte of `continuation`, whose log-likelihood (nats) is given; None for an empty one."""
    size = len(continuation.encode("utf-8"))
    return -float(loglikelihood) / (math.log(2) * size) if size else None


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None


def add_item_scores(results: dict[str, Any], scores: dict[str, ItemScores]) -> None:
    """Put `scores` into lm-eval's `results` (one few-shot group's): `bpb,<filter>` and its standard error in each
    scored task's row and in the rows of the groups that hold scored tasks (their items pooled), bpb as lower-is-
    better, and the items under `items`."""
    rows = results.setdefault("results", {})
    better = results.setdefault("higher_is_better", {})
    for task, items in scores.items():
        if task in rows:
            rows[task].update(_bpb_cells(items.bpb, items.filter))
            better.setdefault(task, {})["bpb"] = HIGHER_IS_BETTER["bpb"]
    for group in results.get("group_subtasks", {}):
        pooled = [v for task in _tasks_under(group, results["group_subtasks"]) if task in scores
                  for v in scores[task].bpb]
        if group in rows and pooled:
            rows[group].update(_bpb_cells(pooled, "none"))
            better.setdefault(group, {})["bpb"] = HIGHER_IS_BETTER["bpb"]
    results.setdefault("items", {}).update({task: items.to_json() for task, items in scores.items()})


def _tasks_under(group: str, members: dict[str, list[str]]) -> list[str]:
    out = []
    for child in members.get(group, []):
        out.extend(_tasks_under(child, members) if child in members else [child])
    return out


def _bpb_cells(values, filter_key: str) -> dict[str, float]:
    """The mean of the items' bpb and its standard error (sample standard deviation over sqrt(n), as lm-eval's
    mean_stderr), items without one left out."""
    values = [v for v in values if v is not None]
    if not values:
        return {}
    mean = sum(values) / len(values)
    cells = {f"bpb,{filter_key}": mean}
    if len(values) > 1:
        variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
        cells[f"bpb_stderr,{filter_key}"] = math.sqrt(variance / len(values))
    return cells


def item_scores(results: dict[str, Any]) -> dict[str, ItemScores]:
    """`{task: ItemScores}` from what `elm-train eval` wrote: lm-eval's results (`--out`) or a run's
    `evals/step_N.json`; empty when it holds no items (tasks that are not multiple choice, older files)."""
    return {task: ItemScores.from_json(data) for task, data in (results.get("items") or {}).items()}
