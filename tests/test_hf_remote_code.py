"""Hugging Face exports load in transformers with their own remote code, and lm-eval's `hf` backend runs on them.

An export made by `model.export.export(..., fmt="hf")` carries `configuration_openelm.py` and
`modeling_openelm.py` (from model/hf_remote/) and an `auto_map` in `config.json`. Loaded with
`AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)` under the transformers the
project installs, it must give model/openelm.py's logits (float32, 1e-5), padded or not, decode
greedily like `OpenELM.generate`, and answer lm-eval's log-likelihood requests like `OpenELMLM`.
transformers 4.4x is checked once outside the suite (docs/export.md).
"""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import shaped_random_state
from model.config import OpenELMConfig
from model.export import export
from model.hf_folder import load_hf_folder, write_hf_folder
from model.hf_remote import AUTO_MAP, FILES, HERE
from model.hf_remote.configuration_openelm import OpenELMConfig as RemoteConfig
from model.openelm import OpenELM
from model.presets import PRESETS, get_preset

transformers = pytest.importorskip("transformers")

CONFIG = get_preset("tiny")
PROMPTS = ("The quick brown fox jumps over the lazy dog, and then it",
           "Once upon a time")


def random_state(seed: int) -> dict[str, torch.Tensor]:
    return shaped_random_state(CONFIG, seed)


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory) -> Path:
    return write_hf_folder(tmp_path_factory.mktemp("source") / "tiny", CONFIG, random_state(seed=11))


@pytest.fixture(scope="module")
def hf_dir(source_dir, tmp_path_factory) -> Path:
    return export(source_dir, tmp_path_factory.mktemp("exports") / "tiny-hf", fmt="hf", tokenizer_spec="default")


@pytest.fixture(scope="module")
def reference(hf_dir) -> OpenELM:
    _, model = load_hf_folder(hf_dir)
    return model.eval()


@pytest.fixture(scope="module")
def hf_model(hf_dir):
    model = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), trust_remote_code=True)
    assert not model.training and model.dtype == torch.float32
    return model


@pytest.fixture(scope="module")
def prompt_ids(tokenizer) -> list[list[int]]:
    return [tokenizer.encode_one(p, bos=True, eos=False) for p in PROMPTS]


def logits(model, ids: torch.Tensor, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        out = model(ids, **kwargs)
    return out if isinstance(out, torch.Tensor) else out.logits


# --- the folder ---------------------------------------------------------------------------------

def test_hf_export_carries_the_remote_code_and_names_it_in_auto_map(hf_dir, source_dir, tmp_path):
    config = json.loads((hf_dir / "config.json").read_text())
    assert config["auto_map"] == AUTO_MAP
    assert config["model_type"] == "openelm"
    assert set(load_file(hf_dir / "model.safetensors")) == set(random_state(seed=11))  # Apple's names, no lm_head
    for name in FILES:
        assert (hf_dir / name).read_bytes() == (HERE / name).read_bytes()
    # An MLX folder stays without it: under transformers 5, auto_map makes a plain AutoTokenizer.from_pretrained
    # (as mlx_lm.load calls it) ask on a terminal whether to run the folder's code.
    mlx = export(source_dir, tmp_path / "tiny-mlx", fmt="mlx", tokenizer_spec="default")
    assert "auto_map" not in json.loads((mlx / "config.json").read_text())
    assert not any((mlx / name).exists() for name in FILES)


def test_remote_code_imports_only_torch_numpy_transformers_and_its_sibling():
    # transformers imports the files from the export folder, where this project is not installed.
    for name in FILES:
        imported = set()
        for node in ast.walk(ast.parse((HERE / name).read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                imported.add("." + node.module if node.level else node.module.split(".")[0])
        assert imported <= {"__future__", "typing", "numpy", "torch", "transformers", ".configuration_openelm"}, name


# --- the configuration ----------------------------------------------------------------------------

def test_remote_config_derives_every_presets_shapes_like_the_project(tmp_path):
    for name in PRESETS:
        preset = get_preset(name)
        hf = preset.to_hf_config()
        given = RemoteConfig(**hf)
        # Without the per-layer lists, from the multipliers alone, as CoreNet derives them.
        derived = RemoteConfig(**{k: v for k, v in hf.items() if k not in ("num_query_heads", "num_kv_heads")
                                  and k != "ffn_multipliers"}, ffn_multipliers=list(preset.ffn_multipliers))
        for config in (given, derived):
            assert config.num_query_heads == list(preset.num_query_heads), name
            assert config.num_kv_heads == list(preset.num_kv_heads), name
            assert config.ffn_intermediate_sizes() == list(preset.ffn_intermediate), name
            assert config.num_hidden_layers == preset.num_transformer_layers
            assert config.max_position_embeddings == preset.max_context_length


def test_remote_config_takes_the_keys_transformers_5_hands_it(tmp_path):
    # Apple's config.json keys plus what transformers adds: Apple's own code fails on `use_cache` under 5.x.
    hf = {k: v for k, v in CONFIG.to_hf_config().items() if k != "rms_norm_eps"}
    config = RemoteConfig(**hf, use_cache=True, torch_dtype="float32", transformers_version="4.39.3")
    assert config.use_cache is True and config.rms_norm_eps == 1e-6 and config.tie_word_embeddings
    config.save_pretrained(tmp_path)
    again = RemoteConfig.from_pretrained(tmp_path)
    assert again.num_query_heads == list(CONFIG.num_query_heads) and again.ffn_multipliers == config.ffn_multipliers


def test_auto_config_reads_the_export(hf_dir):
    config = transformers.AutoConfig.from_pretrained(str(hf_dir), trust_remote_code=True)
    assert type(config).__name__ == "OpenELMConfig" and config.model_type == "openelm"
    assert OpenELMConfig.from_hf_config(config.to_dict()) == CONFIG


def test_unsupported_architecture_is_refused():
    from model.hf_remote.modeling_openelm import OpenELMForCausalLM
    with pytest.raises(ValueError, match="ffn_with_glu"):
        OpenELMForCausalLM(RemoteConfig(**dict(CONFIG.to_hf_config(), ffn_with_glu=False)))


# --- the model ------------------------------------------------------------------------------------

def test_auto_model_gives_the_project_models_logits(hf_model, reference, prompt_ids):
    for ids in prompt_ids:
        ids = torch.tensor([ids])
        expected, got = logits(reference, ids), logits(hf_model, ids)
        assert got.shape == expected.shape == (1, ids.shape[1], CONFIG.vocab_size) and got.dtype == torch.float32
        assert (got - expected).abs().max() < 1e-5


@pytest.mark.parametrize("side", ["right", "left"])
def test_padded_batch_with_attention_mask_equals_each_prompt_alone(hf_model, reference, prompt_ids, side):
    width = max(len(ids) for ids in prompt_ids)
    batch = torch.zeros(len(prompt_ids), width, dtype=torch.long)  # pad with unk (0)
    mask = torch.zeros_like(batch)
    spans = []
    for row, ids in enumerate(prompt_ids):
        span = slice(0, len(ids)) if side == "right" else slice(width - len(ids), width)
        batch[row, span], mask[row, span] = torch.tensor(ids), 1
        spans.append(span)
    assert mask.sum(1).tolist() == [len(ids) for ids in prompt_ids] and len(set(mask.sum(1).tolist())) == 2
    got = logits(hf_model, batch, attention_mask=mask)
    assert torch.isfinite(got).all()
    for row, (ids, span) in enumerate(zip(prompt_ids, spans)):
        assert (got[row, span] - logits(reference, torch.tensor([ids]))[0]).abs().max() < 1e-5
    if side == "right":  # causal attention alone keeps right padding out of the real positions
        plain, project = logits(hf_model, batch), logits(reference, batch)
        for row, (ids, span) in enumerate(zip(prompt_ids, spans)):
            assert (plain[row, span] - logits(reference, torch.tensor([ids]))[0]).abs().max() < 1e-5
            # What remains above is float32 batching noise, which the project's model shows as much.
            assert (got[row, span] - project[row, span]).abs().max() < 1e-6


def test_a_chunk_after_a_kv_cache_equals_the_whole_sequence(hf_model, prompt_ids):
    from transformers.cache_utils import DynamicCache
    ids = torch.tensor([prompt_ids[0]])
    cache = DynamicCache()
    with torch.no_grad():
        first = hf_model(ids[:, :5], past_key_values=cache, use_cache=True).logits
        rest = hf_model(ids[:, 5:], past_key_values=cache, use_cache=True).logits
    assert cache.get_seq_length() == ids.shape[1]
    assert (torch.cat((first, rest), dim=1) - logits(hf_model, ids)).abs().max() < 1e-5


def test_greedy_generate_equals_the_project_models_generate(hf_model, reference, prompt_ids):
    ids = torch.tensor([prompt_ids[0]])
    expected = reference.generate(ids, max_new_tokens=16)
    got = hf_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False,
                            pad_token_id=CONFIG.eos_token_id)
    assert len(set(expected[0, ids.shape[1]:].tolist())) > 3, "a continuation repeating one token tests little"
    assert got.tolist() == expected.tolist()


def test_labels_give_the_next_token_loss(hf_model, reference, prompt_ids):
    ids = torch.tensor([prompt_ids[0]])
    with torch.no_grad():
        loss = hf_model(ids, labels=ids).loss
    expected = torch.nn.functional.cross_entropy(logits(reference, ids)[0, :-1], ids[0, 1:])
    assert abs(float(loss) - float(expected)) < 1e-5


# --- the tokenizer --------------------------------------------------------------------------------

@pytest.mark.parametrize("trust", [True, False])
def test_auto_tokenizer_gives_sentencepieces_ids_with_bos(hf_dir, tokenizer, trust):
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(hf_dir), trust_remote_code=trust)
    texts = list(PROMPTS) + ["naïve café 東京 😀", "def f(x):\n    return x\n", "x <s> y"]
    for text in texts:
        assert hf_tokenizer(text).input_ids == tokenizer.encode_one(text, bos=True, eos=False), text


# --- lm-eval's own hf backend ------------------------------------------------------------------------

REQUESTS = [
    ("The capital of France is", " Paris"),
    ("Once upon a time", " there was a princess who lived in a castle by the sea"),
    ("Question: what is two plus two?\nAnswer:", " four"),
    ("", "An empty context is conditioned on BOS alone"),
    ("A long context repeats itself. " * 20, " and then it ends."),
]


def test_lm_eval_hf_backend_scores_like_openelm_lm(hf_dir, reference, tokenizer):
    pytest.importorskip("accelerate", reason="lm-eval's hf backend imports accelerate (lm-eval[hf])")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from model.eval.lm import OpenELMLM

    requests = [Instance(request_type="loglikelihood", doc={}, arguments=r, idx=i) for i, r in enumerate(REQUESTS)]
    harness = HFLM(pretrained=str(hf_dir), trust_remote_code=True, add_bos_token=True, device="cpu", batch_size=2)
    assert harness.max_length == CONFIG.max_context_length
    got = harness.loglikelihood(requests)
    expected = OpenELMLM(reference, tokenizer, add_bos=True).loglikelihood(requests)
    assert len(got) == len(expected) == len(REQUESTS)
    for (logprob, greedy), (want, want_greedy) in zip(got, expected):
        assert abs(logprob - want) < 1e-4 and greedy == want_greedy


def test_the_tokenizers_longest_input_is_the_models_context(hf_dir):
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(hf_dir))
    context = json.loads((hf_dir / "config.json").read_text())["max_context_length"]
    assert hf_tokenizer.model_max_length == context
    cut = hf_tokenizer("word " * (2 * context), truncation=True).input_ids
    assert len(cut) == context
