"""OpenELM modules: causality, GQA grouping, Q/K norm order, RoPE, init, HF weight names and interop."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from model.openelm import OpenELM, apply_rope, rope_tables
from model.presets import get_preset


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return OpenELM(get_preset("tiny")).eval()


def random_ids(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 32000, (batch, length), generator=torch.Generator().manual_seed(seed))


def hf_weight_names(num_layers: int) -> set[str]:
    per_layer = ["attn_norm.weight", "attn.qkv_proj.weight", "attn.q_norm.weight", "attn.k_norm.weight",
                 "attn.out_proj.weight", "ffn_norm.weight", "ffn.proj_1.weight", "ffn.proj_2.weight"]
    names = {"transformer.token_embeddings.weight", "transformer.norm.weight"}
    names |= {f"transformer.layers.{i}.{n}" for i in range(num_layers) for n in per_layer}
    return names


def test_state_dict_keys_are_exactly_the_hugging_face_names(tiny):
    assert set(tiny.state_dict()) == hf_weight_names(4)


def test_output_projection_is_the_tied_embedding(tiny):
    vocab_sized = [n for n, p in tiny.named_parameters() if p.shape[0] == 32000]
    assert vocab_sized == ["transformer.token_embeddings.weight"]
    ids = random_ids(1, 5)
    hidden = {}
    hook = tiny.transformer.norm.register_forward_hook(lambda m, i, o: hidden.__setitem__("x", o))
    try:
        logits = tiny(ids)
    finally:
        hook.remove()
    torch.testing.assert_close(logits, hidden["x"] @ tiny.transformer.token_embeddings.weight.T)


def test_layer_shapes_follow_the_per_layer_config(tiny):
    config = tiny.config
    for i, layer in enumerate(tiny.transformer.layers):
        qkv_rows = (config.num_query_heads[i] + 2 * config.num_kv_heads[i]) * config.head_dim
        assert layer.attn.qkv_proj.weight.shape == (qkv_rows, config.model_dim)
        assert layer.ffn.proj_1.weight.shape == (2 * config.ffn_intermediate[i], config.model_dim)
    assert not any(n.endswith("bias") for n, _ in tiny.named_parameters())


@torch.no_grad()
def test_changing_a_future_token_leaves_earlier_logits_unchanged(tiny):
    ids = random_ids(2, 12)
    changed = ids.clone()
    changed[:, 7] = (changed[:, 7] + 1) % 32000
    before, after = tiny(ids), tiny(changed)
    assert torch.equal(before[:, :7], after[:, :7])
    assert not torch.allclose(before[:, 7:], after[:, 7:])


@torch.no_grad()
def test_query_head_reads_kv_head_index_divided_by_group_size(tiny):
    attn = tiny.transformer.layers[1].attn  # 8 query heads, 2 kv heads: groups of 4
    n_q, n_kv, hd = attn.num_query_heads, attn.num_kv_heads, attn.head_dim
    group = n_q // n_kv
    assert (n_q, n_kv) == (8, 2)
    per_head = {}
    hook = attn.out_proj.register_forward_pre_hook(lambda m, args: per_head.__setitem__("y", args[0]))
    x = torch.randn(1, 6, tiny.config.model_dim, generator=torch.Generator().manual_seed(2))
    cos, sin = rope_tables(torch.arange(6), hd, 10000.0)
    attn(x, cos, sin)
    baseline = per_head["y"].view(1, 6, n_q, hd)
    original = attn.qkv_proj.weight.clone()
    try:
        for kv_head in range(n_kv):
            rows = slice((n_q + n_kv + kv_head) * hd, (n_q + n_kv + kv_head + 1) * hd)  # this head's value rows
            attn.qkv_proj.weight[rows] += 1.0
            attn(x, cos, sin)
            moved = (per_head["y"].view(1, 6, n_q, hd) - baseline).abs().amax(dim=(0, 1, 3)) > 1e-6
            assert moved.tolist() == [q // group == kv_head for q in range(n_q)]
            attn.qkv_proj.weight.copy_(original)
    finally:
        hook.remove()


@torch.no_grad()
def test_q_and_k_norms_apply_before_rope():
    torch.manual_seed(3)
    config = dataclasses.replace(get_preset("tiny"), num_transformer_layers=1)
    attn = OpenELM(config).transformer.layers[0].attn
    attn.q_norm.weight.copy_(torch.rand(attn.head_dim) + 0.5)  # unequal weights: norm and rotation no longer commute
    attn.k_norm.weight.copy_(torch.rand(attn.head_dim) + 0.5)
    n_q, n_kv, hd, length = attn.num_query_heads, attn.num_kv_heads, attn.head_dim, 7
    x = torch.randn(1, length, config.model_dim)
    cos, sin = rope_tables(torch.arange(length), hd, config.rope_freq_constant)

    def attention(norm_first: bool) -> torch.Tensor:
        q, k, v = attn.qkv_proj(x).view(1, length, -1, hd).transpose(1, 2).split([n_q, n_kv, n_kv], dim=1)
        if norm_first:
            q, k = apply_rope(attn.q_norm(q), cos, sin), apply_rope(attn.k_norm(k), cos, sin)
        else:
            q, k = attn.q_norm(apply_rope(q, cos, sin)), attn.k_norm(apply_rope(k, cos, sin))
        k, v = k.repeat_interleave(n_q // n_kv, 1), v.repeat_interleave(n_q // n_kv, 1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return attn.out_proj(y.transpose(1, 2).reshape(1, length, -1))

    out = attn(x, cos, sin)
    torch.testing.assert_close(out, attention(norm_first=True))
    assert not torch.allclose(out, attention(norm_first=False), atol=1e-4)


def test_rope_equals_complex_rotation_of_half_split_pairs():
    head_dim, theta, length = 16, 10000.0, 9
    x = torch.randn(2, 3, length, head_dim, dtype=torch.float64)
    cos, sin = rope_tables(torch.arange(length), head_dim, theta)
    ours = apply_rope(x.float(), cos, sin).double()
    half = head_dim // 2
    pairs = torch.complex(x[..., :half], x[..., half:])  # element i pairs with element i + head_dim/2
    freqs = torch.tensor([theta ** (-2 * i / head_dim) for i in range(half)], dtype=torch.float64)
    angles = torch.arange(length, dtype=torch.float64)[:, None] * freqs[None, :]
    rotated = pairs * torch.polar(torch.ones_like(angles), angles)
    expected = torch.cat((rotated.real, rotated.imag), dim=-1)
    torch.testing.assert_close(ours, expected, atol=2e-5, rtol=1e-5)


def test_rope_computes_in_float32_for_bfloat16_inputs():
    x = torch.randn(1, 2, 300, 64)
    cos, sin = rope_tables(torch.arange(300), 64, 10000.0)
    out = apply_rope(x.bfloat16(), cos, sin)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, apply_rope(x.bfloat16().float(), cos, sin).bfloat16())


def test_init_follows_corenet_statistics():
    torch.manual_seed(4)
    config = get_preset("tiny")
    model = OpenELM(config)
    d, layers = config.model_dim, config.num_transformer_layers

    def close(tensor: torch.Tensor, std: float) -> bool:
        return abs(tensor.std().item() / std - 1) < 0.05 and abs(tensor.mean().item()) < 0.1 * std

    assert close(model.transformer.token_embeddings.weight, d ** -0.5)
    residual = d ** -0.5 * (2 * layers) ** -0.5
    for layer in model.transformer.layers:
        assert close(layer.attn.qkv_proj.weight, d ** -0.5)
        assert close(layer.ffn.proj_1.weight, d ** -0.5)
        assert close(layer.attn.out_proj.weight, residual)
        assert close(layer.ffn.proj_2.weight, residual)
        for norm in (layer.attn_norm, layer.ffn_norm, layer.attn.q_norm, layer.attn.k_norm):
            assert torch.equal(norm.weight, torch.ones_like(norm.weight))


def test_safetensors_round_trip_loads_strictly(tiny, tmp_path):
    from safetensors.torch import load_file, save_file
    path = tmp_path / "model.safetensors"
    save_file(tiny.state_dict(), str(path))
    fresh = OpenELM(get_preset("tiny")).eval()
    fresh.load_state_dict(load_file(str(path)), strict=True)
    ids = random_ids(1, 8)
    with torch.no_grad():
        assert torch.equal(fresh(ids), tiny(ids))


@torch.no_grad()
def test_logits_match_mlx_lm_given_our_weights_and_config():
    import mlx.core as mx
    import numpy as np
    from mlx_lm.models.openelm import Model, ModelArgs
    torch.manual_seed(6)
    ours = OpenELM(get_preset("tiny")).eval()
    for name, param in ours.named_parameters():
        if name.endswith("norm.weight"):  # unit norms would hide a wrong norm/RoPE order
            param.uniform_(0.5, 1.5)
    reference = Model(ModelArgs.from_dict(ours.config.to_hf_config()))
    reference.load_weights([(k, mx.array(v.numpy())) for k, v in ours.state_dict().items()], strict=True)
    ids = random_ids(2, 20)
    expected = np.array(reference(mx.array(ids.numpy())))
    np.testing.assert_allclose(ours(ids).numpy(), expected, atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_cached_chunks_reproduce_full_forward_logits(tiny):
    ids = random_ids(2, 12)
    full = tiny(ids)
    cache = tiny.make_cache(2, 12)
    pieces = [tiny(ids[:, :5], cache=cache), tiny(ids[:, 5:8], cache=cache),
              tiny(ids[:, 8:9], cache=cache), tiny(ids[:, 9:], cache=cache)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-4, rtol=1e-4)
    assert cache.offset == 12


def test_cache_overflow_is_a_clear_error(tiny):
    cache = tiny.make_cache(1, 4)
    with pytest.raises(ValueError, match="holds 4 positions"):
        tiny(random_ids(1, 5), cache=cache)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(5)
    config = dataclasses.replace(get_preset("tiny"), num_transformer_layers=2)
    plain = OpenELM(config)
    checkpointed = OpenELM(config, gradient_checkpointing=True)
    checkpointed.load_state_dict(plain.state_dict())
    ids = random_ids(2, 10)
    for model in (plain, checkpointed):
        F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten()).backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), checkpointed.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_logits_take_the_autocast_dtype(tiny):
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        logits = tiny(random_ids(1, 4))
    assert logits.dtype == torch.bfloat16
    assert tiny(random_ids(1, 4)).dtype == torch.float32


def test_initial_loss_is_near_uniform_over_the_vocabulary(tiny):
    ids = random_ids(2, 32)
    with torch.no_grad():
        loss = F.cross_entropy(tiny(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
    assert abs(loss.item() - math.log(32000)) < 1.0
