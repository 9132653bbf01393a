"""Resume cost of `elm-train --stream`, early and late in a pass, against a resume that walks the pass from its start.

    .venv/bin/python benchmarks/stream_resume.py [--unit-bytes 4096] [--early 4] [--late 300] [--workers 2]

A run streams the offline sample mirror (redpajama-github=3, redpajama-c4=1) in work units of
``--unit-bytes`` input bytes, so that a few hundred steps of the tiny model stand many units into
the pass, and checkpoints at ``--early`` and at ``--late``. From each checkpoint the run is resumed
for one step in two ways, each on its own copy of the run:

- ``points``: as `elm-train --resume` does, each source's stream opens at the unit its checkpoint
  stood in;
- ``walk`` (the baseline, what a stream state without unit points gives): each stream opens at the
  start of its pass and reads forward to the position, tokenizing every unit consumed before.

Measured per resume: the `resume` record's seconds (loading the checkpoint, then waiting for the
first step's batches) and the units the resumed pipeline tokenized by its first step (the `stream`
record). Ratios are walk / points at the same checkpoint. Every run happens in this process, on one
Ray whose workers are warm for all of them.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def run_args(args, out: Path, steps: int, *more: str) -> list[str]:
    return ["--stream", "--stream-sample", "--manifest", str(REPO / "manifests" / "openelm.yaml"),
            "--weights", "redpajama-github=3,redpajama-c4=1", "--stream-unit-bytes", str(args.unit_bytes),
            "--stream-workers", str(args.workers), "--model", "tiny", "--sequence-length", "32",
            "--micro-batch-size", "4", "--global-batch-tokens", "512", "--threads", "1", "--no-progress",
            "--log-every", "1", "--eval-every", "100000", "--keep-checkpoints", "2", "--steps", str(steps),
            "--out", str(out), *more]


def records(run: Path, kind: str) -> list[dict]:
    from model.train.metrics import read_metrics
    return [r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == kind]


def without_points(run: Path, step: int) -> None:
    """Make the checkpoint at ``step`` resume by walking each stream from its pass's start."""
    path = run / "checkpoints" / f"step_{step:08d}" / "trainer_state.pt"
    state = torch.load(path, map_location="cpu", weights_only=False)
    state["sampler"].pop("streams")
    state["sampler"].pop("started_ahead")
    torch.save(state, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--unit-bytes", type=int, default=4096)
    ap.add_argument("--early", type=int, default=4)
    ap.add_argument("--late", type=int, default=300)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args(argv)
    from corpus.manifest import load_manifest
    from corpus.mirror.mirror import ensure_mirror
    from model.cli import cli_train
    from model.train.checkpoint import load_checkpoint

    work = Path(args.workdir or tempfile.mkdtemp(prefix="stream-resume-"))
    shutil.rmtree(work, ignore_errors=True)
    (work / "data").mkdir(parents=True)
    ensure_mirror(load_manifest(REPO / "manifests" / "openelm.yaml"), work / "data" / "sample")
    os.environ["ELM_CORPUS_DATA"] = str(work / "data")
    print(f"sample mirror, units of {args.unit_bytes} bytes, {args.workers} workers, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.1f}", flush=True)

    base = work / "run"
    results = {}
    for step in (args.early, args.late):
        assert cli_train(run_args(args, base, step, *(["--resume"] if step != args.early else []))) == 0
        _, trainer_state, _ = load_checkpoint(base / "checkpoints" / f"step_{step:08d}")
        points = trainer_state["sampler"]["streams"]
        where = ", ".join(f"{name} unit {p['unit']} of pass {p['passes']}" for name, p in points.items())
        print(f"step {step}: the checkpoint stands at {where}", flush=True)
        for way in ("points", "walk"):
            copy = work / f"{way}-{step}"
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(base, copy)
            if way == "walk":
                without_points(copy, step)
            assert cli_train(run_args(args, copy, step + 1, "--resume")) == 0
            resume = records(copy, "resume")[-1]
            stream = [r for r in records(copy, "stream") if r["step"] == step + 1][-1]
            results[(step, way)] = (resume["seconds"], stream["units_tokenized"], resume["units_reread"])
            print(f"  resume by {way:<6}: {resume['seconds']:7.3f} s to the first batch, "
                  f"{stream['units_tokenized']:4d} units tokenized by the first step "
                  f"(units_reread recorded: {resume['units_reread']})", flush=True)

    print("\nresume cost (seconds to the first batch; units tokenized by the first step)")
    print(f"  {'step':>6} {'points s':>9} {'walk s':>9} {'walk/points':>12} {'points units':>13} {'walk units':>11}")
    for step in (args.early, args.late):
        (ps, pu, _), (ws, wu, _) = results[(step, "points")], results[(step, "walk")]
        print(f"  {step:>6} {ps:9.3f} {ws:9.3f} {ws / ps:11.2f}x {pu:13d} {wu:11d}")
    late_over_early = results[(args.late, "points")][0] / results[(args.early, "points")][0]
    print(f"\nresume by points, late / early: {late_over_early:.2f}x (constant time: about 1x)")
    print(f"load after: {os.getloadavg()[0]:.1f}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
