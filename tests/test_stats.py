"""`elm-corpus stats`: every number equals a recount from the shard files and sidecars on disk."""
from __future__ import annotations

import gzip
import io
import json
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.cli import main as cli_main
from corpus.manifest import load_manifest
from corpus.tokenizer.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parent.parent
OPENELM = REPO / "manifests" / "openelm.yaml"
STDLIB = Path(json.__file__).parent.parent  # real text that ships with Python


# ---------------------------------------------------------------- an independent recount

def _bytes_under(folder: Path) -> int:
    return sum(os.path.getsize(os.path.join(d, n)) for d, _, names in os.walk(folder) for n in names)


def _reasons(sidecars: list[dict], key: str) -> dict:
    total = Counter()
    for m in sidecars:
        total.update(m[key])
    return dict(sorted((k, v) for k, v in total.items() if v))


def _length_numbers(lengths: np.ndarray) -> dict:
    if lengths.size == 0:
        return {"mean": None, "median": None, "min": None, "max": None}
    return {"mean": int(lengths.sum()) / lengths.size, "median": float(np.median(lengths)),
            "min": int(lengths.min()), "max": int(lengths.max())}


def _idx_lengths(path: Path) -> np.ndarray:
    """Tokens per chunk from a Megatron .idx, read with numpy alone (the layout in docs/formats.md)."""
    with open(path, "rb") as f:
        head = f.read(34)
    assert head[:9] == b"MMIDIDX\x00\x00"
    n = int(np.frombuffer(head, "<u8", count=1, offset=18)[0])
    return np.fromfile(path, dtype="<i4", count=n, offset=34).astype(np.int64)


def recount(corpus_dir: Path, manifest_path: Path) -> dict:
    """The numbers of `stats --json`, counted with numpy over .bin/.idx and plain reads of the sidecars."""
    plan = json.loads((corpus_dir / "plan.json").read_text())
    manifest = load_manifest(manifest_path)
    shares = manifest.target_shares()
    sources, every_length, all_sidecars = [], [], []
    for source in manifest.sources:
        name = source.name
        units = [u["unit"] for u in plan["units"] if u["source"] == name]
        done = [u for u in units if (corpus_dir / "ledger" / name / f"{u}.json").exists()]
        failed = [u for u in units if u not in done and (corpus_dir / "failed" / name / f"{u}.json").exists()]
        sidecars = [json.loads((corpus_dir / "shards" / name / f"{u}.json").read_text()) for u in done]
        lengths = []
        for u in done:
            unit_lengths = _idx_lengths(corpus_dir / "shards" / name / f"{u}.idx")
            tokens = np.fromfile(corpus_dir / "shards" / name / f"{u}.bin", dtype="<u2")
            assert int(unit_lengths.sum()) == tokens.size
            lengths.append(unit_lengths)
        lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
        every_length.append(lengths)
        all_sidecars.extend(sidecars)
        sources.append({
            "name": name,
            "group": source.group,
            "units": {"total": len(units), "done": len(done), "failed": len(failed),
                      "pending": len(units) - len(done) - len(failed)},
            **_counts(sidecars, lengths),
            "share": {"target": shares[name], "achieved": None},
            "manifest_tokens": source.tokens,
            "bytes_on_disk": {"shards": _bytes_under(corpus_dir / "shards" / name),
                              "quarantine": _bytes_under(corpus_dir / "quarantine" / name)},
            "warning": None,
        })
        # no warning is right only while a source with finished units keeps tokens and quarantines under half
        row = sources[-1]
        assert not done or (row["tokens"] > 0 and 2 * row["documents"]["quarantined"] < row["documents"]["read"])
    all_lengths = np.concatenate(every_length)
    for s in sources:
        s["share"]["achieved"] = s["tokens"] / int(all_lengths.sum()) if all_lengths.sum() else None
    total = {
        "units": {k: sum(s["units"][k] for s in sources) for k in ("total", "done", "failed", "pending")},
        **_counts(all_sidecars, all_lengths),
        "share": {"target": sum(shares.values()), "achieved": 1.0 if all_lengths.sum() else None},
        "manifest_tokens": manifest.total_tokens,
        "bytes_on_disk": {"shards": _bytes_under(corpus_dir / "shards"),
                          "quarantine": _bytes_under(corpus_dir / "quarantine"), "folder": _bytes_under(corpus_dir)},
    }
    groups: dict[str, dict] = {}
    for s, source in zip(sources, manifest.sources):
        g = groups.setdefault(source.group, {"name": source.group, "sources": [], "units": Counter(), "tokens": 0,
                                             "share": {"target": 0.0, "achieved": None}, "manifest_tokens": 0})
        g["sources"].append(s["name"])
        g["units"].update(s["units"])
        g["tokens"] += s["tokens"]
        g["share"]["target"] += s["share"]["target"]
        g["manifest_tokens"] += s["manifest_tokens"]
    for g in groups.values():
        g["units"] = {k: g["units"][k] for k in ("total", "done", "failed", "pending")}
        g["share"]["achieved"] = g["tokens"] / int(all_lengths.sum()) if all_lengths.sum() else None
    return {"sources": sources, "groups": list(groups.values()), "total": total}


def _counts(sidecars: list[dict], lengths: np.ndarray) -> dict:
    dropped, chunks_dropped = _reasons(sidecars, "dropped"), _reasons(sidecars, "chunks_dropped")
    tokens_dropped = _reasons(sidecars, "tokens_dropped")
    return {
        "documents": {"read": sum(m["documents_read"] for m in sidecars), "kept": sum(m["kept"] for m in sidecars),
                      "dropped": dropped, "dropped_total": sum(dropped.values()),
                      "quarantined": sum(m["quarantined"] for m in sidecars),
                      "quarantined_by_reason": _reasons(sidecars, "quarantined_by_reason")},
        "chunks": {"split": sum(m["chunks_split"] for m in sidecars), "kept": int(lengths.size),
                   "dropped": chunks_dropped, "dropped_total": sum(chunks_dropped.values())},
        "filter_details": _reasons(sidecars, "drop_details"),
        "tokens": int(lengths.sum()),
        "tokens_dropped": tokens_dropped,
        "tokens_after_chars": int(lengths.sum()) + sum(tokens_dropped.values()),
        "tokens_per_chunk": _length_numbers(lengths),
        "shards": len(sidecars),
    }


def assert_same(got, want, where: str = "") -> None:
    """Deep equality, floats to 12 significant digits; the failure names the field."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), f"{where}: keys {sorted(got)} != {sorted(want)}"
        for k in want:
            assert_same(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{where}: {got!r} != {want!r}"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-12), f"{where}: {got!r} != {want!r}"
    else:
        assert got == want and type(got) is type(want), f"{where}: {got!r} != {want!r}"


def stats_json(capsys, *argv: str) -> dict:
    assert cli_main(["stats", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def stats_text(capsys, *argv: str) -> str:
    assert cli_main(["stats", *argv]) == 0
    return capsys.readouterr().out


# ---------------------------------------------------------------- corpora the tests look at

@pytest.fixture(scope="module")
def sample_dir(sample_corpus) -> Path:
    assert sample_corpus.status == "complete"
    return Path(sample_corpus.out_dir)


@pytest.fixture(scope="module")
def filtered_corpus(tmp_path_factory, ray_session) -> tuple[Path, Path]:
    """A real build with a datatrove filter and one input file that cannot be read (one failed unit)."""
    from pipelines.build import build
    root = tmp_path_factory.mktemp("filtered-inputs")
    code = [p.read_text(errors="replace") for p in sorted(STDLIB.glob("*.py"))[:10]]
    repeated = ["the same words again and again " * 120]  # gopher_repetition drops this
    (root / "code.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in code[:5] + repeated + code[5:]))
    (root / "docs").mkdir()
    pq.write_table(pa.table({"content": code[5:]}), root / "docs" / "a.parquet", row_group_size=3)
    (root / "docs" / "b.parquet").write_bytes(b"PAR1 this is not a parquet file PAR1")
    manifest = root / "filtered.yaml"
    manifest.write_text(
        "name: filtered\nsources:\n"
        f"  - {{name: code, group: redpajama, format: jsonl, tokens: 2M, upstream: {{files: ['{root}/code.jsonl']}},"
        " filters: [{type: gopher_repetition}]}\n"
        f"  - {{name: docs, group: refinedweb, format: parquet, text_field: content, tokens: 1M,"
        f" upstream: {{files: ['{root}/docs/*.parquet']}}}}\n")
    out = tmp_path_factory.mktemp("corpora") / "filtered"
    result = build(manifest, out, workers=2, progress=False, unit_bytes=120_000)
    assert result.status == "failed" and len(result.failed) == 1
    return out, manifest


def copy_corpus(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def interrupt(corpus_dir: Path, keep: int) -> list[tuple[str, str]]:
    """Leave the folder as a build killed mid-way does: later units' shards written but no ledger entry."""
    corpus = json.loads((corpus_dir / "corpus.json").read_text())
    corpus.update(status="building", finished_at=None)
    (corpus_dir / "corpus.json").write_text(json.dumps(corpus))
    entries = sorted((corpus_dir / "ledger").glob("*/*.json"))
    removed = []
    for path in entries[keep:]:
        path.unlink()
        removed.append((path.parent.name, path.stem))
    return removed


# ---------------------------------------------------------------- the numbers

def test_every_json_number_equals_a_recount_of_the_sample_build(sample_dir, capsys):
    got = stats_json(capsys, str(sample_dir))
    want = recount(sample_dir, OPENELM)
    assert_same(got["sources"], want["sources"], "sources")
    assert_same(got["groups"], want["groups"], "groups")
    assert_same(got["total"], want["total"], "total")
    assert got["failed_units"] == [] and got["problems"] == []
    # one name everywhere: the folder's, which --corpus takes and run.json records
    assert (got["corpus"]["name"], got["corpus"]["manifest_name"]) == (sample_dir.name, "openelm")
    assert f"{sample_dir.name}  {sample_dir}" in stats_text(capsys, str(sample_dir))  # the header's first line
    assert got["total"]["tokens"] > 1_000_000  # the sample is real text, not an empty shell


def test_every_json_number_equals_a_recount_with_filters_and_a_failed_unit(filtered_corpus, capsys):
    corpus_dir, manifest = filtered_corpus
    got = stats_json(capsys, str(corpus_dir))
    want = recount(corpus_dir, manifest)
    assert_same(got["sources"], want["sources"], "sources")
    assert_same(got["groups"], want["groups"], "groups")
    assert_same(got["total"], want["total"], "total")
    code = got["sources"][0]
    assert code["chunks"]["dropped"].get("gopher_repetition", 0) >= 1
    assert sum(v for k, v in code["filter_details"].items() if k.startswith("gopher_repetition:")) == \
        code["chunks"]["dropped"]["gopher_repetition"]


def test_documents_read_are_kept_dropped_or_quarantined_in_every_source(sample_dir, capsys):
    got = stats_json(capsys, str(sample_dir))
    for s in [*got["sources"], got["total"]]:
        d = s["documents"]
        assert d["read"] == d["kept"] + d["dropped_total"] + d["quarantined"], s.get("name", "total")
        assert s["chunks"]["split"] == s["chunks"]["kept"] + s["chunks"]["dropped_total"]


def test_encoded_tokens_are_the_kept_tokens_plus_the_dropped_ones_in_every_source(filtered_corpus, capsys):
    corpus_dir, manifest = filtered_corpus
    got = stats_json(capsys, str(corpus_dir))
    want = recount(corpus_dir, manifest)
    for s, w in zip([*got["sources"], got["total"]], [*want["sources"], want["total"]], strict=True):
        kept_from_idx = w["tokens"]  # the recount sums the sequence lengths of each .idx
        assert s["tokens_after_chars"] == kept_from_idx + sum(s["tokens_dropped"].values()), s.get("name", "total")
        assert "too_few_chars" not in s["tokens_dropped"]  # those chunks are never encoded
        assert set(s["tokens_dropped"]) == set(s["chunks"]["dropped"]) - {"too_few_chars"}
    code = got["sources"][0]
    assert code["tokens_dropped"]["gopher_repetition"] > 0


def test_tokens_dropped_equal_a_re_encoding_of_the_dropped_chunks(tmp_path, ray_session, capsys):
    """Three documents whose every chunk's fate is known; the build's token counts match encoding them again."""
    from pipelines.build import build
    prose = ("Rivers carve valleys slowly over many thousands of years while winds shape dunes and cliffs along "
             "the coast where fishermen mend their nets each morning before sailing out past the harbour lights "
             "toward deeper water that hides cold currents and silver shoals").split(" ")[:40]
    repetition = ("the same words again and again " * 7).split(" ")[:40]
    assert len(prose) == len(repetition) == 40  # one chunk each
    short = "Quick brown foxes jumped over lazy dogs sleeping beside the quiet riverbank today"
    documents = [" ".join([*prose, *repetition, short]),  # kept, gopher_repetition, too_few_tokens
                 short,                                   # too_few_tokens
                 "ok fine yes"]                           # too_few_chars
    (tmp_path / "tiny.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in documents))
    manifest = tmp_path / "tiny.yaml"
    manifest.write_text(
        "name: tiny\ntext: {split_words: 40, min_chars: 60, min_tokens: 30}\nsources:\n"
        f"  - {{name: tiny, group: redpajama, format: jsonl, tokens: 1M, upstream: {{files: ['{tmp_path}/tiny.jsonl']}},"
        " filters: [{type: gopher_repetition}]}\n")
    assert build(manifest, tmp_path / "tiny", workers=1, progress=False).status == "complete"
    got = stats_json(capsys, str(tmp_path / "tiny"))["sources"][0]
    assert got["chunks"]["dropped"] == {"gopher_repetition": 1, "too_few_chars": 1, "too_few_tokens": 2}

    encode = Tokenizer().encode
    words = documents[0].split(" ")
    chunks = [" ".join(words[i:i + 40]) for i in range(0, len(words), 40)]
    kept, repeated, too_short = (len(ids) for ids in encode([chunks[0], chunks[1], chunks[2]]))
    assert chunks[2] == short and too_short < 30 <= repeated  # the premise: which rule drops which chunk
    assert got["tokens"] == kept
    assert got["tokens_dropped"] == {"gopher_repetition": repeated, "too_few_tokens": 2 * too_short}
    assert got["tokens_after_chars"] == kept + repeated + 2 * too_short


def test_json_names_the_tokenizer_hash_and_manifest_fingerprint(sample_dir, capsys):
    got = stats_json(capsys, str(sample_dir))["corpus"]
    tokenizer = Tokenizer()
    assert got["tokenizer"]["sha256"] == tokenizer.sha256
    assert got["manifest_fingerprint"] == load_manifest(OPENELM).build_fingerprint(tokenizer.sha256)
    assert got["status"] == "complete" and (got["name"], got["manifest_name"]) == (sample_dir.name, "openelm")


def test_target_shares_are_the_manifests(sample_dir, capsys):
    got = stats_json(capsys, str(sample_dir))
    shares = load_manifest(OPENELM).target_shares()
    assert [s["name"] for s in got["sources"]] == list(shares)
    assert {s["name"]: s["share"]["target"] for s in got["sources"]} == shares
    assert sum(s["share"]["achieved"] for s in got["sources"]) == pytest.approx(1.0)


def test_failed_unit_is_counted_and_named_with_its_error(filtered_corpus, capsys):
    corpus_dir, _ = filtered_corpus
    got = stats_json(capsys, str(corpus_dir))
    docs = got["sources"][1]
    assert docs["units"]["failed"] == 1 and docs["units"]["done"] == docs["units"]["total"] - 1
    [failed] = got["failed_units"]
    assert failed["source"] == "docs" and "b.parquet" in failed["input"]["uri"] and failed["error"]
    text = stats_text(capsys, str(corpus_dir))
    assert "failed" in text and f"docs/{failed['unit']}" in text


# ---------------------------------------------------------------- half-built and broken folders

def test_an_interrupted_build_shows_the_units_finished_so_far(sample_dir, tmp_path, capsys):
    corpus_dir = copy_corpus(sample_dir, tmp_path / "half")
    removed = interrupt(corpus_dir, keep=11)
    got = stats_json(capsys, str(corpus_dir))
    want = recount(corpus_dir, OPENELM)
    assert_same(got["sources"], want["sources"], "sources")
    assert_same(got["groups"], want["groups"], "groups")
    assert_same(got["total"], want["total"], "total")
    assert got["corpus"]["status"] == "building" and got["corpus"]["build_running"] is False
    assert got["total"]["units"]["done"] == 11 and got["total"]["units"]["pending"] == len(removed)
    text = stats_text(capsys, str(corpus_dir))
    assert "building (interrupted)" in text and "rerun 'elm-corpus build MANIFEST' to resume" in text


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="telling a running build needs Linux's /proc/locks")
def test_a_build_holding_the_folder_is_shown_as_running(sample_dir, tmp_path, capsys):
    from corpus.store.layout import CorpusDir
    corpus_dir = copy_corpus(sample_dir, tmp_path / "busy")
    interrupt(corpus_dir, keep=5)
    with CorpusDir(corpus_dir).exclusive():  # what a build does while it runs
        got = stats_json(capsys, str(corpus_dir))
        text = stats_text(capsys, str(corpus_dir))
    assert got["corpus"]["build_running"] is True and got["corpus"]["build_pid"] == os.getpid()
    assert f"a build (pid {os.getpid()}) is writing this folder now" in text
    assert stats_json(capsys, str(corpus_dir))["corpus"]["build_running"] is False


def test_a_folder_with_only_a_plan_shows_zero_progress(sample_dir, tmp_path, capsys):
    corpus_dir = tmp_path / "planned"
    corpus_dir.mkdir()
    shutil.copy(sample_dir / "plan.json", corpus_dir / "plan.json")
    got = stats_json(capsys, str(corpus_dir))
    planned = len(json.loads((corpus_dir / "plan.json").read_text())["units"])
    assert got["corpus"]["status"] == "planned"
    assert got["total"]["units"] == {"total": planned, "done": 0, "failed": 0, "pending": planned}
    assert got["total"]["tokens"] == 0 and got["total"]["tokens_per_chunk"]["median"] is None


def test_a_shard_that_disagrees_with_its_sidecar_is_reported(sample_dir, tmp_path, capsys):
    corpus_dir = copy_corpus(sample_dir, tmp_path / "damaged")
    bin_path = sorted((corpus_dir / "shards" / "refinedweb").glob("*.bin"))[0]
    bin_path.write_bytes(bin_path.read_bytes()[:-2])
    got = stats_json(capsys, str(corpus_dir))
    assert any(bin_path.name in p and "refinedweb" in p for p in got["problems"]), got["problems"]


def test_a_folder_that_is_not_a_corpus_is_named_in_the_error(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a corpus")
    assert cli_main(["stats", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path} is not a corpus folder" in err and "corpus.json" in err


def test_an_unknown_name_lists_the_corpora_that_exist(sample_dir, capsys):
    assert cli_main(["stats", "no-such-corpus", "--data-dir", str(sample_dir.parent)]) == 2
    err = capsys.readouterr().err
    assert "corpus 'no-such-corpus' not found" in err and sample_dir.name in err


# ---------------------------------------------------------------- the views

def test_no_argument_lists_one_line_per_corpus(sample_dir, filtered_corpus, tmp_path, capsys, monkeypatch):
    corpora = tmp_path / "data" / "corpora"
    corpora.mkdir(parents=True)
    (corpora / "openelm-sample").symlink_to(sample_dir)
    (corpora / "filtered").symlink_to(filtered_corpus[0])
    (corpora / "scratch").mkdir()  # not a corpus: left out
    monkeypatch.setenv("ELM_CORPUS_DATA", str(tmp_path / "data"))
    listing = stats_json(capsys)
    rows = {r["name"]: r for r in listing["corpora"]}
    assert sorted(rows) == ["filtered", "openelm-sample"]
    sample = rows["openelm-sample"]
    assert sample["status"] == "complete" and sample["sources"] == 13
    assert sample["tokens"] == recount(sample_dir, OPENELM)["total"]["tokens"]
    assert sample["units"]["done"] == sample["units"]["total"]
    assert rows["filtered"]["status"] == "failed"
    text = stats_text(capsys)
    lines = [line for line in text.splitlines() if "openelm-sample" in line or "filtered" in line]
    assert len(lines) == 2 and "complete" in lines[1] and "failed" in lines[0]


def test_no_corpora_at_all_says_how_to_make_one(tmp_path, capsys):
    text = stats_text(capsys, "--data-dir", str(tmp_path / "empty"))
    assert "no corpora under" in text and "elm-corpus build" in text


def test_table_shows_every_source_and_the_totals(sample_dir, capsys):
    text = stats_text(capsys, str(sample_dir))
    numbers = recount(sample_dir, OPENELM)
    for s in numbers["sources"]:
        assert s["name"] in text
    total = numbers["total"]
    for value in (total["tokens"], total["documents"]["read"], total["chunks"]["kept"]):
        assert f"{value:,}" in text
    tokenizer_sha = Tokenizer().sha256
    assert tokenizer_sha in text
    assert "overlap" not in text and "dedup:" not in text  # built without dedup: no overlap section


def test_report_needs_a_corpus_name(capsys):
    assert cli_main(["stats", "--report", "out"]) == 2
    assert "--report needs a corpus" in capsys.readouterr().err


# ---------------------------------------------------------------- inspect

def _input_text(uri: str, location_kind: str, location: int, text_field: str) -> str:
    """The record at a location, read straight from the input file."""
    path = Path(uri.removeprefix("file://"))
    if location_kind == "row":
        return pq.read_table(path, columns=[text_field]).column(text_field)[location].as_py()
    blob = path.read_bytes()
    if path.name.endswith(".gz"):
        with gzip.GzipFile(fileobj=io.BytesIO(blob)) as f:
            blob = b""
            try:
                while part := f.read(1 << 16):
                    blob += part
            except EOFError:  # the sample's deliberately cut member
                pass
    elif path.name.endswith(".zst"):
        import zstandard
        blob = zstandard.ZstdDecompressor().decompressobj().decompress(blob)
    line = blob[location:].split(b"\n", 1)[0]
    return json.loads(line)[text_field]


def test_inspect_decodes_chunks_back_to_the_text_at_their_input_location(sample_dir):
    from corpus.inspection.chunks import draw_chunks
    from corpus.text.rules import normalize, split_words
    chunks = draw_chunks(sample_dir, n=12, seed=7)
    assert len(chunks) == 12 and len({c.source for c in chunks}) > 3
    for c in chunks:
        sidecar = json.loads(c.shard.with_suffix(".json").read_text())
        record = _input_text(c.input_uri, c.location_kind, c.location, sidecar["text_field"])
        assert c.text == split_words(normalize(record), 2048)[c.part], (c.source, c.unit, c.index)


def test_inspect_prints_provenance_and_is_repeatable_by_seed(sample_dir, capsys):
    args = ["inspect", str(sample_dir), "--source", "redpajama-books", "-n", "3", "--seed", "5"]
    assert cli_main(args) == 0
    first = capsys.readouterr().out
    assert cli_main(args) == 0
    assert capsys.readouterr().out == first
    assert cli_main(args[:-1] + ["6"]) == 0
    assert capsys.readouterr().out != first
    assert first.count("redpajama-books unit") == 3 and "token offset" in first and "byte" in first
    assert "--shard" in first and "--index" in first


def test_inspect_one_chunk_by_shard_and_index(sample_dir, capsys):
    from corpus.inspection.chunks import chunk_at
    idx = sorted((sample_dir / "shards" / "refinedweb").glob("*.idx"))[0]
    offsets = np.concatenate(([0], np.cumsum(_idx_lengths(idx))))
    tokens = np.fromfile(idx.with_suffix(".bin"), dtype="<u2")
    c = chunk_at(idx.with_suffix(".bin"), 2)
    assert c.text == Tokenizer().decode(tokens[offsets[2]:offsets[3]])
    assert (c.token_offset, c.num_tokens, c.location_kind) == (int(offsets[2]), int(offsets[3] - offsets[2]), "row")
    assert cli_main(["inspect", "--shard", str(idx), "--index", "2"]) == 0
    assert c.text.splitlines()[0].strip()[:40] in capsys.readouterr().out


def test_inspect_out_of_range_index_says_how_many_chunks_there_are(sample_dir, capsys):
    idx = sorted((sample_dir / "shards" / "refinedweb").glob("*.idx"))[0]
    n = len(_idx_lengths(idx))
    assert cli_main(["inspect", "--shard", str(idx), "--index", str(n)]) == 2
    assert f"holds {n} chunks" in capsys.readouterr().err


def test_inspect_unknown_source_lists_the_sources(sample_dir, capsys):
    assert cli_main(["inspect", str(sample_dir), "--source", "nope"]) == 2
    err = capsys.readouterr().err
    assert "no finished units of source 'nope'" in err and "dolma-wiki" in err



def test_an_unreadable_corpus_json_is_named_in_the_error(sample_dir, tmp_path, capsys):
    corpus_dir = tmp_path / "garbled"
    corpus_dir.mkdir()
    (corpus_dir / "corpus.json").write_text('{"name": "cut off')
    assert cli_main(["stats", str(corpus_dir)]) == 2
    assert f"{corpus_dir / 'corpus.json'}: not valid JSON" in capsys.readouterr().err
