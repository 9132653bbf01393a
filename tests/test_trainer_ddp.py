"""torchrun with two processes (DDP over gloo) trains like one process on the same global batch."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from model.metrics import read_metrics

REPO = Path(__file__).resolve().parent.parent
STEPS = 4


def settings(corpus: Path, run: Path) -> list[str]:
    # Global batch 4 sequences of 32 tokens: one process accumulates 2 micro-batches of 2, two ranks take one each.
    return ["--corpus", str(corpus), "--out", str(run), "--model", "tiny", "--steps", str(STEPS),
            "--sequence-length", "32", "--micro-batch-size", "2", "--global-batch-tokens", "128",
            "--eval-every", str(STEPS), "--eval-batches", "2", "--checkpoint-every", str(STEPS),
            "--threads", "1", "--no-progress"]


def curve(run: Path, kind: str, key: str) -> list[float]:
    return [r[key] for r in read_metrics(run / "metrics.jsonl") if r["kind"] == kind]


def test_two_ranks_with_gloo_match_one_process_at_the_same_global_batch(token_corpus, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    subprocess.run([sys.executable, "-m", "model.cli", *settings(token_corpus, single)], cwd=REPO, env=env,
                   check=True, capture_output=True)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "model.cli", *settings(token_corpus, ddp)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    single_loss, ddp_loss = curve(single, "train", "loss"), curve(ddp, "train", "loss")
    assert len(single_loss) == len(ddp_loss) == STEPS
    assert ddp_loss == pytest.approx(single_loss, rel=1e-4)
    assert single_loss[-1] < single_loss[0]
    assert curve(ddp, "val", "val_loss") == pytest.approx(curve(single, "val", "val_loss"), rel=1e-4)
    assert curve(ddp, "train", "tokens") == curve(single, "train", "tokens")
