"""lm-eval's task machinery, loaded once per process: the task manager that knows the tasks asked for (lm-eval's
own, or the YAML tasks of an include folder), the offline switch, and each task's data loaded with a clear error.

Task data comes through `datasets`: the Hub, or the local cache. When the Hub cannot be reached, the process goes
offline before anything imports `datasets`, so a dataset missing from the cache fails in about a second with what
to fetch, rather than after a minute of retries.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
from collections.abc import Iterator
from typing import Any

HUB_HOST = "huggingface.co"


class TaskError(ValueError):
    """Tasks that cannot be loaded; the message names them and what to do."""


class UnknownTasks(TaskError):
    """Names that are neither lm-eval tasks, nor tasks of the include folder, nor a task set."""

    def __init__(self, names: list[str], include_path: str | None):
        self.names = names
        super().__init__(f"unknown task(s) {', '.join(names)}: not lm-eval tasks, nor in --include-path "
                         f"{include_path or '(none given)'}, nor a task set of this project")


class TaskDataMissing(TaskError):
    """Tasks whose data cannot be loaded; `missing` holds one line per task: what failed and how to fetch it."""

    def __init__(self, missing: list[str]):
        self.missing = missing
        super().__init__(
            f"the data of {len(missing)} task(s) is missing. Task data comes through the `datasets` library: where "
            f"the Hub is reachable, fetch each once as shown (it lands in ~/.cache/huggingface/datasets, or "
            f"$HF_DATASETS_CACHE), then evaluate with HF_DATASETS_OFFLINE=1\n"
            + "\n".join(f"  {line}" for line in missing))


def go_offline_unless_hub_reachable(timeout: float = 3.0) -> bool:
    """Set the Hugging Face offline switches when the Hub cannot be reached; True when offline.

    Must run before `datasets` is imported (it reads the switches once).
    """
    if os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1":
        return True
    try:
        socket.create_connection((HUB_HOST, 443), timeout=timeout).close()
        return False
    except OSError:
        os.environ["HF_DATASETS_OFFLINE"] = os.environ["HF_HUB_OFFLINE"] = "1"
        return True


@functools.lru_cache(maxsize=4)
def _task_manager(include_path: str | None, defaults: bool):
    from lm_eval.tasks import TaskManager
    return TaskManager(include_path=include_path, include_defaults=defaults)


def task_manager_for(tasks: list[str], include_path: str | None):
    """lm-eval's TaskManager, built once per process and folder. Indexing lm-eval's own ~14,000 task files
    takes seconds, so tasks that are all in `include_path` are found without it, tasks none of which are there
    by lm-eval's own index alone, and only a mix of both indexes lm-eval's files with the folder's."""
    if include_path:
        local = _task_manager(str(include_path), False)
        if all(t in local.all_tasks for t in tasks):
            return local
        if any(t in local.all_tasks for t in tasks):
            return _task_manager(str(include_path), True)
    return _task_manager(None, True)


def known_tasks_manager(tasks: list[str], include_path: str | None):
    """The task manager that knows every one of `tasks`; an unknown name is refused (UnknownTasks) with where it
    was looked for: by the folder's index and lm-eval's apart (each built once per process), before an index of
    both is made for tasks from both."""
    if include_path:
        local = _task_manager(str(include_path), False)
        unknown = [t for t in tasks if t not in local.all_tasks]
        if unknown:
            unknown = [t for t in unknown if t not in _task_manager(None, True).all_tasks]
        if unknown:
            raise UnknownTasks(unknown, include_path)
    manager = task_manager_for(tasks, include_path)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise UnknownTasks(unknown, include_path)
    return manager


def load_tasks(manager, tasks: list[str]) -> dict[str, dict[str, Any]]:
    """`{name: lm-eval's load() of it}` (its leaf tasks under "tasks"), each task's data loaded now; the tasks whose
    data cannot be loaded are one TaskDataMissing naming every one and how to fetch it."""
    loaded, missing = {}, []
    for task in dict.fromkeys(tasks):
        try:
            loaded[task] = manager.load([task])
        except Exception as e:  # datasets raises many kinds (ConnectionError, FileNotFoundError, DatasetNotFound...)
            cfg = (manager.task_index[task].cfg or {}) if task in manager.task_index else {}
            dataset = cfg.get("dataset_path") or "its dataset"
            name = cfg.get("dataset_name")
            fetch = f"datasets.load_dataset({dataset!r}" + (f", {name!r}" if name else "") + ")"
            missing.append(f"{task}: cannot load {dataset}{f' ({name})' if name else ''}: "
                           f"{str(e).splitlines()[0][:200]}; fetch: python -c \"import datasets; {fetch}\"")
    if missing:
        raise TaskDataMissing(missing)
    return loaded


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """lm-eval and `datasets` loading tasks without their noise: the harness's notes on every metric a task YAML
    leaves at the default aggregation (logged as warnings) and the progress bars of loading data. Errors still show."""
    import datasets
    logger = logging.getLogger("lm_eval")
    level = logger.level
    data_bars = datasets.utils.logging.is_progress_bar_enabled()
    logger.setLevel(logging.ERROR)
    datasets.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        logger.setLevel(level)
        if data_bars:
            datasets.utils.logging.enable_progress_bar()


@functools.lru_cache(maxsize=1024)
def _compiled_template(template: str):
    from lm_eval.utils import env
    return env.from_string(template)


def apply_template(template: str, doc: dict) -> str:
    """lm-eval's `apply_template`, the template compiled once per process."""
    return _compiled_template(template).render(**doc)


@contextlib.contextmanager
def templates_compiled_once() -> Iterator[None]:
    """The task's Jinja templates (doc_to_text, doc_to_choice, doc_to_target) compiled once per process.

    The harness compiles the template string again for every document it renders (`Environment.from_string` keeps
    no cache), about 0.3 ms each, three or more times per document. Compiled once here, they render the same text.
    """
    import lm_eval.utils as harness_utils
    original = harness_utils.apply_template
    harness_utils.apply_template = apply_template
    try:
        yield
    finally:
        harness_utils.apply_template = original
