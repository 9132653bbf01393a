"""The text of each item a model is scored on: the item's context and its gold continuation, as lm-eval builds them.

For every document of a task's evaluation split (`eval_docs`: the test split, else the validation split, the docs
the harness scores), from the task's own `doc_to_text`, `doc_to_target` and `doc_to_choice`:

- multiple choice: the context, the target delimiter, then the gold choice (`doc_to_target` an index into the
  choices, or the choice itself; a list of golds gives one text each); where each choice is a context of its own
  (Winogrande: `doc_to_text` gives the gold choice's index), the gold context, the delimiter, then the shared
  continuation;
- `loglikelihood` and `generate_until`: the context, the delimiter, then the target (each, when it is a list);
- `loglikelihood_rolling`: the target alone (the whole text is scored).

Few-shot examples and the task's description are left out: they are the same for every item, or other items.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from corpus.tasks.manager import (go_offline_unless_hub_reachable, known_tasks_manager, load_tasks, quiet_loading,
                                  templates_compiled_once)
from corpus.tasks.sets import task_names


@dataclass(frozen=True)
class TaskItems:
    """One asked-for task (or group of tasks) and its items: per item, each text the model is scored on."""
    name: str
    texts: tuple[tuple[str, ...], ...]
    subtasks: tuple[str, ...]          # the lm-eval tasks whose items these are (a group has several)
    subtask_items: tuple[int, ...] = ()  # items of each subtask, in order: the texts are theirs, one after another

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def sha256(self) -> str:
        """Names the items exactly: the same task from other data (another include folder, a new version) differs."""
        return hashlib.sha256(json.dumps(self.texts, ensure_ascii=False).encode("utf-8")).hexdigest()


def scored_texts(task, doc) -> tuple[str, ...]:
    """The texts of one document of an lm-eval task that the model is scored on; see the module docstring."""
    kind = task.OUTPUT_TYPE
    target = task.doc_to_target(doc)
    if kind == "loglikelihood_rolling":
        return (str(target),)
    config = task.config
    delimiter = getattr(config, "target_delimiter", " ")
    choices = task.doc_to_choice(doc) if getattr(config, "doc_to_choice", None) is not None else None
    context = task.doc_to_text(doc)
    if kind == "multiple_choice" and getattr(task, "multiple_input", 0):
        return (f"{choices[context]}{delimiter}{target}",)
    golds = target if isinstance(target, list) else [target]
    return tuple(f"{context}{delimiter}{_gold(g, choices)}" for g in golds)


def _gold(target, choices: list[str] | None) -> str:
    """A target as text: an index names one of the choices (as the harness reads it), anything else is the text."""
    if isinstance(target, int) and choices is not None:
        return str(choices[target])
    return str(target)


def load_items(names: str, include_path: str | None = None) -> dict[str, TaskItems]:
    """`{task: its items}` for the tasks and task sets `names` (comma-separated), loaded as `elm-train eval` loads
    them; unknown tasks (UnknownTasks) and tasks whose data cannot be had (TaskDataMissing) are refused first."""
    go_offline_unless_hub_reachable()  # before anything imports `datasets`
    wanted = task_names(names)
    with quiet_loading(), templates_compiled_once():
        manager = known_tasks_manager(wanted, include_path)
        loaded = load_tasks(manager, wanted)
        out = {}
        for name in wanted:
            leaves = loaded[name]["tasks"]  # a group's tasks, or the task alone
            texts: list[tuple[str, ...]] = []
            sizes = []
            for leaf in sorted(leaves):
                texts.extend(scored_texts(leaves[leaf], doc) for doc in leaves[leaf].eval_docs)
                sizes.append(len(texts) - sum(sizes))
            out[name] = TaskItems(name, tuple(texts), tuple(sorted(leaves)), tuple(sizes))
    return out
