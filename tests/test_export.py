"""Export to MLX and Hugging Face format, and reading Hugging Face-format OpenELM folders back."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import shaped_random_state
from model.cli import cli_export
from model.export import EXPORT_MARKER, ExportError, export
from model.mlx_cpu import mlx_cpu_env
from model.source import SourceError, resolve_source
from model.hf_folder import HFFolderError, load_hf_folder, write_hf_folder
from model.openelm import OpenELM
from model.presets import get_preset

mx = pytest.importorskip("mlx.core")
mlx_lm = pytest.importorskip("mlx_lm")

# tiny's widths (128, 64/128 query dims, FFN multiples of 64) all split into mlx-lm's 64-wide quantization groups.
CONFIG = get_preset("tiny")
PROMPT = "The quick brown fox jumps over the lazy dog, and then"
RUN_FACTS = {
    "preset": "tiny",
    "corpus": {"name": "openelm-sample", "dir": "data/corpora/openelm-sample", "fingerprint": "f1e2d3c4b5a69788"},
    "tokenizer": {"spec": "default"},
    "steps_done": 20,
    "tokens_seen": 20480,
    "final_train_loss": 7.05,
    "final_val_loss": 7.55,
    "status": "complete",
}


def random_state(seed: int) -> dict[str, torch.Tensor]:
    return shaped_random_state(CONFIG, seed)


def make_run(run_dir: Path, steps: tuple[int, ...] = (20,), run: dict | None = None) -> dict[int, dict]:
    """A run folder as the trainer leaves it: run.json, checkpoints/step_N/{model.safetensors, config.json, state.json}."""
    states = {}
    for i, step in enumerate(steps):
        folder = run_dir / "checkpoints" / f"step_{step:08d}"
        states[step] = random_state(seed=i)
        write_hf_folder(folder, CONFIG, states[step])
        (folder / "state.json").write_text(json.dumps({"step": step, "tokens_seen": 1024 * step,
                                                       "train_loss": 7.0 + 1 / step, "val_loss": 7.5 + 1 / step}))
    (run_dir / "run.json").write_text(json.dumps(RUN_FACTS if run is None else run))
    return states


def torch_logits(model: OpenELM, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(torch.tensor([ids]))[0].numpy()


def mlx_greedy(model, ids: list[int], n: int) -> list[int]:
    from mlx_lm.generate import generate_step
    from mlx_lm.sample_utils import make_sampler
    steps = generate_step(mx.array(ids), model, max_tokens=n, sampler=make_sampler(temp=0.0))
    return [int(token) for token, _ in steps]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("run")
    make_run(path)
    return path


@pytest.fixture(scope="module")
def torch_model(run_dir) -> OpenELM:
    _, model = load_hf_folder(run_dir / "checkpoints" / "step_00000020")
    return model.eval()


@pytest.fixture(scope="module")
def mlx_dir(run_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exports") / "tiny-mlx"
    assert cli_export([str(run_dir), "--format", "mlx", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def mlx_loaded(mlx_dir):
    return mlx_lm.load(str(mlx_dir))


@pytest.fixture(scope="module")
def prompt_ids(mlx_loaded) -> list[int]:
    return mlx_loaded[1].encode(PROMPT)


# --- MLX format -------------------------------------------------------------------------------

def test_mlx_lm_logits_match_pytorch_within_1e_4(mlx_loaded, torch_model, prompt_ids):
    model, _ = mlx_loaded
    expected = torch_logits(torch_model, prompt_ids)
    got = np.array(model(mx.array([prompt_ids]))[0])
    assert got.shape == expected.shape == (len(prompt_ids), CONFIG.vocab_size)
    assert np.abs(got - expected).max() < 1e-4


def test_mlx_lm_greedy_continuation_equals_pytorch_generate(mlx_loaded, torch_model, prompt_ids):
    expected = torch_model.generate(torch.tensor([prompt_ids]), max_new_tokens=20, eos_id=None)[0, len(prompt_ids):]
    got = mlx_greedy(mlx_loaded[0], prompt_ids, 20)
    assert len(set(got)) > 3, "a continuation that repeats one token would not exercise attention"
    assert got == expected.tolist()


def test_mlx_tokenizer_prepends_bos_like_training(mlx_dir, prompt_ids):
    from corpus.tokenizer.tokenizer import Tokenizer
    assert prompt_ids == Tokenizer().encode_one(PROMPT, bos=True, eos=False)
    assert prompt_ids[0] == 1
    config = json.loads((mlx_dir / "tokenizer_config.json").read_text())
    assert config["add_bos_token"] is True and "local_files_only" not in config


def test_mlx_config_has_every_key_mlx_lm_reads_as_per_layer_lists(mlx_dir):
    import dataclasses
    from mlx_lm.models.openelm import ModelArgs
    config = json.loads((mlx_dir / "config.json").read_text())
    assert {f.name for f in dataclasses.fields(ModelArgs)} <= set(config)
    layers = CONFIG.num_transformer_layers
    assert config["num_query_heads"] == list(CONFIG.num_query_heads) and len(config["num_query_heads"]) == layers
    assert config["num_kv_heads"] == list(CONFIG.num_kv_heads) and len(config["num_kv_heads"]) == layers
    assert len(config["ffn_multipliers"]) == layers
    assert config["rms_norm_eps"] == 1e-6 and config["torch_dtype"] == "float32"


def test_mlx_weights_carry_hugging_face_names_and_no_lm_head(mlx_dir, run_dir):
    exported = load_file(mlx_dir / "model.safetensors")
    source = load_file(run_dir / "checkpoints" / "step_00000020" / "model.safetensors")
    assert set(exported) == set(source)
    assert "transformer.layers.3.attn.qkv_proj.weight" in exported and "lm_head.weight" not in exported


def test_model_card_records_provenance(mlx_dir):
    card = (mlx_dir / "README.md").read_text()
    from corpus.tokenizer.tokenizer import Tokenizer
    for fact in ("library_name: mlx", "| corpus | openelm-sample |", "| corpus fingerprint | `f1e2d3c4b5a69788` |",
                 "| preset | tiny |", "| steps | 20 |", "| tokens seen | 20480 |", "| final train loss | 7.0500 |",
                 "| final val loss | 7.5500 |",
                 Tokenizer().sha256):
        assert fact in card


def test_mlx_lm_generate_command_runs_offline(mlx_dir, torch_model, prompt_ids, tokenizer):
    result = subprocess.run(
        [sys.executable, "-m", "mlx_lm", "generate", "--model", str(mlx_dir), "--prompt", PROMPT,
         "--max-tokens", "12", "--temp", "0", "--ignore-chat-template"],
        capture_output=True, text=True, env=mlx_cpu_env(), timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    expected = torch_model.generate(torch.tensor([prompt_ids]), max_new_tokens=12, eos_id=None)[0, len(prompt_ids):]
    assert tokenizer.decode(expected.tolist()).strip() in result.stdout


def test_mlx_env_preloads_openblas_only_where_it_is_installed(monkeypatch, tmp_path):
    import model.mlx_cpu
    monkeypatch.setattr(model.mlx_cpu, "OPENBLAS", tmp_path / "absent.so")
    assert "LD_PRELOAD" not in mlx_cpu_env({"PATH": "/bin"})
    library = tmp_path / "libopenblas.so.0"
    library.write_bytes(b"")
    monkeypatch.setattr(model.mlx_cpu, "OPENBLAS", library)
    env = mlx_cpu_env({"LD_PRELOAD": "/lib/other.so"})
    if sys.platform.startswith("linux"):
        assert env["LD_PRELOAD"] == f"/lib/other.so {library}" and env["HF_HUB_OFFLINE"] == "1"


# --- quantization and dtypes ------------------------------------------------------------------

# Logit correlation with the float export; an unrelated model scores about 0. These random weights are
# harder to quantize than trained ones (4-bit measured 0.91, 8-bit 0.9996).
@pytest.mark.parametrize("bits, min_correlation", [(4, 0.8), (8, 0.99)])
def test_quantized_export_loads_and_generates_close_to_float(run_dir, tmp_path, mlx_loaded, prompt_ids, bits,
                                                             min_correlation):
    import mlx.nn as nn
    out = tmp_path / f"tiny-{bits}bit"
    export(run_dir, out, fmt="mlx", quantize=bits)
    model, tokenizer, config = mlx_lm.load(str(out), return_config=True)
    assert config["quantization"]["bits"] == bits and config["quantization"]["group_size"] == 64
    assert isinstance(model.layers[0].attn.qkv_proj, nn.QuantizedLinear)
    assert isinstance(model.transformer.token_embeddings, nn.QuantizedEmbedding)
    quantized = np.array(model(mx.array([prompt_ids]))[0])
    full = np.array(mlx_loaded[0](mx.array([prompt_ids]))[0])
    assert np.isfinite(quantized).all()
    assert np.corrcoef(quantized.ravel(), full.ravel())[0, 1] > min_correlation
    text = mlx_lm.generate(model, tokenizer, prompt=PROMPT, max_tokens=10)
    assert len(tokenizer.encode(text, add_special_tokens=False)) >= 5


def test_bfloat16_export_stores_bfloat16_and_loads(run_dir, tmp_path, prompt_ids):
    out = tmp_path / "tiny-bf16"
    export(run_dir, out, fmt="mlx", dtype="bfloat16")
    assert {t.dtype for t in load_file(out / "model.safetensors").values()} == {torch.bfloat16}
    model, _ = mlx_lm.load(str(out))
    assert model.layers[0].ffn.proj_1.weight.dtype == mx.bfloat16
    assert np.isfinite(np.array(model(mx.array([prompt_ids]))[0].astype(mx.float32))).all()


def test_quantize_refuses_a_group_size_that_leaves_weights_unquantized(run_dir, tmp_path):
    # tiny's first layer has 4 query heads of 16 = 64 inputs to out_proj, which 128-wide groups cannot split.
    with pytest.raises(ExportError, match=r"--group-size 128 .*out_proj"):
        export(run_dir, tmp_path / "q", fmt="mlx", quantize=4, group_size=128)
    assert not (tmp_path / "q").exists()


def test_quantize_applies_to_mlx_format_only(run_dir, tmp_path):
    with pytest.raises(ExportError, match="--format mlx only"):
        export(run_dir, tmp_path / "q", fmt="hf", quantize=4)


# --- Hugging Face format ------------------------------------------------------------------------

def test_hf_export_round_trips_to_identical_weights(run_dir, tmp_path):
    out = tmp_path / "tiny-hf"
    export(run_dir, out, fmt="hf")
    config, model = load_hf_folder(out)
    source = load_file(run_dir / "checkpoints" / "step_00000020" / "model.safetensors")
    state = model.state_dict()
    assert config == CONFIG and set(state) == set(source)
    assert all(torch.equal(state[k], source[k]) for k in source)
    assert "library_name: mlx" not in (out / "README.md").read_text()


def test_hf_export_keeps_its_tokenizer_so_it_exports_to_mlx_without_flags(run_dir, tmp_path, mlx_dir):
    export(run_dir, tmp_path / "hf", fmt="hf")
    export(tmp_path / "hf", tmp_path / "mlx", fmt="mlx")
    assert load_file(tmp_path / "mlx" / "model.safetensors").keys() == load_file(mlx_dir / "model.safetensors").keys()
    assert (tmp_path / "mlx" / "tokenizer.model").read_bytes() == (mlx_dir / "tokenizer.model").read_bytes()


def apple_layout_folder(folder: Path, state: dict[str, torch.Tensor]) -> Path:
    """A folder shaped like Apple's release: its config.json keys (no rms_norm_eps), remote-code map, no tokenizer."""
    folder.mkdir(parents=True)
    config = {k: v for k, v in CONFIG.to_hf_config().items() if k != "rms_norm_eps"}
    config.update({
        "auto_map": {"AutoConfig": "configuration_openelm.OpenELMConfig",
                     "AutoModelForCausalLM": "modeling_openelm.OpenELMForCausalLM"},
        "torch_dtype": "float32", "transformers_version": "4.39.3", "use_cache": True,
    })
    (folder / "config.json").write_text(json.dumps(config))
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def test_apple_layout_folder_loads_strictly_with_its_weights(tmp_path):
    state = random_state(seed=7)
    config, model = load_hf_folder(apple_layout_folder(tmp_path / "OpenELM", state))
    assert config == CONFIG
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_apple_layout_folder_without_tokenizer_asks_for_one(tmp_path):
    folder = apple_layout_folder(tmp_path / "OpenELM", random_state(seed=7))
    with pytest.raises(SourceError, match="--tokenizer"):
        export(folder, tmp_path / "mlx", fmt="mlx")
    assert not (tmp_path / "mlx").exists()


def test_apple_layout_folder_exports_to_mlx_with_a_named_tokenizer(tmp_path, prompt_ids):
    state = random_state(seed=7)
    folder = apple_layout_folder(tmp_path / "OpenELM", state)
    export(folder, tmp_path / "mlx", fmt="mlx", tokenizer_spec="default")
    model, _ = mlx_lm.load(str(tmp_path / "mlx"))
    _, reference = load_hf_folder(folder)
    got = np.array(model(mx.array([prompt_ids]))[0])
    assert np.abs(got - torch_logits(reference, prompt_ids)).max() < 1e-4


@pytest.mark.parametrize("layout", ["sharded-safetensors", "pytorch-bin"])
def test_other_weight_layouts_load_like_a_single_safetensors(tmp_path, layout):
    state = random_state(seed=3)
    folder = apple_layout_folder(tmp_path / "OpenELM", state)
    (folder / "model.safetensors").unlink()
    if layout == "sharded-safetensors":
        names = sorted(state)
        shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
        for shard, keys in shards.items():
            save_file({k: state[k] for k in keys}, folder / shard)
        weight_map = {k: shard for shard, keys in shards.items() for k in keys}
        (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    else:
        torch.save(state, folder / "pytorch_model.bin")
    _, model = load_hf_folder(folder)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_tied_lm_head_copy_is_accepted_and_a_separate_one_refused(tmp_path):
    state = random_state(seed=1)
    tied = dict(state, **{"lm_head.weight": state["transformer.token_embeddings.weight"].clone()})
    load_hf_folder(apple_layout_folder(tmp_path / "tied", tied))
    separate = dict(state, **{"lm_head.weight": torch.randn_like(state["transformer.token_embeddings.weight"])})
    with pytest.raises(HFFolderError, match="separate lm_head.weight"):
        load_hf_folder(apple_layout_folder(tmp_path / "separate", separate))


def _drop(name):
    def edit(folder: Path):
        state = load_file(folder / "model.safetensors")
        del state[name]
        save_file(state, folder / "model.safetensors")
    return edit


def _add(name):
    def edit(folder: Path):
        state = load_file(folder / "model.safetensors")
        state[name] = torch.zeros(3)
        save_file(state, folder / "model.safetensors")
    return edit


def _reshape(folder: Path):
    state = load_file(folder / "model.safetensors")
    state["transformer.layers.1.ffn.proj_2.weight"] = state["transformer.layers.1.ffn.proj_2.weight"][:, :64].clone()
    save_file(state, folder / "model.safetensors")


def _set_config(**changes):
    def edit(folder: Path):
        config = json.loads((folder / "config.json").read_text())
        config.update(changes)
        (folder / "config.json").write_text(json.dumps(config))
    return edit


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / "config.json").unlink(), "no config.json"),
    (lambda f: (f / "model.safetensors").unlink(), "no weights; expected model.safetensors"),
    (_drop("transformer.norm.weight"), "missing 1 weight.*transformer.norm.weight"),
    (_add("transformer.layers.0.attn.rotary.inv_freq"), "unknown 1 weight.*transformer.layers.0.attn.rotary.inv_freq"),
    (_reshape, r"wrong shape .*layers.1.ffn.proj_2.weight \(128, 64\)"),
    (_set_config(model_type="llama"), "model_type is 'llama', not 'openelm'"),
    (_set_config(num_query_heads=[4, 4, 4, 4]), "num_query_heads"),
], ids=["no-config", "no-weights", "missing-key", "unknown-key", "wrong-shape", "not-openelm", "heads-disagree"])
def test_load_hf_folder_names_what_is_wrong(tmp_path, damage, message):
    folder = write_hf_folder(tmp_path / "ckpt", CONFIG, random_state(seed=2))
    damage(folder)
    with pytest.raises(HFFolderError, match=message) as caught:
        load_hf_folder(folder)
    assert str(folder) in str(caught.value)


# --- a run trained by elm-train ------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained_run(token_corpus, tmp_path_factory) -> Path:
    from model.cli import cli_train
    run = tmp_path_factory.mktemp("trained") / "run"
    assert cli_train(["--corpus", str(token_corpus), "--model", "tiny", "--steps", "2", "--out", str(run),
                      "--no-progress", "--eval-every", "2", "--eval-batches", "1", "--checkpoint-every", "2"]) == 0
    return run


def test_a_trained_run_exports_to_mlx_with_its_provenance_and_logits(trained_run, tmp_path, tokenizer):
    out = tmp_path / "trained-mlx"
    assert cli_export([str(trained_run), "--format", "mlx", "--out", str(out)]) == 0
    run = json.loads((trained_run / "run.json").read_text())
    card = (out / "README.md").read_text()
    assert f"| corpus fingerprint | `{run['corpus']['fingerprint']}` |" in card and "| steps | 2 |" in card
    assert f"| final train loss | {run['final_train_loss']:.4f} |" in card
    _, reference = load_hf_folder(trained_run / "checkpoints" / "step_00000002")
    model, mlx_tokenizer = mlx_lm.load(str(out))
    ids = mlx_tokenizer.encode(PROMPT)
    assert ids == tokenizer.encode_one(PROMPT, eos=False)
    assert np.abs(np.array(model(mx.array([ids]))[0]) - torch_logits(reference, ids)).max() < 1e-4


# --- choosing the source and writing the output -----------------------------------------------

def test_export_source_is_the_highest_finished_checkpoint(tmp_path):
    make_run(tmp_path / "run", steps=(5, 40, 300))
    (tmp_path / "run" / "checkpoints" / ".tmp-step_00000900-4242").mkdir()  # being written by the trainer
    (tmp_path / "run" / "checkpoints" / "step_00000800").mkdir()  # no state.json: not complete
    source = resolve_source(tmp_path / "run")
    assert source.step == 300 and source.state["tokens_seen"] == 300 * 1024
    assert resolve_source(tmp_path / "run", step=40).weights_dir.name == "step_00000040"
    with pytest.raises(SourceError, match=r"no checkpoint for step 7; it has steps \[5, 40, 300\]"):
        resolve_source(tmp_path / "run", step=7)


def test_a_checkpoint_folder_exports_with_its_runs_provenance(run_dir):
    source = resolve_source(run_dir / "checkpoints" / "step_00000020")
    assert source.run_dir == run_dir and source.step == 20 and source.run["preset"] == "tiny"


def test_a_run_without_checkpoints_is_refused(tmp_path):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(SourceError, match="no finished checkpoint"):
        resolve_source(tmp_path / "run")


def test_tokenizer_changed_since_training_is_refused(tmp_path):
    make_run(tmp_path / "run", run=dict(RUN_FACTS, tokenizer={"spec": "default", "sha256": "0" * 64}))
    with pytest.raises(SourceError, match="trained with tokenizer sha256 0000"):
        export(tmp_path / "run", tmp_path / "out")


def test_card_of_an_earlier_checkpoint_shows_that_checkpoints_losses(tmp_path):
    make_run(tmp_path / "run", steps=(10, 20))
    export(tmp_path / "run", tmp_path / "out", fmt="hf", step=10)
    card = (tmp_path / "out" / "README.md").read_text()
    assert "| steps | 10 |" in card and "| final train loss | 7.1000 |" in card and "| tokens seen | 10240 |" in card


def test_existing_output_needs_force_and_is_then_replaced(run_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli_export([str(run_dir), "--format", "hf", "--out", str(out)]) == 0
    assert cli_export([str(run_dir), "--format", "hf", "--out", str(out)]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert cli_export([str(run_dir), "--format", "mlx", "--out", str(out), "--force"]) == 0
    assert not (out / "modeling_openelm.py").exists() and (out / "model.safetensors").exists()
    assert json.loads((out / EXPORT_MARKER).read_text())["format"] == "mlx"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("where, message", [
    ("the run", "--out is the source"), ("its parent", "--out holds the source"),
    ("inside the run", "--out lies inside the source"), ("a sibling run", "not an earlier export"),
    ("a notes folder", "not an earlier export"), ("an export with notes added", "1 file(s) an export did not write"),
])
def test_force_refuses_an_out_holding_anything_an_export_did_not_write(tmp_path, capsys, where, message):
    """--force replaces an earlier export only: the run, a sibling run and a user's notes survive it untouched."""
    make_run(tmp_path / "runs" / "a")
    make_run(tmp_path / "runs" / "b", steps=(30,))
    (tmp_path / "runs" / "notes").mkdir()
    (tmp_path / "runs" / "notes" / "ideas.md").write_text("try a larger lr\n")
    added = tmp_path / "exports" / "a-mlx"
    assert cli_export([str(tmp_path / "runs" / "a"), "--out", str(added)]) == 0
    (added / "my-notes.md").write_text("looks good\n")
    out = {"the run": tmp_path / "runs" / "a", "its parent": tmp_path / "runs",
           "inside the run": tmp_path / "runs" / "a" / "checkpoints" / "mlx", "a sibling run": tmp_path / "runs" / "b",
           "a notes folder": tmp_path / "runs" / "notes", "an export with notes added": added}[where]
    before = tree(tmp_path)
    capsys.readouterr()
    assert cli_export([str(tmp_path / "runs" / "a"), "--format", "mlx", "--out", str(out), "--force"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert tree(tmp_path) == before
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["a", "b", "notes"]


def test_a_failed_export_leaves_the_earlier_one_whole(run_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    export(run_dir, out, fmt="hf")
    before = tree(out)

    def fail(*args, **kwargs):
        raise OSError("No space left on device")
    monkeypatch.setattr("model.export.write_hf_folder", fail)
    with pytest.raises(OSError, match="No space left"):
        export(run_dir, out, fmt="hf", force=True)
    assert tree(out) == before and [p.name for p in tmp_path.iterdir()] == ["out"]
