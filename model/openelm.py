"""OpenELM decoder in one file: layer-wise scaled GQA attention with Q/K norms, SwiGLU, tied embeddings.

Parameter names equal those of Apple's Hugging Face release (`transformer.layers.{i}.attn.qkv_proj.weight`,
...), so its safetensors load with `strict=True` and mlx-lm reads our exports unchanged. Shapes come
from `OpenELMConfig`, which derives every per-layer size once.

Dtypes: parameters are whatever the module was moved to. `forward` returns logits in the compute
dtype, i.e. float32 for a float32 model and bfloat16 under `torch.autocast(dtype=torch.bfloat16)`;
the loss should upcast them. Norms and RoPE always compute in float32.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from model.config import OpenELMConfig


def rope_tables(positions: Tensor, head_dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos and sin tables, float32, shape (len(positions), head_dim), for rotate-half RoPE."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (i, i + head_dim/2) of x (..., T, head_dim) by position; float32 inside, x's dtype out."""
    x32 = x.float()
    first, second = x32.chunk(2, dim=-1)
    rotated = torch.cat((-second, first), dim=-1)
    return (x32 * cos + rotated * sin).type_as(x)


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in float32 whatever the input dtype, returned in x's dtype."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x.float(), self.weight.shape, self.weight.float(), self.eps).type_as(x)


class KVCache:
    """Per-layer key/value buffers for incremental decoding, preallocated to `max_length` positions.

    Keys are stored after Q/K-norm and RoPE, so a decode step only touches its new token.
    """

    def __init__(self, config: OpenELMConfig, batch_size: int, max_length: int,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32):
        shapes = [(batch_size, n_kv, max_length, config.head_dim) for n_kv in config.num_kv_heads]
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for shape in shapes]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for shape in shapes]
        self.max_length = max_length
        self.offset = 0  # positions already written, in every layer

    def update(self, layer: int, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Write this step's keys/values at `offset`; return every position so far."""
        end = self.offset + keys.shape[2]
        if end > self.max_length:
            raise ValueError(f"KVCache holds {self.max_length} positions; this step needs {end}")
        self.keys[layer][:, :, self.offset:end] = keys
        self.values[layer][:, :, self.offset:end] = values
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, num_tokens: int) -> None:
        self.offset += num_tokens


class Attention(nn.Module):
    """Causal GQA: qkv rows are [q heads | k heads | v heads]; q head i reads kv head i // (n_q / n_kv)."""

    def __init__(self, config: OpenELMConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.head_dim = config.head_dim
        self.num_query_heads = config.num_query_heads[layer]
        self.num_kv_heads = config.num_kv_heads[layer]
        qkv_heads = self.num_query_heads + 2 * self.num_kv_heads
        self.qkv_proj = nn.Linear(config.model_dim, qkv_heads * self.head_dim, bias=False)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.out_proj = nn.Linear(self.num_query_heads * self.head_dim, config.model_dim, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: KVCache | None = None) -> Tensor:
        batch, length, _ = x.shape
        qkv = self.qkv_proj(x).view(batch, length, -1, self.head_dim).transpose(1, 2)
        q, k, v = qkv.split([self.num_query_heads, self.num_kv_heads, self.num_kv_heads], dim=1)
        # Q/K norm before RoPE, as CoreNet trains it.
        q = apply_rope(self.q_norm(q), cos, sin)
        k = apply_rope(self.k_norm(k), cos, sin)

        mask, causal = None, True
        if cache is not None:
            past = cache.offset
            k, v = cache.update(self.layer, k, v)
            k, v = k.to(q.dtype), v.to(q.dtype)  # a float32 cache read under bf16 autocast
            if past > 0:
                causal = False
                if length > 1:  # a chunk after a prefix: row t sees keys 0 .. past + t
                    mask = torch.ones(length, past + length, dtype=torch.bool, device=x.device).tril(past)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal,
            enable_gqa=self.num_query_heads != self.num_kv_heads,  # SDPA groups heads without copying K/V
        )
        return self.out_proj(y.transpose(1, 2).reshape(batch, length, -1))


class FeedForward(nn.Module):
    """SwiGLU: proj_1's first half is the gate, silu(gate) * up, then proj_2."""

    def __init__(self, config: OpenELMConfig, layer: int):
        super().__init__()
        inner = config.ffn_intermediate[layer]
        self.proj_1 = nn.Linear(config.model_dim, 2 * inner, bias=False)
        self.proj_2 = nn.Linear(inner, config.model_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.proj_1(x).chunk(2, dim=-1)
        return self.proj_2(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    """Pre-norm block: x + attn(attn_norm(x)), then + ffn(ffn_norm(.))."""

    def __init__(self, config: OpenELMConfig, layer: int):
        super().__init__()
        self.attn_norm = RMSNorm(config.model_dim, config.rms_norm_eps)
        self.attn = Attention(config, layer)
        self.ffn_norm = RMSNorm(config.model_dim, config.rms_norm_eps)
        self.ffn = FeedForward(config, layer)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: KVCache | None = None) -> Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, cache)
        return x + self.ffn(self.ffn_norm(x))


class OpenELM(nn.Module):
    """OpenELM causal LM. `gradient_checkpointing = True` recomputes each layer in backward."""

    def __init__(self, config: OpenELMConfig, gradient_checkpointing: bool = False):
        super().__init__()
        self.config = config
        self.gradient_checkpointing = gradient_checkpointing
        self.transformer = nn.ModuleDict(dict(
            token_embeddings=nn.Embedding(config.vocab_size, config.model_dim),
            layers=nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_transformer_layers)),
            norm=RMSNorm(config.model_dim, config.rms_norm_eps),
        ))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """CoreNet's init: N(0, fan_in^-1/2) linears, N(0, d^-1/2) embedding, unit norms, scaled residual outputs."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=module.in_features ** -0.5)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=module.embedding_dim ** -0.5)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
        # Projections that write into the residual stream shrink with depth (OPT's recipe, via CoreNet).
        residual_std = self.config.model_dim ** -0.5 * (2 * self.config.num_transformer_layers) ** -0.5
        for layer in self.transformer.layers:
            nn.init.normal_(layer.attn.out_proj.weight, std=residual_std)
            nn.init.normal_(layer.ffn.proj_2.weight, std=residual_std)

    def forward(self, input_ids: Tensor, cache: KVCache | None = None) -> Tensor:
        """Logits (batch, length, vocab) for token ids (batch, length); with `cache`, continue from it."""
        return self.logits(self.hidden_states(input_ids, cache))

    def hidden_states(self, input_ids: Tensor, cache: KVCache | None = None) -> Tensor:
        """The final normed hidden states (batch, length, model_dim), before the output projection."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
        start = 0 if cache is None else cache.offset
        positions = torch.arange(start, start + input_ids.shape[1], device=input_ids.device)
        cos, sin = rope_tables(positions, self.config.head_dim, self.config.rope_freq_constant)

        x = self.transformer.token_embeddings(input_ids)
        for layer in self.transformer.layers:
            if self.gradient_checkpointing and self.training and cache is None:
                x = checkpoint(layer, x, cos, sin, use_reentrant=False)
            else:
                x = layer(x, cos, sin, cache)
        if cache is not None:
            cache.advance(input_ids.shape[1])
        return self.transformer.norm(x)

    def logits(self, hidden: Tensor) -> Tensor:
        """The tied output projection: scores over the vocabulary for hidden states of any leading shape.

        Scoring only the positions that matter (an evaluation's continuation) skips most of it.
        """
        return F.linear(hidden, self.transformer.token_embeddings.weight)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int) -> int:
        return self.config.flops_per_token(seq_len)

    def make_cache(self, batch_size: int, max_length: int) -> KVCache:
        """An empty KVCache on this model's device and dtype."""
        weight = self.transformer.token_embeddings.weight
        return KVCache(self.config, batch_size, max_length, device=weight.device, dtype=weight.dtype)

    @torch.no_grad()
    def generate(self, input_ids: Tensor, max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                 repetition_penalty: float = 1.0, eos_id: int | None = 2,
                 generator: torch.Generator | None = None, stop=None) -> Tensor:
        """Prompt plus up to `max_new_tokens` tokens; see `model.generate.generate`."""
        from model.generate import generate  # decoding lives beside the model, not inside it
        return generate(self, input_ids, max_new_tokens, temperature=temperature, top_p=top_p,
                        repetition_penalty=repetition_penalty, eos_id=eos_id, generator=generator, stop=stop)
