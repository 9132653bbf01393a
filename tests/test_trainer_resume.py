"""A training run killed with SIGKILL and resumed reproduces an uninterrupted run's losses exactly (CPU)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from model.cli import cli_train
from model.train.checkpoint import list_checkpoints
from model.train.metrics import read_metrics

REPO = Path(__file__).resolve().parent.parent
STEPS = 16  # killed after step 5: the margin keeps the kill mid-run on a loaded machine


def command(corpus: Path, run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "model.cli", "--corpus", str(corpus), "--out", str(run), "--model", "tiny",
            "--steps", str(STEPS), "--sequence-length", "32", "--micro-batch-size", "2",
            "--global-batch-tokens", "128", "--checkpoint-every", "2", "--keep-checkpoints", "2",
            "--eval-every", "4", "--eval-batches", "1", "--threads", "1", "--no-progress", *extra]


def losses(run: Path, kind: str = "train", key: str = "loss") -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in read_metrics(run / "metrics.jsonl") if r["kind"] == kind]


def test_a_run_killed_mid_way_and_resumed_matches_an_uninterrupted_run_step_for_step(token_corpus, tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    reference = tmp_path / "reference"
    assert cli_train(command(token_corpus, reference)[3:]) == 0  # in this process: no start-up cost

    interrupted = tmp_path / "interrupted"
    proc = subprocess.Popen(command(token_corpus, interrupted), cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while len(losses(interrupted)) < 5:  # past the checkpoint at step 4
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline, "the run made no progress"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    steps_at_kill = len(losses(interrupted))
    assert steps_at_kill < STEPS
    resumed_from = list_checkpoints(interrupted)[-1][0]

    subprocess.run(command(token_corpus, interrupted, "--resume"), cwd=REPO, env=env, check=True,
                   capture_output=True)

    run_info = json.loads((interrupted / "run.json").read_text())
    assert run_info["resumed_from"] == [f"step_{resumed_from:08d}"] and run_info["steps_done"] == STEPS
    assert [s for s, _ in losses(interrupted)] == list(range(1, STEPS + 1))
    assert losses(interrupted) == losses(reference)  # exact float equality, step for step
    assert losses(interrupted, "val", "val_loss") == losses(reference, "val", "val_loss")
