"""CoreNet's text rules on hand-written boundary cases (OPENELM.md section 4)."""
from __future__ import annotations

import json
import unicodedata

import pytest

from corpus.manifest import TextRules
from corpus.text.readers import Slice
from corpus.text.rules import TOO_FEW_CHARS, TOO_FEW_TOKENS, CoreNetRules, content_chars, split_words
from pipelines.plan import WorkUnit
from pipelines.unit import UnitProcessor

RULES = CoreNetRules(TextRules())


def test_200_content_characters_pass_and_199_do_not():
    assert RULES.has_enough_chars("a" * 200)
    assert not RULES.has_enough_chars("a" * 199)


def test_punctuation_and_extra_whitespace_do_not_count_as_characters():
    text = "a" * 100 + " ,;!?  \n\t " + "b" * 98     # 100 + 1 collapsed space + 98 = 199
    assert content_chars(text) == 199
    assert not RULES.has_enough_chars(text)
    assert RULES.has_enough_chars(text + "c")


def test_punctuation_only_text_has_no_characters():
    text = "!?.,;:()[]{}<>'\"-_/\\|@#$%^&*+=~`" * 40
    assert content_chars(text) == 0
    assert not RULES.has_enough_chars(text)


def test_a_long_chunk_whose_letters_come_late_is_counted_in_full():
    text = "!" * 5000 + " " + "a" * 200
    assert RULES.has_enough_chars(text)
    assert not RULES.has_enough_chars("!" * 5000 + " " + "a" * 199)


def test_case_does_not_change_the_count():
    assert content_chars("ABC DEF") == content_chars("abc def") == 7


def test_2049_words_split_into_2048_and_1():
    words = [f"w{i}" for i in range(2049)]
    chunks = split_words(" ".join(words), 2048)
    assert [len(c.split(" ")) for c in chunks] == [2048, 1]
    assert chunks[1] == "w2048"


def test_2048_words_stay_one_chunk():
    text = " ".join(["word"] * 2048)
    assert split_words(text, 2048) == [text]


def test_split_keeps_newlines_and_indentation_so_joining_restores_the_text():
    text = "def f():\n    return  1\n" * 700
    chunks = split_words(text, 2048)
    assert len(chunks) > 1
    assert " ".join(chunks) == text


def test_split_counts_empty_words_and_keeps_multibyte_characters_whole():
    text = "caf\u00e9  \u65e5\u672c \U0001f600\n x  "   # double spaces make empty words
    words = text.split(" ")
    expected = [" ".join(words[i:i + 2]) for i in range(0, len(words), 2)]
    assert split_words(text, 2) == expected


def test_nfc_composes_decomposed_letters():
    assert RULES.normalize("e\u0301") == "\u00e9" == unicodedata.normalize("NFC", "e\u0301")


def test_256_tokens_pass_and_255_do_not(tokenizer):
    # "the" is one piece, so n words encode to n + BOS + EOS tokens
    ids_256 = tokenizer.encode([" ".join(["the"] * 254)])[0]
    ids_255 = tokenizer.encode([" ".join(["the"] * 253)])[0]
    assert (len(ids_256), len(ids_255)) == (256, 255)
    assert RULES.has_enough_tokens(ids_256)
    assert not RULES.has_enough_tokens(ids_255)


def _run_docs(tmp_path, tokenizer, texts: list[str]):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    unit = WorkUnit("s", "00000-00000", Slice(str(path), "jsonl"))
    return UnitProcessor(RULES, tokenizer, [], "text").run(unit)


def test_unit_drops_each_boundary_case_under_its_reason(tmp_path, tokenizer):
    docs = [
        " ".join(["the"] * 254),   # 256 tokens, 1015 characters: kept
        " ".join(["the"] * 253),   # 255 tokens: too_few_tokens
        "a" * 200,                  # 200 characters but few tokens: too_few_tokens
        "a" * 199,                  # 199 characters: too_few_chars
        "!!! ... ??? " * 50,        # punctuation only: too_few_chars
    ]
    out = _run_docs(tmp_path, tokenizer, docs)
    assert out.counts.kept == 1
    assert dict(out.counts.dropped) == {TOO_FEW_TOKENS: 2, TOO_FEW_CHARS: 2}
    assert len(out.chunks) == 1 and len(out.chunks[0]) == 256
    assert out.chunks[0][0] == tokenizer.bos_id and out.chunks[0][-1] == tokenizer.eos_id


def test_a_2049_word_document_keeps_its_first_chunk_and_drops_the_one_word_tail(tmp_path, tokenizer):
    out = _run_docs(tmp_path, tokenizer, [" ".join(["the"] * 2049)])
    assert out.counts.chunks_split == 2
    assert out.counts.chunks_kept == 1
    assert dict(out.counts.chunks_dropped) == {TOO_FEW_CHARS: 1}
    assert out.counts.kept == 1 and not out.counts.dropped
    assert out.origin_part == [0]
    assert len(out.chunks[0]) == 2048 + 2


@pytest.mark.parametrize("min_chars,expect_kept", [(1015, 1), (1016, 0)])
def test_min_chars_comes_from_the_manifest(tmp_path, tokenizer, min_chars, expect_kept):
    rules = CoreNetRules(TextRules(min_chars=min_chars))
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": " ".join(["the"] * 254)}) + "\n")
    out = UnitProcessor(rules, tokenizer, [], "text").run(WorkUnit("s", "u", Slice(str(path), "jsonl")))
    assert out.counts.kept == expect_kept
