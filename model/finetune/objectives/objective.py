"""What a fine-tuning objective declares: the records it trains on, whether it needs a reference, its loss, its metrics.

The run (`model.finetune.run`) reads nothing else from an objective, so a new one is a module
that builds an `Objective` and one line in `model.finetune.objectives.OBJECTIVES`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from model.train.trainer import CountFn, LossFn

RECORD_KINDS = ("sft", "preference")  # model.finetune.records parses each


@dataclass(frozen=True)
class Objective:
    name: str
    help: str                           # one line for --help
    records: str                        # "sft" (text, prompt/completion, chat) or "preference" (chosen/rejected pairs)
    needs_reference: bool               # the starting model's log-probabilities of every example, computed once
    loss: Callable[[Any], LossFn]       # the run's settings -> the trainer's loss: (logits, targets, *extras) -> sums
    metrics: tuple[str, ...] = ()       # the means the loss reports beside it (LossSums.extras), per step
    count: CountFn | None = None        # what the loss is averaged over (None: the target tokens)

    def __post_init__(self) -> None:
        if self.records not in RECORD_KINDS:
            raise ValueError(f"objective {self.name}: records must be one of {', '.join(RECORD_KINDS)}")
        if self.needs_reference and self.records != "preference":
            raise ValueError(f"objective {self.name}: a reference is computed for preference pairs only")


def pairs(batch) -> int:
    """Pairs in a preference micro-batch (its rows are the chosen completions, then the rejected ones)."""
    return int(batch[0].shape[0]) // 2
