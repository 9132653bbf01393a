"""Which lm-eval tasks a name stands for: a task itself, a group's tasks through its subgroups, a tag's tasks.

Read from lm-eval's task index alone (the YAML each name was registered from), so nothing is built and no data is
loaded: asking what `mmlu` holds costs a few dictionary look-ups. The members are found as lm-eval's task factory
builds them: a group's `task:` list holds names of tasks, groups or tags, or inline mappings (a `task:` with
overrides, or a `group:` of its own); a name the index does not know becomes the task (or group)
`<group>::<name>`, as the factory names it.
"""
from __future__ import annotations


def leaf_tasks(manager, name: str) -> tuple[str, ...]:
    """The tasks (leaves) `name` means under lm-eval's TaskManager `manager`, sorted, each once; a name the index
    does not know is a task of its own (a report's task from another include folder, say)."""
    leaves: set[str] = set()
    _collect(manager.task_index, name, leaves, set())
    return tuple(sorted(leaves))


def _collect(index: dict, name: str, leaves: set[str], seen: set[str]) -> None:
    if name in seen:  # a group that names itself, directly or not: lm-eval would not build it either
        return
    seen.add(name)
    entry = index.get(name)
    kind = entry.kind.name if entry is not None else "TASK"
    if kind == "TAG":  # a tag's entry lists the tasks that carry it
        for task in sorted(entry.tags):
            _collect(index, task, leaves, seen)
    elif kind == "GROUP":
        _members(index, name, (entry.cfg or {}).get("task"), leaves, seen)
    else:
        leaves.add(name)


def _members(index: dict, group: str, members, leaves: set[str], seen: set[str]) -> None:
    """A group's `task:` list, as lm-eval's TaskFactory reads it (names; inline tasks and groups namespaced)."""
    if not isinstance(members, list):
        return
    for member in members:
        if isinstance(member, dict) and "group" in member:
            if member["group"] in index:
                _collect(index, member["group"], leaves, seen)
            else:  # an inline group: its own members, under its namespaced name
                _members(index, f"{group}::{member['group']}", member.get("task"), leaves, seen)
            continue
        base = member.get("task") if isinstance(member, dict) else member
        if not isinstance(base, str):
            continue
        if base in index:
            _collect(index, base, leaves, seen)
        else:
            leaves.add(f"{group}::{base}")
