"""Cloze tasks as an lm-eval include folder: per task a YAML and the json lines it reads, side by side.

`elm-train eval MODEL --tasks NAME --include-path FOLDER` (and `elm-corpus contamination`) load them as lm-eval's
TaskManager loads any local task: `dataset_path: json` with `data_files` naming the json lines by absolute path
(`datasets` would read a relative one against the working directory, not the YAML's folder), so a moved folder is
written again where it is used. The same tasks give the same bytes.
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from corpus.heldout.cloze import ClozeTask
from corpus.store.files import atomic_write_bytes


def task_rows(task: ClozeTask) -> bytes:
    """One json line per item: `context`, `choices`, `answer` (the gold's index) and `origin`."""
    return "".join(json.dumps({"context": i.context, "choices": list(i.choices), "answer": i.answer,
                               "origin": i.origin}, ensure_ascii=False) + "\n" for i in task.items).encode("utf-8")


def task_yaml(task: ClozeTask, data_file: Path) -> bytes:
    """The task's lm-eval YAML; the fields are named bare, so lm-eval hands their values over untouched by Jinja."""
    config = {
        "task": task.name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "context",
        "doc_to_choice": "choices",
        "doc_to_target": "answer",
        "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in ("acc", "acc_norm")],
        "metadata": {"version": 1.0},
    }
    head = (f"# Written by `elm-corpus tasks cloze`: {len(task.items)} {task.kind.name} cloze items (seed {task.seed}) "
            f"from {task.held_out} of {task.pool} {task.kind.what},\n# those held out of the `--sample` build of "
            f"manifest '{task.manifest}' (docs/eval.md).\n")
    return (head + yaml.safe_dump(config, sort_keys=False, allow_unicode=True)).encode("utf-8")


def write_tasks(tasks: list[ClozeTask], folder: str | Path) -> list[tuple[Path, Path]]:
    """Write each task's `<name>.jsonl` and `<name>.yaml` into ``folder`` (replacing earlier ones); per task the
    paths of its YAML and its data."""
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for task in tasks:
        data, config = folder / f"{task.name}.jsonl", folder / f"{task.name}.yaml"
        atomic_write_bytes(data, task_rows(task))
        atomic_write_bytes(config, task_yaml(task, data))
        written.append((config, data))
    return written
