"""A manifest's `decontaminate` block: the build drops every document that shares a word n-gram with an item of the
named tasks, counts it per source, records per task what it found in corpus.json, and `elm-corpus contamination`
on the same tasks then finds nothing; `elm-train eval` marks the tasks a run's corpus was checked for.

The planted corpus and the local tasks are tests/test_contamination.py's, imported. What the build finds there,
document by document: books holds item 0, item 1 (across a chunk boundary) and item 4, whose halves lie on both
sides of 40 "!" (a chunk the build drops, so the report never sees them side by side; the build reads the whole
document, whose words, punctuation removed, join them); web holds items 0 and 2 and the first generation item.
"""
from __future__ import annotations

import json
import shutil

import pytest

from corpus.manifest import ManifestError, parse_manifest
from corpus.store.layout import read_corpus_json
from eval_data import write_model
from pipelines.build import build
from pipelines.cli import main
from pipelines.contamination import measure
from test_contamination import EXPECTED, corpus, counts, manifest, tasks_dir  # noqa: F401 - fixtures reused

BLOCK = "decontaminate:\n  tasks: [plant_mc, plant_gen]\n  include_path: {tasks}\n"
FOUND = {"plant_mc": {"items": 6, "contaminated": 4, "sources": {"books": 3, "web": 2}, "short": 0},
         "plant_gen": {"items": 2, "contaminated": 1, "sources": {"web": 1}, "short": 0}}


def with_block(manifest, tasks_dir, name: str, block: str = BLOCK):
    """The planted manifest with ``block`` added, as ``<name>.yaml`` beside it."""
    path = manifest.parent / f"{name}.yaml"
    path.write_text(manifest.read_text() + block.format(tasks=tasks_dir))
    return path


@pytest.fixture(scope="module")
def clean(manifest, tasks_dir, ray_session):
    """The planted corpus built with the block: its folder."""
    out = manifest.parent / "clean"
    assert build(with_block(manifest, tasks_dir, "clean"), out, workers=2, progress=False).status == "complete"
    return out


# ---------------------------------------------------------------- the block

SOURCES = "name: x\nsources:\n  - {name: a, group: web, upstream: {files: [a.jsonl]}, format: jsonl, tokens: 1M}\n"


@pytest.mark.parametrize("block, says", [
    ("decontaminate:\n  tasks: [arc_easy]\n  ngram: 0\n",
     "x.yaml:6: decontaminate.ngram: Input should be greater than or equal to 1"),
    ("decontaminate:\n  tasks: []\n", "x.yaml:5: decontaminate.tasks: List should have at least 1 item"),
    ("decontaminate:\n  ngram: 13\n", "x.yaml:4: decontaminate.tasks: required field is missing"),
    ("decontaminate:\n  tasks: [arc_easy]\n  n: 8\n", "x.yaml:6: decontaminate.n: unknown key"),
])
def test_the_block_is_checked_on_load_naming_the_line_and_the_setting(block, says):
    with pytest.raises(ManifestError) as refused:
        parse_manifest(SOURCES + block, "x.yaml")
    assert refused.value.problems == [says] or refused.value.problems[0].startswith(says)


def test_tasks_are_names_or_sets_as_eval_takes_them_and_13_words_by_default():
    listed = parse_manifest(SOURCES + "decontaminate: {tasks: [openelm-zero-shot, mmlu]}\n").decontaminate
    assert listed.names == "openelm-zero-shot,mmlu" and listed.ngram == 13 and listed.include_path is None
    assert parse_manifest(SOURCES + "decontaminate: {tasks: 'piqa, boolq'}\n").decontaminate.tasks == ["piqa", "boolq"]


def test_the_fingerprint_covers_the_block_only_when_present(manifest, tasks_dir):
    from corpus.manifest import load_manifest
    plain = load_manifest(manifest)
    one = load_manifest(with_block(manifest, tasks_dir, "one"))
    other = load_manifest(with_block(manifest, tasks_dir, "other", BLOCK.replace("plant_gen", "plant_ppl")))
    shorter = load_manifest(with_block(manifest, tasks_dir, "shorter", BLOCK + "  ngram: 8\n"))
    prints = {m.build_fingerprint("t") for m in (plain, one, other, shorter)}
    assert len(prints) == 4
    assert "decontaminate" not in plain.fingerprint_parts("t") and "decontaminate" in one.fingerprint_parts("t")


def test_tasks_whose_data_cannot_be_had_are_refused_before_any_folder_is_made(manifest, tasks_dir, tmp_path,
                                                                              capsys):
    path = with_block(manifest, tasks_dir, "offline", BLOCK.replace("plant_gen", "plant_offline"))
    assert main(["build", str(path), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"elm-corpus build: error: {path}: decontaminate.tasks: the data of 1 task(s) cannot be "
                          f"loaded here") and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- the build

def test_every_document_holding_a_task_ngram_is_dropped_whole_and_counted_per_source(clean, corpus):
    built, plain = read_corpus_json(clean)["sources"], read_corpus_json(corpus)["sources"]
    for source in ("books", "web"):
        totals = built[source]["totals"]
        assert totals["dropped"] == {"contaminated": 3} and totals["kept"] == 1 and totals["documents_read"] == 4
        assert totals["tokens_dropped"]["contaminated"] > 0
    # web's documents lose no chunk to the rules, so what decontamination took is exactly what the plain build kept
    assert (plain["web"]["totals"]["tokens"] - built["web"]["totals"]["tokens"]
            == built["web"]["totals"]["tokens_dropped"]["contaminated"])


def test_a_live_stream_of_the_manifest_serves_the_decontaminated_builds_chunks(clean, manifest, tasks_dir):
    from corpus.manifest import load_manifest
    from corpus.store.layout import source_shards
    from pipelines.build import decontamination
    from stream_chunks import stream_chunks
    live = load_manifest(with_block(manifest, tasks_dir, "clean"))
    for source in ("books", "web"):
        built = [s.chunk(i) for s in source_shards(clean, source) for i in range(len(s))]
        streamed = list(stream_chunks(live, source, workers=2, decontaminate=decontamination(live)))
        assert len(streamed) == len(built) > 0 and all((a == b).all() for a, b in zip(streamed, built))


def test_corpus_json_records_per_task_the_items_the_build_found_and_where(clean):
    record = read_corpus_json(clean)["decontamination"]
    assert record["ngram"] == 13
    assert {task: {k: t[k] for k in FOUND[task]} for task, t in record["tasks"].items()} == FOUND
    mc = record["tasks"]["plant_mc"]
    assert mc["subtasks"] == ["plant_mc"] and len(mc["items_sha256"]) == 64


def test_the_build_finds_at_least_what_a_report_on_the_plain_corpus_finds(clean, corpus, tasks_dir):
    found = counts(measure(str(corpus), "plant_mc,plant_gen", include_path=str(tasks_dir)).report)
    assert found == EXPECTED
    removed = read_corpus_json(clean)["decontamination"]["tasks"]
    for task, t in found.items():
        assert removed[task]["contaminated"] >= t["contaminated"]
        assert all(removed[task]["sources"].get(s, 0) >= k for s, k in t["sources"].items())


def test_afterwards_contamination_on_the_same_tasks_finds_no_item(clean, tasks_dir):
    report = measure(str(clean), "plant_mc,plant_gen", include_path=str(tasks_dir)).report
    assert {task: t["contaminated"] for task, t in report["tasks"].items()} == {"plant_mc": 0, "plant_gen": 0}
    assert report["scanned"]["documents"] == 2  # books' last document and web's wrong answer remain


def test_verify_and_stats_take_the_decontaminated_corpus_like_any_other(clean, capsys):
    assert main(["verify", str(clean), "--json"]) == 0
    capsys.readouterr()
    assert main(["stats", str(clean), "--json"]) == 0
    web = next(s for s in json.loads(capsys.readouterr().out)["sources"] if s["name"] == "web")
    assert web["documents"]["dropped"] == {"contaminated": 3} and web["tokens_dropped"]["contaminated"] > 0


def test_a_rerun_refuses_when_the_tasks_items_changed_since_the_build_began(clean, tasks_dir, manifest, tmp_path,
                                                                            capsys):
    copy = shutil.copytree(clean, tmp_path / "clean")
    record = json.loads((copy / "decontaminate" / "tasks.json").read_text())
    record["tasks"][1]["items_sha256"] = "0" * 64  # as if plant_gen's data had been another when it began
    (copy / "decontaminate" / "tasks.json").write_text(json.dumps(record))
    assert main(["build", str(manifest.parent / "clean.yaml"), "--out", str(copy), "--no-progress"]) == 3
    err = capsys.readouterr().err
    assert "the items of decontaminate's task(s) plant_gen differ" in err and len(err.splitlines()) == 1
    other_n = with_block(manifest, tasks_dir, "clean-8", BLOCK + "  ngram: 8\n")
    assert main(["build", str(other_n), "--out", str(copy), "--no-progress"]) == 3
    assert "changed: decontaminate settings" in capsys.readouterr().err


# ---------------------------------------------------------------- elm-train eval marks the tasks

def fake_run(folder, model_dir, corpus_dir):
    """A run folder as training leaves it, as far as eval reads it: run.json naming its corpus, one checkpoint."""
    checkpoint = shutil.copytree(model_dir, folder / "checkpoints" / "step_00000001")
    (checkpoint / "state.json").write_text(json.dumps({"step": 1}))
    (folder / "run.json").write_text(json.dumps({"corpus": {"name": corpus_dir.name, "dir": str(corpus_dir)}}))
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_model(tmp_path_factory.mktemp("eval") / "model")


def eval_table(run, tasks_dir, tasks: str, out, capsys) -> dict[str, str]:
    from model.cli import main as train_main
    assert train_main(["eval", str(run), "--tasks", tasks, "--include-path", str(tasks_dir), "--device", "cpu",
                       "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[-1] == "contaminated"
    return {line.split()[0]: line[-22:].strip() for line in lines[1:] if line.startswith("plant_")}


def test_eval_marks_each_task_with_the_items_a_report_found_in_the_runs_corpus(corpus, tasks_dir, model_dir,
                                                                               tmp_path, capsys):
    measure(str(corpus), "plant_mc", include_path=str(tasks_dir))
    run = fake_run(tmp_path / "run", model_dir, corpus)
    cells = eval_table(run, tasks_dir, "plant_mc,plant_ppl", tmp_path / "results.json", capsys)
    assert cells == {"plant_mc": "3 of 6", "plant_ppl": "-"}  # plant_ppl was never looked for
    written = json.loads((tmp_path / "results.json").read_text())["contamination"]
    assert written["corpus"] == str(corpus) and set(written["tasks"]) == {"plant_mc"}
    mark = written["tasks"]["plant_mc"]
    assert (mark["items"], mark["contaminated"], mark["ngram"], mark["sources"]) == (6, 3, 13, {"books": 2, "web": 2})
    assert (corpus / mark["report"]).is_file() and "removed" not in mark


def test_eval_marks_the_tasks_a_decontaminated_corpus_was_cleaned_of(clean, tasks_dir, model_dir, tmp_path, capsys):
    run = fake_run(tmp_path / "run", model_dir, clean)
    cells = eval_table(run, tasks_dir, "plant_mc", tmp_path / "results.json", capsys)
    assert cells == {"plant_mc": "0 of 6 (4 removed)"}
    mark = json.loads((tmp_path / "results.json").read_text())["contamination"]["tasks"]["plant_mc"]
    assert (mark["contaminated"], mark["removed"]) == (0, 4)


def test_a_corpus_that_cannot_be_read_is_said_under_the_table_and_marks_no_task(tmp_path, capsys):
    from model.cli import print_eval_table
    from model.eval.contamination import corpus_contamination
    from model.source import ModelSource
    gone = tmp_path / "moved-away"
    found = corpus_contamination(ModelSource(tmp_path, run={"corpus": {"dir": str(gone)}}), ["plant_mc"])
    print_eval_table({"results": {"plant_mc": {"acc,none": 0.5}}, "contamination": found}, None, "plant_mc")
    lines = capsys.readouterr().out.splitlines()
    assert "contaminated" not in lines[0] and "unreadable" in found and "tasks" not in found
    assert lines[-1].startswith(f"contamination: the run's corpus {gone} cannot be read, so no task is marked")


def test_eval_marks_a_group_and_each_subtask_keeps_the_marks_and_compare_shows_them(corpus, tasks_dir, model_dir,
                                                                                   tmp_path, capsys):
    from model.cli import main as train_main
    measure(str(corpus), "plant_group", include_path=str(tasks_dir))  # one report for the group
    run = fake_run(tmp_path / "run", model_dir, corpus)
    (run / "metrics.jsonl").write_text(json.dumps({"kind": "train", "step": 1, "tokens": 64, "loss": 9.0}) + "\n")
    cells = eval_table(run, tasks_dir, "plant_group", tmp_path / "results.json", capsys)
    assert cells == {"plant_group": "3 of 7", "plant_mc": "3 of 6", "plant_fill": "0 of 1"}
    written = json.loads((tmp_path / "results.json").read_text())["contamination"]
    recorded = json.loads((run / "evals" / "step_00000001.json").read_text())["contamination"]
    assert recorded == written and recorded["tasks"]["plant_fill"]["report"].startswith("contamination/")
    assert train_main(["compare", str(run)]) == 0
    lines = capsys.readouterr().out.splitlines()
    heads, row = lines[0].split(), lines[1].split()
    starred = {t: v.endswith("*") for t, v in zip(heads[-3:], row[-3:])}
    assert starred == {"plant_fill": False, "plant_group": True, "plant_mc": True}
    assert lines[-1] == "  run: plant_fill 0 of 1; plant_group 3 of 7; plant_mc 3 of 6"


# per case: the records in the corpus (reports of `elm-corpus contamination`, the build's decontamination), and the
# cells eval's rows get. plant_group holds plant_fill (1 item) and plant_mc (6 items).
MC, FILL = {"items": 6, "contaminated": 3, "subtasks": ["plant_mc"]}, {"items": 1, "contaminated": 1,
                                                                        "subtasks": ["plant_fill"]}
GROUP = {"items": 7, "contaminated": 4, "subtasks": ["plant_fill", "plant_mc"]}


@pytest.mark.parametrize("reports, built, cells", [
    ({"plant_mc": MC, "plant_fill": FILL}, None,  # per subtask: the group's row is their sum
     {"plant_group": "4 of 7", "plant_mc": "3 of 6", "plant_fill": "1 of 1"}),
    ({"plant_mc": MC}, None, {"plant_group": "3 of 6 (1/2 subtasks)", "plant_mc": "3 of 6", "plant_fill": "-"}),
    ({"plant_group": GROUP}, None,  # a report without per-subtask counts (made before they were kept)
     {"plant_group": "4 of 7", "plant_mc": "4 of 7 in plant_group", "plant_fill": "4 of 7 in plant_group"}),
    ({"plant_group": {**GROUP, "per_subtask": {"plant_fill": {"items": 1, "contaminated": 1},
                                               "plant_mc": {"items": 6, "contaminated": 3}}}}, None,
     {"plant_group": "4 of 7", "plant_mc": "3 of 6", "plant_fill": "1 of 1"}),
    ({}, {"plant_group": GROUP},  # built with `decontaminate: {tasks: [plant_group]}`
     {"plant_group": "0 of 7 (4 removed)", "plant_mc": "0 of 7 in plant_group (4 removed)",
      "plant_fill": "0 of 7 in plant_group (4 removed)"}),
])
def test_records_of_a_group_mark_its_subtasks_and_records_of_subtasks_mark_the_group(tasks_dir, tmp_path, reports,
                                                                                      built, cells):
    from corpus.tasks.groups import leaf_tasks
    from corpus.tasks.manager import known_tasks_manager
    from model.eval.contamination import contamination_cell, corpus_contamination
    from model.source import ModelSource
    folder = tmp_path / "corpus"
    (folder / "contamination").mkdir(parents=True)
    (folder / "corpus.json").write_text(json.dumps({"decontamination": {"ngram": 13, "tasks": built}} if built else {}))
    (folder / "contamination" / "r.json").write_text(json.dumps({"ngram": 13, "tasks": reports}))
    manager = known_tasks_manager(["plant_group"], str(tasks_dir))  # the index alone: no task is built
    found = corpus_contamination(ModelSource(tmp_path, run={"corpus": {"dir": str(folder)}}), list(cells),
                                 lambda name: leaf_tasks(manager, name))
    assert {row: contamination_cell(found["tasks"].get(row)) for row in cells} == cells
