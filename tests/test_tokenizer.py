"""The tokenizer: NFC + sentencepiece, exact round trips, BOS/EOS, an exported HF tokenizer agreeing id for id."""
from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pytest

from corpus.manifest import parse_manifest
from corpus.mirror.mirror import iter_documents, read_index
from corpus.tokenizer.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def sample_texts(sample_mirror) -> list[str]:
    """Every document of every source of the sample mirror (the deliberately bad records left out)."""
    return [text for name in read_index(sample_mirror)["sources"] for _, text in iter_documents(sample_mirror, name)]


@pytest.fixture(scope="module")
def sample_ids(tokenizer, sample_texts) -> list[list[int]]:
    """sentencepiece's ids (NFC first, no BOS/EOS) of every sample document, encoded once on both cores."""
    return tokenizer.encode(sample_texts, bos=False, eos=False, num_threads=2)


@pytest.fixture(scope="module")
def exported(tokenizer, tmp_path_factory) -> Path:
    return tokenizer.export(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="module")
def hf(exported):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(exported))


def test_sample_documents_include_the_hard_cases(sample_texts):
    assert len(sample_texts) > 2500
    assert any(unicodedata.normalize("NFC", t) != t for t in sample_texts)
    assert any("<s>" in t for t in sample_texts)
    assert any(len(t.split(" ")) > 2048 for t in sample_texts)
    assert any("\n    " in t for t in sample_texts) and "" in sample_texts


def test_decode_of_encode_is_the_nfc_text_for_every_sample_document(tokenizer, sample_texts, sample_ids):
    nfc = [unicodedata.normalize("NFC", t) for t in sample_texts]
    wrong = [t[:80] for t, ids in zip(nfc, sample_ids, strict=True) if tokenizer.decode(ids) != t]
    assert wrong == []


def test_batch_encode_equals_one_at_a_time(tokenizer, sample_texts, sample_ids):
    assert sample_ids[::7] == [tokenizer.encode_one(t, bos=False, eos=False) for t in sample_texts[::7]]


def test_bos_and_eos_are_1_and_2_at_the_ends_by_default(tokenizer):
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.unk_id) == (1, 2, 0)
    ids = tokenizer.encode_one("In the beginning God created the heaven and the earth.")
    assert ids[0] == 1 and ids[-1] == 2 and 1 not in ids[1:-1] and 2 not in ids[1:-1]
    for batch in tokenizer.encode(["Let there be light.", ""]):
        assert batch[0] == 1 and batch[-1] == 2
    assert tokenizer.encode_one("") == [1, 2]


def test_non_nfc_text_encodes_like_its_nfc_form(tokenizer):
    decomposed = unicodedata.normalize("NFD", "François Pinard, café")
    assert decomposed != unicodedata.normalize("NFC", decomposed)
    assert tokenizer.encode_one(decomposed) == tokenizer.encode_one(unicodedata.normalize("NFC", decomposed))


def test_a_literal_special_token_in_text_is_text(tokenizer):
    ids = tokenizer.encode_one(r"(?P<s>\d{2})</s><unk>", bos=False, eos=False)
    assert not {0, 1, 2} & set(ids)
    assert tokenizer.decode(ids) == r"(?P<s>\d{2})</s><unk>"


# ---- ids assembled per segment (the build's encoder) must be sentencepiece's, on any text

def _sp_ids(tokenizer, texts, bos=True, eos=True) -> list[list[int]]:
    return tokenizer.sp.encode(list(texts), add_bos=bos, add_eos=eos)


def _hard_texts() -> list[str]:
    """Spaces in every position and run length, literal ``▁``, byte fallback, specials, long segments."""
    import random

    from corpus.tokenizer.hf_twin import PROBES
    rng = random.Random(7)
    alphabet = [" ", " ", " ", "\u2581", "\n", "\t", "a", "b", "é", "中", "😀", "<s>", "(", ".", "ab", "the"]
    fuzz = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 40))) for _ in range(3000)]
    return list(PROBES) + fuzz + [" ", "   ", "\u2581", "\u2581 \u2581", " \u2581x", "x\u2581 y", "a" * 700,
                                  "x " + "z" * 300 + " y " + "z" * 300, "A  B   C    D\u2581\u2581 E "]


def test_segment_encoder_applies_to_the_default_model(tokenizer):
    assert tokenizer.segment_reason is None


def test_segment_encoder_gives_sentencepiece_ids_on_every_sample_document(tokenizer, sample_texts):
    from corpus.tokenizer.segments import SegmentEncoder
    nfc = [unicodedata.normalize("NFC", t) for t in sample_texts]
    enc = SegmentEncoder(tokenizer.model_bytes, tokenizer.bos_id, tokenizer.eos_id)
    plain = _sp_ids(tokenizer, nfc, False, False)  # SentencePiece's add_bos/add_eos only put the ids at the ends
    for bos, eos in ((True, True), (False, False), (True, False)):
        want = [[tokenizer.bos_id] * bos + ids + [tokenizer.eos_id] * eos for ids in plain]
        got = enc.encode(nfc, bos, eos)
        assert all(g.dtype == "uint16" for g in got)
        assert [t[:60] for t, g, w in zip(nfc, got, want, strict=True) if g.tolist() != w] == []
    assert 0 < enc.misses < enc.lookups / 2  # the second and third passes were answered from the cache


def test_segment_encoder_gives_sentencepiece_ids_on_hard_and_random_text(tokenizer):
    from corpus.tokenizer.segments import SegmentEncoder
    texts = _hard_texts()
    want = _sp_ids(tokenizer, texts)
    enc = SegmentEncoder(tokenizer.model_bytes, tokenizer.bos_id, tokenizer.eos_id)
    got = [enc.encode([t])[0].tolist() for t in texts]  # one at a time: each text sees the cache the last left
    assert [t for t, g, w in zip(texts, got, want, strict=True) if g != w] == []
    assert [g.tolist() for g in enc.encode(texts)] == want  # and all at once, from a warm cache


def test_a_full_segment_cache_starts_over_and_changes_no_id(tokenizer, sample_texts):
    from corpus.tokenizer.segments import SegmentEncoder
    texts = [unicodedata.normalize("NFC", t) for t in sample_texts[::5]] + _hard_texts()[:500]
    enc = SegmentEncoder(tokenizer.model_bytes, tokenizer.bos_id, tokenizer.eos_id, entries=300, chars=2000,
                         max_chars=8)
    got = [enc.encode([t])[0].tolist() for t in texts]
    assert got == _sp_ids(tokenizer, texts)
    assert len(enc._cache) <= 300 and enc._cached_chars <= 2000
    assert all(len(s) <= 8 for s in enc._cache)
    assert enc.misses > len(set(enc._cache))  # it started over at least once


def test_a_model_with_a_piece_across_a_space_is_encoded_by_sentencepiece_alone(tokenizer):
    from sentencepiece import sentencepiece_model_pb2 as pb

    from corpus.tokenizer.segments import SegmentEncoder
    from corpus.tokenizer.tokenizer import Tokenizer, segment_encoder
    m = pb.ModelProto()
    m.ParseFromString(tokenizer.model_bytes)
    piece = m.pieces.add()
    piece.piece, piece.score, piece.type = "\u2581of\u2581the", 0.0, pb.ModelProto.SentencePiece.NORMAL
    joined = Tokenizer("joined", model_bytes=m.SerializeToString())
    assert "'\u2581of\u2581the'" in joined.segment_reason and "32000" in joined.segment_reason
    texts = ["the end of the day", "most of them", ""]
    want = _sp_ids(joined, texts)
    assert [ids.tolist() for ids in joined.encode_arrays(texts)] == want
    assert 32000 in want[0]  # sentencepiece uses the joined piece, which per-segment ids cannot hold
    unguarded = SegmentEncoder(joined.model_bytes, joined.bos_id, joined.eos_id)
    unguarded.encode(texts[0].split())  # every segment cached on its own first
    assert unguarded.encode(texts[:1])[0].tolist() != want[0]
    with pytest.raises(ValueError, match="cannot be assembled per segment"):
        segment_encoder(joined)


def test_models_the_segment_cut_would_get_wrong_are_named_with_the_reason(tokenizer):
    from sentencepiece import sentencepiece_model_pb2 as pb

    from corpus.tokenizer.segments import segment_split_reason
    m = pb.ModelProto()
    m.ParseFromString(tokenizer.model_bytes)
    lone = next(p for p in m.pieces if p.piece == "\u2581")
    lone.type = pb.ModelProto.SentencePiece.UNUSED
    assert "alone" in segment_split_reason(m.SerializeToString())
    m.ParseFromString(tokenizer.model_bytes)
    m.normalizer_spec.remove_extra_whitespaces = True
    assert "remove_extra_whitespaces" in segment_split_reason(m.SerializeToString())


def test_export_writes_the_three_files(exported, tokenizer):
    assert sorted(p.name for p in exported.iterdir()) == ["tokenizer.json", "tokenizer.model", "tokenizer_config.json"]
    assert (exported / "tokenizer.model").read_bytes() == tokenizer.model_bytes
    config = json.loads((exported / "tokenizer_config.json").read_text())
    assert config["add_bos_token"] is True and config["add_eos_token"] is False
    assert config["split_special_tokens"] is True
    assert (config["bos_token"], config["eos_token"], config["unk_token"]) == ("<s>", "</s>", "<unk>")


def test_exported_tokenizer_gives_sentencepiece_ids_on_every_sample_document(hf, sample_texts, sample_ids):
    got = hf(sample_texts, add_special_tokens=False)["input_ids"]
    wrong = [t[:80] for t, a, b in zip(sample_texts, sample_ids, got, strict=True) if a != b]
    assert wrong == []


def test_exported_tokenizer_prepends_bos_like_training(hf, tokenizer, sample_texts):
    some = sample_texts[::40]
    assert hf(some)["input_ids"] == tokenizer.encode(some, bos=True, eos=False)
    assert (hf.bos_token_id, hf.eos_token_id) == (1, 2)


def test_exported_tokenizer_decodes_back_to_the_nfc_text(hf, sample_texts, sample_ids):
    ids = [[1] + x + [2] for x in sample_ids[::10]]
    nfc = [unicodedata.normalize("NFC", t) for t in sample_texts[::10]]
    assert hf.batch_decode(ids, skip_special_tokens=True) == nfc


def test_exported_tokenizer_keeps_literal_special_tokens_as_text(hf, tokenizer):
    text = "a regex group (?P<s>x) and </s> and <unk>"
    assert hf(text, add_special_tokens=False)["input_ids"] == tokenizer.encode_one(text, bos=False, eos=False)


def test_manifest_naming_a_missing_model_is_a_clear_error(tmp_path):
    missing = tmp_path / "nowhere" / "tokenizer.model"
    manifest = parse_manifest(f"""
name: t
tokenizer: {{model: {missing}}}
sources:
  - {{name: a, group: dolma, upstream: {{files: ["x"]}}, format: json.gz, tokens: 1M}}
""")
    with pytest.raises(FileNotFoundError, match=f"tokenizer model not found: {missing}"):
        Tokenizer(manifest.tokenizer.model)


def test_cli_export_with_a_missing_model_exits_2_naming_it(tmp_path, capsys):
    from pipelines.cli import main
    manifest = tmp_path / "m.yaml"
    manifest.write_text(f"""
name: t
tokenizer: {{model: {tmp_path}/missing.model}}
sources:
  - {{name: a, group: dolma, upstream: {{files: ["x"]}}, format: json.gz, tokens: 1M}}
""")
    assert main(["tokenizer", "export", str(tmp_path / "out"), "--manifest", str(manifest)]) == 2
    assert f"{tmp_path}/missing.model" in capsys.readouterr().err


def test_a_file_that_is_not_a_model_is_a_clear_error(tmp_path):
    bogus = tmp_path / "bogus.model"
    bogus.write_text("not a model")
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        Tokenizer(str(bogus))


def test_cli_export_refuses_to_overwrite_a_tokenizer_without_force_and_keeps_other_files(tmp_path, capsys):
    from pipelines.cli import main
    out = tmp_path / "out"
    out.mkdir()
    (out / "tokenizer.model").write_bytes(b"someone else's model")
    (out / "notes.txt").write_text("keep me")
    assert main(["tokenizer", "export", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("pass --force to replace the tokenizer files (nothing else in the folder is touched)")
    assert "already holds tokenizer.model" in err and (out / "tokenizer.model").read_bytes() == b"someone else's model"
    assert main(["tokenizer", "export", str(out), "--force"]) == 0
    assert Tokenizer(str(out / "tokenizer.model")).sha256 == Tokenizer().sha256
    assert (out / "notes.txt").read_text() == "keep me"
