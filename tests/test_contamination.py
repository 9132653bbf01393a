"""`elm-corpus contamination`: task items planted in a small built corpus are found, per task and per source.

The tasks are local lm-eval YAML tasks over json lines (loaded by lm-eval's own task machinery, as `elm-train
eval` loads them); the corpus is built by `elm-corpus build` with 40-word chunks, so a planted item can straddle a
chunk boundary. Filler text is the King James Bible, which shares no 13 words with the items written here.
"""
from __future__ import annotations

import json

import pytest

from corpus.cleaning.contamination import NgramIndex, ngram_hashes, task_reports
from corpus.mirror.text import kjv_chapters
from corpus.store.layout import CorpusDir, read_corpus_json
from corpus.store.shards import Shard
from corpus.tasks.items import load_items
from pipelines.cli import main
from pipelines.contamination import measure

SPLIT = 40  # words per chunk in the test corpus

# (question, choices, gold): six questions of a multiple-choice task. Question 3 is short (8 words), so its text
# with an answer is exactly 13 words: one n-gram, which holds the answer.
MC = [
    ("Which instrument did the lighthouse keeper on the northern island use to measure the wind each morning?",
     ["an anemometer", "a barometer", "a sextant"], 0),
    ("After the long winter the village bakers agreed to share one oven, so what did they bake first in spring?",
     ["rye bread", "honey cakes", "salt biscuits"], 1),
    ("The cartographer noticed that the river on her old map bent east, but where did it really bend today?",
     ["west of the mill", "north of the bridge", "south of the ford"], 2),
    ("Which metal did the old smith prefer most?", ["soft bright copper for kettles", "iron", "tin"], 0),
    ("When the orchestra lost its conductor mid season, who led the remaining concerts from the first violin chair?",
     ["the concertmaster", "the oboist", "the stage manager"], 0),
    ("Why did the beekeepers of the valley move every hive uphill before the autumn floods arrived that year?",
     ["to keep the bees dry", "to find more clover", "to avoid the bears"], 0),
]
GEN = [("Complete the proverb that the ferryman repeated to every passenger crossing the grey river at dawn:",
        "a calm crossing starts with a patient oar"),
       ("Finish the rule the librarians of the hill town wrote above their door in faded blue paint:",
        "every borrowed book comes home before the frost")]
ROLLING = ["The tide tables of the harbour were printed on thin paper and pinned beside the ticket office window."]
# Winogrande's shape: each option fills the blank, the continuation after it is shared; `answer` names the gold.
FILL = [("The trophy did not fit in the suitcase because the _ was too large.", "trophy", "suitcase", "1")]


def text_of(question: str, choices: list[str], gold: int) -> str:
    return f"{question} {choices[gold]}"


def write_task(root, name: str, rows: list[dict], body: str, dataset: str | None = None) -> None:
    """A task YAML over its rows as json lines (or over ``dataset``, the YAML lines naming another dataset)."""
    data = root / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dataset = dataset or f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
    (root / f"{name}.yaml").write_text(f"task: {name}\n{dataset}test_split: test\n{body}")


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks")
    write_task(root, "plant_mc", [{"question": q, "choices": c, "answer": a} for q, c, a in MC],
               "output_type: multiple_choice\ndoc_to_text: '{{question}}'\ndoc_to_choice: '{{choices}}'\n"
               "doc_to_target: '{{answer}}'\nmetric_list:\n  - metric: acc\n")
    write_task(root, "plant_gen", [{"prompt": p, "target": t} for p, t in GEN],
               "output_type: generate_until\ndoc_to_text: '{{prompt}}'\ndoc_to_target: '{{target}}'\n"
               "generation_kwargs:\n  until: ['\\n']\nmetric_list:\n  - metric: exact_match\n")
    write_task(root, "plant_ppl", [{"text": t} for t in ROLLING],
               "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
               "metric_list:\n  - metric: word_perplexity\n")
    write_task(root, "plant_fill", [{"sentence": s, "option1": a, "option2": b, "answer": g} for s, a, b, g in FILL],
               "output_type: multiple_choice\n"
               "doc_to_text: \"{{ (answer | int) - 1 }}\"\n"
               "doc_to_choice: \"{{ [sentence.split('_')[0] + option1, sentence.split('_')[0] + option2] }}\"\n"
               "doc_to_target: \"{{ sentence.split('_')[1].strip() }}\"\nmetric_list:\n  - metric: acc\n")
    # a group of two multiple-choice tasks, as lm-eval's groups are written (mmlu's, say)
    (root / "plant_group.yaml").write_text("group: plant_group\ntask: [plant_mc, plant_fill]\n"
                                           "aggregate_metric_list:\n  - metric: acc\n    weight_by_size: true\n")
    # a dataset of the Hub, which the offline tests cannot reach
    write_task(root, "plant_offline", [], "output_type: generate_until\ndoc_to_text: '{{q}}'\ndoc_to_target: '{{a}}'\n"
               "metric_list:\n  - metric: exact_match\n",
               dataset="dataset_path: allenai/ai2_arc\ndataset_name: ARC-Easy\n")
    return root


def filler(words: int, start: int = 0) -> list[str]:
    """``words`` words of the King James Bible, from word ``start`` on."""
    text = " ".join(c.text for c in kjv_chapters()[:20]).split()
    return text[start:start + words]


def doc_with(planted: str, before: int, after: int, start: int) -> str:
    """A document of filler words with ``planted`` after the first ``before`` of them (single spaces throughout,
    so word i of the document is word i of the 40-word split)."""
    return " ".join(filler(before, start) + planted.split() + filler(after, start + before))


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """Two sources. books: item 0 inside a chunk; item 1 across the boundary of words 40 | 41; item 4's halves on
    both sides of a chunk the build drops (too few characters), so the corpus never holds them side by side.
    web: item 0 again, item 2 in capitals with its punctuation changed, item 3's question with a wrong answer, and
    the first generation item."""
    root = tmp_path_factory.mktemp("contaminated")
    four = text_of(*MC[4]).split()  # 20 words: 10 before the dropped chunk, 10 after it
    books = [doc_with(text_of(*MC[0]), 100, 100, 0),
             doc_with(text_of(*MC[1]), SPLIT - 11, 60, 300),  # 11 of its 22 words end a chunk, 11 start the next
             " ".join(filler(SPLIT - 10, 600) + four[:10] + ["!"] * SPLIT + four[10:] + filler(50, 700)),
             " ".join(filler(300, 900))]
    shouted = text_of(*MC[2]).upper().replace(",", "").replace("?", "?!")
    web = [doc_with(text_of(*MC[0]), 10, 10, 1300),
           doc_with(shouted, 50, 20, 1400),
           doc_with(f"{MC[3][0]} {MC[3][1][1]}", 30, 30, 1600),
           doc_with(" ".join(GEN[0]), 5, 5, 1800)]
    for name, docs in (("books", books), ("web", web)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    sources = "".join(f"  - name: {name}\n    group: {name}\n    upstream: {{files: [\"{root}/{name}.jsonl\"]}}\n"
                      f"    format: jsonl\n    text_field: text\n    tokens: 1M\n" for name in ("books", "web"))
    (root / "planted.yaml").write_text(f"name: planted\ntext:\n  split_words: {SPLIT}\n  min_chars: 20\n"
                                       f"  min_tokens: 0\nsources:\n{sources}")
    return root / "planted.yaml"


@pytest.fixture(scope="module")
def corpus(manifest, ray_session):
    from pipelines.build import build
    result = build(manifest, manifest.parent / "corpus", workers=2, progress=False)
    assert result.status == "complete"
    return manifest.parent / "corpus"


EXPECTED = {
    "plant_mc": {"items": 6, "contaminated": 3, "sources": {"books": 2, "web": 2}, "short": 0},
    "plant_gen": {"items": 2, "contaminated": 1, "sources": {"web": 1}, "short": 0},
}


def counts(report: dict) -> dict:
    return {task: {k: t[k] for k in ("items", "contaminated", "sources", "short")}
            for task, t in report["tasks"].items()}


# ---------------------------------------------------------------- the texts a model is scored on

def test_an_items_text_is_its_context_and_gold_continuation_as_lm_eval_builds_them(tasks_dir):
    items = load_items("plant_mc,plant_gen,plant_ppl,plant_fill", str(tasks_dir))
    assert [t for (t,) in items["plant_mc"].texts] == [text_of(*q) for q in MC]
    assert [t for (t,) in items["plant_gen"].texts] == [f"{p} {t}" for p, t in GEN]
    assert items["plant_ppl"].texts == ((ROLLING[0],),)
    # the gold option fills the blank (option 1 here), and the shared continuation follows
    assert items["plant_fill"].texts == (("The trophy did not fit in the suitcase because the trophy was too large.",),)


def test_words_are_compared_lowercased_without_punctuation():
    assert (ngram_hashes("The Cat, the HAT: and (the) bat!", 3) == ngram_hashes("the cat the hat and the bat", 3)).all()
    assert len(ngram_hashes("one two three four", 3)) == 2 and len(ngram_hashes("one two", 3)) == 0


def test_an_index_finds_every_item_that_has_an_ngram_and_marks_items_too_short_to_have_one():
    index = NgramIndex.build([("a b c d",), ("x y",), ("q a b c", "z z z")], 3)
    assert index.short.tolist() == [False, True, False]
    assert index.items_with(ngram_hashes("k a b c k", 3)).tolist() == [0, 2]
    assert index.items_with(ngram_hashes("z z z", 3)).tolist() == [2]
    assert index.items_with(ngram_hashes("b c e", 3)).tolist() == []


# ---------------------------------------------------------------- the corpus scanned

def test_item_one_really_straddles_a_chunk_boundary_in_the_built_corpus(corpus):
    from corpus.tokenizer.tokenizer import described_tokenizer
    tokenizer = described_tokenizer(read_corpus_json(corpus)["tokenizer"])
    [shard] = CorpusDir(corpus).source_shards("books")
    chunks = [" ".join(tokenizer.decode(shard.chunk(i)).split()) for i in range(len(shard))]
    planted = text_of(*MC[1])
    assert not any(planted in c for c in chunks)
    assert any(c.endswith(" ".join(planted.split()[:11])) for c in chunks)
    assert Shard.open(shard.stem).sidecar()["chunks_dropped"] == {"too_few_chars": 1}  # item 4's gap


def test_each_task_counts_its_contaminated_items_and_the_sources_that_hold_them(corpus, tasks_dir):
    found = measure(str(corpus), "plant_mc,plant_gen", include_path=str(tasks_dir), local_below=0)
    assert found.ray
    assert counts(found.report) == EXPECTED
    assert found.report["ngram"] == 13 and found.report["scanned"]["units"] == 2


def test_a_small_corpus_scanned_in_this_process_gives_the_same_counts(corpus, tasks_dir):
    found = measure(str(corpus), "plant_mc,plant_gen", include_path=str(tasks_dir))
    assert not found.ray
    assert counts(found.report) == EXPECTED


def test_a_groups_report_counts_the_group_and_each_of_its_subtasks(corpus, tasks_dir):
    found = measure(str(corpus), "plant_group", include_path=str(tasks_dir))
    group = found.report["tasks"]["plant_group"]
    assert (group["items"], group["contaminated"], group["subtasks"]) == (7, 3, ["plant_fill", "plant_mc"])
    assert group["per_subtask"] == {"plant_fill": {"items": 1, "contaminated": 0},
                                    "plant_mc": {"items": 6, "contaminated": 3}}


def test_a_shorter_ngram_finds_item_three_by_its_question_and_item_four_by_its_halves(corpus, tasks_dir):
    found = measure(str(corpus), "plant_mc", include_path=str(tasks_dir), ngram=8)
    assert counts(found.report)["plant_mc"] == {"items": 6, "contaminated": 5, "sources": {"books": 3, "web": 3},
                                                "short": 0}


def test_items_shorter_than_the_ngram_are_counted_as_short(corpus, tasks_dir):
    found = measure(str(corpus), "plant_mc", include_path=str(tasks_dir), ngram=22)
    # items 1, 2 and 5 have 22 words or more; item 1's one 22-gram straddles the chunk boundary
    assert counts(found.report)["plant_mc"] == {"items": 6, "contaminated": 2, "sources": {"books": 1, "web": 1},
                                                "short": 3}


def test_a_corpus_on_s3_is_scanned_by_ray_workers_that_read_the_store(manifest, tasks_dir, s3_server, ray_session):
    from pipelines.build import build
    uri = f"{s3_server.bucket('contamination')}/planted"
    assert build(manifest, uri, workers=2, progress=False).status == "complete"
    found = measure(uri, "plant_mc,plant_gen", include_path=str(tasks_dir), local_below=0)
    assert found.ray and counts(found.report) == EXPECTED
    assert str(found.path).startswith(f"{uri}/contamination/") and task_reports(found.path.parent.parent)


def test_the_json_is_the_report_kept_in_the_corpus_for_eval_to_read(corpus, tasks_dir, capsys):
    assert main(["contamination", str(corpus), "--tasks", "plant_mc,plant_gen", "--include-path", str(tasks_dir),
                 "--json"]) == 0
    out = capsys.readouterr()
    printed = json.loads(out.out)
    kept = out.err.strip().removeprefix("report: ")
    assert json.loads(open(kept).read()) == printed
    assert printed["corpus"] == str(corpus) and counts(printed) == EXPECTED
    assert set(printed["tasks"]["plant_mc"]) >= {"items", "contaminated", "sources"}
    reports = task_reports(corpus)
    assert reports["plant_mc"]["contaminated"] == 3 and reports["plant_gen"]["ngram"] == 13


def test_the_table_shows_each_task_with_its_share_and_top_sources(corpus, tasks_dir, capsys):
    assert main(["contamination", str(corpus), "--tasks", "plant_mc,plant_gen", "--include-path",
                 str(tasks_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = next(line for line in lines if "plant_mc" in line)
    assert [cell.strip() for cell in row.split("│")[1:-1]] == ["plant_mc", "6", "3", "50.00%", "books 2, web 2"]
    assert any(line.startswith("report: ") for line in lines)


# ---------------------------------------------------------------- refusals: one line, exit 2, nothing written

@pytest.mark.parametrize("args, says", [
    (["--tasks", "plant_mc", "--ngram", "0"], "--ngram must be a positive number of words, got 0"),
    (["--tasks", "plant_mc", "--workers", "0"], "--workers must be at least 1, got 0"),
    (["--tasks", "plant_mc,no_such_task"], "--tasks: unknown task(s) no_such_task"),
    (["--tasks", "plant_offline"], "--tasks: the data of 1 task(s) cannot be loaded"),
    (["--tasks", "openelm-zero-shot"], "--tasks: the data of 7 task(s) cannot be loaded"),
])
def test_bad_input_is_refused_in_one_line_and_nothing_is_written(corpus, tasks_dir, args, says, capsys):
    before = sorted(p.relative_to(corpus) for p in corpus.rglob("*"))
    assert main(["contamination", str(corpus), "--include-path", str(tasks_dir), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"elm-corpus contamination: error: {says}") and len(err.splitlines()) == 1
    assert sorted(p.relative_to(corpus) for p in corpus.rglob("*")) == before


def test_ray_without_token_authentication_is_refused_before_any_scan(corpus, tasks_dir, monkeypatch, capsys):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    before = sorted(p.relative_to(corpus) for p in corpus.rglob("*"))
    assert main(["contamination", str(corpus), "--tasks", "plant_mc", "--include-path", str(tasks_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("elm-corpus contamination: error: RAY_AUTH_MODE=disabled") and len(err.splitlines()) == 1
    assert sorted(p.relative_to(corpus) for p in corpus.rglob("*")) == before
