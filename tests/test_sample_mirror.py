"""The offline sample mirror: upstream's own files, schemas and names, real text, listed edge cases and bad records."""
from __future__ import annotations

import gzip
import hashlib
import json
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import zstandard

from corpus import paths
from corpus.manifest import load_manifest, parse_manifest
from pipelines.cli import main as cli_main
from corpus.mirror.mirror import (BAD_REASONS, INDEX_NAME, MirrorRefused, ensure_mirror, generator_fingerprint,
                                  iter_documents, read_index, mirror_files)

REPO = Path(__file__).resolve().parent.parent
OPENELM = REPO / "manifests" / "openelm.yaml"

UPSTREAM_NAMES = {
    "refinedweb": r"train-0000\d-of-05534-[0-9a-f]{16}\.parquet",
    "redpajama-github": r"github/filtered_[0-9a-f]{32}\.sampled\.jsonl",
    "redpajama-books": r"book/book\.jsonl",
    "redpajama-arxiv": r"arxiv/arxiv_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.jsonl",
    "redpajama-wikipedia": r"wikipedia/wiki\.jsonl",
    "redpajama-stackexchange": r"stackexchange/stackexchange\.jsonl",
    "redpajama-c4": r"c4/c4-train\.0000\d-of-01024\.jsonl",
    "pile-dedup": r"train-0000\d-of-01650-[0-9a-f]{16}\.parquet",
    "dolma-stack": r"stack-v4-train-000\d\.json\.gz",
    "dolma-reddit": r"reddit-v5-dedupe-pii-nsfw-toxic-000\d\.json\.gz",
    "dolma-pes2o": r"pes2o_v2-000\d\.json\.gz",
    "dolma-gutenberg": r"books-000\d\.json\.gz",
    "dolma-wiki": r"en_simple_wiki_v0-000\d\.json\.gz",
}
DOLMA_KEYS = ["id", "text", "source", "added", "created", "metadata"]


def one_source_manifest(name="dolma-wiki", group="dolma", fmt="json.gz", text_field="text", extra=""):
    return parse_manifest(f"""
name: tiny
sources:
  - name: {name}
    group: {group}
    upstream: {{files: ["hf://x/*"]}}
    format: {fmt}
    text_field: {text_field}
    tokens: 1M
{extra}""")


def raw_lines(root: Path, rel: str, fmt: str) -> list[bytes]:
    """The records of a line-based file as bytes, the way upstream readers see them (gzip: complete members only)."""
    blob = (root / rel).read_bytes()
    if fmt == "json.gz":
        cut = [b["byte_offset"] for b in read_index(root)["sources"][rel.split("/")[0]]["bad_records"]
               if b["reason"] == "truncated_gzip" and b["file"] == rel]
        blob = gzip.decompress(blob[: cut[0]] if cut else blob)
    elif fmt == "jsonl.zst":
        blob = zstandard.ZstdDecompressor().decompressobj().decompress(blob)
    assert blob.endswith(b"\n")
    return blob.split(b"\n")[:-1]


@pytest.fixture(scope="module")
def mirror(sample_mirror):
    return sample_mirror, read_index(sample_mirror)["sources"]


def test_every_manifest_source_has_files_named_like_upstream(mirror):
    root, sources = mirror
    assert sorted(sources) == sorted(UPSTREAM_NAMES)
    for name, pattern in UPSTREAM_NAMES.items():
        files = [f["path"] for f in sources[name]["files"]]
        for rel in files:
            assert rel.startswith(f"{name}/") and re.fullmatch(pattern, rel[len(name) + 1:]), rel
            assert (root / rel).is_file()


def test_sources_with_many_upstream_files_get_several(mirror):
    _, sources = mirror
    for name in ("refinedweb", "redpajama-github", "redpajama-arxiv", "redpajama-c4", "pile-dedup", "dolma-stack"):
        assert len(sources[name]["files"]) >= 2, name


def test_refinedweb_rows_have_upstream_columns_in_small_row_groups(mirror):
    root, sources = mirror
    for f in sources["refinedweb"]["files"]:
        pf = pq.ParquetFile(root / f["path"])
        schema = pf.schema_arrow
        assert schema.names[:5] == ["content", "url", "timestamp", "dump", "segment"]
        assert str(schema.field("timestamp").type).startswith("timestamp")
        assert pf.metadata.num_row_groups >= 2
        assert all(pf.metadata.row_group(i).num_rows <= 32 for i in range(pf.metadata.num_row_groups))
        rows = pf.read().to_pylist()
        assert all(r["dump"].startswith("CC-MAIN-") and r["url"].startswith("https://") for r in rows)


def test_pile_rows_have_text_and_meta(mirror):
    root, sources = mirror
    for f in sources["pile-dedup"]["files"]:
        table = pq.read_table(root / f["path"])
        assert table.column_names == ["text", "meta"]
        names = {r["meta"]["pile_set_name"] for r in table.to_pylist()}
        assert {"Github", "Gutenberg (PG-19)", "StackExchange", "Wikipedia (en)"} <= names


def test_redpajama_lines_have_text_and_upstream_meta(mirror):
    root, sources = mirror
    meta_keys = {"redpajama-github": {"content_hash", "path", "repo_name", "license", "language", "size"},
                 "redpajama-arxiv": {"arxiv_id", "url", "timestamp", "yymm", "language"},
                 "redpajama-books": {"short_book_title", "publication_date", "url"},
                 "redpajama-wikipedia": {"title", "url", "language", "timestamp"},
                 "redpajama-stackexchange": {"url", "question_score", "language", "timestamp"},
                 "redpajama-c4": {"url", "timestamp", "language"}}
    for name, keys in meta_keys.items():
        entry = sources[name]
        bad = {(b["file"], b["line"]) for b in entry["bad_records"]}
        for f in entry["files"]:
            for n, line in enumerate(raw_lines(root, f["path"], "jsonl"), start=1):
                if (f["path"], n) in bad:
                    continue
                rec = json.loads(line)
                assert list(rec) == ["text", "meta"] and isinstance(rec["text"], str)
                assert keys <= set(rec["meta"]), (name, set(rec["meta"]))


def test_dolma_records_have_dolma_fields(mirror):
    root, sources = mirror
    for name in (n for n in sources if n.startswith("dolma-")):
        entry = sources[name]
        bad = {(b["file"], b.get("line")) for b in entry["bad_records"]}
        for f in entry["files"]:
            for n, line in enumerate(raw_lines(root, f["path"], "json.gz"), start=1):
                if (f["path"], n) not in bad:
                    rec = json.loads(line)
                    assert list(rec) == DOLMA_KEYS and isinstance(rec["metadata"], dict), name


def test_each_source_holds_at_least_200_documents_and_the_index_counts_them(mirror):
    root, sources = mirror
    for name, entry in sources.items():
        docs = list(iter_documents(root, name))
        assert len(docs) == entry["documents"] >= 200, name
        assert entry["records"] == entry["documents"] + len(entry["bad_records"])
        assert all(isinstance(text, str) for _, text in docs)


def test_the_whole_mirror_is_a_few_megabytes(mirror):
    root, sources = mirror
    total = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    assert 3_000_000 < total < 40_000_000
    assert total >= sum(e["bytes"] for e in sources.values())


def test_text_is_real_prose_and_code(mirror):
    root, _ = mirror
    books = " ".join(text for _, text in iter_documents(root, "redpajama-books"))
    assert "And God said" in books or "saith the LORD" in books
    code = [text for _, text in iter_documents(root, "redpajama-github")]
    assert sum(text.lstrip().startswith(('"""', "#", "import", "from", "r'''", "'''")) for text in code) > 100


def test_index_lists_files_with_their_sha256(mirror):
    root, sources = mirror
    for entry in sources.values():
        for f in entry["files"]:
            data = (root / f["path"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == f["sha256"] and len(data) == f["bytes"]


def test_every_format_carries_its_bad_records(mirror):
    _, sources = mirror
    expected = {"parquet": {"missing_text"}, "jsonl": {"broken_json", "invalid_utf8", "missing_text"},
                "json.gz": {"broken_json", "invalid_utf8", "missing_text", "truncated_gzip"}}
    for name, entry in sources.items():
        reasons = {b["reason"] for b in entry["bad_records"]}
        assert reasons == expected[entry["format"]], name
        assert reasons <= set(BAD_REASONS)


def test_listed_bad_records_really_are_bad(mirror):
    root, sources = mirror
    for name, entry in sources.items():
        fmt, field = entry["format"], entry["text_field"]
        for bad in entry["bad_records"]:
            if fmt == "parquet":
                assert pq.read_table(root / bad["file"])[field][bad["row"]].as_py() is None
                continue
            if bad["reason"] == "truncated_gzip":
                blob = (root / bad["file"]).read_bytes()
                with pytest.raises(EOFError):
                    gzip.decompress(blob)
                assert gzip.decompress(blob[: bad["byte_offset"]]).endswith(b"\n")  # complete members stay readable
                continue
            line = raw_lines(root, bad["file"], fmt)[bad["line"] - 1]
            if bad["reason"] == "invalid_utf8":
                with pytest.raises(UnicodeDecodeError):
                    line.decode("utf-8")
            elif bad["reason"] == "broken_json":
                with pytest.raises(json.JSONDecodeError):
                    json.loads(line.decode("utf-8"))
            elif bad["reason"] == "missing_text":
                assert field not in json.loads(line)
            else:
                pytest.fail(f"{name}: unexpected reason {bad['reason']}")


def test_truncated_gzip_tail_is_a_single_cut_member_after_complete_ones(mirror):
    root, sources = mirror
    for name, entry in sources.items():
        for bad in (b for b in entry["bad_records"] if b["reason"] == "truncated_gzip"):
            blob = (root / bad["file"]).read_bytes()
            tail = blob[bad["byte_offset"]:]
            assert tail[:2] == b"\x1f\x8b" and bad["records"] == 1
            good = gzip.decompress(blob[: bad["byte_offset"]])
            listed = next(f for f in entry["files"] if f["path"] == bad["file"])
            assert good.count(b"\n") == listed["lines"]


def _text_at(root, entry, loc):
    if "row" in loc:
        return pq.read_table(root / loc["file"])[entry["text_field"]][loc["row"]].as_py()
    return json.loads(raw_lines(root, loc["file"], entry["format"])[loc["line"] - 1])[entry["text_field"]]


def test_edge_case_documents_exercise_every_text_rule(mirror, tokenizer):
    root, sources = mirror
    for name, entry in sources.items():
        by_kind: dict[str, list[str]] = {}
        for e in entry["edge_cases"]:
            by_kind.setdefault(e["kind"], []).append(_text_at(root, entry, e))
        assert by_kind["empty"] == [""], name
        assert all(t.strip() == "" and t for t in by_kind["whitespace_only"])
        assert len(by_kind["short"]) >= 3 and all(0 < len(t) < 200 for t in by_kind["short"]), name
        assert all(t.strip() and not any(c.isalnum() for c in t) for t in by_kind["punctuation_only"]), name
        assert all(unicodedata.normalize("NFC", t) != t for t in by_kind["non_nfc"]), name
        words = sorted(len(t.split(" ")) for t in by_kind["long"])
        assert len(words) >= 3 and words[0] > 2048 and words[-1] > 4 * 2048, (name, words)
        counts = sorted(len(tokenizer.encode_one(t)) for t in by_kind["near_256_tokens"])
        assert counts == [254, 255, 256, 257], name


def test_code_sources_hold_a_literal_special_token(mirror):
    root, sources = mirror
    for name in ("redpajama-github", "dolma-stack"):
        assert any("<s>" in text for _, text in iter_documents(root, name)), name


def test_generation_is_deterministic(mirror, tmp_path):
    root, _ = mirror
    again = ensure_mirror(load_manifest(OPENELM), tmp_path / "again")
    ours = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    theirs = sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file() and not p.name.startswith("."))
    assert ours == theirs and INDEX_NAME in {str(p) for p in ours}
    for rel in ours:
        assert (root / rel).read_bytes() == (again / rel).read_bytes(), rel


def test_a_damaged_file_is_regenerated(tmp_path):
    manifest = one_source_manifest()
    root = ensure_mirror(manifest, tmp_path)
    first = read_index(root)["sources"]["dolma-wiki"]["files"][0]
    target = root / first["path"]
    original = target.read_bytes()
    target.write_bytes(original[:100])
    ensure_mirror(manifest, root)
    assert target.read_bytes() == original


def test_a_mirror_from_another_generator_is_rewritten(tmp_path):
    manifest = one_source_manifest()
    root = ensure_mirror(manifest, tmp_path)
    index = read_index(root)
    stale = root / index["sources"]["dolma-wiki"]["files"][0]["path"]
    original = stale.read_bytes()
    stale.write_bytes(b"written by an older generator")
    index["fingerprint"] = "an older generator"
    index["sources"]["dolma-wiki"]["files"][0]["sha256"] = hashlib.sha256(stale.read_bytes()).hexdigest()
    index["sources"]["dolma-wiki"]["files"][0]["bytes"] = stale.stat().st_size
    (root / INDEX_NAME).write_text(json.dumps(index))
    ensure_mirror(manifest, root)
    assert stale.read_bytes() == original and read_index(root)["fingerprint"] == generator_fingerprint()


def test_a_changed_source_spec_regenerates_that_source(tmp_path):
    root = ensure_mirror(one_source_manifest(fmt="json.gz"), tmp_path)
    ensure_mirror(one_source_manifest(fmt="jsonl"), root)
    entry = read_index(root)["sources"]["dolma-wiki"]
    assert entry["format"] == "jsonl" and all(f["path"].endswith(".jsonl") for f in entry["files"])
    assert not list((root / "dolma-wiki").glob("*.json.gz"))


def test_a_source_folder_holding_files_the_mirror_did_not_write_is_refused_untouched(tmp_path, capsys):
    (tmp_path / "dolma-wiki").mkdir()
    (tmp_path / "dolma-wiki" / "notes.md").write_text("mine\n")
    with pytest.raises(MirrorRefused, match=r"holds 1 file\(s\) the sample mirror did not write \(e.g. dolma-wiki/notes.md\)"):
        ensure_mirror(one_source_manifest(), tmp_path)
    root = ensure_mirror(one_source_manifest(fmt="json.gz"), tmp_path / "mirror")
    (root / "dolma-wiki" / "notes.md").write_text("mine\n")
    with pytest.raises(MirrorRefused, match="dolma-wiki/notes.md"):
        ensure_mirror(one_source_manifest(fmt="jsonl"), root)
    assert (tmp_path / "dolma-wiki" / "notes.md").read_text() == "mine\n"
    assert (root / "dolma-wiki" / "notes.md").read_text() == "mine\n" and list((root / "dolma-wiki").glob("*.json.gz"))


def test_two_processes_at_once_write_one_good_mirror(tmp_path):
    code = ("import sys; from corpus.mirror.mirror import ensure_mirror; "
            "from corpus.manifest import parse_manifest; "
            f"ensure_mirror(parse_manifest({one_source_manifest_text()!r}), sys.argv[1])")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, stderr=subprocess.PIPE)
             for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    entry = read_index(tmp_path)["sources"]["dolma-wiki"]
    assert sum(1 for _ in iter_documents(tmp_path, "dolma-wiki")) == entry["documents"]
    assert not [p for p in (tmp_path / "dolma-wiki").iterdir() if p.name.endswith(".tmp")]


def one_source_manifest_text() -> str:
    return """
name: tiny
sources:
  - name: dolma-wiki
    group: dolma
    upstream: {files: ["hf://x/*"]}
    format: json.gz
    tokens: 1M
"""


def test_unknown_source_gets_a_generic_mirror_from_its_format_and_text_field(tmp_path):
    manifest = one_source_manifest(name="my-forum", group="redpajama", fmt="jsonl.zst", text_field="body")
    files = mirror_files(manifest, "my-forum", tmp_path)
    assert len(files) >= 2 and all(f.endswith(".jsonl.zst") for f in files)
    entry = read_index(tmp_path)["sources"]["my-forum"]
    assert {b["reason"] for b in entry["bad_records"]} == {"broken_json", "invalid_utf8", "missing_text"}
    docs = list(iter_documents(tmp_path, "my-forum"))
    assert len(docs) == entry["documents"] >= 200
    first = raw_lines(tmp_path, entry["files"][0]["path"], "jsonl.zst")
    good = [json.loads(x) for i, x in enumerate(first, 1)
            if (entry["files"][0]["path"], i) not in {(b["file"], b["line"]) for b in entry["bad_records"]}]
    assert all("body" in r and "meta" in r for r in good if r.get("body") is not None)


def test_a_source_of_a_group_of_its_own_gets_a_generic_mirror(tmp_path):
    manifest = one_source_manifest(name="my-notes", group="lab-notes", fmt="json.gz")
    files = mirror_files(manifest, "my-notes", tmp_path)
    assert len(files) >= 2 and all(f.endswith(".json.gz") for f in files)
    entry = read_index(tmp_path)["sources"]["my-notes"]
    assert entry["spec"]["group"] == "lab-notes" and "truncated_gzip" in {b["reason"] for b in entry["bad_records"]}
    assert sum(1 for _ in iter_documents(tmp_path, "my-notes")) == entry["documents"] >= 200


def test_unknown_parquet_source_with_an_id_field(tmp_path):
    manifest = one_source_manifest(name="my-web", group="refinedweb", fmt="parquet", text_field="content",
                                   extra="    id_field: doc_id")
    files = mirror_files(manifest, "my-web", tmp_path)
    table = pq.read_table(files[0])
    assert {"content", "doc_id", "url"} <= set(table.column_names)


def test_sample_files_are_sorted_paths_inside_the_source_folder(mirror):
    root, _ = mirror
    files = mirror_files(load_manifest(OPENELM), "redpajama-c4", root)
    assert files == sorted(files) and len(files) == 3
    assert all(Path(f).is_file() and Path(f).parent == root / "redpajama-c4" / "c4" for f in files)


def test_unknown_source_name_is_a_clear_error(mirror):
    root, _ = mirror
    with pytest.raises(KeyError, match="no source 'nope'"):
        mirror_files(load_manifest(OPENELM), "nope", root)


def test_default_root_is_under_elm_corpus_data(tmp_path, monkeypatch):
    monkeypatch.setenv("ELM_CORPUS_DATA", str(tmp_path / "data"))
    assert paths.data_root() == tmp_path / "data"
    assert paths.corpora_root() == tmp_path / "data" / "corpora"
    root = ensure_mirror(one_source_manifest())
    assert root == tmp_path / "data" / "sample" and (root / INDEX_NAME).is_file()


def test_data_root_defaults_to_data_in_the_working_folder(monkeypatch):
    monkeypatch.delenv("ELM_CORPUS_DATA", raising=False)
    assert paths.data_root() == Path("data") and paths.mirror_root() == Path("data") / "sample"


def test_cli_sample_prints_files_documents_bad_records_and_bytes(tmp_path, capsys):
    manifest = tmp_path / "tiny.yaml"
    manifest.write_text(one_source_manifest_text())
    assert cli_main(["sample", str(manifest), "--out", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    entry = read_index(tmp_path / "m")["sources"]["dolma-wiki"]
    row = next(line for line in out.splitlines() if line.split()[:1] == ["dolma-wiki"])
    assert row.split()[1:] == ["json.gz", str(len(entry["files"])), str(entry["documents"]),
                               str(len(entry["bad_records"])), f"{entry['bytes']:,}"]
