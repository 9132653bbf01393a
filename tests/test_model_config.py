"""OpenELMConfig: layer-wise scaling reproduces Apple's released shapes; config.json round trips."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from model.config import OpenELMConfig, make_divisible
from model.openelm import OpenELM
from model.presets import PRESETS, get_preset


def runs(*pairs: tuple[int, int]) -> tuple[int, ...]:
    """(12, 5), (16, 7) -> twelve five times, then sixteen seven times: the table's notation."""
    return tuple(value for value, count in pairs for _ in range(count))


# Per-layer head counts and parameter totals published for the four released models (OPENELM.md table).
RELEASED = {
    "openelm-270m": (runs((12, 5), (16, 7), (20, 4)), runs((3, 5), (4, 7), (5, 4)), 271_527_168),
    "openelm-450m": (runs((12, 3), (16, 7), (20, 6), (24, 4)), runs((3, 3), (4, 7), (5, 6), (6, 4)), 457_179_136),
    "openelm-1.1b": (runs((16, 3), (20, 7), (24, 8), (28, 6), (32, 4)),
                     runs((4, 3), (5, 7), (6, 8), (7, 6), (8, 4)), 1_079_891_456),
    "openelm-3b": (runs((12, 4), (16, 14), (20, 12), (24, 6)), runs((3, 4), (4, 14), (5, 12), (6, 6)), 3_036_647_424),
}

# config.json as published for OpenELM-1.1B (mlx-community's 4-bit copy of Apple's file, quantization kept).
PUBLISHED_1_1B_CONFIG = json.loads("""{
  "activation_fn_name": "swish", "architectures": ["OpenELMForCausalLM"], "bos_token_id": 1, "eos_token_id": 2,
  "ffn_dim_divisor": 256,
  "ffn_multipliers": [0.5, 0.63, 0.76, 0.89, 1.02, 1.15, 1.28, 1.41, 1.54, 1.67, 1.8, 1.93, 2.06, 2.19, 2.31,
                      2.44, 2.57, 2.7, 2.83, 2.96, 3.09, 3.22, 3.35, 3.48, 3.61, 3.74, 3.87, 4.0],
  "ffn_with_glu": true, "head_dim": 64, "initializer_range": 0.02, "max_context_length": 2048, "model_dim": 2048,
  "model_type": "openelm", "normalization_layer_name": "rms_norm", "normalize_qk_projections": true,
  "num_gqa_groups": 4,
  "num_kv_heads": [4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7, 7, 7, 7, 8, 8, 8, 8],
  "num_query_heads": [16, 16, 16, 20, 20, 20, 20, 20, 20, 20, 24, 24, 24, 24, 24, 24, 24, 24, 28, 28, 28, 28,
                      28, 28, 32, 32, 32, 32],
  "num_transformer_layers": 28, "qkv_multipliers": [0.5, 1.0], "quantization": {"group_size": 64, "bits": 4},
  "rope_freq_constant": 10000, "rope_max_length": 4096, "share_input_output_layers": true,
  "torch_dtype": "bfloat16", "transformers_version": "4.39.3", "use_cache": true, "vocab_size": 32000
}""")


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_released_presets_have_published_per_layer_heads(name):
    query_heads, kv_heads, _ = RELEASED[name]
    config = get_preset(name)
    assert config.num_query_heads == query_heads
    assert config.num_kv_heads == kv_heads


def test_270m_ffn_widths_follow_layerwise_scaling():
    assert get_preset("openelm-270m").ffn_intermediate == (
        768, 1024, 1280, 1536, 1792, 2048, 2560, 2816, 3072, 3328, 3584, 3840, 4352, 4608, 4864, 5120)


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_released_parameter_counts_on_meta_device(name):
    expected = RELEASED[name][2]
    config = get_preset(name)
    with torch.device("meta"):
        model = OpenELM(config)
    assert all(p.is_meta for p in model.parameters())
    assert model.num_parameters() == expected
    assert config.num_parameters() == expected


def test_make_divisible_rounds_up_when_rounding_loses_over_ten_percent():
    # 270M layer 5: 1280 * 0.67 = 857.6 rounds to 768 (< 0.9 * 857.6), so one more step: 1024 = 16 heads.
    assert make_divisible(1280 * 0.67, 256) == 1024
    assert make_divisible(1280 * 0.5, 256) == 768
    assert make_divisible(10, 256) == 256


def test_tiny_preset_is_a_few_million_parameters_with_varying_heads():
    tiny = get_preset("tiny")
    assert tiny.vocab_size == 32000
    assert 2_000_000 < tiny.num_parameters() < 10_000_000
    assert len(set(tiny.num_query_heads)) > 1 and len(set(tiny.ffn_intermediate)) > 1


def test_unknown_preset_error_lists_choices():
    with pytest.raises(ValueError, match="openelm-270m"):
        get_preset("openelm-7b")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_hf_config_round_trip_is_identity(name):
    config = get_preset(name)
    hf = config.to_hf_config()
    assert json.loads(json.dumps(hf)) == hf  # plain JSON types only
    back = OpenELMConfig.from_hf_config(hf)
    assert back == config
    assert (back.num_query_heads, back.num_kv_heads, back.ffn_intermediate) == (
        config.num_query_heads, config.num_kv_heads, config.ffn_intermediate)


def test_published_config_json_loads_as_the_1_1b_preset():
    assert OpenELMConfig.from_hf_config(PUBLISHED_1_1B_CONFIG) == get_preset("openelm-1.1b")


def test_to_hf_config_reproduces_every_published_architecture_key():
    ours = get_preset("openelm-1.1b").to_hf_config()
    not_architecture = {"quantization", "torch_dtype", "transformers_version", "use_cache"}
    for key, value in PUBLISHED_1_1B_CONFIG.items():
        if key not in not_architecture:
            assert ours[key] == value, key


def test_hf_config_carries_what_mlx_lm_reads():
    from mlx_lm.models.openelm import ModelArgs, make_divisible as mlx_make_divisible
    config = get_preset("openelm-270m")
    args = ModelArgs.from_dict(config.to_hf_config())
    assert args.num_query_heads == list(config.num_query_heads)
    assert args.num_kv_heads == list(config.num_kv_heads)
    assert args.rms_norm_eps == config.rms_norm_eps
    widths = [mlx_make_divisible(m * args.model_dim, args.ffn_dim_divisor) for m in args.ffn_multipliers]
    assert tuple(widths) == config.ffn_intermediate


def test_from_hf_config_rejects_head_lists_its_multipliers_do_not_give():
    bad = dict(PUBLISHED_1_1B_CONFIG, num_query_heads=[16] * 28)
    with pytest.raises(ValueError, match="num_query_heads"):
        OpenELMConfig.from_hf_config(bad)


def test_from_hf_config_names_missing_keys_and_unsupported_options():
    with pytest.raises(ValueError, match="model_dim"):
        OpenELMConfig.from_hf_config({k: v for k, v in PUBLISHED_1_1B_CONFIG.items() if k != "model_dim"})
    with pytest.raises(ValueError, match="ffn_with_glu"):
        OpenELMConfig.from_hf_config(dict(PUBLISHED_1_1B_CONFIG, ffn_with_glu=False))


def test_config_is_plain_frozen_data_changed_with_replace():
    config = get_preset("openelm-270m")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.model_dim = 512  # type: ignore[misc]
    narrow = dataclasses.replace(config, model_dim=512)
    assert narrow.num_transformer_layers == 16 and narrow.num_query_heads[-1] == 8


def test_multipliers_of_the_wrong_length_are_rejected():
    with pytest.raises(ValueError, match="multipliers"):
        OpenELMConfig(num_transformer_layers=4, model_dim=128, head_dim=16, ffn_multipliers=(0.5, 1.0, 2.0))


def test_flops_per_token_counts_six_times_weights_plus_attention():
    config = get_preset("openelm-270m")
    norms = config.model_dim * (2 * config.num_transformer_layers + 1) + 2 * config.head_dim * config.num_transformer_layers
    matmul_weights = config.num_parameters() - norms  # the tied embedding counts once, as the output projection
    attention = sum(12 * n_q * config.head_dim * 2048 for n_q in config.num_query_heads)
    assert config.flops_per_token(2048) == 6 * matmul_weights + attention
