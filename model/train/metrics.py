"""What a run reports: `metrics.jsonl` records, a progress bar, the loss/LR curves as PNG.

`metrics.jsonl` holds one JSON object per line, each with `kind` and `step`:
- `train`: loss (cross entropy), z_loss (mean logsumexp^2), lr, grad_norm, tokens (seen so far),
  tokens_per_s, step_s (the step's wall-clock seconds), data_wait_s (of those, the seconds this rank waited
  for its micro-batches: near step_s means the data pipeline is the bottleneck), elapsed_s;
- `val`: val_loss on the held-out split, tokens evaluated;
- `mixture`: per source, the sampler's target and achieved shares;
- `eval`: benchmark tasks run while training (`--eval-tasks`): tokens seen, seconds, and per task its
  metrics (`acc`, `acc_norm`, ... as lm-eval reports them).
A resumed run first cuts the file back to its checkpoint's step, so the file reads as one run.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Iterable

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Every complete record; a last line cut short by a killed process is skipped."""
    records = []
    path = Path(path)
    if not path.exists():
        return records
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


class MetricsLog:
    """Appends records to metrics.jsonl, flushed per record so a kill loses at most the line being written."""

    def __init__(self, path: str | Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        self._file = None

    def truncate_after(self, step: int) -> None:
        """Keep only records of steps <= `step` (those the checkpoint being resumed has seen)."""
        if not self.enabled or not self.path.exists():
            return
        kept = [r for r in read_metrics(self.path) if int(r.get("step", 0)) <= step]
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, self.path)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a")
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class ProgressBar:
    """A rich progress bar (loss, tokens/s, LR, data wait) on a terminal; a plain line every `every` steps otherwise."""

    def __init__(self, total: int, start: int, every: int, enabled: bool = True):
        self.total, self.every, self.enabled = total, every, enabled
        self.interactive = enabled and sys.stderr.isatty()
        self._bar = None
        if self.interactive:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
            self._bar = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                 TextColumn("{task.fields[info]}"), transient=False)
            self._task = self._bar.add_task("train", total=total, completed=start, info="")
            self._bar.start()

    def update(self, step: int, loss: float, tokens_per_s: float, lr: float, data_wait_s: float | None = None,
               step_s: float | None = None) -> None:
        info = f"loss {loss:.4f}  {tokens_per_s:,.0f} tok/s  lr {lr:.2e}"
        if data_wait_s is not None:
            # the share of the step spent waiting for data: high means the pipeline, not the model, sets the pace
            share = f" ({100 * data_wait_s / step_s:.0f}% of step)" if step_s else ""
            info += f"  wait {data_wait_s:.2f}s{share}"
        if self._bar is not None:
            self._bar.update(self._task, completed=step, info=info)
        elif self.enabled and (step % self.every == 0 or step == self.total):
            print(f"step {step}/{self.total}  {info}", file=sys.stderr, flush=True)

    def note(self, text: str) -> None:
        if self._bar is not None:
            self._bar.console.print(text)
        elif self.enabled:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def _series(records: Iterable[dict], kind: str, key: str) -> tuple[list[int], list[float]]:
    steps, values = [], []
    for r in records:
        if r.get("kind") == kind and key in r:
            steps.append(int(r["step"]))
            values.append(float(r[key]))
    return steps, values


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw training/validation loss and the learning rate against steps, and where the run has them, task accuracy
    and (DPO/RSO) the rewards and preference accuracy; return the PNG's path."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir / METRICS_FILE)
    train_steps, train_loss = _series(records, "train", "loss")
    if not train_steps:
        raise FileNotFoundError(f"{run_dir}: no training records in {METRICS_FILE}; is this a run folder?")
    val_steps, val_loss = _series(records, "val", "val_loss")
    lr_steps, lrs = _series(records, "train", "lr")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals = [r for r in records if r.get("kind") == "eval" and r.get("tasks")]
    preference = [r for r in records if r.get("kind") == "train" and "reward_margin" in r]
    extra = [(2, lambda ax: _plot_task_accuracy(ax, evals))] if evals else []
    if preference:  # a DPO/RSO run: its rewards and how often the chosen completion wins
        extra.append((2, lambda ax: _plot_preference(ax, preference)))
    fig, axes = plt.subplots(2 + len(extra), 1, figsize=(8, 6 + 3 * len(extra)),
                             height_ratios=(3, 1, *(h for h, _ in extra)))
    ax_loss, ax_lr = axes[0], axes[1]
    ax_lr.sharex(ax_loss)
    plt.setp(ax_loss.get_xticklabels(), visible=False)
    for ax, (_, draw) in zip(axes[2:], extra):
        draw(ax)
    ax_loss.plot(train_steps, train_loss, label="train", linewidth=1)
    if val_steps:
        ax_loss.plot(val_steps, val_loss, "o-", label="validation", markersize=3)
    ax_loss.set_ylabel("preference loss" if preference else "cross entropy (nats)")
    ax_loss.set_title(run_dir.name)
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()
    ax_lr.plot(lr_steps, lrs, color="tab:green", linewidth=1)
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("step")
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(out) if out else run_dir / CURVES_FILE
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def task_accuracy(record: dict) -> dict[str, float]:
    """Per task of an `eval` record: acc_norm where the task reports it, else acc."""
    out = {}
    for task, metrics in (record.get("tasks") or {}).items():
        value = metrics.get("acc_norm", metrics.get("acc"))
        if isinstance(value, (int, float)):
            out[task] = float(value)
    return out


def _plot_preference(ax, records: list[dict]) -> None:
    steps = [r["step"] for r in records]
    for key, label in (("reward_chosen", "reward of chosen"), ("reward_rejected", "reward of rejected"),
                       ("reward_margin", "margin")):
        ax.plot(steps, [r[key] for r in records], label=label, linewidth=1)
    ax.set_ylabel("reward (beta x log-ratio)")
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    accuracy = ax.twinx()
    accuracy.plot(steps, [100 * r["reward_accuracy"] for r in records], color="black", linestyle=":",
                  label="preference accuracy")
    accuracy.set_ylabel("accuracy %")
    accuracy.set_ylim(0, 100)
    accuracy.legend(fontsize=8, loc="lower right")


def _plot_task_accuracy(ax, evals: list[dict]) -> None:
    tasks = sorted({task for r in evals for task in task_accuracy(r)})
    for task in tasks:
        points = [(r["tokens"], task_accuracy(r)[task]) for r in evals if task in task_accuracy(r)]
        ax.plot([p[0] for p in points], [100 * p[1] for p in points], "o-", label=task, markersize=3)
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("accuracy % (acc_norm\nwhere given)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
