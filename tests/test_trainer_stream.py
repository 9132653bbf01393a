"""Training from the live pipeline: a SIGKILLed stream run resumes exactly and cheaply (rereading a bounded few
units, deep in the pass), and two ranks share one pipeline that tokenizes each unit once. The same run driven on a
two-node Ray cluster: tests/test_cluster_build.py."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from model.cli import cli_train
from model.train.checkpoint import list_checkpoints, load_checkpoint
from stream_runs import REPO, SOURCES, STREAM, WORKERS, curve, records

# What a resume may tokenize again: per source the unit it stopped in, plus what the feed had started ahead
# (2 units per worker split over the sources, at least one each).
REREAD_BOUND = SOURCES + max(2 * WORKERS, SOURCES)


@pytest.fixture
def data_root(sample_mirror, tmp_path, monkeypatch):
    root = tmp_path / "data"
    root.mkdir()
    (root / "sample").symlink_to(sample_mirror)  # where --stream-sample looks for the mirror
    monkeypatch.setenv("ELM_CORPUS_DATA", str(root))
    return root


def saved_points(run: Path, step: int) -> dict:
    _, trainer_state, _ = load_checkpoint(run / "checkpoints" / f"step_{step:08d}")
    return trainer_state["sampler"]["streams"]


def test_a_stream_killed_mid_run_resumes_step_for_step_rereading_only_the_units_it_stood_in(data_root, ray_session,
                                                                                            tmp_path):
    steps = ["--steps", "32", "--checkpoint-every", "4", "--keep-checkpoints", "10", "--eval-every", "8",
             "--eval-batches", "2"]
    reference = tmp_path / "reference"
    assert cli_train([*STREAM, *steps, "--out", str(reference)]) == 0

    interrupted = tmp_path / "interrupted"
    command = [sys.executable, "-m", "model.cli", *STREAM, *steps, "--out", str(interrupted)]
    # its own process group: the kill takes the run's Ray (the feed, the pipeline's workers) down with it
    proc = subprocess.Popen(command, cwd=REPO, env=dict(os.environ, PYTHONUNBUFFERED="1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not (interrupted / "metrics.jsonl").exists() or len(curve(interrupted)) < 22:  # past the checkpoint at 20
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline, "the run made no progress"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert len(curve(interrupted)) < 32
    resumed_from = list_checkpoints(interrupted)[-1][0]
    assert cli_train([*STREAM, *steps, "--out", str(interrupted), "--resume"]) == 0

    assert [s for s, _ in curve(interrupted)] == list(range(1, 33))
    assert curve(interrupted) == curve(reference)  # exact float equality, step for step
    assert curve(interrupted, "val", "val_loss") == curve(reference, "val", "val_loss")
    assert [r["step"] for r in records(interrupted, "val")] == [8, 16, 24, 32]
    # the pipeline ran well ahead of the tiny model, yet held no more than the lookahead (and one held-out unit
    # per source)
    assert max(r["most_units_held"] for r in records(reference, "stream")) <= REREAD_BOUND + SOURCES

    (resume,) = records(interrupted, "resume")
    assert resume["step"] == resumed_from and resume["seconds"] > 0
    assert 1 <= resume["units_reread"] <= REREAD_BOUND
    # The resumed pipeline started each source at the unit its checkpoint stood in, deep in the pass: no unit
    # consumed before it was tokenized again, and none twice.
    points = saved_points(interrupted, resumed_from)
    assert points["redpajama-github"]["unit"] >= 5
    after = [r for r in records(interrupted, "stream") if r["step"] > resumed_from][-1]
    assert after["units_tokenized_again"] == 0
    for source, point in points.items():
        assert after["streams"][f"{source}/train"]["first"] == [point["passes"], point["unit"]]


def test_two_ranks_share_one_pipeline_tokenizing_each_unit_once_with_the_one_process_mixture_losses_and_resume(
        data_root, ray_session, tmp_path):
    steps = ["--steps", "8", "--eval-every", "4", "--eval-batches", "2", "--checkpoint-every", "8"]
    alone = tmp_path / "alone"
    assert cli_train([*STREAM, *steps, "--out", str(alone)]) == 0
    ranks = tmp_path / "ranks"
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "model.cli", *STREAM, *steps, "--out", str(ranks)], cwd=REPO,
                            env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((ranks / "run.json").read_text())["world_size"] == 2

    # One pipeline for both ranks: the same units as one process, each tokenized once.
    shared, single = records(ranks, "stream")[-1], records(alone, "stream")[-1]
    assert shared["units_tokenized_again"] == 0 and shared["streams"] == single["streams"]
    assert shared["units_tokenized"] == single["units_tokenized"] > 0
    # The sequence order does not depend on the world size: the same mixture, token for token, and the same losses.
    assert [r["sources"] for r in records(ranks, "mixture")] == [r["sources"] for r in records(alone, "mixture")]
    mixture = records(ranks, "mixture")[-1]["sources"]
    assert mixture["redpajama-github"]["tokens"] == 3 * mixture["redpajama-c4"]["tokens"]
    assert [l for _, l in curve(ranks)] == pytest.approx([l for _, l in curve(alone)], rel=1e-4)
    assert [l for _, l in curve(ranks, "val", "val_loss")] == pytest.approx(
        [l for _, l in curve(alone, "val", "val_loss")], rel=1e-4)
    assert len(curve(ranks, "val", "val_loss")) == 2
    both, one = (load_checkpoint(r / "checkpoints" / "step_00000008")[0] for r in (ranks, alone))
    torch.testing.assert_close(both, one, rtol=1e-3, atol=1e-5)

    # Both resume for two more steps: the two ranks open the pipeline at the checkpoint's units, as one process does.
    more = [*STREAM, "--steps", "10", "--eval-every", "100", "--resume"]
    assert cli_train([*more, "--out", str(alone)]) == 0
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "model.cli", *more, "--out", str(ranks)], cwd=REPO,
                            env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    assert records(ranks, "resume")[-1]["units_reread"] == records(alone, "resume")[-1]["units_reread"] > 0
    assert [l for _, l in curve(ranks)] == pytest.approx([l for _, l in curve(alone)], rel=1e-4)
    assert len(curve(ranks)) == 10
