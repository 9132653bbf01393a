"""`elm-corpus tasks cloze`: multiple-choice cloze tasks cut from text a `--sample` build never reads.

Most tests run the domain functions on a few real King James Bible chapters and standard-library modules. The
command itself runs once, on the session's sample mirror of manifests/openelm.yaml; its items are then looked
for in every record the build's own plan and reader take from that mirror.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

from corpus.cleaning.words import words
from corpus.heldout.cloze import KINDS, MIN_WORDS, ClozeTask, cloze_items, parse_kinds
from corpus.heldout.passages import held_out, ngram_set
from corpus.heldout.task_folder import write_tasks
from corpus.manifest import load_manifest
from corpus.mirror.text import Passage, kjv_chapters, stdlib_sources
from pipelines.cli import main

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "manifests" / "openelm.yaml"
ITEMS = 40


def chapters(first: int, count: int) -> list[Passage]:
    return list(kjv_chapters()[first:first + count])


def modules(count: int) -> list[Passage]:
    return [p for p in stdlib_sources() if 8_000 < len(p.text) < 30_000][:count]


def small_task(kind: str, passages: list[Passage], n: int = 6, seed: int = 0) -> ClozeTask:
    return ClozeTask(KINDS[kind], cloze_items(KINDS[kind], passages, n, seed), len(passages), len(passages),
                     "test", seed)


def squeeze(text: str) -> str:
    return " ".join(text.split())


# ---------------------------------------------------------------- held-out passages

def test_a_passage_is_held_out_only_when_it_shares_no_13_words_in_a_row_with_training_text():
    a, b, c, d = chapters(200, 4)
    run = lambda p, k: " ".join(p.text.split()[100:100 + k])  # noqa: E731
    training = ngram_set(["Some other words first. " + b.text, "and then " + run(c, 13) + " and more",
                          run(d, 12)])
    assert [p.origin for p in held_out([a, b, c, d], training)] == [a.origin, d.origin]


def test_held_out_passages_are_nfc():
    decomposed = Passage("t", unicodedata.normalize("NFD", "Caf\u00e9 " + chapters(300, 1)[0].text), "x")
    assert held_out([decomposed], ngram_set([]))[0].text.startswith("Caf\u00e9 ")


# ---------------------------------------------------------------- items

@pytest.mark.parametrize("kind", list(KINDS))
def test_each_item_is_its_passage_context_then_the_gold_among_four_distinct_choices(kind):
    passages = chapters(400, 12) if kind == "prose" else modules(12)
    by_origin = {p.origin: squeeze(p.text) for p in passages}
    items = cloze_items(KINDS[kind], passages, 30, seed=3)
    assert len(items) == 30
    for item in items:
        assert len(item.choices) == 4 and len({c.casefold() for c in item.choices}) == 4
        assert 0 <= item.answer < 4
        assert squeeze(item.scored_text) in by_origin[item.origin]
        assert len(words(item.context)) >= MIN_WORDS  # the length the held-out guarantee covers
    assert len({i.answer for i in items}) == 4  # the gold is not always in one place


def prose_rows(text: str) -> set[int]:
    """The 1-based rows of a module that Python's tokenizer finds in comments and multi-line strings."""
    import tokenize
    rows = set()
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type == tokenize.COMMENT or (token.type == tokenize.STRING and token.end[0] > token.start[0]):
            rows.update(range(token.start[0], token.end[0] + 1))
    return rows


def test_code_golds_are_cut_from_code_never_from_a_docstring_or_a_comment():
    passages = {p.origin: p.text for p in modules(12)}
    items = cloze_items(KINDS["code"], list(modules(12)), 40, seed=5)
    for item in items:
        text = passages[item.origin]
        gold_row = text.count("\n", 0, text.index(item.scored_text) + len(item.context)) + 1
        assert gold_row not in prose_rows(text)
        assert not any("#" in c or '"""' in c for c in item.choices)


def test_the_same_seed_gives_the_same_items_and_another_seed_others():
    passages = chapters(500, 10)
    first = cloze_items(KINDS["prose"], passages, 20, seed=7)
    assert cloze_items(KINDS["prose"], passages, 20, seed=7) == first
    assert cloze_items(KINDS["prose"], passages, 20, seed=8) != first


def test_fewer_than_four_held_out_passages_or_too_short_ones_are_refused():
    with pytest.raises(ValueError, match="at least 4 held-out"):
        cloze_items(KINDS["prose"], chapters(600, 3), 5, seed=0)
    short = [Passage(p.title, " ".join(p.text.split()[:20]), p.origin) for p in chapters(600, 6)]
    with pytest.raises(ValueError, match="only 0 prose cloze items"):
        cloze_items(KINDS["prose"], short, 5, seed=0)


def test_an_unknown_kind_is_refused():
    assert [k.name for k in parse_kinds("code, prose,code")] == ["code", "prose"]
    with pytest.raises(ValueError, match="unknown kind.*poetry.*prose, code"):
        parse_kinds("prose,poetry")


# ---------------------------------------------------------------- the task folder, through lm-eval

def test_the_task_folder_loads_through_lm_eval_offline_with_every_item(tmp_path):
    from corpus.tasks.items import scored_texts
    from corpus.tasks.manager import known_tasks_manager, load_tasks, quiet_loading
    tasks = [small_task("prose", chapters(700, 8), n=7), small_task("code", modules(8), n=5)]
    write_tasks(tasks, tmp_path)
    names = [t.name for t in tasks]
    with quiet_loading():
        loaded = load_tasks(known_tasks_manager(names, str(tmp_path)), names)
    for task in tasks:
        harness = loaded[task.name]["tasks"][task.name]
        docs = list(harness.eval_docs)
        assert len(docs) == len(task.items)
        for doc, item in zip(docs, task.items):
            assert harness.doc_to_choice(doc) == list(item.choices)
            assert harness.doc_to_target(doc) == item.answer
            assert scored_texts(harness, doc) == (item.scored_text,)  # context, lm-eval's space, the gold
        assert [m["metric"] for m in harness.config.metric_list] == ["acc", "acc_norm"]


# ---------------------------------------------------------------- the command, on the sample mirror of openelm.yaml

def run_cli(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(args)
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture
def written(cloze_tasks_written):
    """`elm-corpus tasks cloze OUT --items 40` on the session's mirror (tests/conftest.py): (OUT, rc, stdout)."""
    assert cloze_tasks_written.items == ITEMS
    return cloze_tasks_written.out, cloze_tasks_written.rc, cloze_tasks_written.stdout


def rows(folder: Path, task: str) -> list[dict]:
    return [json.loads(line) for line in (folder / f"{task}.jsonl").read_text(encoding="utf-8").splitlines()]


def build_reads(mirror: Path) -> str:
    """Every record a `--sample` build of openelm.yaml reads, by its own plan and reader, NFC, one string."""
    from corpus.text.readers import Record, read_slice
    from pipelines.plan import plan_build
    manifest = load_manifest(MANIFEST)
    texts = []
    for unit in plan_build(manifest, sample=True, mirror_root=str(mirror)):
        field = manifest.source(unit.source).text_field
        texts += [unicodedata.normalize("NFC", r.text) for r in read_slice(unit.slice, field) if isinstance(r, Record)]
    return "\0".join(texts)


def test_no_item_occurs_in_any_document_the_sample_build_reads(written, sample_mirror):
    folder, rc, _ = written
    assert rc == 0
    training = build_reads(Path(sample_mirror))
    for kind in KINDS.values():
        items = rows(folder, kind.task)
        assert len(items) == ITEMS
        for item in items:
            assert item["context"] not in training
            assert f"{item['context']} {item['choices'][item['answer']]}" not in training
    # The check can fail: items cut from the chapters the mirror does hold are found there.
    unchecked = cloze_items(KINDS["prose"], chapters(0, 60), 40, seed=0)
    assert any(i.context in training for i in unchecked)


def test_the_command_says_what_it_wrote_and_how_to_evaluate_it(written):
    folder, rc, stdout = written
    lines = stdout.splitlines()
    assert rc == 0 and len(lines) == 3
    for line, kind in zip(lines, KINDS.values()):
        assert line.startswith(f"wrote {folder.resolve() / kind.task}.yaml and {kind.task}.jsonl: {ITEMS} ")
        assert f"{kind.what}, those held out of the --sample build of 'openelm'" in line
    assert lines[2] == (f"evaluate: elm-train eval MODEL --tasks mirror_prose_cloze,mirror_code_cloze "
                        f"--include-path {folder.resolve()}")


def test_the_same_arguments_give_the_same_bytes_in_a_fresh_process(written, sample_mirror):
    folder = written[0]
    before = {p.name: p.read_bytes() for p in sorted(folder.iterdir())}
    env = {**os.environ, "ELM_CORPUS_DATA": str(Path(sample_mirror).parent), "PYTHONHASHSEED": "12345",
           "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "pipelines.cli", "tasks", "cloze", str(folder), "--manifest", str(MANIFEST),
                    "--items", str(ITEMS)], env=env, check=True, capture_output=True, cwd=ROOT)
    assert {p.name: p.read_bytes() for p in sorted(folder.iterdir())} == before
    assert set(before) == {f"{k.task}.{ext}" for k in KINDS.values() for ext in ("yaml", "jsonl")}


@pytest.mark.parametrize("args, says", [
    (["--items", "0"], "--items must be at least 1, got 0"),
    (["--kinds", "prose,poetry"], "unknown kind(s) poetry: choose from prose, code"),
    (["--manifest", "no-such.yaml"], "no-such.yaml:0: (file): no such manifest file"),
])
def test_bad_input_is_refused_in_one_line_and_nothing_is_written(tmp_path, args, says):
    out = tmp_path / "tasks"
    rc, stdout, stderr = run_cli(["tasks", "cloze", str(out), *args])
    assert rc == 2 and stdout == ""
    assert says in stderr and len(stderr.splitlines()) == 1
    assert not out.exists()


def test_an_out_dir_that_is_a_file_is_refused(tmp_path):
    out = tmp_path / "tasks"
    out.write_text("mine")
    rc, _, stderr = run_cli(["tasks", "cloze", str(out)])
    assert rc == 2 and stderr == f"elm-corpus tasks: error: {out} is a file; OUT_DIR must be a folder (it is created " \
                                 "if missing)\n"
    assert out.read_text() == "mine"
