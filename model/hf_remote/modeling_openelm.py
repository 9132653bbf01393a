"""OpenELM for transformers' remote code (`trust_remote_code=True`), written by elm-corpus.

Copied into every Hugging Face export beside `configuration_openelm.py`, this file lets
`AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)` load the folder's
`model.safetensors` (Apple's weight names, tied embeddings, no `lm_head`) under transformers 4.4x
and 5.x, with the logits of elm-corpus's own `model/openelm.py`: layer-wise scaled GQA attention
with Q/K RMSNorm before rotate-half RoPE, SwiGLU feed-forward, pre-norm blocks, norms and RoPE in
float32. It needs nothing but torch, numpy and transformers.

Beyond the plain forward pass it handles what generic transformers code sends a causal LM:
- `attention_mask` (batch, keys): padded keys are never attended to, so a left- or right-padded
  row gives the logits it gives alone (RoPE positions count real tokens only, as `generate`'s do);
- a KV cache (transformers' `DynamicCache`, created when `use_cache` and none is given), under the
  argument name `past_key_values` (transformers 4.x) or `cache` (transformers 5), returned in the
  output field the installed transformers reads, so `generate()` decodes incrementally;
- `labels` (next-token cross-entropy, -100 ignored), `logits_to_keep`, `output_hidden_states`.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_openelm import OpenELMConfig

# transformers 5 renamed the outputs' `past_key_values` field to `cache`; fill whichever this version has.
_CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
# SDPA groups query heads over shared K/V itself from torch 2.5 on; before that K/V heads are repeated.
_SDPA_GQA = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 5)


def rope_tables(positions: Tensor, head_dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos and sin, float32, shape positions.shape + (head_dim,), for rotate-half RoPE."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions.to(torch.float32)[..., None] * inv_freq
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (i, i + head_dim/2) of x (batch, heads, length, head_dim); float32 inside, x's dtype out."""
    x32 = x.float()
    first, second = x32.chunk(2, dim=-1)
    rotated = torch.cat((-second, first), dim=-1)
    return (x32 * cos + rotated * sin).type_as(x)


class OpenELMRMSNorm(nn.Module):
    """x / rms(x) * weight in float32, returned in x's dtype."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        if hasattr(F, "rms_norm"):
            out = F.rms_norm(x32, self.weight.shape, self.weight.float(), self.eps)
        else:  # torch < 2.4
            out = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()
        return out.type_as(x)


class OpenELMAttention(nn.Module):
    """Causal GQA; qkv rows are [q heads | k heads | v heads]; q head i reads kv head i // (n_q / n_kv)."""

    def __init__(self, config: OpenELMConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_query_heads = config.num_query_heads[layer_idx]
        self.num_kv_heads = config.num_kv_heads[layer_idx]
        qkv_heads = self.num_query_heads + 2 * self.num_kv_heads
        self.qkv_proj = nn.Linear(config.model_dim, qkv_heads * self.head_dim, bias=False)
        self.q_norm = OpenELMRMSNorm(self.head_dim, config.rms_norm_eps)
        self.k_norm = OpenELMRMSNorm(self.head_dim, config.rms_norm_eps)
        self.out_proj = nn.Linear(self.num_query_heads * self.head_dim, config.model_dim, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Optional[Tensor], causal: bool,
                cache: Optional[Cache]) -> Tensor:
        batch, length, _ = x.shape
        qkv = self.qkv_proj(x).view(batch, length, -1, self.head_dim).transpose(1, 2)
        q, k, v = qkv.split([self.num_query_heads, self.num_kv_heads, self.num_kv_heads], dim=1)
        q = apply_rope(self.q_norm(q), cos, sin)  # Q/K norm before RoPE, as CoreNet trains it
        k = apply_rope(self.k_norm(k), cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
            k, v = k.to(q.dtype), v.to(q.dtype)
        if self.num_query_heads == self.num_kv_heads:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        elif _SDPA_GQA:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=True)
        else:
            groups = self.num_query_heads // self.num_kv_heads
            y = F.scaled_dot_product_attention(q, k.repeat_interleave(groups, dim=1),
                                               v.repeat_interleave(groups, dim=1), attn_mask=mask, is_causal=causal)
        return self.out_proj(y.transpose(1, 2).reshape(batch, length, -1))


class OpenELMFeedForward(nn.Module):
    """SwiGLU: proj_1's first half is the gate, silu(gate) * up, then proj_2."""

    def __init__(self, config: OpenELMConfig, layer_idx: int):
        super().__init__()
        inner = config.ffn_intermediate_sizes()[layer_idx]
        self.proj_1 = nn.Linear(config.model_dim, 2 * inner, bias=False)
        self.proj_2 = nn.Linear(inner, config.model_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.proj_1(x).chunk(2, dim=-1)
        return self.proj_2(F.silu(gate) * up)


class OpenELMDecoderLayer(nn.Module):
    """Pre-norm block: x + attn(attn_norm(x)), then + ffn(ffn_norm(.))."""

    def __init__(self, config: OpenELMConfig, layer_idx: int):
        super().__init__()
        self.attn_norm = OpenELMRMSNorm(config.model_dim, config.rms_norm_eps)
        self.attn = OpenELMAttention(config, layer_idx)
        self.ffn_norm = OpenELMRMSNorm(config.model_dim, config.rms_norm_eps)
        self.ffn = OpenELMFeedForward(config, layer_idx)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Optional[Tensor], causal: bool,
                cache: Optional[Cache]) -> Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, mask, causal, cache)
        return x + self.ffn(self.ffn_norm(x))


# What this code implements; a config asking for anything else is refused rather than run wrongly.
_SUPPORTED = {
    "ffn_with_glu": True,
    "normalize_qk_projections": True,
    "share_input_output_layers": True,
    "normalization_layer_name": "rms_norm",
    "activation_fn_name": "swish",
}


class OpenELMPreTrainedModel(PreTrainedModel):
    config_class = OpenELMConfig
    base_model_prefix = "transformer"
    main_input_name = "input_ids"
    _no_split_modules = ["OpenELMDecoderLayer"]
    _supports_cache_class = True  # transformers 4.x: generate() may hand us a DynamicCache
    _supports_static_cache = False

    def _init_weights(self, module: nn.Module) -> None:
        """CoreNet's init for weights a folder does not supply: N(0, fan_in^-1/2) linears, N(0, d^-1/2) embedding."""
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=module.in_features ** -0.5)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=module.embedding_dim ** -0.5)
        elif isinstance(module, OpenELMRMSNorm):
            nn.init.ones_(module.weight)


def _cache_length(cache: Optional[Cache]) -> int:
    return 0 if cache is None else int(cache.get_seq_length())


class OpenELMModel(OpenELMPreTrainedModel):
    """Embeddings, decoder layers and the final norm: hidden states (batch, length, model_dim)."""

    def __init__(self, config: OpenELMConfig):
        super().__init__(config)
        for key, supported in _SUPPORTED.items():
            if getattr(config, key, supported) != supported:
                raise ValueError(f"OpenELM config sets {key}={getattr(config, key)!r}; only {supported!r} is implemented")
        self.token_embeddings = nn.Embedding(config.vocab_size, config.model_dim)
        self.layers = nn.ModuleList(OpenELMDecoderLayer(config, i) for i in range(config.num_transformer_layers))
        self.norm = OpenELMRMSNorm(config.model_dim, config.rms_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.token_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.token_embeddings = value

    def forward(self, input_ids: Optional[Tensor] = None, attention_mask: Optional[Tensor] = None,
                position_ids: Optional[Tensor] = None, past_key_values: Optional[Cache] = None,
                inputs_embeds: Optional[Tensor] = None, use_cache: Optional[bool] = None,
                output_hidden_states: Optional[bool] = None, return_dict: Optional[bool] = None,
                cache: Optional[Cache] = None, **kwargs):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        x = self.token_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        batch, length = x.shape[:2]
        cache = cache if cache is not None else past_key_values
        if use_cache is None:
            use_cache = bool(getattr(self.config, "use_cache", True)) and not self.training
        if cache is not None and not isinstance(cache, Cache):
            raise TypeError(f"the KV cache must be a transformers Cache (e.g. DynamicCache), got {type(cache).__name__}")
        if cache is None and use_cache:
            cache = DynamicCache()
        past = _cache_length(cache)

        mask, causal, positions = self._mask_and_positions(attention_mask, position_ids, batch, length, past, x.device)
        cos, sin = rope_tables(positions, self.config.head_dim, float(self.config.rope_freq_constant))
        if cos.dim() == 3:  # per-row positions (batch, length, head_dim): broadcast over heads
            cos, sin = cos[:, None], sin[:, None]

        hidden_states = (x,) if output_hidden_states else None
        for layer in self.layers:
            x = layer(x, cos, sin, mask, causal, cache)
            if output_hidden_states:
                hidden_states += (x,)
        x = self.norm(x)
        if output_hidden_states:
            hidden_states = hidden_states[:-1] + (x,)
        output = BaseModelOutputWithPast(last_hidden_state=x, hidden_states=hidden_states, **{_CACHE_FIELD: cache})
        return output if return_dict is not False else output.to_tuple()

    @staticmethod
    def _mask_and_positions(attention_mask: Optional[Tensor], position_ids: Optional[Tensor], batch: int,
                            length: int, past: int, device: torch.device):
        """The SDPA mask (None where plain causal attention is exact), is_causal, and the RoPE positions.

        With no padding this is what model/openelm.py does: is_causal for a prompt, no mask for one new
        token after a cache, a shifted lower triangle for a chunk after a cache. With padding
        (zeros in a 2D `attention_mask` over past and current keys), a boolean mask hides padded keys,
        so a padded row sees what it would see alone, and positions count real tokens only. Every
        query keeps its own key, so a padding query's row is never all masked (no NaN reaches the
        real rows through the values).
        """
        total = past + length
        padded = None
        if attention_mask is not None:
            if attention_mask.dim() == 4:  # a ready-made mask (boolean, or additive floats): used as it is
                mask = attention_mask if attention_mask.is_floating_point() else attention_mask.bool()
                positions = position_ids if position_ids is not None else torch.arange(past, total, device=device)
                return mask, False, positions
            if attention_mask.shape[-1] != total:
                raise ValueError(f"attention_mask covers {attention_mask.shape[-1]} positions; the cache and the "
                                 f"input make {total}")
            if not bool(attention_mask.bool().all()):
                padded = attention_mask.bool()
        if position_ids is not None:
            positions = position_ids
        elif padded is not None:
            positions = (padded.long().cumsum(-1) - 1).clamp(min=0)[:, past:]
        else:
            positions = torch.arange(past, total, device=device)
        if padded is None:
            if past == 0:
                return None, True, positions
            if length == 1:
                return None, False, positions
            tril = torch.ones(length, total, dtype=torch.bool, device=device).tril(past)
            return tril, False, positions
        tril = torch.ones(length, total, dtype=torch.bool, device=device).tril(past)
        own = torch.zeros(length, total, dtype=torch.bool, device=device)
        own[torch.arange(length, device=device), torch.arange(past, total, device=device)] = True
        mask = (tril[None] & padded[:, None, :]) | own[None]
        return mask[:, None], False, positions


class OpenELMForCausalLM(OpenELMPreTrainedModel, GenerationMixin):
    """OpenELM with its tied output projection: logits (batch, length, vocab_size)."""

    def __init__(self, config: OpenELMConfig):
        super().__init__(config)
        self.transformer = OpenELMModel(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.transformer.token_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.transformer.token_embeddings = value

    def get_output_embeddings(self):
        return None  # the output projection is the input embedding itself, not a module of its own

    def forward(self, input_ids: Optional[Tensor] = None, attention_mask: Optional[Tensor] = None,
                position_ids: Optional[Tensor] = None, past_key_values: Optional[Cache] = None,
                inputs_embeds: Optional[Tensor] = None, labels: Optional[Tensor] = None,
                use_cache: Optional[bool] = None, output_attentions: Optional[bool] = None,
                output_hidden_states: Optional[bool] = None, return_dict: Optional[bool] = None,
                cache: Optional[Cache] = None, logits_to_keep: int = 0, token_type_ids: Optional[Tensor] = None,
                **kwargs):
        # token_type_ids: ignored (one segment); named so that generate(**tokenizer(text)) passes 4.x's kwargs check.
        if output_attentions:
            raise ValueError("OpenELM's remote code computes attention with SDPA and cannot return attention weights")
        out = self.transformer(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               past_key_values=past_key_values, cache=cache, inputs_embeds=inputs_embeds,
                               use_cache=use_cache, output_hidden_states=output_hidden_states, return_dict=True)
        x = out.last_hidden_state
        if logits_to_keep:
            x = x[:, -int(logits_to_keep):]
        logits = F.linear(x, self.transformer.token_embeddings.weight)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                   labels[:, 1:].reshape(-1).to(logits.device), ignore_index=-100)
        output = CausalLMOutputWithPast(loss=loss, logits=logits, hidden_states=out.hidden_states,
                                        **{_CACHE_FIELD: getattr(out, _CACHE_FIELD)})
        return output if return_dict is not False else output.to_tuple()

    def prepare_inputs_for_generation(self, input_ids: Tensor, past_key_values: Optional[Cache] = None,
                                      attention_mask: Optional[Tensor] = None, use_cache: Optional[bool] = None,
                                      inputs_embeds: Optional[Tensor] = None, cache: Optional[Cache] = None,
                                      **kwargs) -> dict:
        """The tokens the cache has not seen, the full attention mask and the cache, for transformers 4.x and 5.x."""
        cache = cache if cache is not None else past_key_values
        past = _cache_length(cache) if isinstance(cache, Cache) else 0
        inputs = {"attention_mask": attention_mask, "use_cache": use_cache, "past_key_values": cache}
        if inputs_embeds is not None and past == 0:
            inputs["inputs_embeds"] = inputs_embeds
        else:
            inputs["input_ids"] = input_ids[:, past:]
        return inputs
