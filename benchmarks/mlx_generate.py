"""MLX-export speed on this CPU: mlx-lm with and without Debian's OpenBLAS preloaded, against PyTorch.

    .venv/bin/python benchmarks/mlx_generate.py                       # `small` preset, random weights
    .venv/bin/python benchmarks/mlx_generate.py --preset openelm-270m --new-tokens 32

One seeded model is exported to MLX (float32) in a temporary folder; each mlx-lm measurement
runs in a fresh process, since LD_PRELOAD must be set before mlx loads. Prefill is the prompt's
forward pass; decode is greedy generation with a KV cache. The runners take turns, round after
round, and each figure is the median over --repeats rounds (each after a warm-up pass). The
first tokens decoded by every runner must agree before any number is printed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model.export import export  # noqa: E402
from model.mlx_cpu import OPENBLAS, mlx_cpu_env  # noqa: E402
from model.presets import get_preset  # noqa: E402
from model.hf_folder import write_hf_folder  # noqa: E402
from model.openelm import OpenELM  # noqa: E402

# Runs inside a fresh interpreter: prefill and decode timings from mlx-lm's own generator.
MLX_RUNNER = """
import json, sys, time
import mlx.core as mx
from mlx_lm import load
from mlx_lm.generate import generate_step
from mlx_lm.sample_utils import make_sampler
folder, prompt, new_tokens, repeats = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
model, _ = load(folder)
results = []
for _ in range(repeats + 1):  # the first pass warms up and is dropped
    tokens, start = [], time.perf_counter()
    for token, _ in generate_step(mx.array(prompt), model, max_tokens=new_tokens, sampler=make_sampler(temp=0.0)):
        if not tokens:
            first = time.perf_counter()
        tokens.append(int(token))
    end = time.perf_counter()
    results.append({"prefill_s": first - start, "decode_s": end - first, "tokens": tokens})
print(json.dumps(results[1:]))
"""


def time_torch(model: OpenELM, prompt: list[int], new_tokens: int, repeats: int) -> list[dict]:
    ids = torch.tensor([prompt])
    results = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        with torch.no_grad():
            model(ids)
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        out = model.generate(ids, max_new_tokens=new_tokens, eos_id=None)
        results.append({"prefill_s": prefill, "decode_s": time.perf_counter() - start,
                        "tokens": out[0, len(prompt):].tolist()})
    return results[1:]


def time_mlx(folder: Path, prompt: list[int], new_tokens: int, repeats: int, preload: bool) -> list[dict]:
    plain = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    env = mlx_cpu_env(plain) if preload else dict(plain, HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", MLX_RUNNER, str(folder), json.dumps(prompt), str(new_tokens),
                             str(repeats)], capture_output=True, text=True, env=env, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def summarize(name: str, runs: list[dict], prompt_len: int, new_tokens: int) -> dict:
    prefill = statistics.median(r["prefill_s"] for r in runs)
    # generate_step yields its first token after the prefill; the rest are decode steps.
    decode = statistics.median(r["decode_s"] for r in runs)
    return {"name": name, "prefill_tok_s": prompt_len / prefill, "decode_tok_s": (new_tokens - 1) / decode,
            "tokens": runs[0]["tokens"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small")
    p.add_argument("--prompt-tokens", type=int, default=256)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    config = get_preset(args.preset)
    torch.manual_seed(0)
    model = OpenELM(config).eval()
    ids = torch.randint(3, config.vocab_size, (args.prompt_tokens - 1,), generator=torch.Generator().manual_seed(1))
    prompt = [1] + ids.tolist()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); preset {args.preset} ({config.num_parameters() / 1e6:.1f}M params), "
          f"prompt {args.prompt_tokens} tokens, {args.new_tokens} new tokens, median of {args.repeats}")

    runners = {"torch (baseline)": lambda: time_torch(model, prompt, args.new_tokens, 1),
               "mlx-lm": lambda: time_mlx(folder, prompt, args.new_tokens, 1, False)}
    if OPENBLAS.exists():
        runners["mlx-lm + OpenBLAS preload"] = lambda: time_mlx(folder, prompt, args.new_tokens, 1, True)
    else:
        print(f"({OPENBLAS} not installed: apt-get install libopenblas0-pthread to measure the preload)")
    runs: dict[str, list[dict]] = {name: [] for name in runners}
    with tempfile.TemporaryDirectory() as tmp:
        write_hf_folder(Path(tmp) / "src", config, model.state_dict())
        folder = export(Path(tmp) / "src", Path(tmp) / "mlx", fmt="mlx", tokenizer_spec="default")
        # Rounds interleave the runners, so load from other processes on the machine hits them alike.
        for _ in range(args.repeats):
            for name, measure in runners.items():
                runs[name] += measure()
    rows = [summarize(name, measured, args.prompt_tokens, args.new_tokens) for name, measured in runs.items()]

    check = min(8, args.new_tokens)
    for row in rows[1:]:
        if row["tokens"][:check] != rows[0]["tokens"][:check]:
            print(f"error: {row['name']} decodes {row['tokens'][:check]}, torch {rows[0]['tokens'][:check]}")
            return 1
    base = rows[0]
    print(f"{'runner':<28}{'prefill tok/s':>15}{'vs torch':>10}{'decode tok/s':>15}{'vs torch':>10}")
    for row in rows:
        print(f"{row['name']:<28}{row['prefill_tok_s']:>15.1f}{row['prefill_tok_s'] / base['prefill_tok_s']:>9.2f}x"
              f"{row['decode_tok_s']:>15.1f}{row['decode_tok_s'] / base['decode_tok_s']:>9.2f}x")
    if len(rows) == 3:
        plain, preload = rows[1], rows[2]
        print(f"OpenBLAS preload vs plain mlx: prefill {preload['prefill_tok_s'] / plain['prefill_tok_s']:.2f}x, "
              f"decode {preload['decode_tok_s'] / plain['decode_tok_s']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
