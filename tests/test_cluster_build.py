"""`elm-corpus build --address` on a real two-node Ray cluster that loses its worker node half-way.

Both nodes run on this machine (tests/ray_cluster.py) and share its disk: the corpus folder
is a local path that every node's workers write into. Nodes without a shared disk write to
object storage, which is tested on its own. The unit lost with the node is run again by Ray
(a task whose worker dies is retried), so the one build finishes.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from corpus.store.files import sha256_file
from corpus.store.layout import read_corpus_json
from ray_cluster import TwoNodeCluster

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "manifests" / "openelm.yaml"


def ledger_count(out: Path) -> int:
    return sum(1 for _ in (out / "ledger").rglob("*.json")) if (out / "ledger").is_dir() else 0


def unit_files(corpus_dir: Path) -> dict[str, str]:
    """sha256 of every shard (.bin, .idx, sidecar) and quarantine file; a killed write's hidden temporary is no file."""
    files = [p for sub in ("shards", "quarantine") for p in (corpus_dir / sub).rglob("*")
             if p.is_file() and not p.name.startswith(".")]
    return {p.relative_to(corpus_dir).as_posix(): sha256_file(p) for p in sorted(files)}


def start_cli_build(out: Path, address: str, mirror: Path, log: Path) -> subprocess.Popen:
    """The real CLI in its own process, driving a cluster build; ``--sample`` reads ``mirror``; output to ``log``."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), ELM_CORPUS_DATA=str(mirror.parent), RAY_AUTH_MODE="disabled")
    assert mirror.name == "sample"  # where ELM_CORPUS_DATA puts the mirror, so the inputs' paths equal the fixture's
    with open(log, "w") as sink:  # a file, not a pipe: Ray's messages on a lost node must never block the driver
        return subprocess.Popen([sys.executable, "-m", "pipelines.cli", "build", str(MANIFEST), "--sample",
                                 "--out", str(out), "--address", address, "--no-progress"],
                                cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)


def stop_a_unit_on_the_worker_node(cluster: TwoNodeCluster, out: Path, after: int, build: subprocess.Popen,
                                   log: Path, seconds: float = 90) -> int:
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
        time.sleep(0.02)


def test_a_build_that_loses_its_worker_node_half_way_ends_byte_identical_to_a_local_build(
        sample_corpus, sample_mirror, tmp_path):
    total = sample_corpus.units_total
    out, log = tmp_path / "openelm-sample", tmp_path / "build.log"
    with TwoNodeCluster(cpus_per_node=1) as cluster:
        build = start_cli_build(out, cluster.address, sample_mirror, log)
        try:
            done_at_removal = stop_a_unit_on_the_worker_node(cluster, out, after=total // 2, build=build, log=log)
            cluster.remove_worker_node()
            build.wait(timeout=120)
        finally:
            if build.poll() is None:
                build.kill()
                build.wait()
    assert build.returncode == 0, log.read_text()[-3000:]
    assert total // 2 <= done_at_removal < total

    index = read_corpus_json(out)
    assert index["status"] == "complete" and not index["failed_units"]
    assert ledger_count(out) == total
    local = unit_files(sample_corpus.out_dir)
    assert len(local) >= 3 * total and unit_files(out) == local  # .bin, .idx and sidecar of every unit
