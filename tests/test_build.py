"""`elm-corpus build` on small real inputs of every format: shards, accounting, quarantine, resume."""
from __future__ import annotations

import gzip
import json
import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import psutil
import pytest
import zstandard

from pipelines.cli import main as cli_main
from corpus.text.readers import read_slice, Slice
from corpus.store.files import sha256_file
from corpus.store.layout import read_corpus_json
from corpus.store.shards import Shard
from corpus.text.rules import split_words
from pipelines.build import BuildRefused, build

STDLIB = Path(json.__file__).parent.parent  # real text that ships with Python
SMALL_UNITS = 150_000


def stdlib_texts(start: int, n: int) -> list[str]:
    return [p.read_text(errors="replace") for p in sorted(STDLIB.glob("*.py"))[start:start + n]]


def jsonl(texts: list[str]) -> bytes:
    return "".join(json.dumps({"text": t}) + "\n" for t in texts).encode()


BAD_LINES = [  # (line, reason)
    (b'{"text": "an unfinished record\n', "broken_json"),
    (b'{"text": "caf\xe9 au lait"}\n', "invalid_utf8"),
    (b'{"title": "no text here"}\n', "missing_text"),
]


def write_manifest(path: Path, name: str, sources: list[str], **text_rules) -> Path:
    rules = "".join(f"  {k}: {v}\n" for k, v in text_rules.items())
    path.write_text(f"name: {name}\n" + (f"text:\n{rules}" if rules else "") + "sources:\n" + "".join(sources))
    return path


def source_yaml(name: str, group: str, pattern: str, fmt: str, field: str = "text") -> str:
    return (f"  - name: {name}\n    group: {group}\n    upstream: {{files: [\"{pattern}\"]}}\n"
            f"    format: {fmt}\n    text_field: {field}\n    tokens: 1M\n")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """One source per format; the books file carries three bad lines, one dolma file is cut short."""
    root = tmp_path_factory.mktemp("inputs")
    books = stdlib_texts(0, 30)
    (root / "books.jsonl").write_bytes(jsonl(books[:10]) + b"".join(l for l, _ in BAD_LINES) + jsonl(books[10:]))
    pq.write_table(pa.table({"content": stdlib_texts(30, 24)}), root / "web.parquet", row_group_size=4)
    (root / "dolma").mkdir()
    (root / "dolma" / "a.json.gz").write_bytes(gzip.compress(jsonl(stdlib_texts(54, 12))))
    cut = gzip.compress(jsonl(stdlib_texts(66, 12)))
    (root / "dolma" / "b.json.gz").write_bytes(cut[: len(cut) * 2 // 3])
    zc = zstandard.ZstdCompressor()
    (root / "slim.jsonl.zst").write_bytes(zc.compress(jsonl(stdlib_texts(78, 8))) + zc.compress(jsonl(stdlib_texts(86, 8))))
    (root / "many").mkdir()
    for i in range(10):
        (root / "many" / f"part-{i:02d}.jsonl").write_bytes(jsonl(stdlib_texts(94 + 6 * i, 6)))
    write_manifest(root / "mixed.yaml", "mixed", [
        source_yaml("books", "redpajama", f"{root}/books.jsonl", "jsonl"),
        source_yaml("web", "refinedweb", f"{root}/web.parquet", "parquet", "content"),
        source_yaml("dolma", "dolma", f"{root}/dolma/*.json.gz", "json.gz"),
        source_yaml("slim", "redpajama", f"{root}/slim.jsonl.zst", "jsonl.zst"),
    ])
    write_manifest(root / "many.yaml", "many", [source_yaml("many", "redpajama", f"{root}/many/*.jsonl", "jsonl")])
    return root


@pytest.fixture(scope="module")
def built(inputs, tmp_path_factory, ray_session):
    out = tmp_path_factory.mktemp("built") / "mixed"
    result = build(inputs / "mixed.yaml", out, workers=2, progress=False, unit_bytes=SMALL_UNITS)
    return result


def checksums(corpus_dir: Path) -> dict[str, str]:
    files = [p for sub in ("shards", "quarantine") for p in (corpus_dir / sub).rglob("*") if p.is_file()]
    return {p.relative_to(corpus_dir).as_posix(): sha256_file(p) for p in sorted(files)}


def test_every_source_yields_shards_and_the_build_completes(built):
    assert built.status == "complete" and not built.failed
    index = read_corpus_json(built.out_dir)
    assert index["status"] == "complete"
    for name in ("books", "web", "dolma", "slim"):
        src = index["sources"][name]
        assert src["units"]["done"] == src["units"]["total"] > 0
        assert src["totals"]["tokens"] > 0
    assert index["sources"]["books"]["units"]["total"] > 1  # one file spread over several units


def test_documents_read_equal_kept_plus_dropped_plus_quarantined_per_source_and_unit(built):
    index = read_corpus_json(built.out_dir)
    for name, src in index["sources"].items():
        t = src["totals"]
        assert t["documents_read"] == t["kept"] + sum(t["dropped"].values()) + t["quarantined"], name
        assert t["chunks_split"] == t["chunks_kept"] + sum(t["chunks_dropped"].values()), name
        for shard in src["shards"]:
            side = json.loads((built.out_dir / shard["json"]).read_text())
            assert side["documents_read"] == side["kept"] + sum(side["dropped"].values()) + side["quarantined"]
    assert sum(s["totals"]["documents_read"] for s in index["sources"].values()) == index["totals"]["documents_read"]


def test_documents_read_count_every_line_and_row_of_the_inputs(built):
    src = read_corpus_json(built.out_dir)["sources"]
    assert src["books"]["totals"]["documents_read"] == 30 + len(BAD_LINES)
    assert src["web"]["totals"]["documents_read"] == 24
    assert src["slim"]["totals"]["documents_read"] == 16


def test_bad_records_are_quarantined_with_reason_and_location(built, inputs):
    rows = [json.loads(line) for p in sorted((built.out_dir / "quarantine").rglob("*.jsonl"))
            for line in p.read_text().splitlines()]
    books = [r for r in rows if r["source"] == "books"]
    assert sorted(r["reason"] for r in books) == sorted(reason for _, reason in BAD_LINES)
    data = (inputs / "books.jsonl").read_bytes()
    for r in books:
        line = data[r["byte"]:data.index(b"\n", r["byte"]) + 1]
        assert line == dict((reason, l) for l, reason in BAD_LINES)[r["reason"]]
    (cut,) = [r for r in rows if r["source"] == "dolma"]
    assert cut["reason"] == "truncated_gzip" and cut["file"].endswith("b.json.gz")


def test_shards_match_their_sidecars_and_chunks_carry_bos_and_eos(built, tokenizer):
    index = read_corpus_json(built.out_dir)
    for src in index["sources"].values():
        for entry in src["shards"]:
            shard = Shard.open(built.out_dir / entry["bin"])
            side = shard.sidecar()
            assert len(shard) == side["chunks"] == entry["chunks"] == len(side["origin"]["record"])
            assert shard.num_tokens == side["tokens"]
            assert sha256_file(built.out_dir / entry["bin"]) == side["sha256_bin"] == entry["sha256_bin"]
            lengths = shard.chunk_lengths()
            assert (lengths >= 256).all()
            starts, ends = shard.offsets[:-1].astype(np.int64), shard.offsets[1:].astype(np.int64) - 1
            assert (shard.tokens[starts] == tokenizer.bos_id).all() and (shard.tokens[ends] == tokenizer.eos_id).all()


def test_a_chunks_origin_leads_back_to_its_text_in_the_input(built, tokenizer):
    shards = [Shard.open(p.with_suffix("")) for p in sorted((built.out_dir / "shards" / "books").glob("*.idx"))]
    shard, side = next((s, s.sidecar()) for s in shards if max(s.sidecar()["origin"]["part"], default=0) > 0)
    i = side["origin"]["part"].index(max(side["origin"]["part"]))  # a chunk from inside a long document
    (record,) = [r for r in read_slice(Slice.from_dict(side["input"]), "text")
                 if r.location == side["origin"]["record"][i]]
    chunk_text = split_words(record.text, 2048)[side["origin"]["part"][i]]
    assert shard.chunk(i).tolist() == tokenizer.encode([chunk_text])[0]


def test_workers_1_and_2_give_byte_identical_shards(built, inputs, tmp_path, ray_session):
    one = build(inputs / "mixed.yaml", tmp_path / "one", workers=1, progress=False, unit_bytes=SMALL_UNITS)
    assert one.status == "complete"
    assert checksums(one.out_dir) == checksums(built.out_dir)


def test_rerunning_a_finished_build_skips_every_unit(built, inputs, ray_session):
    before = checksums(built.out_dir)
    again = build(inputs / "mixed.yaml", built.out_dir, workers=2, progress=False)
    assert again.units_run == 0 and again.units_skipped == again.units_total
    assert checksums(built.out_dir) == before


def test_a_changed_manifest_is_refused_naming_what_changed(inputs, tmp_path, ray_session):
    out = tmp_path / "many"
    assert build(inputs / "many.yaml", out, workers=2, progress=False).status == "complete"
    changed = write_manifest(tmp_path / "many.yaml", "many",
                             [source_yaml("many", "redpajama", f"{inputs}/many/*.jsonl", "jsonl")], min_chars=300)
    with pytest.raises(BuildRefused, match="text rules.*--force"):
        build(changed, out, workers=2, progress=False)


def test_force_moves_the_old_build_aside_and_builds_afresh(inputs, tmp_path, ray_session):
    out = tmp_path / "many"
    first = build(inputs / "many.yaml", out, workers=2, progress=False)
    changed = write_manifest(tmp_path / "many.yaml", "many",
                             [source_yaml("many", "redpajama", f"{inputs}/many/*.jsonl", "jsonl")], min_chars=300)
    second = build(changed, out, workers=2, progress=False, force=True)
    assert second.status == "complete" and second.units_skipped == 0
    assert second.moved_aside is not None and (second.moved_aside / "plan.json").exists()
    assert read_corpus_json(out)["manifest_fingerprint"] != first.corpus["manifest_fingerprint"]


def test_reuse_takes_the_units_of_unchanged_sources_and_ends_equal_to_a_clean_build(inputs, built, tmp_path,
                                                                                      capsys, ray_session):
    """A second manifest keeps two of the first one's sources as they were, filters a third, drops the fourth and
    adds one: only the filtered and the new source are built."""
    root = str(inputs)
    changed = write_manifest(tmp_path / "changed.yaml", "changed", [
        source_yaml("books", "redpajama", f"{root}/books.jsonl", "jsonl"),
        source_yaml("web", "refinedweb", f"{root}/web.parquet", "parquet", "content"),
        source_yaml("dolma", "dolma", f"{root}/dolma/*.json.gz", "json.gz")
        + "    filters:\n      - type: c4_quality\n",
        source_yaml("many", "redpajama", f"{root}/many/*.jsonl", "jsonl"),
    ])
    out = tmp_path / "reused"
    with pytest.raises(ValueError, match=r"--reuse .*not a corpus folder"):
        build(changed, out, reuse=[tmp_path], progress=False)
    assert not out.exists()

    result = build(changed, out, workers=2, progress=False, unit_bytes=SMALL_UNITS, reuse=[built.out_dir])
    plan = json.loads((out / "plan.json").read_text())["units"]
    same = [u for u in plan if u["source"] in ("books", "web")]
    assert result.status == "complete" and result.units_reused == len(same) > 2
    assert result.units_run == len(plan) - len(same)
    ledger = {(e["source"], e["unit"]): e
              for e in (json.loads(p.read_text()) for p in (out / "ledger").rglob("*.json"))}
    assert {k for k, e in ledger.items() if e.get("reused_from") == str(built.out_dir)} == {
        (u["source"], u["unit"]) for u in same}
    assert (out / "shards/books" / f"{same[0]['unit']}.bin").stat().st_ino == (
        built.out_dir / "shards/books" / f"{same[0]['unit']}.bin").stat().st_ino  # linked, not copied
    for name in ("books", "web"):  # counts, the books file's three quarantined lines included, carried over
        assert read_corpus_json(out)["sources"][name]["totals"] == built.corpus["sources"][name]["totals"]

    clean = build(changed, tmp_path / "clean", workers=2, progress=False, unit_bytes=SMALL_UNITS)
    assert checksums(out) == checksums(clean.out_dir)  # sidecars included: they name this manifest
    assert cli_main(["verify", str(out)]) == 0
    capsys.readouterr()
    # a rerun finds everything done; a deduplicating manifest takes nothing, and says why
    assert cli_main(["build", str(changed), "--out", str(out), "--reuse", str(built.out_dir), "--no-progress"]) == 0
    assert f"({len(plan)} already done, 0 reused, 0 run)" in capsys.readouterr().out
    # the first manifest again, into the same folder: --force moves the build aside and --reuse of the folder
    # takes the units the two manifests share from there
    back = build(inputs / "mixed.yaml", out, workers=2, progress=False, unit_bytes=SMALL_UNITS, force=True,
                 reuse=[out])
    assert back.moved_aside is not None and [r.donor for r in back.reused] == [str(back.moved_aside)]
    assert back.units_reused == len(same) and checksums(out) == checksums(built.out_dir)
    deduplicating = tmp_path / "dedup.yaml"
    deduplicating.write_text(changed.read_text() + "dedup:\n  exact: true\n  near: false\n")
    again = build(deduplicating, tmp_path / "dedup", workers=2, progress=False, unit_bytes=SMALL_UNITS,
                  reuse=[built.out_dir])
    assert again.units_reused == 0 and "deduplicates" in again.reused[0].skipped


def test_an_unreadable_file_fails_its_unit_the_rest_finish_and_a_rerun_retries_it(inputs, tmp_path, ray_session):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.json.gz").write_bytes(gzip.compress(jsonl(stdlib_texts(0, 4))))
    (folder / "b.json.gz").write_bytes(b"this is not gzip data\n")
    manifest = write_manifest(tmp_path / "m.yaml", "m", [source_yaml("d", "dolma", f"{folder}/*.json.gz", "json.gz")])
    first = build(manifest, tmp_path / "out", workers=2, progress=False)
    assert first.status == "failed"
    assert [(f["unit"], "gzip" in f["error"].lower()) for f in first.failed] == [("00001-00000", True)]
    assert (tmp_path / "out" / "failed" / "d" / "00001-00000.json").exists()
    assert read_corpus_json(tmp_path / "out")["sources"]["d"]["units"] == {"total": 2, "done": 1, "failed": 1}

    (folder / "b.json.gz").write_bytes(gzip.compress(jsonl(stdlib_texts(4, 4))))
    second = build(manifest, tmp_path / "out", workers=2, progress=False)
    assert second.status == "complete" and second.units_run == 1
    assert not (tmp_path / "out" / "failed" / "d" / "00001-00000.json").exists()


def test_the_cli_exits_non_zero_listing_failed_units(tmp_path, capsys, ray_session):
    (tmp_path / "x.json.gz").write_bytes(b"not gzip")
    manifest = write_manifest(tmp_path / "m.yaml", "m", [source_yaml("d", "dolma", f"{tmp_path}/x.json.gz", "json.gz")])
    code = cli_main(["build", str(manifest), "--out", str(tmp_path / "out"), "--no-progress"])
    assert code == 1
    assert "d/00000-00000" in capsys.readouterr().err


def _ledger_count(out: Path) -> int:
    return len(list((out / "ledger").rglob("*.json"))) if (out / "ledger").exists() else 0


def _run_and_kill(manifest: Path, out: Path, total: int, driver_only: bool = False) -> tuple[int, list[int]]:
    """Start the CLI; once a new unit has finished, freeze the driver's process group (SIGSTOP: no unit is handed
    out, and corpus.json cannot be finished), check that the build has not reached its end, and SIGKILL it there;
    return units done then (a Ray worker outside the group may still finish the one unit it holds).

    ``driver_only``: SIGKILL the driver alone, as `kill -9 PID` does, and let the rest of its group go on; also
    return the pids of the Ray agents it had started, which then outlive it."""
    before = _ledger_count(out)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent.parent))
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "build", str(manifest), "--out", str(out),
                             "--workers", "1", "--no-progress"], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    agents, raylets = [], []
    try:
        while _ledger_count(out) <= before:
            assert proc.poll() is None, f"build ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, "no unit finished within 120 s"
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGSTOP)  # frozen: what is counted now is where the kill lands
        done = _ledger_count(out)
        assert before < done < total, f"the build ended before it could be killed ({done} of {total} units)"
        group = [p for p in psutil.process_iter(["cmdline"]) if _in_group(p, proc.pid)]
        agents = [p.pid for p in group if (p.info["cmdline"] or [""])[0].endswith("Agent")]
        raylets = [p for p in group if "raylet" in " ".join(p.info["cmdline"] or [])[:200]]
    finally:
        if driver_only:
            proc.kill()
            proc.wait()
            os.killpg(proc.pid, signal.SIGCONT)
            # its raylet follows it (Ray ties it to the driver); only then are the agents left without a parent
            _, alive = psutil.wait_procs(raylets, timeout=60)
            assert not alive, "the killed driver's raylet is still running after 60 s"
        else:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return _ledger_count(out), agents


def _in_group(proc: psutil.Process, group: int) -> bool:
    try:
        return os.getpgid(proc.pid) == group
    except ProcessLookupError:
        return False


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_build_killed_twice_then_rerun_equals_a_clean_build(inputs, tmp_path, ray_session):
    clean = build(inputs / "many.yaml", tmp_path / "clean", workers=2, progress=False)
    total = clean.units_total
    out = tmp_path / "killed"
    first, agents = _run_and_kill(inputs / "many.yaml", out, total, driver_only=True)
    assert agents and any(_running(pid) for pid in agents)  # its raylet is gone; Ray's agents outlive it by 60 s
    second, _ = _run_and_kill(inputs / "many.yaml", out, total)
    assert 0 < first < second < total, (first, second, total)
    # the second build stopped them before it started its own Ray (well within the minute they would linger)
    assert not [pid for pid in agents if _running(pid)]
    resumed = build(inputs / "many.yaml", out, workers=2, progress=False)
    assert resumed.status == "complete" and resumed.units_skipped >= second
    assert checksums(out) == checksums(clean.out_dir)
    assert not list(out.rglob("*.tmp"))


def test_a_temporary_renamed_away_by_a_left_over_worker_is_not_an_error(tmp_path, monkeypatch):
    """The killed build's worker can finish its rename between the listing and the unlink (seen in CI)."""
    from corpus.store import layout
    (tmp_path / ".left.json.ab12.tmp").write_bytes(b"half written")
    listed = list(os.walk(tmp_path))
    monkeypatch.setattr(layout.os, "walk", lambda root: [(d, s, n + [".renamed.json.cd34.tmp"]) for d, s, n in listed])
    assert layout.CorpusDir(tmp_path).remove_stale_temporaries() == 1
    assert not list(tmp_path.glob("*.tmp"))


def test_a_second_build_into_a_folder_being_built_is_refused(inputs, tmp_path, ray_session):
    from corpus.store.layout import CorpusDir
    with CorpusDir(tmp_path / "busy").exclusive():
        with pytest.raises(BuildRefused, match="another build is writing"):
            build(inputs / "many.yaml", tmp_path / "busy", workers=1, progress=False)


def test_a_source_that_gives_nothing_or_mostly_quarantine_is_warned_about_by_build_and_stats(inputs, tmp_path, capsys,
                                                                                              ray_session):
    rng = np.random.default_rng(0)
    (tmp_path / "photo.jsonl").write_bytes(rng.integers(0, 256, 20_000, dtype=np.uint8).tobytes())  # not text at all
    half = jsonl(stdlib_texts(0, 3)) + b"".join(line for line, _ in BAD_LINES) + b"{nope\n"  # 3 good, 4 quarantined
    (tmp_path / "half.jsonl").write_bytes(half)
    manifest = write_manifest(tmp_path / "m.yaml", "warned", [
        source_yaml("books", "redpajama", f"{inputs}/books.jsonl", "jsonl"),
        source_yaml("photo", "redpajama", f"{tmp_path}/photo.jsonl", "jsonl"),
        source_yaml("half", "redpajama", f"{tmp_path}/half.jsonl", "jsonl")])
    out = tmp_path / "out"
    assert cli_main(["build", str(manifest), "--out", str(out), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "elm-corpus build: warning: source photo keeps no tokens" in err
    assert "elm-corpus build: warning: source half 4 of its 7 records went to quarantine" in err
    assert "source books" not in err
    assert cli_main(["stats", str(out), "--json"]) == 0
    warnings = {s["name"]: s["warning"] for s in json.loads(capsys.readouterr().out)["sources"]}
    assert warnings["books"] is None and warnings["photo"].startswith("keeps no tokens")
    assert warnings["half"].startswith("4 of its 7 records went to quarantine")
    assert cli_main(["stats", str(out)]) == 0
    assert "warning source photo keeps no tokens" in capsys.readouterr().out


@pytest.mark.parametrize("read, quarantined, tokens, done, warned", [
    (10, 0, 0, 1, "keeps no tokens: all 10 records"), (0, 0, 0, 2, "keeps no tokens: it read no records"),
    (10, 5, 99, 1, "5 of its 10 records went to quarantine"), (10, 4, 99, 1, None), (0, 0, 0, 0, None)])
def test_the_warning_rule(read, quarantined, tokens, done, warned):
    from corpus.inspection.health import source_warning
    got = source_warning(read, quarantined, tokens, done)
    assert got is None if warned is None else got.startswith(warned)


def test_the_build_bar_counts_failed_units_apart_says_what_its_rates_are_and_keeps_the_summarys_clock(monkeypatch):
    import io
    from rich.console import Console
    from pipelines import views
    screen = io.StringIO()
    monkeypatch.setattr("rich.progress.get_console", lambda: Console(file=screen, width=160, force_terminal=True))
    started = time.perf_counter() - 65  # the build began 65 s ago (the summary's clock); Ray took most of it
    bar = views.BuildProgress(True, total=4, done=1, started=started)
    bar.advance({"status": "done", "documents_read": 130, "tokens": 6500})
    bar.advance({"status": "failed"})
    bar.close()
    last = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.getvalue()).replace("\r", "\n").strip().splitlines()[-1]
    assert "2/4 units" in last and "1 failed" in last, last  # the failed unit is not counted as finished
    assert re.search(r"\b2 docs read/s  100 tokens written/s\b", last), last
    assert re.search(r"0:01:0[5-9]", last), last  # counted from the build's start, as the summary is
