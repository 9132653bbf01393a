"""The project's Ray work on a real two-node Ray cluster, which then loses its worker node half-way through a build.

Both nodes run on this machine (tests/ray_cluster.py). On the one cluster, in turn: a deduplicating build to a
local folder both nodes share (its three passes spread over both nodes, the local build's bytes); a live-stream
training run (the local run's losses, step for step); and a sample build to a real S3 server (the session's
``s3_server``, moto over HTTP), which the nodes reach only through the store settings the driver sends with its
tasks (the nodes themselves are started without any), during which the worker node is removed. The unit lost with
the node is run again by Ray (a task whose worker dies is retried), so the one build finishes, byte-identical to
the session's local build.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from corpus.store import location
from corpus.store.layout import read_corpus_json
from model.cli import cli_train
from pipelines.cli import main as cli_main
from ray_cluster import TwoNodeCluster
from stream_runs import STREAM, curve, records

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "manifests" / "openelm.yaml"


def ledger_count(out: str | Path) -> int:
    """Finished units (ledger entries) of the corpus at ``out``, a folder or a URI; 0 before the build made it."""
    names = [rel.rsplit("/", 1)[-1] for rel in location.list_files(location.at(out) / "ledger")]
    return sum(1 for name in names if name.endswith(".json") and not name.startswith("."))


def unit_files(corpus_dir: str | Path) -> dict[str, str]:
    """sha256 of every shard (.bin, .idx, sidecar) and quarantine file, on a disk or a store, by relative path;
    a killed write's hidden temporary is no file."""
    root = location.at(corpus_dir)
    keys = [k for k in location.list_files(root)
            if k.split("/")[0] in ("shards", "quarantine") and not k.rsplit("/", 1)[-1].startswith(".")]
    return {k: hashlib.sha256(location.read_bytes(root / k)).hexdigest() for k in keys}


def start_cli_build(out: str | Path, address: str, mirror: Path, log: Path) -> subprocess.Popen:
    """The real CLI in its own process, driving a cluster build; ``--sample`` reads ``mirror``; output to ``log``.

    It runs with this process's environment, so with the ``AWS_*`` settings of the test's store when one is up.
    """
    env = dict(os.environ, PYTHONPATH=str(ROOT), ELM_CORPUS_DATA=str(mirror.parent))
    assert mirror.name == "sample"  # where ELM_CORPUS_DATA puts the mirror, so the inputs' paths equal the fixture's
    with open(log, "w") as sink:  # a file, not a pipe: Ray's messages on a lost node must never block the driver
        return subprocess.Popen([sys.executable, "-m", "pipelines.cli", "build", str(MANIFEST), "--sample",
                                 "--out", str(out), "--address", address, "--no-progress"],
                                cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)


def stop_a_unit_on_the_worker_node(cluster: TwoNodeCluster, out: str | Path, after: int, build: subprocess.Popen,
                                   log: Path, seconds: float = 90, poll: float = 0.02) -> int:
    """Once ``after`` units are finished, freeze a Ray worker of the worker node in the middle of a unit.

    A frozen worker cannot finish its unit, so removing the node now surely loses a unit in flight.
    Returns the finished units at that moment.
    """
    deadline = time.monotonic() + seconds
    while True:
        assert build.poll() is None, f"the build ended before the node could be removed:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no unit ran on the worker node after {after} were done ({seconds} s)"
        if ledger_count(out) >= after:
            for worker in cluster.worker_node_tasks("execute_unit"):
                try:
                    worker.send_signal(signal.SIGSTOP)
                    if (worker.cmdline() or [""])[0].startswith("ray::execute_unit"):  # frozen inside that unit
                        return ledger_count(out)
                    worker.send_signal(signal.SIGCONT)
                except psutil.NoSuchProcess:
                    pass
        time.sleep(poll)


def build_losing_the_worker_node(out: str | Path, mirror: Path, total: int, log: Path, poll: float = 0.02,
                                 node_check=None) -> int:
    """Run the CLI build on a fresh two-node cluster, remove the worker node once half the units are done and a
    unit runs on it, and wait for the build to end; returns the finished units at the removal.

    ``node_check(cluster)`` runs once the cluster is up, before the build starts.
    """
    with TwoNodeCluster(cpus_per_node=1) as cluster:
        if node_check is not None:
            node_check(cluster)
        build = start_cli_build(out, cluster.address, mirror, log)
        try:
            done_at_removal = stop_a_unit_on_the_worker_node(cluster, out, total // 2, build, log, poll=poll)
            cluster.remove_worker_node()
            build.wait(timeout=120)
        finally:
            if build.poll() is None:
                build.kill()
                build.wait()
    assert build.returncode == 0, log.read_text()[-3000:]
    assert total // 2 <= done_at_removal < total
    return done_at_removal


def dedup_build_on_both_nodes(cluster: TwoNodeCluster, root: Path, local) -> None:
    """A deduplicating build (the session's planted corpus, ``local``) driven on the cluster before it loses a
    node: its signatures, search and token passes spread over both nodes, and it writes the local build's bytes."""
    manifest = local.out_dir.parent / "planted-corpus.yaml"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", "build", str(manifest), "--out",
                           str(root / "cluster"), "--address", cluster.address, "--no-progress"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for sub in ("shards", "dedup"):
        mine = {p.relative_to(local.out_dir).as_posix(): p.read_bytes()
                for p in sorted((local.out_dir / sub).rglob("*")) if p.is_file()}
        theirs = {p.relative_to(root / "cluster").as_posix(): p.read_bytes()
                  for p in sorted((root / "cluster" / sub).rglob("*")) if p.is_file()}
        assert mine and theirs == mine, sub


def no_store_settings(cluster: TwoNodeCluster) -> None:
    """The worker node's raylet runs without the store's settings, so its tasks can only have them from the driver."""
    environ = psutil.Process(cluster.worker_raylet).environ()
    assert not [k for k in environ if k.startswith(("AWS_", "FSSPEC_"))]


def stream_on_both_nodes(cluster: TwoNodeCluster, data_root: Path, args: list[str], out: Path) -> None:
    """A live-stream training run driven on the cluster: the real CLI in its own process, whose pipeline's tasks run
    on both nodes."""
    result = subprocess.run([sys.executable, "-m", "model.cli", *args, "--out", str(out),
                             "--ray-address", cluster.address], cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=str(ROOT), ELM_CORPUS_DATA=str(data_root)),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_one_cluster_deduplicates_streams_then_builds_to_s3_losing_its_worker_node_and_matches_the_local_runs(
        s3_server, sample_corpus, sample_mirror, planted_corpus, ray_session, tmp_path, monkeypatch, capsys):
    """One cluster (each start costs seconds) serves, in turn: a deduplicating build to a folder both nodes share,
    a live-stream training run, and a build to S3 that loses the worker node half way (last: the node is gone)."""
    monkeypatch.setenv("ELM_CORPUS_DATA", str(sample_mirror.parent))  # where --stream-sample finds the mirror
    stream = [*STREAM, "--steps", "6", "--eval-every", "100"]
    assert cli_train([*stream, "--out", str(tmp_path / "stream-local")]) == 0  # on the session's local Ray

    def before_the_build(cluster: TwoNodeCluster) -> None:
        no_store_settings(cluster)
        dedup_build_on_both_nodes(cluster, tmp_path, planted_corpus[0])
        stream_on_both_nodes(cluster, sample_mirror.parent, stream, tmp_path / "stream-cluster")

    total = sample_corpus.units_total
    uri = f"{s3_server.bucket('elm-cluster')}/openelm-sample"
    # a listing per poll: a little slower than a local folder's, and moto answers on this process's threads
    build_losing_the_worker_node(uri, sample_mirror, total, tmp_path / "build.log", poll=0.05,
                                 node_check=before_the_build)

    local, remote = tmp_path / "stream-local", tmp_path / "stream-cluster"
    assert curve(remote) == curve(local)  # the same run, step for step
    assert records(remote, "stream")[-1]["streams"] == records(local, "stream")[-1]["streams"]

    index = read_corpus_json(uri)
    assert index["status"] == "complete" and not index["failed_units"]
    assert ledger_count(uri) == total
    local_units = unit_files(sample_corpus.out_dir)
    assert len(local_units) >= 3 * total and unit_files(uri) == local_units  # .bin, .idx, sidecar, quarantine
    capsys.readouterr()
    assert cli_main(["verify", uri, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] and result["units_checked"] == total
