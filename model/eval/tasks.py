"""The numbers Apple published for the task sets of OpenELM's tables (the sets themselves: corpus.tasks.sets).

Shared facts: Apple ran lm-eval at commit dc90fec, `hf` backend, `add_bos_token=True`, batch size 1; which of
acc / acc_norm each number is, is not stated.
"""
from __future__ import annotations

# Zero-shot accuracy (%) per task, from Apple's model cards; the average is over these seven.
PUBLISHED_ZERO_SHOT: dict[str, dict[str, float]] = {
    "openelm-270m": {"arc_challenge": 26.45, "arc_easy": 45.08, "boolq": 53.98, "hellaswag": 46.71,
                     "piqa": 69.75, "sciq": 84.70, "winogrande": 53.91},
    "openelm-450m": {"arc_challenge": 27.56, "arc_easy": 48.06, "boolq": 55.78, "hellaswag": 53.97,
                     "piqa": 72.31, "sciq": 87.20, "winogrande": 58.01},
    "openelm-1.1b": {"arc_challenge": 32.34, "arc_easy": 55.43, "boolq": 63.58, "hellaswag": 64.81,
                     "piqa": 75.57, "sciq": 90.60, "winogrande": 61.72},
    "openelm-3b": {"arc_challenge": 35.58, "arc_easy": 59.89, "boolq": 67.40, "hellaswag": 72.44,
                   "piqa": 78.24, "sciq": 92.70, "winogrande": 65.51},
}
# Only the averages of the two larger sets are published.
PUBLISHED_AVERAGES: dict[str, dict[str, float]] = {
    "openelm-zero-shot": {"openelm-270m": 54.37, "openelm-450m": 57.56, "openelm-1.1b": 63.44, "openelm-3b": 67.39},
    "arc25-hellaswag10-mmlu5-truthfulqa0-winogrande5": {
        "openelm-270m": 38.72, "openelm-450m": 41.50, "openelm-1.1b": 45.93, "openelm-3b": 48.90},
    "arc25-hellaswag10-mmlu5-truthfulqa0-winogrande5-crows25-piqa0-race0": {
        "openelm-270m": 45.13, "openelm-450m": 47.69, "openelm-1.1b": 51.68, "openelm-3b": 54.35},
}


def published_row(preset: str | None, task_set: str | None) -> dict[str, float] | None:
    """Apple's numbers (%) for a preset and a set: per task where published, with its average under 'average'."""
    if preset is None or task_set is None:
        return None
    average = PUBLISHED_AVERAGES.get(task_set, {}).get(preset)
    if average is None:
        return None
    row = dict(PUBLISHED_ZERO_SHOT.get(preset, {})) if task_set == "openelm-zero-shot" else {}
    row["average"] = average
    return row
