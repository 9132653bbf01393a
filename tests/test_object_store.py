"""Corpora on object storage: build, verify, stats, resume and training against a real S3 server.

The server is moto's, over HTTP on a local port (the session's ``s3_server``), and the client is
s3fs, configured only by the ``AWS_*`` variables the fixture sets. The build goes through the
real CLI function and the session's Ray; its shards are compared byte for byte with the
session's local sample build.
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from corpus.inspection.stats import collect, quarantine_examples
from corpus.manifest import load_manifest
from corpus.store import location
from corpus.store.cache import cache_corpus
from corpus.store.layout import CorpusDir
from corpus.tokenizer.tokenizer import Tokenizer
from model.cli import cli_train
from model.train.config import TrainConfig
from model.train.data import TrainingData, resolve_corpus
from model.train.distributed import Cluster
from pipelines.build import build
from pipelines.cli import main as cli_main
from pipelines.plan import WorkUnit
from pipelines.worker import BuildJob, UnitJob, execute_unit

OPENELM = Path(__file__).resolve().parent.parent / "manifests" / "openelm.yaml"
BUCKET = "elm-corpora"


@pytest.fixture(scope="module")
def s3_sample(s3_server, sample_corpus, sample_mirror) -> str:
    """`elm-corpus build manifests/openelm.yaml --sample --out s3://elm-corpora/openelm-sample`, once per module.

    ``ELM_CORPUS_DATA`` points ``--sample`` at the session's mirror, so the inputs are the local build's files.
    """
    uri = f"{s3_server.bucket(BUCKET)}/openelm-sample"
    patch = pytest.MonkeyPatch()
    patch.setenv("ELM_CORPUS_DATA", str(sample_mirror.parent))
    try:
        code = cli_main(["build", str(OPENELM), "--sample", "--out", uri, "--workers", "2", "--no-progress"])
    finally:
        patch.undo()
    assert code == 0
    return uri


def unit_files(root) -> dict[str, bytes]:
    """Every shard file (.bin, .idx, sidecar) and quarantine file of a corpus, local or on the store, by key."""
    root = location.at(root)
    keys = [k for k in location.list_files(root) if k.split("/")[0] in ("shards", "quarantine")
            and not k.rsplit("/", 1)[-1].startswith(".")]
    return {k: location.read_bytes(root / k) for k in keys}


def copy_of(uri: str, name: str) -> str:
    """A copy of the corpus at ``uri`` under another prefix of the bucket (server-side copies)."""
    target = f"s3://{BUCKET}/{name}"
    location.at(uri).fs.copy(location.at(uri).path, location.at(target).path, recursive=True)
    return target


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once it is closed


@pytest.fixture
def unreachable_store(s3_server, monkeypatch):
    """The AWS_* settings (credentials from the session server) of a store nothing answers at, one attempt per request."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")


# ---------------------------------------------------------------- build, verify, stats

def test_a_sample_build_on_s3_holds_the_local_builds_bytes_and_verify_passes_it(s3_sample, sample_corpus, capsys):
    local, remote = unit_files(sample_corpus.out_dir), unit_files(s3_sample)
    assert sum(k.endswith(".bin") for k in local) == sample_corpus.units_total
    assert remote.keys() == local.keys() and remote == local
    ledger = CorpusDir(s3_sample).ledger_units()
    assert len(ledger) == sample_corpus.units_total
    assert not location.exists(CorpusDir(s3_sample).lock_path)  # the build released its lock object

    capsys.readouterr()
    assert cli_main(["verify", s3_sample, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] and result["units_checked"] == sample_corpus.units_total
    assert result["bytes_hashed"] == sum(len(v) for k, v in local.items() if k.endswith((".bin", ".idx")))


def test_units_taken_from_a_local_corpus_into_s3_and_back_keep_their_bytes(s3_server, s3_sample, sample_corpus,
                                                                            sample_mirror, tmp_path):
    """--reuse across kinds of place: every unit copied whole (no link reaches a store), no unit built (no Ray)."""
    uri = f"{s3_server.bucket(BUCKET)}/reused"
    into_store = build(OPENELM, uri, sample=True, progress=False, mirror_root=sample_mirror,
                       reuse=[sample_corpus.out_dir])
    back = build(OPENELM, tmp_path / "back", sample=True, progress=False, mirror_root=sample_mirror, reuse=[s3_sample])
    for result in (into_store, back):
        assert result.status == "complete" and result.units_run == 0
        assert result.units_reused == sample_corpus.units_total
    assert unit_files(uri) == unit_files(sample_corpus.out_dir) == unit_files(tmp_path / "back")


def test_inspect_of_the_s3_corpus_draws_the_local_corpus_chunks(s3_sample, sample_corpus, capsys):
    from corpus.inspection.chunks import draw_chunks
    remote, local = draw_chunks(s3_sample, n=5, seed=3), draw_chunks(sample_corpus.out_dir, n=5, seed=3)
    strip = lambda views: [{k: v for k, v in c.to_dict().items() if k != "shard"} for c in views]  # noqa: E731
    assert strip(remote) == strip(local) and len(remote) == 5
    assert all(str(c.shard).startswith(s3_sample) for c in remote)
    assert cli_main(["inspect", s3_sample, "-n", "2", "--seed", "3"]) == 0
    assert remote[0].text[:40] in capsys.readouterr().out


def test_stats_of_the_s3_corpus_report_the_local_corpus_totals(s3_sample, sample_corpus, capsys, tmp_path):
    local, remote = collect(sample_corpus.out_dir).numbers, collect(s3_sample).numbers
    assert remote["corpus"]["status"] == "complete" and remote["corpus"]["build_running"] is False
    for numbers in (local, remote):
        del numbers["total"]["bytes_on_disk"]["folder"]  # ledger entries and corpus.json carry hosts and times
    assert remote["total"] == local["total"] and remote["sources"] == local["sources"]
    capsys.readouterr()
    assert cli_main(["stats", s3_sample, "--json", "--report", str(tmp_path / "report")]) == 0
    assert json.loads(capsys.readouterr().out)["total"]["tokens"] == local["total"]["tokens"]
    assert (tmp_path / "report" / "index.html").is_file()
    examples = quarantine_examples(s3_sample)  # the report's examples, read from the store
    assert examples and examples == quarantine_examples(sample_corpus.out_dir)


def test_an_interrupted_s3_build_resumes_and_redoes_only_the_units_without_a_ledger_entry(
        s3_sample, sample_corpus, sample_mirror):
    uri = copy_of(s3_sample, "resumed")
    corpus = CorpusDir(uri)
    lost = sorted(corpus.ledger_units())[::7][:3]
    for source, unit in lost:  # as a build killed before their ledger entries: some files there, some not
        location.remove(corpus.ledger_path(source, unit))
    location.remove(corpus.shard_stem(*lost[0]).with_suffix(".idx"))
    location.write_bytes(corpus.shard_stem(*lost[1]).with_suffix(".bin"), b"half a shard")

    resumed = build(OPENELM, uri, sample=True, workers=2, progress=False, mirror_root=sample_mirror)
    assert resumed.status == "complete" and resumed.units_run == len(lost)
    assert resumed.units_skipped == sample_corpus.units_total - len(lost)
    assert unit_files(uri) == unit_files(sample_corpus.out_dir)


def test_verify_finds_a_flipped_byte_in_an_s3_shard_and_repair_then_build_restores_it(
        s3_sample, sample_corpus, sample_mirror, capsys):
    uri = copy_of(s3_sample, "repaired")
    corpus = CorpusDir(uri)
    source, unit = next(key for key, entry in sorted(corpus.ledger_entries().items()) if entry["tokens"])
    bin_path = corpus.shard_stem(source, unit).with_suffix(".bin")
    data = bytearray(location.read_bytes(bin_path))
    data[len(data) // 2] ^= 0x01
    location.write_bytes(bin_path, bytes(data))

    capsys.readouterr()
    assert cli_main(["verify", uri, "--json"]) == 1
    damaged = json.loads(capsys.readouterr().out)["damaged"]
    assert [(d["source"], d["unit"]) for d in damaged] == [(source, unit)]
    assert any(p.startswith(f"{unit}.bin has sha256 ") for p in damaged[0]["problems"])
    assert cli_main(["verify", uri, "--repair"]) == 1 and not corpus.is_done(source, unit)
    rebuilt = build(OPENELM, uri, sample=True, workers=2, progress=False, mirror_root=sample_mirror)
    assert rebuilt.units_run == 1 and unit_files(uri) == unit_files(sample_corpus.out_dir)
    assert cli_main(["verify", uri]) == 0


def test_a_lock_object_refuses_a_second_build_and_a_dead_local_builds_lock_is_taken_over(
        s3_sample, sample_mirror, capsys):
    uri = copy_of(s3_sample, "locked")
    lock = CorpusDir(uri).lock_path
    location.write_json(lock, {"build_id": "b1", "host": "elsewhere", "pid": 4242, "started_at": "then"})
    assert cli_main(["build", str(OPENELM), "--sample", "--out", uri, "--no-progress"]) == 3
    assert "build b1 on elsewhere, pid 4242, since then" in capsys.readouterr().err

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a build of this host that died without removing its lock
    location.write_json(lock, {"build_id": "b2", "host": socket.gethostname(), "pid": gone.pid})
    resumed = build(OPENELM, uri, sample=True, progress=False, mirror_root=sample_mirror)
    assert resumed.status == "complete" and resumed.units_run == 0 and not location.exists(lock)


# ---------------------------------------------------------------- a store that does not answer

def test_an_unreachable_store_stops_the_build_with_one_line_naming_the_object(unreachable_store, capsys):
    uri = f"s3://{BUCKET}/never"
    code = cli_main(["build", str(OPENELM), "--sample", "--out", uri, "--no-progress"])
    err = capsys.readouterr().err
    assert code == 4 and err.count("\n") == 1
    assert err.startswith(f"elm-corpus build: stopped: lost the connection to the store writing {uri}/.build.lock")
    assert err.rstrip().endswith("then rerun the same build: finished units are kept")
    assert "AWS_ENDPOINT_URL" in err


def test_a_worker_that_loses_the_store_stops_its_unit_instead_of_failing_it(sample_corpus, unreachable_store):
    plan = json.loads((Path(sample_corpus.out_dir) / "plan.json").read_text())["units"]
    manifest = load_manifest(OPENELM)
    job = BuildJob(UnitJob.of(manifest, Tokenizer(manifest.tokenizer.model, manifest.text.normalize)),
                   f"s3://{BUCKET}/lost")
    summary = execute_unit(job, plan[0])
    unit = WorkUnit.from_dict(plan[0])
    assert summary["status"] == "stopped" and summary["unreachable"]
    assert summary["path"].startswith(f"s3://{BUCKET}/lost/") and f"/{unit.source}/{unit.unit_id}." in summary["path"]
    assert "Could not connect" in summary["detail"]


def test_verify_and_stats_of_an_unreachable_store_say_so_in_one_line(s3_sample, unreachable_store, capsys):
    for command in ("verify", "stats"):
        assert cli_main([command, s3_sample]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"elm-corpus {command}: error: cannot reach the store for")


# ---------------------------------------------------------------- training through the local cache

def test_training_batches_from_the_s3_corpus_equal_the_local_corpus_batches(s3_sample, sample_corpus, tmp_path):
    remote = resolve_corpus(s3_sample, tmp_path / "cache")
    local = resolve_corpus(str(sample_corpus.out_dir))
    assert remote.folder.is_relative_to(tmp_path / "cache") and remote.describe()["dir"] == s3_sample
    assert remote.fingerprint == local.fingerprint and remote.tokenizer == local.tokenizer
    cfg = TrainConfig(sequence_length=64, micro_batch_size=4)
    cluster = Cluster(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    remote, local = TrainingData(remote), TrainingData(local)
    theirs, ours = remote.train_batches(cfg, cluster), local.train_batches(cfg, cluster)
    for _ in range(3):
        assert all(torch.equal(a, b) for a, b in zip(theirs.next(), ours.next()))
    (held_theirs, _), (held_ours, _) = remote.held_out(cfg, cluster), local.held_out(cfg, cluster)
    assert held_theirs and len(held_theirs) == len(held_ours)
    assert all(torch.equal(a, b) for x, y in zip(held_theirs, held_ours) for a, b in zip(x, y))


def test_the_local_copy_holds_only_the_sources_a_run_samples_and_serves_the_local_corpus_batches(
        s3_sample, sample_corpus, tmp_path):
    names = list(json.loads((sample_corpus.out_dir / "corpus.json").read_text())["sources"])
    weights = {names[0]: 1.0, names[-1]: 2.0}
    remote = resolve_corpus(s3_sample, tmp_path / "cache", weights=weights)
    copied = {p.parent.name for p in (remote.folder / "shards").rglob("*") if p.suffix in (".bin", ".idx")}
    assert copied == {names[0], names[-1]}
    cfg = TrainConfig(sequence_length=64, micro_batch_size=4, weights=weights)
    cluster = Cluster(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    theirs = TrainingData(remote).train_batches(cfg, cluster)
    ours = TrainingData(resolve_corpus(str(sample_corpus.out_dir))).train_batches(cfg, cluster)
    for _ in range(3):
        assert all(torch.equal(a, b) for a, b in zip(theirs.next(), ours.next(), strict=True))
    # the same corpus to the sampler's state (chunks of unread sources from corpus.json, not from their shards)
    assert theirs.state_dict() == ours.state_dict()


def test_a_corrupt_or_half_downloaded_cached_shard_is_fetched_again(s3_sample, tmp_path):
    root, cache = location.at(s3_sample), tmp_path / "cache"
    first = cache_corpus(root, cache)
    assert first.downloaded > 0 and first.reused == 0
    bins = sorted(p for p in (first.folder / "shards").rglob("*.bin") if p.stat().st_size)
    flipped, cut = bins[0], bins[1].with_suffix(".idx")
    good = {p: p.read_bytes() for p in (flipped, cut)}
    with open(flipped, "r+b") as f:  # one bit of rot
        f.seek(10)
        byte = f.read(1)
        f.seek(10)
        f.write(bytes([byte[0] ^ 1]))
    cut.write_bytes(good[cut][:len(good[cut]) // 2])  # a download killed half-way
    (cut.parent / f".{cut.name}.x1y2.tmp").write_bytes(b"left by a killed download")

    again = cache_corpus(root, cache)
    assert again.downloaded == 2 and again.reused == first.downloaded - 2
    assert all(p.read_bytes() == data for p, data in good.items())
    assert not list(cut.parent.glob(".*.tmp"))


def test_elm_train_runs_on_an_s3_corpus_and_records_its_uri(s3_sample, tmp_path):
    run = tmp_path / "run"
    assert cli_train(["--corpus", s3_sample, "--corpus-cache", str(tmp_path / "cache"), "--out", str(run),
                      "--steps", "2", "--model", "tiny", "--sequence-length", "32", "--micro-batch-size", "4",
                      "--global-batch-tokens", "128", "--threads", "1", "--no-progress"]) == 0
    corpus = json.loads((run / "run.json").read_text())["corpus"]
    assert corpus["dir"] == s3_sample and Path(corpus["cache"]).is_relative_to(tmp_path / "cache")
