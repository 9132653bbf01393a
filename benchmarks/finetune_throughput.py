"""Tokens/s and peak memory of LoRA against full fine-tuning of the same model, through `elm-train finetune`.

    .venv/bin/python benchmarks/finetune_throughput.py                          # openelm-270m, 4 x 128 tokens, 6 steps
    .venv/bin/python benchmarks/finetune_throughput.py --steps 10 --batch 8
    .venv/bin/python benchmarks/finetune_throughput.py --preset tiny --steps 3   # a quick check of the script itself

The model is a preset with seeded random weights, written once as a Hugging Face folder with the
repository's tokenizer.model beside it. The data are King James chapters as {"text"} records, each
longer than the sequence, so every example is cut to the sequence length and every token is trained.
Each mode is one `python -m model.cli finetune --init-from BASE --method sft|lora ...` in its own
process, with the same seed, shapes, threads and settings (LoRA with its defaults: rank 32, alpha 32,
dropout 0.1 on qkv_proj, out_proj, proj_1, proj_2), no evaluation and only the checkpoint the
trainer always writes at the last step. Measured per mode:

- tokens/s: the median of the run's own `tokens_per_s` records in metrics.jsonl after the first
  (warm-up) step; start-up, model loading and the final checkpoint are outside them;
- peak RSS: the child's own `ru_maxrss` (from `os.wait4` on that one process, not the cumulative
  RUSAGE_CHILDREN); it covers loading the model and writing the final checkpoint too (for LoRA the
  merged weights, the adapter and its optimizer state; for full fine-tuning the weights and their
  AdamW moments);
- RSS after loading: VmRSS when the run writes run.json (model loaded, adapters in, optimizer built,
  its state not yet allocated). safetensors maps the weights file, so weights not yet read are not
  resident: this is the interpreter, torch, PEFT and the data more than the model;
- wall time of the whole command.

The modes take turns over `--rounds` rounds (full then LoRA, then LoRA then full, ...), so load from
other processes and drift fall on both alike; a mode's tokens/s is the median of its per-step rates
over all its rounds, its peak RSS the highest of its rounds.

Targets: LoRA's peak RSS <= 0.6x full fine-tuning's, and LoRA's tokens/s >= full fine-tuning's.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from corpus.mirror.text import kjv_chapters  # noqa: E402
from corpus.tokenizer.tokenizer import default_model_path  # noqa: E402
from model.hf_folder import write_hf_folder  # noqa: E402
from model.openelm import OpenELM  # noqa: E402
from model.presets import get_preset  # noqa: E402
from model.train.metrics import read_metrics  # noqa: E402

MODES = {"full fine-tuning": "sft", "LoRA": "lora"}
GIB = 1024 ** 3


def write_base(folder: Path, preset: str) -> Path:
    """The preset with seeded random weights as a Hugging Face folder, tokenizer.model beside it."""
    torch.manual_seed(0)
    config = get_preset(preset)
    write_hf_folder(folder, config, OpenELM(config).state_dict())
    shutil.copy(default_model_path(), folder / "tokenizer.model")
    return folder


def write_records(path: Path, n: int, min_words: int) -> Path:
    """`n` KJV chapters of at least `min_words` words (so each fills the sequence) as {"text"} records."""
    chapters = [c.text for c in kjv_chapters() if len(c.text.split()) >= min_words][:n]
    if len(chapters) < n:
        raise SystemExit(f"only {len(chapters)} chapters have {min_words} words or more; shorten --sequence-length")
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in chapters))
    return path


def rss_bytes(pid: int, field: str) -> int | None:
    """A VmRSS/VmHWM line of /proc/PID/status in bytes (None once the process has exited or elsewhere)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def run_mode(method: str, args, base: Path, data: Path, run: Path, log: Path) -> dict:
    """One `elm-train finetune` process: its exit code, wall time, peak RSS, RSS after loading, and run folder."""
    never = args.steps + 1
    argv = [sys.executable, "-m", "model.cli", "finetune", "--init-from", str(base), "--data", str(data),
            "--method", method, "--steps", str(args.steps), "--sequence-length", str(args.sequence_length),
            "--micro-batch-size", str(args.batch), "--threads", str(args.threads), "--no-progress",
            "--checkpoint-every", str(never), "--eval-every", str(never), "--out", str(run)]
    started = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    loaded = None
    while True:
        # wait4 on this one pid gives its own rusage; Popen.poll() would reap it and lose that.
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if loaded is None and (run / "run.json").is_file():
            loaded = rss_bytes(proc.pid, "VmRSS")
        time.sleep(0.02)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"code": proc.returncode, "wall_s": time.perf_counter() - started,
            "peak_rss": usage.ru_maxrss * 1024, "loaded_rss": loaded, "run": run, "log": log}


def summarise(result: dict) -> dict:
    """tokens/s per step after the first, and the run's facts, from metrics.jsonl and run.json."""
    train = [r for r in read_metrics(result["run"] / "metrics.jsonl") if r["kind"] == "train"]
    facts = json.loads((result["run"] / "run.json").read_text())
    rates = [r["tokens_per_s"] for r in train[1:]]
    return {**result, "rates": rates, "rate": statistics.median(rates),
            "step_tokens": train[-1]["tokens"] // len(train), "trainable": facts["trainable_parameters"],
            "parameters": facts["parameters"],
            "truncated": facts["data"]["truncated"], "examples": facts["data"]["train_examples"]}


def gib(n: int | None) -> str:
    return f"{n / GIB:.2f}" if n else "n/a"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="openelm-270m")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--sequence-length", type=int, default=128)
    p.add_argument("--batch", type=int, default=4, help="micro-batch size (one micro-batch per step)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads (default: torch's)")
    p.add_argument("--rounds", type=int, default=2, help="runs of each mode, taking turns (default 2)")
    args = p.parse_args()
    if args.steps < 2:
        p.error("--steps must be at least 2: the first step is warm-up")

    work = Path(tempfile.mkdtemp(prefix="finetune-bench-"))
    try:
        base = write_base(work / "base", args.preset)
        data = write_records(work / "train.jsonl", max(64, args.steps * args.batch), min_words=args.sequence_length)
        runs: dict[str, list[dict]] = {name: [] for name in MODES}
        for round_ in range(args.rounds):
            order = list(MODES.items()) if round_ % 2 == 0 else list(reversed(MODES.items()))
            for name, method in order:
                tag = f"{method}-{round_ + 1}"
                result = run_mode(method, args, base, data, work / f"run-{tag}", work / f"{tag}.log")
                if result["code"] != 0:
                    print(f"FAIL: {name} (--method {method}) exited {result['code']}; its output ends:\n"
                          + "\n".join(result["log"].read_text().splitlines()[-30:]))
                    return 1
                r = summarise(result)
                runs[name].append(r)
                print(f"round {round_ + 1}: {name}: {r['rate']:,.0f} tokens/s (steps 2..{args.steps}: "
                      f"{', '.join(f'{x:,.0f}' for x in r['rates'])}), peak RSS {gib(r['peak_rss'])} GiB, "
                      f"after loading {gib(r['loaded_rss'])} GiB, {r['wall_s']:.1f} s", flush=True)
        results = {name: {**rounds[0], "rate": statistics.median(x for r in rounds for x in r["rates"]),
                          "peak_rss": max(r["peak_rss"] for r in rounds),
                          "wall_s": statistics.median(r["wall_s"] for r in rounds)}
                   for name, rounds in runs.items()}

        full, lora = results["full fine-tuning"], results["LoRA"]
        print(f"\n{args.preset} ({full['parameters'] / 1e6:.1f}M parameters, seeded random weights), "
              f"{args.batch} x {args.sequence_length} tokens per step ({full['step_tokens']} trained), "
              f"{args.steps} steps, {full['truncated']} of {full['examples']} examples cut to the length, "
              f"torch {torch.__version__}, {args.threads} threads, fp32, CPU, load average "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        print(f"medians over {args.rounds} round(s) of each mode")
        print("| mode | tokens/s (median, steps 2..N) | peak RSS GiB | RSS after loading GiB | wall s "
              "| trainable parameters |\n|---|---|---|---|---|---|")
        for name, r in results.items():
            print(f"| {name} | {r['rate']:,.0f} | {gib(r['peak_rss'])} | {gib(r['loaded_rss'])} | {r['wall_s']:.1f} "
                  f"| {r['trainable']:,} ({r['trainable'] / r['parameters']:.2%}) |")
        memory = lora["peak_rss"] / full["peak_rss"]
        speed = lora["rate"] / full["rate"]
        print("\n| LoRA / full fine-tuning | ratio | target |\n|---|---|---|")
        print(f"| peak RSS | {memory:.2f}x | <= 0.6x: {'met' if memory <= 0.6 else 'NOT met'} |")
        print(f"| tokens/s | {speed:.2f}x | >= 1x: {'met' if speed >= 1 else 'NOT met'} |")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
