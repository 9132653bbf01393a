"""OpenELM forward+backward throughput against a straightforward reference, same run, same weights.

    .venv/bin/python benchmarks/model_throughput.py                 # CPU: tiny and a narrow 270M shape
    .venv/bin/python benchmarks/model_throughput.py --compile off   # skip torch.compile (fast)
    .venv/bin/python benchmarks/model_throughput.py --gpu           # CUDA: bf16 270M preset, tokens/s and MFU
    .venv/bin/python benchmarks/model_throughput.py --amp bf16 --models tiny --compile off   # the GPU path's code on CPU

The reference is what a first, literal port looks like: K/V copied per query head with
`repeat_interleave`, RMSNorm as separate pow/mean/rsqrt/mul ops, RoPE tables rebuilt in every
layer. Both models load one state dict and must agree on the logits before anything is timed.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model.config import OpenELMConfig  # noqa: E402
from model.openelm import OpenELM  # noqa: E402
from model.presets import get_preset  # noqa: E402

# Dense bf16 tensor-core peaks, FLOP/s, for the MFU denominator; the first name contained in the device's wins.
PEAK_BF16 = {"H100 PCIe": 756e12, "H100 NVL": 835e12, "H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}


class ReferenceRMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class ReferenceAttention(nn.Module):
    def __init__(self, config: OpenELMConfig, layer: int):
        super().__init__()
        self.config = config
        self.n_q, self.n_kv, self.hd = config.num_query_heads[layer], config.num_kv_heads[layer], config.head_dim
        self.qkv_proj = nn.Linear(config.model_dim, (self.n_q + 2 * self.n_kv) * self.hd, bias=False)
        self.q_norm = ReferenceRMSNorm(self.hd, config.rms_norm_eps)
        self.k_norm = ReferenceRMSNorm(self.hd, config.rms_norm_eps)
        self.out_proj = nn.Linear(self.n_q * self.hd, config.model_dim, bias=False)

    def rope(self, x):
        length = x.shape[-2]
        inv_freq = 1.0 / self.config.rope_freq_constant ** (
            torch.arange(0, self.hd, 2, device=x.device).float() / self.hd)
        angles = torch.outer(torch.arange(length, device=x.device).float(), inv_freq)
        angles = torch.cat((angles, angles), dim=-1)
        x32 = x.float()
        half = self.hd // 2
        rotated = torch.cat((-x32[..., half:], x32[..., :half]), dim=-1)
        return (x32 * angles.cos() + rotated * angles.sin()).type_as(x)

    def forward(self, x):
        b, t, _ = x.shape
        qkv = self.qkv_proj(x).reshape(b, t, self.n_q + 2 * self.n_kv, self.hd).transpose(1, 2)
        q, k, v = qkv.split([self.n_q, self.n_kv, self.n_kv], dim=1)
        q, k = self.rope(self.q_norm(q)), self.rope(self.k_norm(k))
        k = k.repeat_interleave(self.n_q // self.n_kv, dim=1)
        v = v.repeat_interleave(self.n_q // self.n_kv, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out_proj(y.transpose(1, 2).contiguous().reshape(b, t, -1))


class ReferenceFFN(nn.Module):
    def __init__(self, config: OpenELMConfig, layer: int):
        super().__init__()
        inner = config.ffn_intermediate[layer]
        self.proj_1 = nn.Linear(config.model_dim, 2 * inner, bias=False)
        self.proj_2 = nn.Linear(inner, config.model_dim, bias=False)

    def forward(self, x):
        y1, y2 = self.proj_1(x).chunk(2, dim=-1)
        return self.proj_2(F.silu(y1) * y2)


class ReferenceLayer(nn.Module):
    def __init__(self, config: OpenELMConfig, layer: int):
        super().__init__()
        self.attn_norm = ReferenceRMSNorm(config.model_dim, config.rms_norm_eps)
        self.attn = ReferenceAttention(config, layer)
        self.ffn_norm = ReferenceRMSNorm(config.model_dim, config.rms_norm_eps)
        self.ffn = ReferenceFFN(config, layer)

    def forward(self, x):
        x = x + self.attn(self.attn_norm(x))
        return x + self.ffn(self.ffn_norm(x))


class ReferenceOpenELM(nn.Module):
    def __init__(self, config: OpenELMConfig):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            token_embeddings=nn.Embedding(config.vocab_size, config.model_dim),
            layers=nn.ModuleList(ReferenceLayer(config, i) for i in range(config.num_transformer_layers)),
            norm=ReferenceRMSNorm(config.model_dim, config.rms_norm_eps),
        ))

    def forward(self, input_ids):
        x = self.transformer.token_embeddings(input_ids)
        for layer in self.transformer.layers:
            x = layer(x)
        return self.transformer.norm(x) @ self.transformer.token_embeddings.weight.T


def narrow_270m(model_dim: int) -> OpenELMConfig:
    """The 270M preset's depth, head size and layer-wise scaling at a smaller width."""
    return dataclasses.replace(get_preset("openelm-270m"), model_dim=model_dim)


def train_step(model: nn.Module, ids: torch.Tensor, autocast_dtype: torch.dtype | None) -> None:
    with torch.autocast(ids.device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        logits = model(ids[:, :-1])
    loss = F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    for p in model.parameters():
        p.grad = None


def time_interleaved(variants: dict[str, nn.Module], ids: torch.Tensor, steps: int, warmup: int, repeats: int,
                     autocast_dtype: torch.dtype | None) -> dict[str, dict[str, float]]:
    """Per variant: best tokens per wall second and per CPU second over `repeats` rounds, and warm-up seconds.

    Variants take turns within a round, so load from other processes falls on all of them; the
    best round is the least disturbed one. CPU seconds (this process, all threads) are steadier
    than wall seconds on a shared machine; on CUDA only the wall clock means anything.
    """
    sync = torch.cuda.synchronize if ids.is_cuda else (lambda: None)
    tokens = ids.shape[0] * (ids.shape[1] - 1) * steps
    results = {name: {"wall": 0.0, "cpu": 0.0, "warmup_s": 0.0} for name in variants}
    for name, model in variants.items():
        start = time.perf_counter()
        for _ in range(warmup):
            train_step(model, ids, autocast_dtype)
        sync()
        results[name]["warmup_s"] = time.perf_counter() - start
    for _ in range(repeats):
        for name, model in variants.items():
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(steps):
                train_step(model, ids, autocast_dtype)
            sync()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            results[name]["wall"] = max(results[name]["wall"], tokens / wall)
            results[name]["cpu"] = max(results[name]["cpu"], tokens / cpu)
    return results


def build_pair(config: OpenELMConfig, device: str) -> tuple[OpenELM, ReferenceOpenELM]:
    torch.manual_seed(0)
    ours = OpenELM(config).to(device)
    reference = ReferenceOpenELM(config).to(device)
    reference.load_state_dict(ours.state_dict(), strict=True)
    return ours, reference


def check_agreement(ours, reference, ids, autocast_dtype: torch.dtype | None = None) -> float:
    """Max |logit difference|; raises when it is more than rounding (bf16 rounds at about 1%)."""
    tolerance = 1e-3 if autocast_dtype is None else 5e-2
    with torch.no_grad(), torch.autocast(ids.device.type, dtype=autocast_dtype or torch.float32,
                                         enabled=autocast_dtype is not None):
        a, b = ours(ids).float(), reference(ids).float()
    err = (a - b).abs().max().item()
    if err > tolerance * max(1.0, b.abs().max().item()):
        raise AssertionError(f"reference and model disagree: max |diff| {err:.3g}")
    return err


MODELS = {
    "tiny": lambda args: get_preset("tiny"),
    "270m-narrow": lambda args: narrow_270m(args.narrow_dim),
    "openelm-270m": lambda args: get_preset("openelm-270m"),
}


def describe_device(device: str) -> tuple[str, float | None]:
    """A name for the header and the bf16 peak FLOP/s when known."""
    if device == "cuda":
        name = torch.cuda.get_device_name()
        return name, next((peak for key, peak in PEAK_BF16.items() if key in name), None)
    return f"CPU {platform.processor() or platform.machine()}, torch threads: {torch.get_num_threads()}", None


def run(args) -> None:
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda asked for, but torch sees no CUDA device")
    else:
        torch.set_num_threads(args.threads)
    amp = torch.bfloat16 if args.amp == "bf16" else None
    device_name, peak = describe_device(args.device)
    if args.peak_tflops:
        peak = args.peak_tflops * 1e12
    compile_modes = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    print(f"# {device_name}, torch {torch.__version__}, batch {args.batch} x seq {args.seq}, "
          f"{'bf16 autocast' if amp else 'float32'}, forward+backward, best of {args.repeats} rounds; "
          f"load average {os.getloadavg()[0]:.1f} at start")
    print(f"{'model':<13} {'params':>7} {'compile':>7} {'impl':>9} {'tok/s':>8} {'vs ref':>6} {'tok/cpu-s':>9} "
          f"{'vs ref':>6} {'MFU':>6} {'warmup s':>8}")
    for name in args.models:
        config = MODELS[name](args)
        ours, reference = build_pair(config, args.device)
        ids = torch.randint(0, config.vocab_size, (args.batch, args.seq + 1),
                            generator=torch.Generator().manual_seed(0)).to(args.device)
        err = check_agreement(ours, reference, ids[:, :64])
        if amp:
            check_agreement(ours, reference, ids[:, :64], amp)
        flops = config.flops_per_token(args.seq)
        for compiled in compile_modes:
            variants = {"reference": reference, "openelm": ours}
            if compiled:
                variants = {impl: torch.compile(model) for impl, model in variants.items()}
            res = time_interleaved(variants, ids, args.steps, args.warmup, args.repeats, amp)
            ref = res["reference"]
            for impl, r in res.items():
                mfu = f"{r['wall'] * flops / peak:>6.1%}" if peak else "     -"
                print(f"{name:<13} {config.num_parameters() / 1e6:>6.1f}M {('on' if compiled else 'off'):>7} "
                      f"{impl:>9} {r['wall']:>8.0f} {r['wall'] / ref['wall']:>5.2f}x {r['cpu']:>9.0f} "
                      f"{r['cpu'] / ref['cpu']:>5.2f}x {mfu} {r['warmup_s']:>8.1f}", flush=True)
        print(f"#   {name}: float32 logits of both agree to {err:.2e}; {flops / 1e9:.3f} GFLOP/token"
              + (f"; MFU against {peak / 1e12:.0f} TFLOP/s" if peak else ""))
    print(f"# load average {os.getloadavg()[0]:.1f} at end")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true",
                        help="shorthand for --device cuda --amp bf16 --models openelm-270m --batch 8 --seq 2048 "
                             "--steps 10 --warmup 3")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--amp", choices=["none", "bf16"], default="none")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["tiny", "270m-narrow"])
    parser.add_argument("--compile", choices=["off", "on", "both"], default="both")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--narrow-dim", type=int, default=512, help="model_dim of the narrow 270M-shaped model")
    parser.add_argument("--steps", type=int, default=1, help="train steps per timing")
    parser.add_argument("--repeats", type=int, default=4, help="rounds of timings; the best round per variant is printed")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads; one keeps the CPU-second rate free of threads spinning on a shared machine")
    parser.add_argument("--peak-tflops", type=float, default=None, help="peak for MFU where the device is unlisted")
    args = parser.parse_args(argv)
    if args.gpu:
        args.device, args.amp, args.models = "cuda", "bf16", ["openelm-270m"]
        args.batch, args.seq, args.steps, args.warmup = 8, 2048, 10, 3
    run(args)


if __name__ == "__main__":
    main()
