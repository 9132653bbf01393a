"""OpenELM's configuration for transformers' remote code (`trust_remote_code=True`), written by elm-corpus.

This file is copied into every Hugging Face export beside `modeling_openelm.py` and named in
`config.json`'s `auto_map`; transformers imports it from there, so it needs nothing but
transformers and numpy. It reads every key of the `config.json` elm-corpus exports and Apple's
release write (per-layer `num_query_heads`, `num_kv_heads`, `ffn_multipliers`, ...) and works
under transformers 4.4x and 5.x: it has its own `__init__` and no `__post_init__`, so the keyword
arguments transformers 5 hands its configs (`use_cache`, `torch_dtype`, ...) pass through.
"""
from __future__ import annotations

import numpy as np

try:  # transformers 5 spells it PreTrainedConfig; 4.x PretrainedConfig
    from transformers import PreTrainedConfig
except ImportError:  # pragma: no cover - exercised under transformers 4.x
    from transformers import PretrainedConfig as PreTrainedConfig


def make_divisible(value: float, divisor: int) -> int:
    """Round `value` to the nearest multiple of `divisor`, never dropping more than 10% (CoreNet's rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return int(rounded)


def spread_multipliers(multipliers, num_layers: int) -> list[float]:
    """One multiplier per layer: one value for all, a two-value layer-wise range, or one per layer as given."""
    values = [float(multipliers)] if isinstance(multipliers, (int, float)) else [float(m) for m in multipliers]
    if len(values) == 1:
        return values * num_layers
    if len(values) == 2:
        # numpy's round on float64, as CoreNet computes it (ties at 2 decimals matter).
        return [float(round(v, 2)) for v in np.linspace(values[0], values[1], num=num_layers, dtype=float)]
    if len(values) == num_layers:
        return values
    raise ValueError(f"multipliers must hold 1 value, 2 values or one per layer ({num_layers}); got {values}")


class OpenELMConfig(PreTrainedConfig):
    """OpenELM's shapes. `num_query_heads`, `num_kv_heads` and `ffn_multipliers` end up as per-layer lists."""

    model_type = "openelm"
    # Names generic transformers code (generation, caches, lm-eval's max length) looks for.
    attribute_map = {
        "num_hidden_layers": "num_transformer_layers",
        "hidden_size": "model_dim",
        "max_position_embeddings": "max_context_length",
    }

    def __init__(
        self,
        vocab_size: int = 32000,
        max_context_length: int = 2048,
        num_transformer_layers: int = 16,
        model_dim: int = 1280,
        head_dim: int = 64,
        qkv_multipliers=(0.5, 1.0),
        num_query_heads=None,
        num_kv_heads=None,
        num_gqa_groups: int = 4,
        ffn_multipliers=(0.5, 4.0),
        ffn_with_glu: bool = True,
        ffn_dim_divisor: int = 256,
        activation_fn_name: str = "swish",
        normalization_layer_name: str = "rms_norm",
        normalize_qk_projections: bool = True,
        share_input_output_layers: bool = True,
        rope_freq_constant: float = 10000,
        rope_max_length: int = 4096,
        initializer_range: float = 0.02,
        rms_norm_eps: float = 1e-6,
        use_cache: bool = True,
        bos_token_id: int = 1,
        eos_token_id: int = 2,
        **kwargs,
    ):
        layers = int(num_transformer_layers)
        self.vocab_size = int(vocab_size)
        self.max_context_length = int(max_context_length)
        self.num_transformer_layers = layers
        self.model_dim = int(model_dim)
        self.head_dim = int(head_dim)
        self.num_gqa_groups = int(num_gqa_groups)
        self.qkv_multipliers = [float(m) for m in np.atleast_1d(qkv_multipliers)]
        if num_query_heads is None:
            q_dims = [make_divisible(self.model_dim * m, self.head_dim * self.num_gqa_groups)
                      for m in spread_multipliers(self.qkv_multipliers, layers)]
            num_query_heads = [q_dim // self.head_dim for q_dim in q_dims]
        self.num_query_heads = [int(n) for n in num_query_heads]
        if num_kv_heads is None:
            num_kv_heads = [n // self.num_gqa_groups for n in self.num_query_heads]
        self.num_kv_heads = [int(n) for n in num_kv_heads]
        self.ffn_multipliers = spread_multipliers(ffn_multipliers, layers)
        self.ffn_with_glu = ffn_with_glu
        self.ffn_dim_divisor = int(ffn_dim_divisor)
        self.activation_fn_name = activation_fn_name
        self.normalization_layer_name = normalization_layer_name
        self.normalize_qk_projections = normalize_qk_projections
        self.share_input_output_layers = share_input_output_layers
        self.rope_freq_constant = rope_freq_constant
        self.rope_max_length = int(rope_max_length)
        self.initializer_range = initializer_range
        self.rms_norm_eps = float(rms_norm_eps)
        self.use_cache = use_cache
        kwargs.setdefault("tie_word_embeddings", True)
        super().__init__(bos_token_id=bos_token_id, eos_token_id=eos_token_id, **kwargs)
        if len(self.num_query_heads) != layers or len(self.num_kv_heads) != layers:
            raise ValueError(f"num_query_heads and num_kv_heads need one entry per layer ({layers}); got "
                             f"{self.num_query_heads} and {self.num_kv_heads}")

    def ffn_intermediate_sizes(self) -> list[int]:
        """The SwiGLU inner width of each layer."""
        return [make_divisible(m * self.model_dim, self.ffn_dim_divisor) for m in self.ffn_multipliers]
