"""The ablation report from a synthetic set of trials: run folders with metrics.jsonl written by the trainer's own
log, per-item eval scores, one failed trial and one contamination mark."""
from __future__ import annotations

import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from browser import console_errors, requested_urls
from model.ablate.report import (FAILED, FINISHED, MAX_CURVE_POINTS, REPORT_HTML, REPORT_JSON, TaskScores,
                                 TrialResult, build_report, read_run, write_report)
from model.ablate.spec import load_spec
from model.train.metrics import METRICS_FILE, MetricsLog
from test_ablate_spec import MANIFEST

T_975_DF1 = 12.706204736174696  # Student t's 97.5th percentile at 1 degree of freedom: tan(0.475 pi)

SPEC = """\
name: mix-check
model: tiny
steps: 10
seeds: [0, 1]
tasks: [arc_easy, piqa]
variants:
  - name: web-heavy
    manifest: manifests/two.yaml
    sample: true
    weights: {web: 3, books: 1}
  - name: books-heavy
    manifest: manifests/two.yaml
    sample: true
    weights: {web: 1, books: 3}
  - name: code-too
    manifest: manifests/two.yaml
    sample: true
    weights: {web: 1, code: 1}
"""

# Per variant and seed, per task: (acc per item, bpb per item). arc_easy has 4 items, piqa 3.
SCORES = {
    ("web-heavy", 0): {"arc_easy": ([1, 1, 0, 1], [0.8, 1.0, 1.2, 1.0]), "piqa": ([1, 0, 1], [0.9, 0.9, 0.9])},
    ("web-heavy", 1): {"arc_easy": ([1, 0, 0, 1], [0.9, 1.1, 1.3, 1.1]), "piqa": ([1, 1, 1], [1.0, 1.0, 1.0])},
    ("books-heavy", 0): {"arc_easy": ([0, 1, 0, 1], [1.3, 1.5, 1.7, 1.5]), "piqa": ([0, 0, 1], [1.4, 1.4, 1.4])},
    ("books-heavy", 1): {"arc_easy": ([0, 0, 0, 1], [1.4, 1.6, 1.8, 1.6]), "piqa": ([1, 0, 1], [1.5, 1.5, 1.5])},
    ("code-too", 0): {"arc_easy": ([0, 0, 0, 0], [2.0, 2.0, 2.0, 2.0]), "piqa": ([0, 0, 0], [2.1, 2.1, 2.1])},
}
MARK = {"items": 3, "contaminated": 1, "ngram": 13, "sources": {"web": 1}}
SHARES = {"web-heavy": {"web": 0.75, "books": 0.25}, "books-heavy": {"web": 0.25, "books": 0.75},
          "code-too": {"web": 0.5, "code": 0.5}}


def write_run(folder: Path, variant: str, seed: int, steps: int = 10) -> Path:
    """A run folder as the trainer leaves it: train records every step, val at 5 and 10, a mixture at the end."""
    log = MetricsLog(folder / METRICS_FILE)
    offset = 0.1 * seed + {"web-heavy": 0.0, "books-heavy": 0.3, "code-too": 0.6}[variant]
    for step in range(1, steps + 1):
        log.write({"kind": "train", "step": step, "loss": 6.0 - 0.2 * step + offset, "z_loss": 1.0, "lr": 1e-3,
                   "grad_norm": 1.0, "tokens": 1024 * step, "tokens_per_s": 5000.0, "step_s": 0.2,
                   "data_wait_s": 0.01, "elapsed_s": 0.2 * step})
        if step % 5 == 0:
            log.write({"kind": "val", "step": step, "val_loss": 5.0 - 0.1 * step + offset, "tokens": 4096})
    drift = 0.01 if seed else -0.01  # seed 1 served its first source a point more than its target, seed 0 less
    served = {name: {"target": share, "achieved": share + (drift if i == 0 else -drift), "tokens": 1000 * (i + 1),
                     "epochs": 0.1} for i, (name, share) in enumerate(SHARES[variant].items())}
    log.write({"kind": "mixture", "step": steps, "sources": served})
    log.close()
    return folder


def tasks_of(variant: str, seed: int) -> dict[str, TaskScores]:
    out = {}
    for task, (acc, bpb) in SCORES[(variant, seed)].items():
        mark = MARK if (variant, task) == ("web-heavy", "piqa") else None
        out[task] = TaskScores(items={"acc": [float(x) for x in acc], "bpb": bpb},
                               values={"acc": float(np.mean(acc))}, contamination=mark)
    return out


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    root = tmp_path_factory.mktemp("ablation")
    (root / "manifests").mkdir()
    (root / "manifests" / "two.yaml").write_text(MANIFEST)
    (root / "spec.yaml").write_text(SPEC)
    spec = load_spec(root / "spec.yaml")
    trials = []
    for variant, seed in SCORES:
        run = write_run(root / "runs" / f"{variant}-seed{seed}", variant, seed)
        trials.append(TrialResult(variant, seed, run, FINISHED, run / "trial.log", tasks_of(variant, seed)))
    failed = root / "runs" / "code-too-seed1"
    failed.mkdir(parents=True)
    trials.append(TrialResult("code-too", 1, failed, FAILED, failed / "trial.log", error="training exited with 3"))
    report = build_report(spec, trials)
    page = write_report(root / "report", report)
    return spec, trials, report, page


def spread_of(values: list[float]) -> dict:
    mean, std = float(np.mean(values)), float(np.std(values, ddof=1))
    half = T_975_DF1 * std / math.sqrt(2)
    return {"mean": pytest.approx(mean), "std": pytest.approx(std), "ci_low": pytest.approx(mean - half),
            "ci_high": pytest.approx(mean + half), "values": pytest.approx(values)}


def test_each_variant_has_its_score_per_task_and_metric_over_seeds(ablation):
    _, _, report, _ = ablation
    web = report["variants"]["web-heavy"]
    assert web["tasks"]["arc_easy"]["acc"] == spread_of([0.75, 0.5])
    assert web["tasks"]["arc_easy"]["bpb"] == spread_of([1.0, 1.1])
    assert web["tasks"]["piqa"]["bpb"] == spread_of([0.9, 1.0])
    assert (web["seeds"], web["failed_seeds"], web["steps"]) == ([0, 1], [], 10)


def test_a_variant_with_one_finished_seed_has_no_interval_and_names_the_failed_one(ablation):
    _, _, report, _ = ablation
    code = report["variants"]["code-too"]
    assert (code["seeds"], code["failed_seeds"]) == ([0], [1])
    assert code["tasks"]["piqa"]["bpb"] == {"mean": pytest.approx(2.1), "std": 0.0, "ci_low": None, "ci_high": None,
                                            "values": [pytest.approx(2.1)]}
    assert code["val_loss"]["values"] == [pytest.approx(4.6)]


def test_val_loss_is_the_final_validation_of_each_seed(ablation):
    _, _, report, _ = ablation
    assert report["variants"]["books-heavy"]["val_loss"] == spread_of([4.3, 4.4])  # 5.0 - 1.0 + 0.3 (+ 0.1)


def test_the_mixture_served_is_the_last_record_averaged_over_seeds(ablation):
    _, _, report, _ = ablation
    mixture = report["variants"]["web-heavy"]["mixture"]
    assert mixture == {"web": {"target": 0.75, "achieved": pytest.approx(0.75), "values": [0.74, 0.76]},
                       "books": {"target": 0.25, "achieved": pytest.approx(0.25), "values": [0.26, 0.24]}}


def test_contamination_is_marked_only_where_eval_gave_a_mark(ablation):
    _, _, report, _ = ablation
    assert report["variants"]["web-heavy"]["contaminated"] == {"piqa": MARK}
    assert report["variants"]["books-heavy"]["contaminated"] == {}


def test_every_pair_of_variants_has_a_difference_per_task_and_metric(ablation):
    _, _, report, _ = ablation
    assert [(p["a"], p["b"]) for p in report["pairs"]] == [
        ("web-heavy", "books-heavy"), ("web-heavy", "code-too"), ("books-heavy", "code-too")]
    first = report["pairs"][0]["tasks"]
    assert set(first) == {"arc_easy", "piqa"} and set(first["piqa"]) == {"acc", "bpb"}
    bpb = first["arc_easy"]["bpb"]
    assert set(bpb) == {"difference", "ci_low", "ci_high", "better", "includes_zero"}
    assert bpb["difference"] == pytest.approx(1.05 - 1.55)
    assert bpb["better"] == "web-heavy" and bpb["ci_high"] < 0 and not bpb["includes_zero"]
    acc = first["arc_easy"]["acc"]  # 0.625 against 0.375 on four items: too few to decide
    assert acc["difference"] == pytest.approx(0.25) and acc["better"] == "web-heavy" and acc["includes_zero"]


def test_the_ranking_follows_mean_bpb_over_tasks_lower_first(ablation):
    _, _, report, _ = ablation
    assert report["aggregate"] == {"metric": "bpb", "over": "mean over tasks", "tasks": ["arc_easy", "piqa"],
                                   "higher_is_better": False}
    ranking = report["ranking"]
    assert [(r["rank"], r["variant"]) for r in ranking] == [(1, "web-heavy"), (2, "books-heavy"), (3, "code-too")]
    assert ranking[0]["values"] == pytest.approx([(1.0 + 0.9) / 2, (1.1 + 1.0) / 2])
    assert ranking[0]["value"] == pytest.approx(1.0)
    assert ranking[2]["value"] == pytest.approx(2.05) and ranking[2]["ci_low"] is None


def test_every_trial_is_listed_with_its_folder_status_and_loss_curve(ablation):
    _, trials, report, _ = ablation
    assert [(t["variant"], t["seed"], t["status"]) for t in report["trials"]] == [
        ("web-heavy", 0, FINISHED), ("web-heavy", 1, FINISHED), ("books-heavy", 0, FINISHED),
        ("books-heavy", 1, FINISHED), ("code-too", 0, FINISHED), ("code-too", 1, FAILED)]
    first, failed = report["trials"][0], report["trials"][-1]
    assert first["run_dir"] == str(trials[0].run_dir)
    assert first["loss"][0] == [1, pytest.approx(5.8)] and len(first["loss"]) == 10
    assert first["val_loss"] == [[5, pytest.approx(4.5)], [10, pytest.approx(4.0)]]
    assert failed["log"].endswith("code-too-seed1/trial.log") and failed["error"] == "training exited with 3"
    assert failed["loss"] == [] and failed["val_loss"] == []


def test_report_json_on_disk_is_the_report(ablation):
    _, _, report, page = ablation
    assert json.loads((page.parent / REPORT_JSON).read_text()) == json.loads(json.dumps(report))


def test_eval_task_value_wins_over_the_mean_of_the_items():
    scores = TaskScores(items={"bpb": [1.0, 2.0], "acc": [1.0, 0.0]}, values={"bpb": 1.25})
    assert (scores.value("bpb"), scores.value("acc"), scores.value("acc_norm")) == (1.25, 0.5, None)


def test_a_long_run_keeps_a_bounded_loss_curve_with_its_last_point(tmp_path):
    run = write_run(tmp_path / "long", "web-heavy", 0, steps=2500)
    from model.ablate.report import _thinned
    curve = _thinned(read_run(run).loss)
    assert len(curve) <= MAX_CURVE_POINTS + 1 and curve[0][0] == 1 and curve[-1][0] == 2500


# ---------------------------------------------------------------- the page

class _Cells(HTMLParser):
    """The class of every table cell, and the page's images."""

    def __init__(self):
        super().__init__()
        self.cells, self.images = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "td":
            self.cells.append(attrs.get("class") or "")
        elif tag == "img":
            self.images.append(attrs["src"])


def test_the_page_flags_undecided_differences_and_contaminated_cells(ablation):
    _, _, report, page = ablation
    parsed = _Cells()
    parsed.feed(page.read_text())
    undecided = sum(d["includes_zero"] for p in report["pairs"] for m in p["tasks"].values() for d in m.values())
    assert sum("nodecision" in c for c in parsed.cells) == undecided > 0
    assert sum("contaminated" in c for c in parsed.cells) == 2  # web-heavy's piqa: acc and bpb
    assert "items in the corpus: 1 of 3" in page.read_text()
    assert len(parsed.images) == 2 and all(src.startswith("data:image/png;base64,") for src in parsed.images)


def test_the_page_opens_in_headless_chromium_as_one_file(ablation, chromium):
    _, _, _, page = ablation
    seen = chromium.load(page)
    assert console_errors(seen["events"]) == []
    assert seen["dom"]["title"] == "mix-check: ablation report"
    assert [i["figure"] for i in seen["dom"]["images"]] == ["loss", "mixture"]
    assert all(i["complete"] and i["width"] > 0 for i in seen["dom"]["images"])
    outside = [u for u in requested_urls(seen["events"]) if not re.match(r"data:|file:", u)]
    assert outside == [] and page.name == REPORT_HTML
