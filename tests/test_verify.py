"""Integrity: `elm-corpus verify` finds every kind of damage and names the shard, `--repair` plus the same build
restores the bytes, stats calls a damaged corpus damaged, the sampler refuses an id outside the vocabulary, and
a full disk stops the build with one line while keeping the finished units.

Every test works on a copy of the session's sample build; the shared folder is never touched.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shlex
import shutil
from itertools import islice
from pathlib import Path

import numpy as np
import pytest

from corpus.store import files
from corpus.store.layout import CorpusDir, CorpusWriteError
from corpus.store.verify import verify
from pipelines.cli import main as cli_main

REPO = Path(__file__).resolve().parent.parent
OPENELM = REPO / "manifests" / "openelm.yaml"
VOCAB = 32000  # the default tokenizer's pieces, as the sample's corpus.json records them


# ---------------------------------------------------------------- corpora and damage

@pytest.fixture(scope="module")
def pristine(sample_corpus, tmp_path_factory) -> Path:
    """A private copy of the session's sample build, never modified: the source of every other copy."""
    return copy(Path(sample_corpus.out_dir), tmp_path_factory.mktemp("pristine") / "openelm-sample")


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".build.lock"))
    return dst


def units(folder: Path) -> list[tuple[str, str]]:
    """Finished units, one per source first (so each damage below lands in its own source), then the rest."""
    all_units = sorted(CorpusDir(folder).ledger_units())
    firsts = {}
    for source, unit in all_units:
        firsts.setdefault(source, (source, unit))
    return list(firsts.values()) + [u for u in all_units if u not in firsts.values()]


def stem(folder: Path, unit: tuple[str, str]) -> Path:
    return folder / "shards" / unit[0] / unit[1]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def put_out_of_vocabulary_id(folder: Path, unit: tuple[str, str]) -> int:
    """Set one token of the unit's second chunk to VOCAB and update every record's sha256, so that only the
    vocabulary check can tell; return the token's offset in the .bin."""
    from corpus.store.shards import Shard
    offset = int(Shard.open(stem(folder, unit)).chunk_lengths()[0]) + 5
    bin_path = stem(folder, unit).with_suffix(".bin")
    tokens = np.fromfile(bin_path, dtype="<u2")
    tokens[offset] = VOCAB
    tokens.tofile(bin_path)
    digest = sha256(bin_path)
    for path in (stem(folder, unit).with_suffix(".json"), folder / "ledger" / unit[0] / f"{unit[1]}.json"):
        record = json.loads(path.read_text())
        record["sha256_bin"] = digest
        path.write_text(json.dumps(record))
    index = json.loads((folder / "corpus.json").read_text())
    for shard_line in index["sources"][unit[0]]["shards"]:
        if shard_line["unit"] == unit[1]:
            shard_line["sha256_bin"] = digest
    (folder / "corpus.json").write_text(json.dumps(index))
    return offset


def damage_every_way(folder: Path) -> dict[str, tuple[str, str]]:
    """One damaged unit per kind of damage, each in a different source."""
    flipped, truncated, wrong_idx, out_of_vocab, unledgered, idx_donor = units(folder)[:6]
    bin_path = stem(folder, flipped).with_suffix(".bin")
    data = bytearray(bin_path.read_bytes())
    data[len(data) // 2] ^= 0x40
    bin_path.write_bytes(bytes(data))
    bin_path = stem(folder, truncated).with_suffix(".bin")
    bin_path.write_bytes(bin_path.read_bytes()[:-2])
    # a valid index, of another unit: it disagrees with this unit's .bin
    shutil.copy(stem(folder, idx_donor).with_suffix(".idx"), stem(folder, wrong_idx).with_suffix(".idx"))
    put_out_of_vocabulary_id(folder, out_of_vocab)
    (folder / "ledger" / unledgered[0] / f"{unledgered[1]}.json").unlink()
    return {"flipped_byte": flipped, "truncated_bin": truncated, "wrong_idx": wrong_idx,
            "out_of_vocabulary": out_of_vocab, "missing_ledger_entry": unledgered}


@pytest.fixture(scope="module")
def damaged(pristine, tmp_path_factory):
    folder = copy(pristine, tmp_path_factory.mktemp("damaged") / "openelm-sample")
    kinds = damage_every_way(folder)
    return folder, kinds, verify(folder)


def checksums(folder: Path) -> dict[str, str]:
    found = [p for sub in ("shards", "quarantine") for p in (folder / sub).rglob("*") if p.is_file()]
    return {p.relative_to(folder).as_posix(): sha256(p) for p in sorted(found)}


# ---------------------------------------------------------------- verify

def test_verify_passes_the_clean_sample_corpus_checking_every_token(pristine, tmp_path, capsys):
    folder = copy(pristine, tmp_path / "clean")
    assert cli_main(["verify", str(folder), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    index = json.loads((folder / "corpus.json").read_text())
    assert got["ok"] and got["damaged"] == [] and got["vocab_size"] == VOCAB
    assert got["units_checked"] == len(json.loads((folder / "plan.json").read_text())["units"])
    assert got["tokens_checked"] == index["totals"]["tokens"]


@pytest.mark.parametrize("kind, says", [
    ("flipped_byte", ".bin has sha256"),
    ("truncated_bin", ".bin is "),
    ("wrong_idx", ".idx does not agree with"),
    ("out_of_vocabulary", f"token id {VOCAB} at token offset"),
    ("missing_ledger_entry", "but the unit has no ledger entry"),
])
def test_each_damage_is_caught_and_names_its_shard(damaged, kind, says):
    folder, kinds, result = damaged
    source, unit = kinds[kind]
    [found] = [d for d in result.damaged if (d.source, d.unit) == (source, unit)]
    assert found.shard == f"shards/{source}/{unit}"
    assert any(says in p for p in found.problems), found.problems


def test_nothing_but_the_damaged_units_is_reported(damaged):
    folder, kinds, result = damaged
    assert sorted((d.source, d.unit) for d in result.damaged) == sorted(kinds.values())


def test_an_out_of_vocabulary_id_with_matching_hashes_is_caught_by_the_vocabulary_alone(damaged):
    folder, kinds, result = damaged
    [found] = [d for d in result.damaged if (d.source, d.unit) == kinds["out_of_vocabulary"]]
    assert len(found.problems) == 1 and "outside the tokenizer's vocabulary (32,000 ids)" in found.problems[0]


def test_the_cli_lists_each_damaged_shard_and_exits_1(damaged, capsys):
    folder, kinds, _ = damaged
    assert cli_main(["verify", str(folder)]) == 1
    out = capsys.readouterr().out
    for source, unit in kinds.values():
        assert f"{source}/{unit}  shards/{source}/{unit}" in out
    assert "5 damaged unit(s)" in out and f"elm-corpus verify {folder} --repair" in out


def test_verify_of_a_folder_that_is_not_a_corpus_exits_2(tmp_path, capsys):
    assert cli_main(["verify", str(tmp_path)]) == 2
    assert "is not a corpus folder" in capsys.readouterr().err


def test_verify_while_a_build_holds_the_folder_is_refused_with_exit_3(pristine, tmp_path, capsys):
    folder = copy(pristine, tmp_path / "busy")
    with CorpusDir(folder).exclusive():  # what a running build holds
        assert cli_main(["verify", str(folder)]) == 3
    assert "another build is writing" in capsys.readouterr().err


def test_repair_then_the_printed_build_restores_byte_identical_shards(pristine, tmp_path, capsys):
    folder = copy(pristine, tmp_path / "openelm-sample")
    kinds = damage_every_way(folder)
    assert cli_main(["verify", str(folder), "--repair"]) == 1
    out = capsys.readouterr().out
    command = next(line.strip() for line in out.splitlines() if line.strip().startswith("elm-corpus build "))
    for source, unit in kinds.values():  # pending now: no ledger entry, no files
        assert not (folder / "ledger" / source / f"{unit}.json").exists()
        assert not any(stem(folder, (source, unit)).with_suffix(s).exists() for s in (".bin", ".idx", ".json"))
    assert cli_main(["verify", str(folder)]) == 0  # pending units are not damage
    said = capsys.readouterr().out
    planned = len(json.loads((folder / "plan.json").read_text())["units"])
    assert f"{len(kinds)} of {planned} units await a build. To build them:" in said
    assert f"  {command}" in said.splitlines() and "ok: every shard" not in said

    assert cli_main([*shlex.split(command)[1:], "--no-progress"]) == 0
    assert "(" + f"{len(json.loads((folder / 'plan.json').read_text())['units']) - 5} already done, 5 run" \
        in capsys.readouterr().out
    assert checksums(folder) == checksums(pristine)
    assert verify(folder).ok


# ---------------------------------------------------------------- stats

def test_stats_calls_a_corpus_with_a_truncated_shard_damaged_and_points_to_verify(pristine, tmp_path, capsys):
    folder = copy(pristine, tmp_path / "openelm-sample")
    source, unit = units(folder)[0]
    bin_path = stem(folder, (source, unit)).with_suffix(".bin")
    bin_path.write_bytes(bin_path.read_bytes()[:-2])
    assert cli_main(["stats", str(folder), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["corpus"]["status"] == "damaged" and got["corpus"]["recorded_status"] == "complete"
    [d] = got["damaged_units"]
    assert (d["source"], d["unit"], d["shard"]) == (source, unit, f"shards/{source}/{unit}")
    assert cli_main(["stats", str(folder)]) == 0
    text = capsys.readouterr().out
    assert "status damaged" in text and f"elm-corpus verify {folder}" in text


def test_the_report_carries_the_damaged_status(pristine, tmp_path, capsys):
    folder = copy(pristine, tmp_path / "openelm-sample")
    source, unit = units(folder)[0]
    stem(folder, (source, unit)).with_suffix(".idx").unlink()
    assert cli_main(["stats", str(folder), "--report", str(tmp_path / "report")]) == 0
    page = (tmp_path / "report" / "index.html").read_text()
    assert '<span class="status damaged">damaged</span>' in page and f"{source}/{unit}" in page
    assert json.loads((tmp_path / "report" / "stats.json").read_text())["corpus"]["status"] == "damaged"


# ---------------------------------------------------------------- the sampler

def test_the_sampler_refuses_an_id_outside_the_vocabulary_naming_shard_and_offset(pristine, tmp_path):
    from corpus.mixing.sampler import MixtureSampler
    folder = copy(pristine, tmp_path / "openelm-sample")
    unit = units(folder)[0]
    offset = put_out_of_vocabulary_id(folder, unit)
    sampler = MixtureSampler(folder, sequence_length=256, weights={unit[0]: 1.0}, val_fraction=0, batch_size=4)
    tokens = json.loads((folder / "corpus.json").read_text())["sources"][unit[0]]["totals"]["tokens"]
    with pytest.raises(ValueError) as refused:
        for _ in islice(sampler.batches(), tokens // (4 * 256) + 2):  # one pass over the source is enough
            pass
    message = str(refused.value)
    assert message.startswith(f"{stem(folder, unit).with_suffix('.bin')}: token id {VOCAB} at token offset {offset} ")
    assert "elm-corpus verify" in message


# ---------------------------------------------------------------- a full disk

def _fails_when(monkeypatch, name_starts: str, folder: Path):
    """Make the low-level write of files.py fail with ENOSPC for temporary files named ``.<name_starts>...`` in
    ``folder``, as a full disk would; every other write goes through."""
    real = files.write_synced

    def write_synced(fd, data):
        path = Path(os.readlink(f"/proc/self/fd/{fd}"))
        if path.parent == folder and path.name.startswith(f".{name_starts}"):
            os.close(fd)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)
    monkeypatch.setattr(files, "write_synced", write_synced)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="finds a descriptor's file through /proc")
def test_a_full_disk_in_a_worker_stops_the_build_naming_the_file_and_keeps_finished_units(
        pristine, tmp_path, monkeypatch):
    import pipelines.build
    from pipelines.build import build
    from pipelines.worker import execute_unit
    folder = copy(pristine, tmp_path / "openelm-sample")
    corpus = CorpusDir(folder)
    plan = json.loads((folder / "plan.json").read_text())["units"]
    first, full, never = [(u["source"], u["unit"]) for u in plan[:3]]  # the build takes pending units in plan order
    for unit in (first, full, never):
        corpus.forget_unit(*unit)
    _fails_when(monkeypatch, f"{full[1]}.json.", folder / "ledger" / full[0])

    def in_process(job, pending, workers, stop=None):  # Ray's workers would not see the patched write
        for unit in pending:
            if stop is not None and stop():
                return
            yield execute_unit(job, unit.to_dict())
    monkeypatch.setattr(pipelines.build, "run_units", in_process)
    with pytest.raises(CorpusWriteError) as stopped:
        build(OPENELM, folder, sample=True, progress=False)
    ledger_path = folder / "ledger" / full[0] / f"{full[1]}.json"
    assert str(stopped.value).startswith(f"no space left on the device writing {ledger_path}: free space on /")
    assert str(stopped.value).endswith("then rerun the same build: finished units are kept")
    assert corpus.is_done(*first) and not corpus.is_done(*full) and not corpus.is_done(*never)
    assert not stem(folder, full).with_suffix(".bin").exists()  # a unit the disk stopped leaves no files
    assert not corpus.failed_path(*full).exists()  # nor a failure: the unit was not at fault
    assert json.loads((folder / "corpus.json").read_text())["status"] == "partial"

    monkeypatch.undo()
    resumed = build(OPENELM, folder, sample=True, workers=2, progress=False)
    assert resumed.status == "complete" and resumed.units_run == 2
    assert checksums(folder) == checksums(pristine)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="finds a descriptor's file through /proc")
def test_a_full_disk_on_the_drivers_write_is_one_line_and_exit_4(pristine, tmp_path, monkeypatch, capsys):
    folder = copy(pristine, tmp_path / "openelm-sample")
    _fails_when(monkeypatch, "corpus.json.", folder)
    code = cli_main(["build", str(OPENELM), "--sample", "--out", str(folder), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 4 and err.count("\n") == 1
    assert err.startswith(f"elm-corpus build: stopped: no space left on the device writing {folder / 'corpus.json'}")
    assert len(CorpusDir(folder).ledger_units()) == len(json.loads((folder / "plan.json").read_text())["units"])
