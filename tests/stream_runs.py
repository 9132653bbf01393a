"""The live-stream training run the stream tests start (small units of two sources, the tiny model), and how they
read its metrics."""
from __future__ import annotations

from pathlib import Path

from model.train.metrics import read_metrics

REPO = Path(__file__).resolve().parent.parent
SOURCES, WORKERS = 2, 2
# Small units (4 KiB of input, a few hundred tokens each) put a run of a few steps many units into its pass.
STREAM = ["--stream", "--stream-sample", "--manifest", str(REPO / "manifests" / "openelm.yaml"),
          "--weights", "redpajama-github=3,redpajama-c4=1", "--stream-unit-bytes", "4096",
          "--stream-workers", str(WORKERS), "--model", "tiny", "--sequence-length", "32", "--micro-batch-size", "8",
          "--global-batch-tokens", "512", "--threads", "1", "--no-progress", "--log-every", "1"]


def records(run: Path, kind: str) -> list[dict]:
    return [r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == kind]


def curve(run: Path, kind: str = "train", key: str = "loss") -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in records(run, kind)]
