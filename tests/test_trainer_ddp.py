"""torchrun with two processes (DDP over gloo) trains like one process on the same global batch."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.train.checkpoint import latest_checkpoint, load_checkpoint
from model.train.metrics import read_metrics

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


@pytest.fixture(scope="module")
def single_process_run(token_corpus, tmp_path_factory):
    run = tmp_path_factory.mktemp("single") / "run"
    subprocess.run([sys.executable, "-m", "model.cli", *settings(token_corpus, run)], cwd=REPO,
                   env=dict(os.environ, OMP_NUM_THREADS="1"), check=True, capture_output=True)
    return run


@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_two_ranks_with_gloo_match_one_process_at_the_same_global_batch(sharding, single_process_run, token_corpus,
                                                                        tmp_path):
    run = tmp_path / sharding
    extra = ["--fsdp"] if sharding == "fsdp" else []
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "model.cli", *settings(token_corpus, run), *extra], cwd=REPO,
                            env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run / "run.json").read_text())["world_size"] == 2

    single_loss, ranks_loss = curve(single_process_run, "train", "loss"), curve(run, "train", "loss")
    assert len(single_loss) == len(ranks_loss) == STEPS
    assert ranks_loss == pytest.approx(single_loss, rel=1e-4)
    assert single_loss[-1] < single_loss[0]
    assert curve(run, "val", "val_loss") == pytest.approx(curve(single_process_run, "val", "val_loss"), rel=1e-4)
    assert curve(run, "train", "tokens") == curve(single_process_run, "train", "tokens")
    # The gathered checkpoint holds whole tensors, the same names and shapes as one process writes.
    gathered, _, _ = load_checkpoint(latest_checkpoint(run))
    alone, _, _ = load_checkpoint(latest_checkpoint(single_process_run))
    assert {k: v.shape for k, v in gathered.items()} == {k: v.shape for k, v in alone.items()}
    torch.testing.assert_close(gathered, alone, rtol=1e-3, atol=1e-5)
