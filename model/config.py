"""OpenELM's architecture as plain data: per-layer sizes derived once from layer-wise scaling.

A config holds the same knobs as CoreNet's `GPTConfig`; `__post_init__` turns the
multiplier ranges into per-layer query heads, KV heads and FFN widths, so the model
never recomputes them. `to_hf_config` / `from_hf_config` speak the `config.json` of
Apple's Hugging Face release (which mlx-lm also reads), key for key. The named sizes
(`tiny`, `openelm-270m`, ...) are in `model.presets`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Keys a config.json must carry for from_hf_config; everything else has a default.
_REQUIRED_HF_KEYS = ("num_transformer_layers", "model_dim", "head_dim", "vocab_size")


def make_divisible(value: float, divisor: int) -> int:
    """Round `value` to the nearest multiple of `divisor`, never dropping more than 10%."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return int(rounded)


def spread_multipliers(multipliers: tuple[float, ...], num_layers: int) -> tuple[float, ...]:
    """Expand a multiplier spec into one value per layer.

    One value: the same for every layer. Two values: CoreNet's layer-wise scaling, a
    linspace from the first to the second rounded to 2 decimals. `num_layers` values:
    taken as they are (the form Hugging Face's config.json stores `ffn_multipliers` in).
    """
    if len(multipliers) == 1:
        return tuple(float(multipliers[0]) for _ in range(num_layers))
    if len(multipliers) == 2:
        # numpy's round on float64, exactly as CoreNet computes it (ties matter at 2 decimals).
        return tuple(float(round(v, 2)) for v in np.linspace(multipliers[0], multipliers[1], num=num_layers, dtype=float))
    if len(multipliers) == num_layers:
        return tuple(float(m) for m in multipliers)
    raise ValueError(
        f"multipliers must hold 1 value, 2 values (a layer-wise range) or one per layer "
        f"({num_layers}); got {len(multipliers)}: {list(multipliers)}"
    )


@dataclass(frozen=True)
class OpenELMConfig:
    """Everything that fixes an OpenELM model's shapes. Change fields with `dataclasses.replace`."""

    num_transformer_layers: int
    model_dim: int
    head_dim: int
    vocab_size: int = 32000
    num_gqa_groups: int = 4
    qkv_multipliers: tuple[float, ...] = (0.5, 1.0)
    ffn_multipliers: tuple[float, ...] = (0.5, 4.0)
    ffn_dim_divisor: int = 256
    max_context_length: int = 2048
    rope_max_length: int = 4096
    rope_freq_constant: float = 10000.0
    rms_norm_eps: float = 1e-6
    bos_token_id: int = 1
    eos_token_id: int = 2

    # Derived once in __post_init__; one entry per layer.
    num_query_heads: tuple[int, ...] = field(init=False, repr=False, compare=False)
    num_kv_heads: tuple[int, ...] = field(init=False, repr=False, compare=False)
    ffn_intermediate: tuple[int, ...] = field(init=False, repr=False, compare=False)
    ffn_multipliers_per_layer: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("num_transformer_layers", "model_dim", "head_dim", "vocab_size", "num_gqa_groups", "ffn_dim_divisor"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"OpenELMConfig.{name} must be a positive integer, got {getattr(self, name)!r}")
        # Tuples keep the config hashable and comparable whatever the caller passed.
        object.__setattr__(self, "qkv_multipliers", tuple(float(m) for m in _as_sequence(self.qkv_multipliers)))
        object.__setattr__(self, "ffn_multipliers", tuple(float(m) for m in _as_sequence(self.ffn_multipliers)))
        layers = self.num_transformer_layers

        qkv_per_layer = spread_multipliers(self.qkv_multipliers, layers)
        q_dims = [make_divisible(self.model_dim * m, self.head_dim * self.num_gqa_groups) for m in qkv_per_layer]
        num_query_heads = tuple(q_dim // self.head_dim for q_dim in q_dims)
        num_kv_heads = tuple(n_q // self.num_gqa_groups for n_q in num_query_heads)

        ffn_per_layer = spread_multipliers(self.ffn_multipliers, layers)
        ffn_intermediate = tuple(make_divisible(m * self.model_dim, self.ffn_dim_divisor) for m in ffn_per_layer)

        object.__setattr__(self, "num_query_heads", num_query_heads)
        object.__setattr__(self, "num_kv_heads", num_kv_heads)
        object.__setattr__(self, "ffn_intermediate", ffn_intermediate)
        object.__setattr__(self, "ffn_multipliers_per_layer", ffn_per_layer)

    def num_parameters(self) -> int:
        """Parameter count of the tied model, from shapes alone (no allocation)."""
        d, hd = self.model_dim, self.head_dim
        total = self.vocab_size * d + d  # tied embeddings + final norm
        for n_q, n_kv, inner in zip(self.num_query_heads, self.num_kv_heads, self.ffn_intermediate):
            total += d * (n_q + 2 * n_kv) * hd + n_q * hd * d + 2 * hd  # qkv, out, q/k norms
            total += d * 2 * inner + inner * d + 2 * d  # proj_1, proj_2, two block norms
        return total

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token (forward + backward = 3x forward), matmuls only.

        Counts 2 FLOPs per multiply-add for every weight matmul (the tied output
        projection included, the embedding lookup not) plus attention's QK^T and AV
        products at full sequence length, as in the PaLM MFU convention.
        """
        d, hd = self.model_dim, self.head_dim
        forward = 2 * self.vocab_size * d
        for n_q, n_kv, inner in zip(self.num_query_heads, self.num_kv_heads, self.ffn_intermediate):
            forward += 2 * (d * (n_q + 2 * n_kv) * hd + n_q * hd * d + 3 * d * inner)
            forward += 2 * 2 * n_q * hd * seq_len
        return 3 * forward

    def to_hf_config(self) -> dict[str, Any]:
        """The `config.json` of Apple's Hugging Face release (plus `rms_norm_eps`, which mlx-lm reads)."""
        return {
            "architectures": ["OpenELMForCausalLM"],
            "model_type": "openelm",
            "activation_fn_name": "swish",
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "ffn_dim_divisor": self.ffn_dim_divisor,
            "ffn_multipliers": list(self.ffn_multipliers_per_layer),
            "ffn_with_glu": True,
            "head_dim": self.head_dim,
            "initializer_range": 0.02,
            "max_context_length": self.max_context_length,
            "model_dim": self.model_dim,
            "normalization_layer_name": "rms_norm",
            "normalize_qk_projections": True,
            "num_gqa_groups": self.num_gqa_groups,
            "num_kv_heads": list(self.num_kv_heads),
            "num_query_heads": list(self.num_query_heads),
            "num_transformer_layers": self.num_transformer_layers,
            "qkv_multipliers": list(self.qkv_multipliers),
            "rms_norm_eps": self.rms_norm_eps,
            "rope_freq_constant": _plain_number(self.rope_freq_constant),
            "rope_max_length": self.rope_max_length,
            "share_input_output_layers": True,
            "vocab_size": self.vocab_size,
        }

    @classmethod
    def from_hf_config(cls, hf: dict[str, Any]) -> "OpenELMConfig":
        """Build a config from a Hugging Face `config.json` dict, checking it describes this architecture.

        The per-layer `num_query_heads` / `num_kv_heads` lists, when present, must equal
        what the multipliers give: a mismatch means a model this code would build wrongly.
        """
        missing = [key for key in _REQUIRED_HF_KEYS if key not in hf]
        if missing:
            raise ValueError(f"config.json lacks required key(s) {missing}")
        if hf.get("model_type", "openelm") != "openelm":
            raise ValueError(f"config.json has model_type {hf['model_type']!r}, expected 'openelm'")
        unsupported = {
            "ffn_with_glu": True,
            "normalize_qk_projections": True,
            "share_input_output_layers": True,
            "normalization_layer_name": "rms_norm",
            "activation_fn_name": "swish",
        }
        for key, supported in unsupported.items():
            if key in hf and hf[key] != supported:
                raise ValueError(f"config.json sets {key}={hf[key]!r}; only {supported!r} is implemented")

        layers = int(hf["num_transformer_layers"])
        ffn = _as_sequence(hf.get("ffn_multipliers", cls.ffn_multipliers))
        # Store a per-layer list in its two-value range form when it is exactly that range.
        if len(ffn) == layers and layers > 2 and spread_multipliers((ffn[0], ffn[-1]), layers) == tuple(float(m) for m in ffn):
            ffn = (ffn[0], ffn[-1])
        qkv = _as_sequence(hf.get("qkv_multipliers", cls.qkv_multipliers))
        if len(qkv) == layers and layers > 2 and spread_multipliers((qkv[0], qkv[-1]), layers) == tuple(float(m) for m in qkv):
            qkv = (qkv[0], qkv[-1])

        defaults = {f.name: f.default for f in dataclasses.fields(cls) if f.init}
        config = cls(
            num_transformer_layers=layers,
            model_dim=int(hf["model_dim"]),
            head_dim=int(hf["head_dim"]),
            vocab_size=int(hf["vocab_size"]),
            num_gqa_groups=int(hf.get("num_gqa_groups", defaults["num_gqa_groups"])),
            qkv_multipliers=tuple(qkv),
            ffn_multipliers=tuple(ffn),
            ffn_dim_divisor=int(hf.get("ffn_dim_divisor", defaults["ffn_dim_divisor"])),
            max_context_length=int(hf.get("max_context_length", defaults["max_context_length"])),
            rope_max_length=int(hf.get("rope_max_length", defaults["rope_max_length"])),
            rope_freq_constant=float(hf.get("rope_freq_constant", defaults["rope_freq_constant"])),
            rms_norm_eps=float(hf.get("rms_norm_eps", defaults["rms_norm_eps"])),
            bos_token_id=int(hf.get("bos_token_id", defaults["bos_token_id"])),
            eos_token_id=int(hf.get("eos_token_id", defaults["eos_token_id"])),
        )
        for key in ("num_query_heads", "num_kv_heads"):
            if key in hf and tuple(int(n) for n in hf[key]) != getattr(config, key):
                raise ValueError(
                    f"config.json {key} {list(hf[key])} differs from {list(getattr(config, key))}, "
                    f"which its multipliers and head_dim give"
                )
        return config


def _as_sequence(value: Any) -> tuple[float, ...]:
    if isinstance(value, (int, float)):
        return (float(value),)
    return tuple(value)


def _plain_number(value: float) -> int | float:
    """10000.0 -> 10000, as the released config.json writes it."""
    return int(value) if float(value).is_integer() else value
