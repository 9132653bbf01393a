"""`elm-train compare`: several runs side by side, to answer "which corpus trains the better model".

Each run is read from its folder only: `run.json` (preset, corpus, tokens), `metrics.jsonl`
(training and validation loss, and the `eval` records of benchmark tasks run while training) and
`evals/` (what `elm-train eval` found for the run's checkpoints); the newest step's tasks count, with what that
evaluation found of them in the run's corpus (`model.eval.contamination`) where it looked.
`write_report` draws a self-contained HTML page (inline style, PNGs beside it, nothing from the
network): loss against tokens seen for every run, the newest task accuracies per run as bars,
and Apple's published OpenELM numbers as reference rows for the tasks they cover.
"""
from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from corpus.inspection.report import figure, html_page
from model.eval.harness import EVALS_DIR
from model.eval.tasks import PUBLISHED_ZERO_SHOT
from model.train.metrics import METRICS_FILE, read_metrics, task_accuracy
from model.train.run import read_run_json

CHARTS = {
    "loss.png": "Training loss (lines) and validation loss (dots) of every run against tokens seen.",
    "tasks.png": "Newest benchmark accuracy of every run per task (acc_norm where the task has it), with Apple's "
                 "published zero-shot numbers for OpenELM as reference rows where they cover the task.",
}


@dataclass
class RunSummary:
    name: str
    path: str
    preset: str | None
    corpus: str | None
    steps: int
    tokens: int
    train_loss: float | None
    val_loss: float | None
    train_curve: list[tuple[int, float]] = field(default_factory=list)   # (tokens seen, loss)
    val_curve: list[tuple[int, float]] = field(default_factory=list)
    tasks: dict[str, float] = field(default_factory=dict)                # newest eval: task -> accuracy
    bpb: dict[str, float] = field(default_factory=dict)                  # newest eval: task -> bits per byte
    tasks_at_tokens: int | None = None
    contamination: dict[str, dict] = field(default_factory=dict)         # newest eval: task -> its corpus's mark


def summarize_run(run_dir: str | Path) -> RunSummary:
    """What a run folder says of itself; a folder without training records is refused by name."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir / METRICS_FILE)
    train = [r for r in records if r.get("kind") == "train"]
    if not train:
        raise FileNotFoundError(f"{run_dir}: no training records in {METRICS_FILE}; is this a run folder?")
    run = read_run_json(run_dir)
    tokens_at = {int(r["step"]): int(r["tokens"]) for r in train}
    val = [(tokens_at.get(int(r["step"]), 0), float(r["val_loss"])) for r in records if r.get("kind") == "val"]
    evals = [r for r in records if r.get("kind") == "eval" and task_accuracy(r)] + recorded_evals(run_dir)
    newest = max(evals, key=lambda r: int(r["step"]), default=None)  # an `elm-train eval` of a step wins a tie
    return RunSummary(
        name=run_dir.name, path=str(run_dir), preset=run.get("preset"), corpus=(run.get("corpus") or {}).get("name"),
        steps=int(train[-1]["step"]), tokens=int(train[-1]["tokens"]), train_loss=float(train[-1]["loss"]),
        val_loss=val[-1][1] if val else None, train_curve=[(int(r["tokens"]), float(r["loss"])) for r in train],
        val_curve=val, tasks=task_accuracy(newest) if newest else {}, bpb=task_bpb(newest) if newest else {},
        tasks_at_tokens=int(newest["tokens"]) if newest and newest.get("tokens") is not None else None,
        contamination=((newest or {}).get("contamination") or {}).get("tasks") or {})


def recorded_evals(run_dir: Path) -> list[dict]:
    """The evaluations `elm-train eval` recorded for the run's checkpoints, oldest step first."""
    out = []
    for path in sorted((run_dir / EVALS_DIR).glob("step_*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # a record cut short is an evaluation to run again, not a reason to refuse the comparison
        if isinstance(record, dict) and task_accuracy(record):
            out.append(record)
    return out


def compare_runs(run_dirs: list[str | Path]) -> list[RunSummary]:
    if not run_dirs:
        raise ValueError("compare needs at least one run folder")
    return [summarize_run(d) for d in run_dirs]


# The task scores compare can show: name -> what they are (the CLI's choices, the report's caption).
METRICS = {"acc": "accuracy, acc_norm where the task has it (%)",
           "bpb": "bits per byte of the gold continuation of a multiple-choice task (lower is better)"}


def task_bpb(record: dict) -> dict[str, float]:
    """Per task of an `eval` record that has it: bpb (`model.eval.item_scores`)."""
    return {task: float(m["bpb"]) for task, m in (record.get("tasks") or {}).items()
            if isinstance(m.get("bpb"), (int, float))}


def scores(summary: RunSummary, metric: str = "acc") -> dict[str, float]:
    """The run's newest task scores in `metric` (one of METRICS)."""
    return summary.bpb if metric == "bpb" else summary.tasks


def task_names(summaries: list[RunSummary], metric: str = "acc") -> list[str]:
    return sorted({t for s in summaries for t in scores(s, metric)})


def contamination_notes(summaries: list[RunSummary]) -> list[str]:
    """One line per run whose newest evaluation marked tasks (`elm-train eval` on a run trained on a corpus folder):
    each shown task's items found in the run's corpus; a shown score of a task with any is starred."""
    from model.eval.contamination import contamination_cell
    shown = set(task_names(summaries))
    return [f"{s.name}: " + "; ".join(f"{t} {contamination_cell(m)}" for t, m in sorted(s.contamination.items())
                                      if t in shown)
            for s in summaries if shown & set(s.contamination)]


def contaminated(summary: RunSummary, task: str) -> bool:
    """Whether the run's corpus held items of the task (its score is then starred)."""
    return (summary.contamination.get(task) or {}).get("contaminated", 0) > 0


# ---------------------------------------------------------------- the report

def _chart_loss(summaries: list[RunSummary], path: Path) -> None:
    fig = figure(9, 5)
    ax = fig.add_subplot()
    for i, s in enumerate(summaries):
        color = f"C{i % 10}"
        ax.plot([t for t, _ in s.train_curve], [v for _, v in s.train_curve], color=color, linewidth=1,
                label=f"{s.name} train")
        if s.val_curve:
            ax.plot([t for t, _ in s.val_curve], [v for _, v in s.val_curve], "o", color=color, markersize=4,
                    label=f"{s.name} validation")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("cross entropy (nats)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path)


def _chart_tasks(summaries: list[RunSummary], path: Path) -> None:
    import numpy as np
    tasks = task_names(summaries)
    fig = figure(max(7, 1.4 * len(tasks) + 3), 5)
    ax = fig.add_subplot()
    if not tasks:
        ax.text(0.5, 0.5, "no run has benchmark tasks (train with --eval-tasks)", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
        fig.savefig(path)
        return
    x = np.arange(len(tasks))
    width = 0.8 / max(len(summaries), 1)
    for i, s in enumerate(summaries):
        values = [100 * s.tasks[t] if t in s.tasks else np.nan for t in tasks]
        ax.bar(x - 0.4 + width * (i + 0.5), values, width=width, label=s.name, color=f"C{i % 10}")
    for k, (preset, row) in enumerate(PUBLISHED_ZERO_SHOT.items()):
        points = [(j, row[t]) for j, t in enumerate(tasks) if t in row]
        if points:
            ax.scatter([p[0] for p in points], [p[1] for p in points], marker="_", s=600, linewidths=2,
                       color=str(0.15 + 0.2 * k), label=f"{preset} (Apple, 0-shot)", zorder=3)
    ax.set_xticks(x, tasks, rotation=20, ha="right")
    ax.set_ylabel("accuracy %")
    ax.set_ylim(0, 100)
    ax.set_xlim(-0.6, len(tasks) - 0.4)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, ncols=2)
    fig.savefig(path)


_STYLE = ("body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1200px;padding:0 1rem;color:#222}"
          "table{border-collapse:collapse;font-size:.9rem}th,td{padding:.3rem .7rem;border-bottom:1px solid #ddd}"
          "th{background:#f3f5f7;text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}"
          "figure{margin:1.2rem 0}figure img{max-width:100%;border:1px solid #ddd}"
          "figcaption{font-size:.85rem;color:#555}")


def _cell(value, percent: bool = False) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{100 * value:.2f}" if percent else f"{value:.4f}"
    return html.escape(f"{value:,}" if isinstance(value, int) else str(value))


def write_report(summaries: list[RunSummary], out_dir: str | Path, metric: str = "acc") -> Path:
    """`index.html` (its table's task columns in `metric`), the PNG charts and `compare.json` in `out_dir`; returns
    the page's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _chart_loss(summaries, out / "loss.png")
    _chart_tasks(summaries, out / "tasks.png")
    (out / "compare.json").write_text(json.dumps([asdict(s) for s in summaries], indent=2) + "\n")
    tasks = task_names(summaries, metric)
    heads = ["run", "preset", "corpus", "steps", "tokens", "train loss", "val loss", *tasks]
    rows = "".join(
        "<tr>" + f"<td>{html.escape(s.name)}</td>"
        + "".join(f'<td class="n">{_cell(v)}</td>' for v in (s.preset, s.corpus, s.steps, s.tokens, s.train_loss,
                                                             s.val_loss))
        + "".join(f'<td class="n">{_cell(scores(s, metric).get(t), percent=metric == "acc")}'
                  f'{"*" if contaminated(s, t) else ""}</td>' for t in tasks) + "</tr>"
        for s in summaries)
    notes = contamination_notes(summaries)
    marked = ("<p>*: items of the task were found in the run's corpus (elm-train eval; K of N: items found of the "
              "task's items):</p><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>") if notes else ""
    figures = "".join(f'<figure id="{Path(name).stem}"><img src="{name}" alt="{html.escape(caption)}">'
                      f"<figcaption>{html.escape(caption)}</figcaption></figure>" for name, caption in CHARTS.items())
    page = out / "index.html"
    page.write_text(html_page(
        "runs compared",
        f"<h1>{len(summaries)} runs compared</h1>"
        f"<p>Task scores are each run's newest evaluation (while training, or by elm-train eval): "
        f"{html.escape(METRICS[metric])}.</p><table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in heads)
        + f"</tr></thead><tbody>{rows}</tbody></table>{marked}{figures}"
        "<p><small>Numbers as JSON: <a href=\"compare.json\">compare.json</a>.</small></p>\n", _STYLE),
        encoding="utf-8")
    return page
