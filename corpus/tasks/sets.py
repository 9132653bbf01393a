"""The task sets of OpenELM's tables, named by their contents: lists of (lm-eval task, few-shot count).

Apple's model card labels the last two tables "LLM360" and "OpenLLM Leaderboard" the other way round from the
paper, so the sets are named after what they hold. Apple's published numbers for them are the model's business
(model/eval/tasks.py).
"""
from __future__ import annotations

TASK_SETS: dict[str, tuple[tuple[str, int], ...]] = {
    "openelm-zero-shot": (("arc_challenge", 0), ("arc_easy", 0), ("boolq", 0), ("hellaswag", 0), ("piqa", 0),
                          ("sciq", 0), ("winogrande", 0)),
    "arc25-hellaswag10-mmlu5-truthfulqa0-winogrande5": (
        ("arc_challenge", 25), ("hellaswag", 10), ("mmlu", 5), ("truthfulqa_mc2", 0), ("winogrande", 5)),
    "arc25-hellaswag10-mmlu5-truthfulqa0-winogrande5-crows25-piqa0-race0": (
        ("arc_challenge", 25), ("hellaswag", 10), ("mmlu", 5), ("truthfulqa_mc2", 0), ("winogrande", 5),
        ("crows_pairs_english", 25), ("piqa", 0), ("race", 0)),
}


def expand_tasks(names: str, num_fewshot: int | None = None) -> list[tuple[str, int | None]]:
    """`"set-or-task,task,..."` -> (task, few-shot) in order, each task once.

    A set brings its own few-shot counts; a plain task takes `num_fewshot` (None: the task's default).
    `num_fewshot` given with a set overrides the set's counts.
    """
    out: list[tuple[str, int | None]] = []
    for name in (n.strip() for n in names.split(",")):
        if not name:
            continue
        pairs = TASK_SETS.get(name, ((name, None),))
        for task, shots in pairs:
            shots = num_fewshot if num_fewshot is not None else shots
            if (task, shots) not in out:
                out.append((task, shots))
    if not out:
        raise ValueError("no task given: name lm-eval tasks or one of the sets " + ", ".join(TASK_SETS))
    return out


def task_names(names: str) -> list[str]:
    """The lm-eval tasks `names` means, in order, each once whatever its few-shot counts."""
    return list(dict.fromkeys(task for task, _ in expand_tasks(names)))
