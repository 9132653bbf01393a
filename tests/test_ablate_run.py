"""`elm-train ablate` end to end, on the session's sample corpus and held-out cloze tasks of the sample mirror.

One ablation folder goes through a user's life, in one test (each trial costs two processes' start):
1. the command is SIGKILLed after its first trial finished and while the second trains;
2. two variants are added to the spec (one whose corpus is broken) and the same command, on a two-node Ray
   cluster (tests/ray_cluster.py), continues: the finished trial is untouched, the cut-off one and the new ones
   run as Ray tasks spread over both nodes, the broken one fails alone with its log, and each of the first two
   variants ranks first on its own kind of text;
3. the report, rebuilt from the trials' files alone, is the same bytes.
The proxies are the `tiny` preset trained for a few steps of short sequences: enough for a books-trained proxy to
beat a code-trained one on prose, and the other way round on code, in bits per byte (the worked example of
docs/ablate.md, at a smaller scale).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from corpus.store.files import json_bytes
from model.ablate.report import build_report
from model.ablate.run import _trained, build_command, is_done, plan, read_record, trial_result
from model.ablate.spec import load_spec
from model.train.metrics import read_metrics
from ray_cluster import TwoNodeCluster

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "manifests" / "openelm.yaml"
BOOKS = {"redpajama-books": 1, "dolma-gutenberg": 1}
CODE = {"redpajama-github": 1, "dolma-stack": 1}


def spec_text(tasks: Path, variants: list[dict]) -> str:
    return yaml.safe_dump({
        "name": "books-vs-code", "model": "tiny", "steps": 16, "seeds": [0],
        "tasks": ["mirror_prose_cloze", "mirror_code_cloze"], "include_path": str(tasks),
        # short sequences: a trial is a few seconds of training, most of it the two processes starting
        "train": {"sequence_length": 64, "global_batch_tokens": 512, "micro_batch_size": 8, "eval_batches": 2,
                  "checkpoint_every": 8},
        "variants": variants}, sort_keys=False)


def variant(name: str, weights: dict, manifest: Path = MANIFEST) -> dict:
    return {"name": name, "manifest": str(manifest), "sample": True, "weights": weights}


@pytest.fixture
def ablation(sample_corpus, cloze_tasks_written, tmp_path):
    """A spec of two variants over the sample corpus (already built: linked where the ablation builds it), scored
    on the session's held-out cloze tasks."""
    root, tasks = tmp_path, cloze_tasks_written.out
    spec = root / "spec.yaml"
    spec.write_text(spec_text(tasks, [variant("books", BOOKS), variant("code", CODE)]))
    out = root / "out"
    builds, _ = plan(load_spec(spec), out)
    assert len(builds) == 1, "variants that differ only in weights share one build"
    Path(builds[0].folder).parent.mkdir(parents=True)
    Path(builds[0].folder).symlink_to(sample_corpus.out_dir)
    return spec, out, tasks


def record(out: Path, name: str) -> dict | None:
    path = out / "trials" / name.split("/")[0] / f"{name.split('/')[1]}.json"
    return json.loads(path.read_text()) if path.exists() else None


def test_an_ablation_killed_then_grown_continues_redoing_nothing_finished_and_ranks_each_variant_on_its_own_text(
        ablation):
    spec, out, tasks = ablation
    proc = subprocess.Popen([sys.executable, "-m", "model.cli", "ablate", str(spec), "--out", str(out),
                             "--parallel", "1"], start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    deadline = time.monotonic() + 300
    checkpoints = out / "trials" / "code" / "seed-0" / "checkpoints"
    try:  # the kill point: the first trial finished, the second one half way (its first checkpoint written)
        while not ((record(out, "books/seed-0") or {}).get("status") == "finished"
                   and (record(out, "code/seed-0") or {}).get("status") == "started"
                   and (checkpoints / "step_00000008" / "trainer_state.pt").exists()):
            assert proc.poll() is None, f"the ablation ended before the kill: {proc.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, "the ablation did not reach its second trial in 300 s"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finished = {p: p.stat().st_mtime_ns for p in [out / "trials/books/seed-0.json", out / "evals/books/seed-0.json",
                                                  *(out / "trials/books/seed-0").rglob("*")] if p.is_file()}
    # scored on other tasks, a finished trial counts as trained, not done: only its evaluation would be redone
    other_tasks = spec.parent / "other-tasks.yaml"
    other_tasks.write_text(spec.read_text().replace("- mirror_code_cloze\n", ""))
    (books, _) = plan(load_spec(other_tasks), out)[1]
    assert not is_done(books) and _trained(books, read_record(books))
    assert is_done(plan(load_spec(spec), out)[1][0])

    broken_manifest = spec.parent / "broken.yaml"  # another manifest file: another corpus, broken below
    broken_manifest.write_text(MANIFEST.read_text())
    spec.write_text(spec_text(tasks, [variant("books", BOOKS), variant("code", CODE),
                                      variant("mixed", {**BOOKS, **CODE}),
                                      variant("broken", BOOKS, broken_manifest)]))
    builds, _ = plan(load_spec(spec), out)
    broken = next(b for b in builds if b.variants == ("broken",))
    Path(broken.folder).mkdir(parents=True)
    (Path(broken.folder) / "corpus.json").write_text("{not json")
    with TwoNodeCluster(cpus_per_node=1) as cluster:  # one CPU each: the two trials that can run at once, one a node
        rerun = subprocess.run([sys.executable, "-m", "model.cli", "ablate", str(spec), "--out", str(out),
                                "--ray-address", cluster.address], cwd=ROOT, capture_output=True, text=True,
                               env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=300)
    assert rerun.returncode == 1, rerun.stderr[-3000:]
    said = rerun.stdout
    assert "4 trials, 1 already done" in said and "trial broken seed 0: FAILED" in said
    assert all(f"trial {name} seed 0: done" in said for name in ("code", "mixed")) and "trial books" not in said
    assert {p: p.stat().st_mtime_ns for p in finished} == finished, "the finished trial was not touched"
    resumed = [r for r in read_metrics(out / "trials/code/seed-0/metrics.jsonl") if r["kind"] == "resume"]
    assert [r["step"] for r in resumed] == [8], "the cut-off trial resumed from its checkpoint"
    ran_on = [record(out, f"{name}/seed-0")["ran_on"] for name in ("code", "mixed", "broken")]
    assert len({r["node"] for r in ran_on}) == 2, "Ray placed the trials on both nodes"

    report = json.loads((out / "report.json").read_text())
    bpb = {v: {t: s["bpb"]["mean"] for t, s in report["variants"][v]["tasks"].items()} for v in ("books", "code")}
    assert bpb["books"]["mirror_prose_cloze"] < bpb["code"]["mirror_prose_cloze"]
    assert bpb["code"]["mirror_code_cloze"] < bpb["books"]["mirror_code_cloze"]
    (pair,) = [p for p in report["pairs"] if {p["a"], p["b"]} == {"books", "code"}]
    assert pair["tasks"]["mirror_prose_cloze"]["bpb"]["better"] == "books"
    assert pair["tasks"]["mirror_code_cloze"]["bpb"]["better"] == "code"
    for name, weights in (("books", BOOKS), ("code", CODE)):  # each trial is an ordinary run folder, its eval beside
        run = out / "trials" / name / "seed-0"
        assert (run / "run.json").is_file() and list((run / "evals").glob("step_*.json"))
        served = report["variants"][name]["mixture"]
        assert {s for s, row in served.items() if row["achieved"] > 0} == weights.keys()
    assert {r["variant"] for r in report["ranking"] if r["value"] is not None} == {"books", "code", "mixed"}
    failed = [t for t in report["trials"] if t["status"] != "finished"]
    assert [t["variant"] for t in failed] == ["broken"]
    assert "corpus.json cannot be read: not valid JSON" in failed[0]["error"]
    log = Path(failed[0]["log"]).read_text()
    assert "corpus.json cannot be read: not valid JSON" in log and "Traceback" not in log
    assert (out / "report.html").is_file()

    # the report is the trials' files read again, nothing of the run that wrote it: rebuilt now, the same bytes
    assert not [t for t in plan(load_spec(spec), out)[1] if t.variant != "broken" and not is_done(t)]
    rebuilt = build_report(load_spec(spec), [trial_result(t) for t in plan(load_spec(spec), out)[1]])
    assert json_bytes(rebuilt) == (out / "report.json").read_bytes()


def test_a_corpus_build_takes_the_units_of_the_ablations_other_corpora_it_shares(tmp_path):
    """Two manifests, two corpora: the one built second is given the first (once it has a plan) as --reuse, so a
    source both read alike is tokenized once (what --reuse copies is tested in test_build.py)."""
    other = tmp_path / "other.yaml"
    other.write_text(MANIFEST.read_text())
    spec = tmp_path / "spec.yaml"
    spec.write_text(spec_text(tmp_path, [variant("books", BOOKS), variant("code", CODE, other)]))
    first, second = plan(load_spec(spec), tmp_path / "out")[0]
    assert "--reuse" not in build_command(first, [first, second]) + build_command(second, [first, second])
    Path(first.folder).mkdir(parents=True)
    (Path(first.folder) / "plan.json").write_text("{}")
    command = build_command(second, [first, second])
    assert command[command.index("--reuse") + 1] == first.folder
    assert "--reuse" not in build_command(first, [first, second])
