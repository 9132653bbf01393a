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
import shutil
import sys
import time
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


def duration(seconds: float) -> str:
    """A short clock reading: 42s, 7m05s, 3h12m, 2d04h."""
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def progress_line(step: int, total: int, width: int, loss: float | None = None, eta_s: float | None = None,
                  tokens_per_s: float | None = None, lr: float | None = None, wait: str | None = None,
                  doing: str | None = None) -> str:
    """One progress line of at most `width` columns: the step count and the labelled ETA always, then what fits of
    the loss, the training speed, the LR and the data wait (these two dropped first), then a bar in what is left."""
    head = f"step {step:,}/{total:,}"
    if doing is not None:
        return f"{head}  {doing}"[:width]
    parts = [("eta", f"ETA {duration(eta_s)}" if eta_s is not None else "ETA ?"),
             ("loss", f"loss {loss:.4f}" if loss is not None else None),
             ("speed", f"{tokens_per_s:,.0f} trained tok/s" if tokens_per_s is not None else None),
             ("lr", f"lr {lr:.2e}" if lr is not None else None),
             ("wait", wait)]
    parts = [(k, v) for k, v in parts if v]
    for dropped in (None, "wait", "lr", "speed", "loss"):
        parts = [(k, v) for k, v in parts if k != dropped]
        line = "  ".join([head] + [v for _, v in parts])
        if len(line) <= width:
            break
    room = width - len(line) - 3
    if room >= 10:
        filled = round(min(room, 30) * step / max(total, 1))
        line = line.replace(head, f"{head} [{'#' * filled}{'.' * (min(room, 30) - filled)}]", 1)
    return line[:width]


class ProgressBar:
    """The run's progress: on a terminal one line redrawn in place, fitted to its width; otherwise a plain line every
    `every` steps. Notes (validation, task scores) print above it; `doing` says what the run does between steps."""

    def __init__(self, total: int, start: int, every: int, enabled: bool = True):
        self.total, self.every, self.enabled = total, every, enabled
        self.interactive = enabled and sys.stderr.isatty()
        self._start, self._t0 = start, time.perf_counter()
        self._line = ""

    def _eta(self, step: int) -> float | None:
        done = step - self._start
        return (self.total - step) * (time.perf_counter() - self._t0) / done if done > 0 else None

    def _draw(self, line: str) -> None:
        self._line = line
        sys.stderr.write(f"\r{line}\x1b[K")
        sys.stderr.flush()

    def update(self, step: int, loss: float, tokens_per_s: float, lr: float, data_wait_s: float | None = None,
               step_s: float | None = None) -> None:
        wait = None
        if data_wait_s is not None:
            # the share of the step spent waiting for data: high means the pipeline, not the model, sets the pace
            wait = f"data wait {data_wait_s:.2f}s" + (f" ({100 * data_wait_s / step_s:.0f}%)" if step_s else "")
        fields = dict(loss=loss, eta_s=self._eta(step), tokens_per_s=tokens_per_s, lr=lr, wait=wait)
        if self.interactive:
            self._draw(progress_line(step, self.total, shutil.get_terminal_size().columns - 1, **fields))
        elif self.enabled and (step % self.every == 0 or step == self.total):
            print(progress_line(step, self.total, 10_000, **fields), file=sys.stderr, flush=True)

    def doing(self, step: int, what: str) -> None:
        """What the run does now that is not a step (the final validation, checkpoint, curves)."""
        if self.interactive:
            self._draw(progress_line(step, self.total, shutil.get_terminal_size().columns - 1, doing=what + "..."))

    def note(self, text: str) -> None:
        if self.interactive:
            sys.stderr.write(f"\r\x1b[K{text}\n")
            if self._line:
                self._draw(self._line)
        elif self.enabled:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.interactive and self._line:
            sys.stderr.write("\n")
            sys.stderr.flush()
        self._line = ""


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

    from matplotlib.figure import Figure  # no pyplot: no global figure state, and its backend machinery unloaded

    evals = [r for r in records if r.get("kind") == "eval" and r.get("tasks")]
    preference = [r for r in records if r.get("kind") == "train" and "reward_margin" in r]
    extra = [(2, lambda ax: _plot_task_accuracy(ax, evals))] if evals else []
    if preference:  # a DPO/RSO run: its rewards and how often the chosen completion wins
        extra.append((2, lambda ax: _plot_preference(ax, preference)))
    fig = Figure(figsize=(8, 6 + 3 * len(extra)))
    axes = fig.subplots(2 + len(extra), 1, height_ratios=(3, 1, *(h for h, _ in extra)))
    ax_loss, ax_lr = axes[0], axes[1]
    ax_lr.sharex(ax_loss)
    ax_loss.tick_params(labelbottom=False)
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
