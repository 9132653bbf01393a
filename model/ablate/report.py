"""The ablation's report: what each variant scored over its seeds, which differences are decisions, the ranking.

The orchestrator runs the trials (a build per corpus, a training run and an `elm-train eval` per variant and
seed) and hands each one over as a `TrialResult`. `build_report(spec, trials)` returns report.json's content; what
the run folders hold (validation loss, the loss curve, the mixture served) is read here from each finished
trial's metrics.jsonl. `write_report(out_dir, report)` writes report.json and report.html, a page that is one
file (style inline, charts as data: URIs, nothing from the network).

report.json:
    name, model, seeds, tasks (lm-eval names, in spec order), metrics (those compared, `HIGHER_IS_BETTER`)
    aggregate: {metric, over: "mean over tasks", tasks: [the tasks it averages], higher_is_better}
    method: {confidence, seed_interval, bootstrap: {resamples, seed, over}}
    variants.<name>:
        steps, seeds (finished), failed_seeds
        tasks.<task>.<metric>: {mean, std, ci_low, ci_high, values}       values: one per seed, in seed order
        val_loss: {mean, std, ci_low, ci_high, values} or null            the final validation loss per seed
        mixture.<source>: {target, achieved, values}                      served shares; achieved: seeds' mean
        contaminated.<task>: eval's mark ({items, contaminated, ...}), only where one exists
    pairs: [{a, b, tasks.<task>.<metric>: {difference, ci_low, ci_high, better, includes_zero}}]
                                                                          difference: a minus b
    ranking: [{rank, variant, value, std, ci_low, ci_high, values}]       best first; value: the aggregate's mean
    trials: [{variant, seed, run_dir, status, log, error, loss: [[step, loss]], val_loss: [[step, loss]]}]
    notes: [what could not be computed, and why]

ci_low/ci_high are null where one seed leaves no interval (model.ablate.intervals). Accuracies are fractions, as
eval gives them (the page shows %). A task-level value is eval's own where it reports one, else the mean of the
items; a difference compares the means of the items. Failed trials count in no number.
"""
from __future__ import annotations

import html
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from corpus.inspection.report import REPORT_CSS, figure, html_page, inline_png
from corpus.inspection.numbers import percent
from corpus.store.files import atomic_write_bytes, atomic_write_json
from model.ablate.intervals import (BOOTSTRAP_SEED, CONFIDENCE, HIGHER_IS_BETTER, RESAMPLES, paired_difference,
                                    seed_spread)
from model.ablate.spec import AblationSpec
from model.train.metrics import METRICS_FILE, read_metrics

FINISHED, FAILED = "finished", "failed"
REPORT_JSON, REPORT_HTML = "report.json", "report.html"
MAX_CURVE_POINTS = 1000  # per trial in report.json: enough to draw, small enough for a long run


@dataclass
class TaskScores:
    """One trial's evaluation of one task, as `elm-train eval` gives it."""
    items: dict[str, Sequence[float]] = field(default_factory=dict)  # metric -> per-item values, doc order
    values: dict[str, float] = field(default_factory=dict)           # metric -> the task's value, as eval reports
    contamination: dict[str, Any] | None = None                      # eval's mark: {items, contaminated, ...}

    def value(self, metric: str) -> float | None:
        """The task's value in `metric`: eval's own, else the mean of the items; None when neither is there."""
        if metric in self.values:
            return float(self.values[metric])
        items = self.items.get(metric)
        return float(np.mean(items)) if items is not None and len(items) else None


@dataclass
class TrialResult:
    """One trained and evaluated proxy, or one that failed (`status` FAILED, `log` saying why)."""
    variant: str
    seed: int
    run_dir: Path
    status: str                                       # FINISHED or FAILED
    log: Path | None = None                           # the trial's log: training and eval output
    tasks: dict[str, TaskScores] = field(default_factory=dict)
    error: str | None = None                          # a failed trial: what went wrong, in a line


# ---------------------------------------------------------------- what a run folder says

@dataclass
class RunRecords:
    """What a report needs from one run's metrics.jsonl."""
    loss: list[tuple[int, float]]       # (step, training loss)
    val_loss: list[tuple[int, float]]   # (step, validation loss)
    mixture: dict[str, dict[str, float]]  # the last `mixture` record: source -> {target, achieved, tokens}


def read_run(run_dir: str | Path) -> RunRecords:
    """The training and validation loss curves and the mixture served, from a run folder's metrics.jsonl."""
    records = read_metrics(Path(run_dir) / METRICS_FILE)
    loss = [(int(r["step"]), float(r["loss"])) for r in records if r.get("kind") == "train" and "loss" in r]
    val = [(int(r["step"]), float(r["val_loss"])) for r in records if r.get("kind") == "val" and "val_loss" in r]
    return RunRecords(loss, val, served_mixture(records))


def served_mixture(records: list[dict]) -> dict[str, dict[str, float]]:
    """Per source, the target and achieved share (and tokens served) of the run's last `mixture` record."""
    last = next((r for r in reversed(records) if r.get("kind") == "mixture"), None)
    if last is None:
        return {}
    return {source: {k: float(row[k]) for k in ("target", "achieved", "tokens") if k in row}
            for source, row in (last.get("sources") or {}).items()}


def _thinned(points: list[tuple[int, float]]) -> list[list[float]]:
    stride = max(1, -(-len(points) // MAX_CURVE_POINTS))
    kept = points[::stride]
    if points and kept[-1] != points[-1]:
        kept.append(points[-1])
    return [[step, value] for step, value in kept]


# ---------------------------------------------------------------- report.json

def build_report(spec: AblationSpec, trials: list[TrialResult], resamples: int = RESAMPLES,
                 bootstrap_seed: int = BOOTSTRAP_SEED) -> dict[str, Any]:
    """report.json's content (layout in the module docstring) from the spec and every trial, failed ones too."""
    notes: list[str] = []
    names = [v.name for v in spec.variants]
    unknown = sorted({t.variant for t in trials} - set(names))
    if unknown:
        raise ValueError(f"trials of variants the spec does not have: {unknown}")
    twice = sorted({(t.variant, t.seed) for t in trials if sum(u.variant == t.variant and u.seed == t.seed
                                                                for u in trials) > 1})
    if twice:
        raise ValueError(f"more than one trial of the same variant and seed: {twice}")
    trials = sorted(trials, key=lambda t: (names.index(t.variant), t.seed))
    finished = {n: [t for t in trials if t.variant == n and t.status == FINISHED] for n in names}
    runs = {(t.variant, t.seed): read_run(t.run_dir) for t in trials if t.status == FINISHED}
    tasks = _task_order(spec, trials)
    metrics = [m for m in HIGHER_IS_BETTER if any(m in s.values or m in s.items
                                                  for t in trials for s in t.tasks.values())]
    variants = {}
    for v in spec.variants:
        done = finished[v.name]
        variants[v.name] = {
            "steps": spec.steps_for(v), "seeds": [t.seed for t in done],
            "failed_seeds": [t.seed for t in trials if t.variant == v.name and t.status != FINISHED],
            "tasks": _task_spreads(done, tasks, metrics),
            "val_loss": _val_loss(done, runs),
            "mixture": _mixture(done, runs),
            "contaminated": _contamination(done, tasks)}
        if not done:
            notes.append(f"variant {v.name!r} has no finished trial: it has no scores and ranks last")
    aggregate_tasks = [task for task in tasks
                       if all(spec.aggregate in variants[n]["tasks"].get(task, {}) for n in names if finished[n])]
    left_out = [task for task in tasks if task not in aggregate_tasks]
    if left_out:
        notes.append(f"the aggregate ({spec.aggregate}) leaves out {', '.join(left_out)}: not every variant has "
                     f"{spec.aggregate} there")
    return {
        "name": spec.name, "model": spec.model, "seeds": list(spec.seeds), "tasks": tasks, "metrics": metrics,
        "aggregate": {"metric": spec.aggregate, "over": "mean over tasks", "tasks": aggregate_tasks,
                      "higher_is_better": HIGHER_IS_BETTER[spec.aggregate]},
        "method": {"confidence": CONFIDENCE, "seed_interval": "Student t over seeds (none with one seed)",
                   "bootstrap": {"resamples": resamples, "seed": bootstrap_seed,
                                 "over": "items (the same draw for both variants) and seeds (drawn per variant)"}},
        "variants": variants,
        "pairs": _pairs(names, finished, tasks, metrics, resamples, bootstrap_seed, notes),
        "ranking": _ranking(spec, finished, aggregate_tasks),
        "trials": [_trial_entry(t, runs.get((t.variant, t.seed))) for t in trials],
        "notes": notes,
    }


def _task_order(spec: AblationSpec, trials: list[TrialResult]) -> list[str]:
    """The spec's tasks that any trial has, in spec order, then any others the trials have."""
    seen = list(dict.fromkeys(task for t in trials for task in t.tasks))
    return [task for task in spec.task_list if task in seen] + [task for task in seen if task not in spec.task_list]


def _task_spreads(done: list[TrialResult], tasks: list[str], metrics: list[str]) -> dict:
    out: dict[str, dict] = {}
    for task in tasks:
        for metric in metrics:
            values = [t.tasks[task].value(metric) for t in done if task in t.tasks]
            values = [v for v in values if v is not None and math.isfinite(v)]
            if values:
                out.setdefault(task, {})[metric] = seed_spread(values).as_dict()
    return out


def _val_loss(done: list[TrialResult], runs: dict) -> dict | None:
    """The spread of the seeds' final validation losses; a run with nothing held out (NaN) has none."""
    finals = [runs[(t.variant, t.seed)].val_loss[-1][1] for t in done if runs[(t.variant, t.seed)].val_loss]
    finals = [x for x in finals if math.isfinite(x)]
    return seed_spread(finals).as_dict() if finals else None


def _mixture(done: list[TrialResult], runs: dict) -> dict:
    served = [runs[(t.variant, t.seed)].mixture for t in done if runs[(t.variant, t.seed)].mixture]
    out = {}
    for source in dict.fromkeys(s for mix in served for s in mix):
        achieved = [mix[source]["achieved"] for mix in served if "achieved" in mix.get(source, {})]
        target = next((mix[source]["target"] for mix in served if "target" in mix.get(source, {})), None)
        out[source] = {"target": target, "achieved": float(np.mean(achieved)) if achieved else None,
                       "values": achieved}
    return out


def _contamination(done: list[TrialResult], tasks: list[str]) -> dict:
    """Per task, the first mark a finished trial carries (a mark speaks of the corpus, the same for every seed)."""
    out = {}
    for task in tasks:
        mark = next((t.tasks[task].contamination for t in done
                     if task in t.tasks and t.tasks[task].contamination is not None), None)
        if mark is not None:
            out[task] = mark
    return out


def _pairs(names: list[str], finished: dict, tasks: list[str], metrics: list[str], resamples: int,
           bootstrap_seed: int, notes: list[str]) -> list[dict]:
    out = []
    for a, b in itertools.combinations([n for n in names if finished[n]], 2):
        compared: dict[str, dict] = {}
        for task in tasks:
            for metric in metrics:
                a_items, b_items = _items(finished[a], task, metric), _items(finished[b], task, metric)
                if a_items is None or b_items is None:
                    continue
                try:
                    diff = paired_difference(a_items, b_items, metric, names=(a, b), key=f"{a}|{b}|{task}|{metric}",
                                             resamples=resamples, seed=bootstrap_seed)
                except ValueError as e:
                    notes.append(f"{a} against {b}, {task} {metric}: no difference computed: {e}")
                    continue
                compared.setdefault(task, {})[metric] = diff.as_dict()
        out.append({"a": a, "b": b, "tasks": compared})
    return out


def _items(done: list[TrialResult], task: str, metric: str) -> list[Sequence[float]] | None:
    """Per finished seed that has them, the per-item values of a task's metric; None when no seed has them."""
    rows = [t.tasks[task].items[metric] for t in done if task in t.tasks and metric in t.tasks[task].items]
    return rows or None


def _ranking(spec: AblationSpec, finished: dict, tasks: list[str]) -> list[dict]:
    """Variants by the aggregate: per seed, the mean over `tasks` of the metric; then its spread over seeds."""
    rows = []
    for v in spec.variants:
        per_seed = []
        for t in finished[v.name]:
            values = [t.tasks[task].value(spec.aggregate) if task in t.tasks else None for task in tasks]
            if tasks and all(x is not None for x in values):
                per_seed.append(float(np.mean(values)))
        if per_seed:
            spread = seed_spread(per_seed)
            rows.append({"variant": v.name, "value": spread.mean, "std": spread.std, "ci_low": spread.ci_low,
                         "ci_high": spread.ci_high, "values": list(spread.values)})
        else:
            rows.append({"variant": v.name, "value": None, "std": None, "ci_low": None, "ci_high": None,
                         "values": []})
    sign = -1 if HIGHER_IS_BETTER[spec.aggregate] else 1
    rows.sort(key=lambda r: (r["value"] is None, sign * r["value"] if r["value"] is not None else 0))
    return [{"rank": i + 1, **r} for i, r in enumerate(rows)]


def _trial_entry(trial: TrialResult, run: RunRecords | None) -> dict:
    return {"variant": trial.variant, "seed": trial.seed, "run_dir": str(trial.run_dir), "status": trial.status,
            "log": str(trial.log) if trial.log is not None else None, "error": trial.error,
            "loss": _thinned(run.loss) if run else [], "val_loss": _thinned(run.val_loss) if run else []}


# ---------------------------------------------------------------- report.html

def write_report(out_dir: str | Path, report: dict[str, Any]) -> Path:
    """report.json and report.html in `out_dir`; returns the page's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / REPORT_JSON, report)
    page = out / REPORT_HTML
    atomic_write_bytes(page, render_page(report).encode("utf-8"))
    return page


_PAGE_CSS = (".nodecision { background: #fdf3d7; } .contaminated { background: #fde2e1; }"
             " .best td { font-weight: bold; } .why { color: #52606d; font-size: 0.85rem; }")


def _e(value: Any) -> str:
    return html.escape("-" if value is None else str(value))


def _number(x: float | None, metric: str | None = None) -> str:
    if x is None:
        return "-"
    return f"{100 * x:.2f}" if metric in ("acc", "acc_norm") else f"{x:.4f}"


def _spread_cell(spread: dict | None, metric: str | None = None) -> str:
    """`mean [low, high]` (accuracies in %); the mean alone where one seed gives no interval."""
    if not spread:
        return "-"
    if spread["ci_low"] is None:
        return f"{_number(spread['mean'], metric)} (1 seed)"
    return f"{_number(spread['mean'], metric)} [{_number(spread['ci_low'], metric)}, " \
           f"{_number(spread['ci_high'], metric)}]"


def _table(heads: list[str], rows: list[str]) -> str:
    return ('<div class="scroll"><table><thead><tr>' + "".join(f"<th>{_e(h)}</th>" for h in heads)
            + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table></div>")


def _ranking_table(report: dict) -> str:
    metric = report["aggregate"]["metric"]
    rows = []
    for r in report["ranking"]:
        v = report["variants"][r["variant"]]
        spread = {"mean": r["value"], "ci_low": r["ci_low"], "ci_high": r["ci_high"]} if r["value"] is not None \
            else None
        cells = [_spread_cell(spread, metric), _spread_cell(v["val_loss"]),
                 ", ".join(map(str, v["seeds"])) or "-", ", ".join(map(str, v["failed_seeds"])) or "-"]
        cls = ' class="best"' if r["rank"] == 1 and r["value"] is not None else ""
        rows.append(f"<tr{cls}><td>{r['rank']}</td><td>{_e(r['variant'])}</td>"
                    + "".join(f'<td class="n">{_e(c)}</td>' for c in cells) + "</tr>")
    return _table(["rank", "variant", f"{metric}, mean over tasks [95% interval]", "final val loss [95% interval]",
                   "seeds", "failed seeds"], rows)


def _tasks_table(report: dict) -> str:
    columns = [(task, metric) for task in report["tasks"] for metric in report["metrics"]
               if any(metric in v["tasks"].get(task, {}) for v in report["variants"].values())]
    rows = []
    for name, v in report["variants"].items():
        cells = []
        for task, metric in columns:
            mark = v["contaminated"].get(task)
            text = _e(_spread_cell(v["tasks"].get(task, {}).get(metric), metric))
            if mark is None:
                cells.append(f'<td class="n">{text}</td>')
                continue
            cls = "n contaminated" if mark.get("contaminated") else "n"
            cells.append(f'<td class="{cls}">{text}<br><small>{_e(_mark_text(mark))}</small></td>')
        rows.append(f"<tr><td>{_e(name)}</td>{''.join(cells)}</tr>")
    return _table(["variant", *(f"{task} {metric}" for task, metric in columns)], rows)


def _mark_text(mark: dict) -> str:
    """`items in the corpus: K of N`, with the items the build removed where it decontaminated the task."""
    if "contaminated" not in mark or "items" not in mark:
        return f"contamination: {mark}"
    removed = f" ({mark['removed']} removed by the build)" if "removed" in mark else ""
    return f"items in the corpus: {mark['contaminated']} of {mark['items']}{removed}"


def _pairs_table(report: dict) -> str:
    metrics = report["metrics"]
    rows = []
    for pair in report["pairs"]:
        for task, by_metric in pair["tasks"].items():
            cells = []
            for metric in metrics:
                d = by_metric.get(metric)
                if d is None:
                    cells.append("<td>-</td>")
                    continue
                text = (f"{_number(d['difference'], metric)} [{_number(d['ci_low'], metric)}, "
                        f"{_number(d['ci_high'], metric)}]")
                verdict = "no decision" if d["includes_zero"] else f"{d['better']} better"
                cls = "n nodecision" if d["includes_zero"] else "n"
                cells.append(f'<td class="{cls}">{_e(text)}<br><small>{_e(verdict)}</small></td>')
            rows.append(f"<tr><td>{_e(pair['a'])} \u2212 {_e(pair['b'])}</td><td>{_e(task)}</td>{''.join(cells)}</tr>")
    if not rows:
        return "<p>No pair of variants has per-item scores on a common task.</p>"
    return _table(["a \u2212 b", "task", *metrics], rows)


def _loss_chart(report: dict) -> str:
    fig = figure(9, 5)
    ax = fig.add_subplot()
    colors = {name: f"C{i % 10}" for i, name in enumerate(report["variants"])}
    styles = ["-", "--", ":", "-."]
    drawn = False
    for t in report["trials"]:
        if t["loss"]:
            seed_index = report["seeds"].index(t["seed"]) if t["seed"] in report["seeds"] else 0
            ax.plot([p[0] for p in t["loss"]], [p[1] for p in t["loss"]], color=colors[t["variant"]],
                    linestyle=styles[seed_index % len(styles)], linewidth=1, label=f"{t['variant']} seed {t['seed']}")
            drawn = True
    if not drawn:
        ax.text(0.5, 0.5, "no finished trial has training records", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    else:
        ax.set_xlabel("step")
        ax.set_ylabel("training loss (nats)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, ncols=2)
    return inline_png(fig)


def _mixture_chart(report: dict) -> str:
    variants = [(name, v["mixture"]) for name, v in report["variants"].items() if v["mixture"]]
    sources = list(dict.fromkeys(s for _, mix in variants for s in mix))
    fig = figure(9, 1.6 + 0.45 * max(len(sources), 1) * max(len(variants), 1) ** 0.5)
    ax = fig.add_subplot()
    if not variants:
        ax.text(0.5, 0.5, "no trial recorded the mixture it served", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return inline_png(fig)
    y = np.arange(len(sources))
    height = 0.8 / len(variants)
    for i, (name, mix) in enumerate(variants):
        shares = [100 * (mix.get(s, {}).get("achieved") or 0) for s in sources]
        ax.barh(y - 0.4 + height * (i + 0.5), shares, height=height, label=name, color=f"C{i % 10}")
    ax.set_yticks(y, sources)
    ax.invert_yaxis()
    ax.set_xlabel("share of the tokens served (%)")
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=8)
    return inline_png(fig)


def _mixture_table(report: dict) -> str:
    rows = []
    for name, v in report["variants"].items():
        for source, row in v["mixture"].items():
            rows.append(f"<tr><td>{_e(name)}</td><td>{_e(source)}</td><td class=\"n\">{percent(row['target'])}</td>"
                        f"<td class=\"n\">{percent(row['achieved'])}</td></tr>")
    return _table(["variant", "source", "target share", "served share (mean over seeds)"], rows) if rows else ""


def _trials_section(report: dict) -> str:
    failed = [t for t in report["trials"] if t["status"] != FINISHED]
    if not failed:
        return "<p>Every trial finished.</p>"
    items = "".join(f"<li><code>{_e(t['variant'])}</code> seed {t['seed']}: {_e(t['error'] or t['status'])}; "
                    f"log <code>{_e(t['log'])}</code>, run folder <code>{_e(t['run_dir'])}</code></li>"
                    for t in failed)
    return f"<p>Failed trials are left out of every number above.</p><ul>{items}</ul>"


def _figure(figure_id: str, caption: str, uri: str) -> str:
    return (f'<figure id="{figure_id}"><img src="{uri}" alt="{_e(caption)}"><figcaption>{_e(caption)}</figcaption>'
            "</figure>")


def render_page(report: dict[str, Any]) -> str:
    """report.html: one self-contained page of the report."""
    method = report["method"]
    agg = report["aggregate"]
    direction = "higher" if agg["higher_is_better"] else "lower"
    notes = "".join(f"<li>{_e(n)}</li>" for n in report["notes"])
    loss = _figure("loss", "Training loss of every trial: one colour per variant, one line style per seed.",
                   _loss_chart(report))
    mixture = _figure("mixture", "Share of the training tokens each source served, per variant (mean over its "
                                 "seeds).", _mixture_chart(report))
    return html_page(f"{report['name']}: ablation report", f"""<h1>{_e(report['name'])}</h1>
<p>Proxy model <code>{_e(report['model'])}</code>, seeds {_e(', '.join(map(str, report['seeds'])))}, tasks
{_e(', '.join(report['tasks']) or '-')}.</p>
<p class="why">Intervals are {int(100 * method['confidence'])}%: over seeds by Student's t (none with one seed); for
differences, a percentile bootstrap ({method['bootstrap']['resamples']:,} resamples, seed
{method['bootstrap']['seed']}) over {_e(method['bootstrap']['over'])}. Accuracies are in %; bpb is bits per byte of
the gold continuation (lower is better).</p>
<h2>Ranking</h2>
<p>By {_e(agg['metric'])}, {_e(agg['over'])} ({_e(', '.join(agg['tasks']) or 'no task')}); {direction} is
better.</p>
{_ranking_table(report)}
<h2>Per task</h2>
<p class="why">Mean over seeds [95% interval]. A red cell: the variant's corpus holds items of the task.</p>
{_tasks_table(report)}
<h2>Differences between variants</h2>
<p class="why">a minus b, with its 95% interval; a yellow cell's interval includes zero: no decision.</p>
{_pairs_table(report)}
<h2>Loss curves</h2>
{loss}
<h2>Mixture served</h2>
{mixture}
{_mixture_table(report)}
<h2>Trials</h2>
{_trials_section(report)}
{f'<h2>Notes</h2><ul>{notes}</ul>' if notes else ''}
<p><small>Numbers as JSON: <a href="{REPORT_JSON}">{REPORT_JSON}</a>.</small></p>
""", REPORT_CSS + _PAGE_CSS)
