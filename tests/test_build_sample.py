"""The `--sample` build of manifests/openelm.yaml: all 13 sources, accounted, bad records quarantined."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import zstandard

from corpus.store.layout import read_corpus_json, source_shards


from corpus.store.shards import Shard
MANIFEST_SOURCES = 13


def mirror_index(root: Path) -> dict:
    return json.loads((root / "MIRROR.json").read_text())


def decompressed(path: Path) -> bytes:
    """A mirror file's bytes as the build reads them (a cut gzip member ends the text)."""
    if path.name.endswith(".gz"):
        lines = []
        try:
            with gzip.open(path) as f:
                for line in f:  # line by line: a block read would lose the lines before the cut
                    lines.append(line)
        except EOFError:
            pass
        return b"".join(lines)
    if path.name.endswith(".zst"):
        return zstandard.ZstdDecompressor().decompressobj().decompress(path.read_bytes())
    return path.read_bytes()


def quarantine_rows(corpus_dir: Path, source: str) -> list[dict]:
    return [json.loads(line) for p in sorted((corpus_dir / "quarantine" / source).glob("*.jsonl"))
            for line in p.read_text().splitlines()]


def test_every_one_of_the_13_sources_yields_shards(sample_corpus):
    index = read_corpus_json(sample_corpus.out_dir)
    assert sample_corpus.status == "complete" and index["sample"] is True
    assert len(index["sources"]) == MANIFEST_SOURCES
    for name, src in index["sources"].items():
        shards = source_shards(sample_corpus.out_dir, name)
        assert shards and sum(len(s) for s in shards) == src["totals"]["chunks_kept"] > 0, name


def test_documents_read_equal_kept_plus_dropped_plus_quarantined_for_every_source(sample_corpus):
    for name, src in read_corpus_json(sample_corpus.out_dir)["sources"].items():
        t = src["totals"]
        assert t["documents_read"] == t["kept"] + sum(t["dropped"].values()) + t["quarantined"], name
        assert t["chunks_split"] == t["chunks_kept"] + sum(t["chunks_dropped"].values()), name


def test_every_record_of_the_mirror_is_read(sample_corpus, sample_mirror):
    mirror = mirror_index(sample_mirror)["sources"]
    for name, src in read_corpus_json(sample_corpus.out_dir)["sources"].items():
        assert src["totals"]["documents_read"] == mirror[name]["records"], name


def test_the_mirrors_bad_records_are_quarantined_with_their_reasons_and_locations(sample_corpus, sample_mirror):
    mirror = mirror_index(sample_mirror)["sources"]
    for name, entry in mirror.items():
        rows = quarantine_rows(sample_corpus.out_dir, name)
        assert sorted(r["reason"] for r in rows) == sorted(b["reason"] for b in entry["bad_records"]), name
        got = set()
        for r in rows:
            rel = Path(r["file"].removeprefix("file://")).relative_to(sample_mirror).as_posix()
            if r["reason"] == "truncated_gzip":
                got.add((rel, "truncated_gzip"))
            elif "row" in r:
                got.add((rel, r["row"]))
            else:  # byte offset of the line in the decompressed file -> 1-based line number
                got.add((rel, decompressed(sample_mirror / rel)[: r["byte"]].count(b"\n") + 1))
        expected = {(b["file"], "truncated_gzip" if b["reason"] == "truncated_gzip" else b.get("line", b.get("row")))
                    for b in entry["bad_records"]}
        assert got == expected, name


def test_the_mirrors_edge_cases_are_decided_by_corenets_rules(sample_corpus):
    totals = read_corpus_json(sample_corpus.out_dir)["totals"]
    # every source carries empty, whitespace-only, short and punctuation-only documents
    assert totals["dropped"]["too_few_chars"] >= 4 * MANIFEST_SOURCES
    # and word prefixes encoding to 254 and 255 tokens
    assert totals["dropped"]["too_few_tokens"] >= 2 * MANIFEST_SOURCES


def kept_parts_by_record(corpus_dir: Path, mirror_root: Path, source: str) -> dict[tuple, list[int]]:
    """(file, 1-based line or 0-based row) -> chunk numbers kept from that record, read from the sidecars."""
    out: dict[tuple, list[int]] = {}
    for shard in source_shards(corpus_dir, source):
        side = shard.sidecar()
        rel = Path(side["input"]["uri"].removeprefix("file://")).relative_to(mirror_root).as_posix()
        if side["origin"]["location"] == "byte":
            data = decompressed(mirror_root / rel)
            to_key = lambda at: data[:at].count(b"\n") + 1  # noqa: E731
        else:
            to_key = lambda at: at  # noqa: E731
        for record, part in zip(side["origin"]["record"], side["origin"]["part"]):
            out.setdefault((rel, to_key(record)), []).append(part)
    return out


def test_each_edge_case_document_of_the_mirror_is_kept_or_dropped_as_corenet_decides(sample_corpus, sample_mirror):
    mirror = mirror_index(sample_mirror)["sources"]
    checked = 0
    for name, entry in mirror.items():
        kept = kept_parts_by_record(sample_corpus.out_dir, sample_mirror, name)
        for edge in entry["edge_cases"]:
            key = (edge["file"], edge.get("line", edge.get("row")))
            if edge["kind"] in ("empty", "whitespace_only", "short", "punctuation_only"):
                assert key not in kept, (name, edge)
            elif edge["kind"] == "near_256_tokens":
                assert (key in kept) == (edge["tokens"] >= 256), (name, edge)
            elif edge["kind"] == "long":
                assert kept[key][0] == 0 and max(kept[key]) <= (edge["words"] - 1) // 2048, (name, edge)
                assert (edge["words"] - 1) // 2048 >= 1
            else:
                continue
            checked += 1
    assert checked >= 10 * MANIFEST_SOURCES


def test_sample_shards_decode_to_text(sample_corpus, tokenizer):
    shard = Shard.open(next((sample_corpus.out_dir / "shards" / "redpajama-books").glob("*.idx")).with_suffix(""))
    text = tokenizer.decode(shard.chunk(0))
    assert len(text) > 200 and text.strip()
