"""elm-train throughput: the whole training loop's tokens/s against a bare PyTorch loop, same run, same shapes.

    .venv/bin/python benchmarks/train_throughput.py                 # CPU: tiny, 8 x 128 tokens per step
    .venv/bin/python benchmarks/train_throughput.py --gpu           # CUDA: openelm-270m, bf16; tokens/s and MFU
    .venv/bin/python benchmarks/train_throughput.py --corpus openelm-sample --steps 30 --repeats 5

The baseline is the loop a first training script has: batches already in memory, forward,
`F.cross_entropy`, backward, AdamW step; no z-loss, no clipping, no sampler, no logging.
"elm-train" is `elm-train` itself (`model.train.trainer.Trainer`) on a corpus: mixture sampler, its fused
cross-entropy + z-loss, gradient clipping, metrics JSONL, one evaluation and one checkpoint
at the end. Its rate comes from its own per-step records (start-up, the evaluation and the
checkpoint are outside them). Both start from the same seed and shapes; the kinds take turns
within each round so that load from other processes falls on both, and medians are printed
with the load average seen.

The corpus is, by default, synthetic (random token ids in three sources, written as real
shards) so the script runs on any machine; --corpus names a built one instead.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model.cli import cli_train  # noqa: E402
from model.openelm import OpenELM  # noqa: E402
from model.presets import get_preset  # noqa: E402
from model.train.metrics import read_metrics  # noqa: E402

# Dense bf16 tensor-core peaks, FLOP/s, for MFU; the first name contained in the device name wins.
PEAK_BF16 = {"H100 PCIe": 756e12, "H100 NVL": 835e12, "H100": 989e12, "H200": 989e12, "A100": 312e12}


def synthetic_corpus(folder: Path, tokens: int, seed: int = 0) -> Path:
    """Three sources of random ids in BOS..EOS chunks of 256..2600 tokens, with a corpus.json as the build writes."""
    from corpus.manifest import load_manifest
    from corpus.store.files import atomic_write_json
    from corpus.store.writer import write_shard
    from corpus.tokenizer.tokenizer import Tokenizer

    rng = np.random.default_rng(seed)
    template = load_manifest(Path(__file__).resolve().parents[1] / "manifests" / "openelm.yaml")
    sources, total = [], 0
    for i, share in enumerate((0.6, 0.3, 0.1)):
        name, chunks, left = f"source-{i}", [], int(tokens * share)
        while left > 0:
            n = int(rng.integers(256, 2600))
            chunks.append(np.concatenate([[1], rng.integers(3, 32000, n - 2), [2]]))
            left -= n
        meta = write_shard(folder / "shards" / name / "u00000", chunks, {"source": name})
        sources.append(template.sources[0].model_copy(update={"name": name, "tokens": meta["tokens"]}))
        total += meta["tokens"]
    manifest = template.model_copy(update={"name": "synthetic", "sources": sources})
    tokenizer = Tokenizer()
    atomic_write_json(folder / "corpus.json", {
        "name": "synthetic", "status": "complete", "manifest": {"path": None, "dump": manifest.model_dump(mode="json")},
        "manifest_fingerprint": manifest.build_fingerprint(tokenizer.sha256), "tokenizer": tokenizer.describe(),
        "totals": {"tokens": total}})
    return folder


def bare_loop_rate(args, batches: list[torch.Tensor], device: torch.device, amp: torch.dtype | None) -> float:
    """Tokens/s of forward + F.cross_entropy + backward + AdamW over in-memory batches (after 2 warm-up steps)."""
    torch.manual_seed(0)
    model = OpenELM(get_preset(args.model)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    start = None
    for step in range(args.steps):
        if step == 2:
            sync(device)
            start = time.perf_counter()
        ids = batches[step % len(batches)].to(device)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = model(ids[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    sync(device)
    return (args.steps - 2) * batches[0][:, 1:].numel() / (time.perf_counter() - start)


def trainer_rate(args, corpus: Path, workdir: Path, round_index: int) -> float:
    """Tokens/s of elm-train's loop from its per-step records (steps 3..N: start-up and warm-up left out)."""
    run = workdir / f"run-{round_index}"
    argv = ["--corpus", str(corpus), "--out", str(run), "--model", args.model, "--steps", str(args.steps),
            "--sequence-length", str(args.sequence_length), "--micro-batch-size", str(args.batch),
            "--global-batch-tokens", str(args.batch * args.sequence_length), "--eval-every", str(args.steps),
            "--eval-batches", "1", "--checkpoint-every", str(args.steps), "--no-progress", "--dtype", args.dtype]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    if args.compile:
        argv += ["--compile"]
    with contextlib.redirect_stdout(io.StringIO()):  # its end-of-run summary, once per round, is noise here
        code = cli_train(argv)
    if code != 0:
        raise SystemExit("elm-train failed; see above")
    train = [r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "train"]
    return (train[-1]["tokens"] - train[1]["tokens"]) / (train[-1]["elapsed_s"] - train[1]["elapsed_s"])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpu", action="store_true", help="openelm-270m on CUDA in bf16, with MFU")
    p.add_argument("--model", default=None, help="preset (default tiny, or openelm-270m with --gpu)")
    p.add_argument("--corpus", default=None, help="a built corpus name or folder (default: synthetic)")
    p.add_argument("--steps", type=int, default=None, help="steps per measurement (default 25, 30 with --gpu)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sequence-length", type=int, default=None, help="default 128, 2048 with --gpu")
    p.add_argument("--batch", type=int, default=None, help="sequences per step (default 8)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 1 on the CPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile the trainer's model")
    args = p.parse_args()
    args.model = args.model or ("openelm-270m" if args.gpu else "tiny")
    args.steps = args.steps or (30 if args.gpu else 25)
    args.sequence_length = args.sequence_length or (2048 if args.gpu else 128)
    args.batch = args.batch or 8
    args.dtype = "bf16" if args.gpu else "fp32"
    if not args.gpu:
        args.threads = args.threads or 1
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.gpu and not torch.cuda.is_available():
        raise SystemExit("--gpu: CUDA is not available")
    device = torch.device("cuda" if args.gpu else "cpu")
    amp = torch.bfloat16 if args.gpu else None

    with tempfile.TemporaryDirectory(prefix="train-throughput-") as tmp:
        tmp = Path(tmp)
        if args.corpus:
            from corpus.store.layout import find_corpus
            corpus = find_corpus(args.corpus)  # a folder, or a name under the corpora folder, as elm-train finds it
        else:
            corpus = synthetic_corpus(tmp / "corpus", tokens=max(2_000_000, 4 * args.steps * args.batch
                                                                  * args.sequence_length))
        from corpus.mixing.sampler import MixtureSampler
        draw = MixtureSampler(corpus, args.sequence_length, batch_size=args.batch).batches()
        batches = []
        for _ in range(min(args.steps, 16)):
            b = next(draw)
            batches.append(torch.cat([b["input_ids"], b["labels"][:, -1:]], dim=1))

        bare, trainer, loads = [], [], []
        for r in range(args.repeats):
            bare.append(bare_loop_rate(args, batches, device, amp))
            trainer.append(trainer_rate(args, corpus, tmp, r))
            loads.append(os.getloadavg()[0])
            print(f"round {r + 1}: bare loop {bare[-1]:,.0f} tok/s, elm-train {trainer[-1]:,.0f} tok/s "
                  f"({trainer[-1] / bare[-1]:.2f}x), load average {loads[-1]:.1f}", flush=True)

    name = torch.cuda.get_device_name() if args.gpu else platform.processor() or platform.machine()
    print(f"\n{args.model}, {args.batch} x {args.sequence_length} tokens per step, {args.steps} steps per "
          f"measurement, {args.repeats} rounds, {name}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, {'bf16 autocast' if amp else 'fp32'}")
    print(f"corpus: {args.corpus or 'synthetic'}; load average {min(loads):.1f}..{max(loads):.1f} "
          f"on {os.cpu_count()} CPUs")
    ratios = [t / b for t, b in zip(trainer, bare)]
    print("| kind | tokens/s (median) | per round |\n|---|---|---|")
    print(f"| bare loop | {statistics.median(bare):,.0f} | {', '.join(f'{x:,.0f}' for x in bare)} |")
    print(f"| elm-train | {statistics.median(trainer):,.0f} | {', '.join(f'{x:,.0f}' for x in trainer)} |")
    print(f"| elm-train / bare loop | {statistics.median(ratios):.2f}x | "
          f"{', '.join(f'{x:.2f}x' for x in ratios)} |")
    if args.gpu:
        flops = get_preset(args.model).flops_per_token(args.sequence_length)
        peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
        rate = statistics.median(trainer)
        print(f"model FLOPs per token {flops / 1e9:.2f} G; elm-train {rate * flops / 1e12:.1f} TFLOP/s"
              + (f", MFU {rate * flops / peak:.1%} of {peak / 1e12:.0f} TFLOP/s bf16 dense" if peak else
                 " (no peak known for this device)"))


if __name__ == "__main__":
    main()
