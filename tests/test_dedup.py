"""Deduplication in the build, on planted data with ground truth across two sources (tests/planted_duplicates.py).

Each planted copy's class is decided by the exact Jaccard similarity of its word 5-gram shingles with its
original, computed directly, not by how it was made: threshold 0.8, so near copies are those at 0.9 or more
(at least 95% must go), far copies those at 0.5 or less (at most 2% may go), and exact copies all go.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest

from corpus.store import location
from corpus.store.layout import CorpusDir, read_corpus_json, source_shards
from corpus.store.verify import verify
from corpus.text.readers import read_slice
from pipelines.build import build
from pipelines.cli import main as cli_main
from pipelines.dedup import EXACT, NEAR, _signature_rows, read_removals
from pipelines.plan import WorkUnit
from pipelines.stream import stream_units
from planted_duplicates import SOURCES, write_planted

def removed_documents(out: Path) -> dict[tuple[int, int], tuple[str, str]]:
    """``(source, position in the source) -> (reason, source of the copy kept)`` of every document removed."""
    corpus = CorpusDir(out)
    plan = json.loads((out / "plan.json").read_text())["units"]
    found = {}
    for d in plan:
        unit = WorkUnit.from_dict(d)
        removals = read_removals(corpus, unit.source, unit.unit_id)
        if not removals:
            continue
        starts = _line_starts(Path(urlparse(unit.slice.uri).path))
        for position, record in enumerate(read_slice(unit.slice, "text")):
            if position in removals:
                found[(SOURCES.index(unit.source), starts[record.location])] = removals[position]
    return found


def _line_starts(path: Path) -> dict[int, int]:
    """Byte offset of each line of one of a source's files -> the document's position in the whole source."""
    name, i = path.stem.rsplit("-", 1)
    before = sum(len(path.with_name(f"{name}-{j}.jsonl").read_bytes().splitlines()) for j in range(int(i)))
    starts, offset = {}, 0
    for line_number, line in enumerate(path.read_bytes().splitlines(keepends=True)):
        starts[offset] = before + line_number
        offset += len(line)
    return starts


@pytest.fixture
def planted(planted_corpus):
    """The session's planted corpus (tests/conftest.py): its build result, documents and plants."""
    return planted_corpus


def test_planted_exact_and_near_copies_go_far_copies_and_originals_stay(planted):
    result, documents, plants = planted
    assert result.status == "complete"
    removed = removed_documents(result.out_dir)
    by_copy = {p.copy: p for p in plants}
    exact = [p for p in plants if p.kind == "exact"]
    near = [p for p in plants if p.kind != "exact" and p.jaccard >= 0.9]
    far = [p for p in plants if p.kind != "exact" and p.jaccard <= 0.5]
    assert len(exact) == 20 and len(near) >= 30 and len(far) >= 50
    assert all(removed.get(p.copy, ("",))[0] == EXACT for p in exact)
    assert sum(removed.get(p.copy, ("",))[0] == NEAR for p in near) >= 0.95 * len(near)
    assert sum(p.copy in removed for p in far) <= 0.02 * len(far)
    assert all(key in by_copy for key in removed), "only planted copies are removed, never an original"
    # the kept copy is the original, the smaller key: the source listed first
    assert all(kept == SOURCES[by_copy[key].original[0]] for key, (_, kept) in removed.items())


def test_removed_documents_are_counted_per_source_with_the_source_of_the_kept_copy(planted):
    result, documents, plants = planted
    index = read_corpus_json(result.out_dir)
    removed = removed_documents(result.out_dir)
    for s, name in enumerate(SOURCES):
        totals = index["sources"][name]["totals"]
        mine = [v for k, v in removed.items() if k[0] == s]
        assert totals["dropped"].get(EXACT, 0) == sum(r == EXACT for r, _ in mine)
        assert totals["dropped"].get(NEAR, 0) == sum(r == NEAR for r, _ in mine)
        assert totals["duplicate_of"] == {kept: sum(k == kept for _, k in mine) for kept in {k for _, k in mine}}
        assert sum(totals["duplicate_tokens_of"].values()) == sum(totals["tokens_dropped"].get(r, 0)
                                                                   for r in (EXACT, NEAR)) > 0
        assert totals["documents_read"] == totals["kept"] + sum(totals["dropped"].values()) + totals["quarantined"]
    assert index["sources"]["second"]["totals"]["duplicate_of"]["first"] > 0  # the cross-source overlap


def test_the_search_reads_the_signature_rows_of_candidates_alone_and_they_are_the_files_rows(planted):
    result, _, _ = planted
    files = sorted((result.out_dir / "dedup" / "signatures").rglob("*.npz"))
    assert files
    rng = np.random.default_rng(0)
    for path in files[:3]:
        with np.load(path) as held:
            positions, whole = held["positions"], held["signatures"]
        picked = np.sort(rng.choice(len(positions), size=min(7, len(positions)), replace=False))
        assert np.array_equal(_signature_rows(path, positions[picked]), whole[picked])
    with pytest.raises(ValueError, match="no signature"):
        _signature_rows(files[0], np.array([1 << 31]))


def test_one_worker_removes_the_same_documents_and_writes_the_same_bytes(planted, tmp_path):
    result, _, _ = planted
    one = build(result.out_dir.parent / "planted-corpus.yaml", tmp_path / "one", workers=1, progress=False)
    assert _files(one.out_dir) == _files(result.out_dir)


def _files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for sub in ("shards", "dedup") for p in sorted(
        (out / sub).rglob("*")) if p.is_file()}


def _count(folder: Path, pattern: str) -> int:
    return len(list(folder.rglob(pattern))) if folder.exists() else 0


def _kill_when(manifest: Path, out: Path, reached) -> None:
    """Run the CLI build with one worker; when ``reached(out)`` holds, freeze the driver's process group (no task
    is handed out, nothing more is decided), check it still holds (the pass is not over), and SIGKILL it there."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "build", str(manifest), "--out", str(out),
                             "--workers", "1", "--no-progress"], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while not reached(out):
            assert proc.poll() is None, f"the build ended before the kill: {proc.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, "the build did not reach the kill point within 120 s"
            time.sleep(0.005)
        os.killpg(proc.pid, signal.SIGSTOP)
        assert reached(out), "the pass ended before the build could be frozen in it"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_a_build_killed_in_the_signature_pass_and_in_the_token_pass_resumes_to_the_same_bytes(planted, tmp_path):
    clean, _, _ = planted
    manifest = clean.out_dir.parent / "planted-corpus.yaml"
    units = clean.units_total
    out = tmp_path / "killed"
    _kill_when(manifest, out, lambda o: 0 < _count(o / "dedup" / "signatures", "[!.]*.npz") < units
               and not (o / "dedup" / "result.json").exists())
    _kill_when(manifest, out, lambda o: 0 < _count(o / "ledger", "[!.]*.json") < units)
    resumed = build(manifest, out, workers=2, progress=False)
    assert resumed.status == "complete" and resumed.units_skipped > 0
    assert _files(out) == _files(clean.out_dir)


def test_a_unit_that_cannot_be_signed_stops_the_build_before_any_unit_is_tokenized(tmp_path, ray_session, capsys):
    manifest, _, _ = write_planted(tmp_path)
    good = (tmp_path / "second-2.jsonl").read_bytes()
    (tmp_path / "second-2.jsonl").write_bytes(b"\xff\xfe not text at all \x00" * 100)
    assert cli_main(["build", str(manifest), "--out", str(tmp_path / "out"), "--workers", "2", "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("elm-corpus build: stopped: deduplication could not read 1 unit(s)")
    assert "second/00002-00000" in err[0]
    assert _count(tmp_path / "out" / "ledger", "*.json") == 0
    (tmp_path / "second-2.jsonl").write_bytes(good)
    assert build(manifest, tmp_path / "out", workers=2, progress=False).status == "complete"


def test_verify_finds_damaged_dedup_files_and_repair_then_build_restores_them(planted, tmp_path):
    result, _, _ = planted
    folder = Path(shutil.copytree(result.out_dir, tmp_path / "copy"))
    assert verify(folder).ok
    signatures = sorted((folder / "dedup" / "signatures").rglob("*.npz"))[3]
    removals = sorted((folder / "dedup" / "removed").rglob("*.json"))[0]
    with open(signatures, "r+b") as f:  # one bit of rot
        f.seek(200)
        byte = f.read(1)
        f.seek(200)
        f.write(bytes([byte[0] ^ 1]))
    removals.write_text(removals.read_text().replace("duplicate_", "duplicate-"))
    found = verify(folder)
    assert not found.ok and not found.damaged  # the folder's files, not a unit's
    named = "\n".join(found.problems)
    assert signatures.relative_to(folder).as_posix() in named and removals.relative_to(folder).as_posix() in named
    assert found.next_command and "elm-corpus build" in found.next_command
    verify(folder, repair=True)
    assert not signatures.exists() and not (folder / "dedup" / "result.json").exists()
    rebuilt = build(result.out_dir.parent / "planted-corpus.yaml", folder, workers=2, progress=False)
    assert rebuilt.status == "complete" and rebuilt.units_run == 0
    assert _files(folder) == _files(result.out_dir) and verify(folder).ok


def test_a_dedup_build_on_the_s3_server_writes_the_local_builds_bytes(planted, s3_server):
    result, _, _ = planted
    uri = f"{s3_server.bucket('elm-dedup')}/planted"
    remote = build(result.out_dir.parent / "planted-corpus.yaml", uri, workers=2, progress=False)
    assert remote.status == "complete"
    root = location.at(uri)
    keys = [k for k in location.list_files(root) if k.split("/")[0] in ("shards", "dedup")]
    assert {k: location.read_bytes(root / k) for k in keys} == _files(result.out_dir)
    assert verify(uri).ok


def test_elm_corpus_dedup_then_a_live_stream_leaves_out_what_the_build_leaves_out(planted, tmp_path, monkeypatch,
                                                                                  capsys):
    from corpus.mixing.corpus_source import CorpusError
    from pipelines.live_corpus import LiveCorpus
    from stream_chunks import stream_chunks
    monkeypatch.setenv("ELM_CORPUS_DATA", str(tmp_path))
    manifest = planted[0].out_dir.parent / "planted-corpus.yaml"
    live = LiveCorpus.open(str(manifest), workers=2)
    planned = {"all": [u for name in SOURCES for u in stream_units(live.manifest, name)]}
    with pytest.raises(CorpusError, match=r"run 'elm-corpus dedup .*planted-corpus.yaml' .* first"):
        live._removals(planned)

    assert cli_main(["dedup", str(manifest), "--workers", "2", "--no-progress"]) == 0
    folder = tmp_path / "corpora" / "planted-corpus"
    assert "removes 20 exact and 60 near duplicates" in capsys.readouterr().out
    assert (folder / "dedup" / "result.json").exists() and not (folder / "ledger").exists()
    dedup_dir = live._removals(planned)
    with pytest.raises(CorpusError, match="--stream-unit-bytes"):
        LiveCorpus.open(str(manifest), workers=2, unit_bytes=60_000)._removals(
            {"all": stream_units(live.manifest, "second", unit_bytes=60_000)})

    # the build of that folder goes on from the search (nothing signed again), and the stream serves its chunks
    signed = {p: p.stat().st_mtime_ns for p in (folder / "dedup").rglob("*") if p.is_file()}
    assert build(manifest, folder, workers=2, progress=False).status == "complete"
    assert {p: p.stat().st_mtime_ns for p in signed} == signed
    for name in SOURCES:
        built = [s.chunk(i) for s in source_shards(folder, name) for i in range(len(s))]
        streamed = list(stream_chunks(manifest, name, workers=2, dedup_dir=dedup_dir))
        assert len(streamed) == len(built) > 0 and all(np.array_equal(a, b) for a, b in zip(streamed, built))


def test_validate_says_what_the_dedup_block_removes(planted, capsys):
    assert cli_main(["validate", str(planted[0].out_dir.parent / "planted-corpus.yaml")]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        "  dedup: exact (the same normalised words) and near (MinHash LSH: Jaccard >= 0.8 on word 5-gram shingles, "
        "128 permutations), across sources (scope corpus)")
