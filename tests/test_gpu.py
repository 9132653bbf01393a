"""Checks that need a CUDA GPU (skipped without one), each with a CPU twin that runs everywhere.

- bf16 autocast logits against float32 logits on the CPU, from the same weights;
- a few training steps through the `elm-train` command line (a subprocess, as a user runs it)
  end with finite, falling loss, in bf16 autocast.

The CPU twins run the same code path (torch.autocast in bf16, `--dtype bf16`) so that the
test file itself is exercised on machines without a GPU. `benchmarks/gpu_check.sh` runs this
file on a GPU machine and counts a skipped test there as a failure.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.openelm import OpenELM
from model.presets import get_preset

ROOT = Path(__file__).resolve().parents[1]
HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (torch.cuda.is_available() is False)")

# bf16 keeps 8 bits of mantissa (relative rounding ~0.4% per op); through a few layers the logits of a
# freshly initialised model (std ~1, max ~5) move by about 2% RMS and 0.15 at most (measured on the CPU:
# tiny 1.5% / 0.11, small 2.0% / 0.14, openelm-270m 2.4% / 0.15). The bounds leave twice that room.
BF16_REL_RMS = 0.05      # ||bf16 - fp32|| / ||fp32|| over all logits
BF16_MAX_ABS = 0.05      # max |bf16 - fp32| <= this x max(1, max |fp32|)  (as benchmarks/model_throughput.py checks)
# float32 on the GPU against float32 on the CPU differs only by summation order (TF32 off).
FP32_MAX_ABS = 1e-3


def cpu_reference(name: str, batch: int = 2, length: int = 128) -> tuple[OpenELM, torch.Tensor, torch.Tensor]:
    """A seeded model of preset `name`, token ids, and its float32 logits on the CPU."""
    config = get_preset(name)
    torch.manual_seed(0)
    model = OpenELM(config).eval()
    ids = torch.randint(0, config.vocab_size, (batch, length), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(ids)
    return model, ids, logits


def bf16_logits(model: OpenELM, ids: torch.Tensor, device: str) -> torch.Tensor:
    """Logits under bf16 autocast on `device` (the trainer's mixed precision), back on the CPU in float32."""
    model, ids = model.to(device), ids.to(device)
    with torch.no_grad(), torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        out = model(ids)
    assert out.dtype == torch.bfloat16, f"autocast on {device} gave {out.dtype} logits, expected bfloat16"
    return out.float().cpu()


def assert_bf16_close(low: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    assert torch.isfinite(low).all(), f"{what}: non-finite bf16 logits"
    rel_rms = ((low - ref).norm() / ref.norm()).item()
    max_abs = (low - ref).abs().max().item()
    bound = BF16_MAX_ABS * max(1.0, ref.abs().max().item())
    assert rel_rms <= BF16_REL_RMS, f"{what}: bf16 logits off by {rel_rms:.2%} RMS (bound {BF16_REL_RMS:.0%})"
    assert max_abs <= bound, f"{what}: bf16 logits off by {max_abs:.3g} at most (bound {bound:.3g})"


# ---------------------------------------------------------------- bf16 forward against fp32 CPU logits

def test_bf16_autocast_forward_cpu():
    """The bf16 autocast path on the CPU, against the CPU's float32 logits: runs everywhere."""
    model, ids, ref = cpu_reference("tiny")
    assert_bf16_close(bf16_logits(model, ids, "cpu"), ref, "tiny, cpu bf16 autocast")


@needs_cuda
@pytest.mark.parametrize("preset", ["tiny", "openelm-270m"])
def test_bf16_forward_cuda_matches_fp32_cpu(preset):
    model, ids, ref = cpu_reference(preset)
    assert_bf16_close(bf16_logits(model, ids, "cuda"), ref, f"{preset}, cuda bf16 autocast")


@needs_cuda
def test_fp32_forward_cuda_matches_fp32_cpu():
    """Without autocast the GPU must give the CPU's logits up to summation order (TF32 off for the comparison)."""
    model, ids, ref = cpu_reference("openelm-270m")
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad():
            out = model.to("cuda")(ids.to("cuda")).cpu()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    max_abs = (out - ref).abs().max().item()
    assert max_abs <= FP32_MAX_ABS * max(1.0, ref.abs().max().item()), f"fp32 cuda vs cpu: max |diff| {max_abs:.3g}"


# ---------------------------------------------------------------- training steps through elm-train

def run_elm_train(corpus: Path, out: Path, device: str, extra: list[str]) -> list[dict]:
    """`python -m model.cli` (what `elm-train` runs) from the repo root; the run's train records."""
    cmd = [sys.executable, "-m", "model.cli", "--corpus", str(corpus), "--model", "tiny", "--out", str(out),
           "--device", device, "--dtype", "bf16", "--no-progress", "--warmup-steps", "1",
           "--eval-every", "100000", "--checkpoint-every", "100000", "--eval-batches", "1", *extra]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (f"elm-train exited {proc.returncode}\n$ {' '.join(cmd)}\n"
                                  f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}")
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "complete", run["status"]
    assert run["device"].startswith(device), f"run.json says device {run['device']}, asked for {device}"
    assert run["dtype"] == "bfloat16", f"run.json says dtype {run['dtype']}, asked for bf16"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in records if r.get("kind") == "train"]


def assert_learns(train: list[dict], steps: int, drop: float) -> None:
    assert [r["step"] for r in train] == list(range(1, steps + 1))
    losses = [r["loss"] for r in train]
    assert all(math.isfinite(x) for x in losses), f"non-finite loss: {losses}"
    assert all(math.isfinite(r["grad_norm"]) for r in train)
    assert all(r["tokens_per_s"] > 0 for r in train)
    # Starts near ln(32000) = 10.4; a few steps at the tiny preset's LR take it down by several nats.
    first, last = losses[0], sum(losses[-3:]) / 3
    assert last < first - drop, f"loss did not fall by {drop}: first {first:.3f}, mean of last three {last:.3f}: {losses}"


def test_elm_train_bf16_cpu(token_corpus, tmp_path):
    """A few bf16-autocast steps on the CPU through the CLI (the GPU test's path, small enough for 2 cores: bf16
    matmuls are slow on a CPU without bf16 units, and 128-token steps still take the loss down by about 1.5)."""
    steps = 6
    train = run_elm_train(token_corpus, tmp_path / "run", "cpu",
                          ["--steps", str(steps), "--sequence-length", "32", "--micro-batch-size", "4",
                           "--global-batch-tokens", "128", "--threads", "2"])
    assert_learns(train, steps, drop=1.0)


@needs_cuda
def test_elm_train_bf16_cuda(token_corpus, tmp_path):
    """The tiny preset's own batch (8 x 128 tokens) for 30 steps on the GPU through the CLI."""
    steps = 30
    train = run_elm_train(token_corpus, tmp_path / "run", "cuda", ["--steps", str(steps)])
    assert_learns(train, steps, drop=2.0)
