"""Exporting an adapter run's adapter: PEFT's folder for transformers, mlx-lm's folder for MLX.

Each adapter, put on the export of its base model by the library it is for, must give the logits of
the export of the run's merged weights.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import shaped_random_state
from model.cli import cli_export
from model.export import EXPORT_MARKER, ExportError, export
from model.adapters.lora import AdapterSettings, add_adapters, adapter_files, merged_state
from model.hf_folder import load_hf_folder, write_hf_folder
from model.presets import get_preset

mx = pytest.importorskip("mlx.core")
mlx_lm = pytest.importorskip("mlx_lm")

CONFIG = get_preset("tiny")
# alpha != rank so a wrong scale shows; DoRA on part of the layers so mlx-lm's module keys are taken from the adapter.
SETTINGS = {"lora": AdapterSettings("lora", rank=4, alpha=8.0, dropout=0.1),
            "dora": AdapterSettings("dora", rank=4, alpha=6.0, dropout=0.1, targets=("qkv_proj", "proj_2"))}
IDS = [1] + torch.randint(2, CONFIG.vocab_size, (23,), generator=torch.Generator().manual_seed(0)).tolist()


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """The base model as `--init-from` takes it: an HF-format folder with its tokenizer beside."""
    from corpus.tokenizer.tokenizer import default_model_path
    folder = write_hf_folder(tmp_path_factory.mktemp("base") / "base", CONFIG, shaped_random_state(CONFIG, seed=0))
    shutil.copy(default_model_path(), folder / "tokenizer.model")
    return folder


@pytest.fixture(scope="module")
def base_mlx(base, tmp_path_factory) -> Path:
    return export(base, tmp_path_factory.mktemp("exports") / "base-mlx", fmt="mlx")


@pytest.fixture(scope="module")
def base_hf(base, tmp_path_factory) -> Path:
    return export(base, tmp_path_factory.mktemp("exports") / "base-hf", fmt="hf")


# Preference objectives with an adapter, trained for real: their adapters must give the merged logits on the base,
# in mlx-lm and in PEFT, as the synthetic ones do (the other export checks do not depend on how an adapter trained).
TRAINED = {"dpo-lora": ("dpo", "lora"), "rso-dora": ("rso", "dora")}


def trained_adapter_run(base: Path, folder: Path, method: str, adapter: str) -> Path:
    from model.cli import main
    settings = SETTINGS[adapter]
    pairs = folder / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": q, "chosen": " " + a, "rejected": " " + b}) + "\n" for q, a, b in
                             [("Capital of France?", "Paris.", "Rome."), ("Two plus two?", "Four.", "Five."),
                              ("Frozen water?", "Ice.", "Steam."), ("Sky colour?", "Blue.", "Green.")]))
    run = folder / "run"
    assert main(["finetune", "--init-from", str(base), "--data", str(pairs), "--method", method, "--adapter", adapter,
                 "--lora-rank", str(settings.rank), "--lora-alpha", str(settings.alpha), "--lora-dropout",
                 str(settings.dropout), "--lora-targets", ",".join(settings.targets), "--steps", "3", "--max-lr",
                 "2e-2", "--warmup-steps", "1", "--sequence-length", "32", "--micro-batch-size", "4", "--beta", "0.5",
                 "--threads", "1", "--no-progress", "--out", str(run)]) == 0
    return run


@pytest.fixture(scope="module", params=sorted(SETTINGS))
def adapter_run(request, base, tmp_path_factory) -> Path:
    """A run as an adapter run leaves it: run.json naming the base, a checkpoint of merged weights with adapter/."""
    if request.param in TRAINED:
        return trained_adapter_run(base, tmp_path_factory.mktemp(f"run-{request.param}"), *TRAINED[request.param])
    settings = SETTINGS[request.param]
    _, model = load_hf_folder(base)
    torch.manual_seed(1)
    add_adapters(model, settings)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # PEFT starts B at 0, which would leave the model unchanged
                p.normal_(std=0.2)
            elif "lora_magnitude_vector" in name:  # off the row norms, so the magnitude itself matters
                p.mul_(1 + 0.2 * torch.randn_like(p))
    run = tmp_path_factory.mktemp(f"run-{request.param}")
    ckpt = write_hf_folder(run / "checkpoints" / "step_00000010", CONFIG, merged_state(model))
    for name, data in adapter_files(model, settings, str(base)).items():
        (ckpt / name).parent.mkdir(exist_ok=True)
        (ckpt / name).write_bytes(data)
    (ckpt / "state.json").write_text(json.dumps({"step": 10}))
    (run / "run.json").write_text(json.dumps({"init_from": str(base), "tokenizer": {"spec": "default"},
                                              "preset": "tiny", "adapter": settings.describe()}))
    return run


@pytest.fixture(scope="module")
def merged_mlx_logits(adapter_run, tmp_path_factory) -> np.ndarray:
    merged = export(adapter_run, tmp_path_factory.mktemp("exports") / "merged-mlx", fmt="mlx")
    return mlx_logits(mlx_lm.load(str(merged))[0])


def mlx_logits(model) -> np.ndarray:
    return np.array(model(mx.array([IDS]))[0])


def hf_logits(model) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(torch.tensor([IDS])).logits[0].numpy()


def method_of(run: Path) -> str:
    return json.loads((run / "run.json").read_text())["adapter"]["method"]


# --- mlx-lm -----------------------------------------------------------------------------------

@pytest.mark.parametrize("adapter_run", sorted(SETTINGS) + sorted(TRAINED), indirect=True)
def test_mlx_adapter_on_the_base_export_gives_the_merged_logits(adapter_run, base_mlx, merged_mlx_logits, tmp_path):
    out = export(adapter_run, tmp_path / "adapter-mlx", fmt="mlx-adapter")
    got = mlx_logits(mlx_lm.load(str(base_mlx), adapter_path=str(out))[0])
    base_only = mlx_logits(mlx_lm.load(str(base_mlx))[0])
    assert np.abs(base_only - merged_mlx_logits).max() > 1e-2, "an adapter that changes nothing would prove nothing"
    assert np.abs(got - merged_mlx_logits).max() < 1e-4


def test_mlx_lm_fuse_of_base_and_adapter_gives_the_merged_logits(adapter_run, base_mlx, merged_mlx_logits, tmp_path,
                                                                 monkeypatch):
    from mlx_lm import fuse
    out = export(adapter_run, tmp_path / "adapter-mlx", fmt="mlx-adapter")
    fused = tmp_path / "fused"
    monkeypatch.setattr(sys, "argv", ["mlx_lm.fuse", "--model", str(base_mlx), "--adapter-path", str(out),
                                      "--save-path", str(fused)])
    fuse.main()
    assert np.abs(mlx_logits(mlx_lm.load(str(fused))[0]) - merged_mlx_logits).max() < 1e-4


def test_mlx_adapter_config_is_what_mlx_lm_reads(adapter_run, tmp_path):
    out = export(adapter_run, tmp_path / "adapter-mlx", fmt="mlx-adapter")
    settings = SETTINGS[method_of(adapter_run)]
    config = json.loads((out / "adapter_config.json").read_text())
    module = {"qkv_proj": "attn.qkv_proj", "out_proj": "attn.out_proj", "proj_1": "ffn.proj_1", "proj_2": "ffn.proj_2"}
    assert config == {"fine_tune_type": settings.method, "num_layers": CONFIG.num_transformer_layers,
                      "lora_parameters": {"rank": settings.rank, "scale": settings.alpha / settings.rank,
                                          "dropout": settings.dropout,
                                          "keys": sorted(module[t] for t in settings.targets)}}
    weights = mx.load(str(out / "adapters.safetensors"))
    assert weights["transformer.layers.3.attn.qkv_proj.lora_a"].shape == (CONFIG.model_dim, settings.rank)
    assert {"README.md", "adapter_config.json", "adapters.safetensors", EXPORT_MARKER} == {p.name for p in out.iterdir()}


# --- PEFT -------------------------------------------------------------------------------------

@pytest.mark.parametrize("adapter_run", sorted(SETTINGS) + sorted(TRAINED), indirect=True)
def test_peft_adapter_on_the_base_hf_export_gives_the_merged_logits(adapter_run, base_hf, tmp_path):
    import transformers
    from peft import PeftModel
    out = export(adapter_run, tmp_path / "adapter-peft", fmt="peft-adapter")
    merged = export(adapter_run, tmp_path / "merged-hf", fmt="hf")
    # In float64 the two differ only by the merged weights' rounding to float32, not by float32 sums in two orders.
    load = dict(trust_remote_code=True, dtype=torch.float64)
    expected = hf_logits(transformers.AutoModelForCausalLM.from_pretrained(str(merged), **load))
    on_base = transformers.AutoModelForCausalLM.from_pretrained(str(base_hf), **load)
    got = hf_logits(PeftModel.from_pretrained(on_base, str(out)))
    assert got.dtype == np.float64
    assert np.abs(got - expected).max() < 1e-5


def test_peft_adapter_names_its_base_model_and_says_how_to_load_it(adapter_run, base, tmp_path):
    out = export(adapter_run, tmp_path / "adapter-peft", fmt="peft-adapter")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(base)
    assert config["use_dora"] is (method_of(adapter_run) == "dora")
    card = (out / "README.md").read_text()
    assert "PeftModel.from_pretrained" in card and f"elm-train export {base} --format hf" in card
    assert {"README.md", "adapter_config.json", "adapter_model.safetensors", EXPORT_MARKER} == {p.name for p in out.iterdir()}


# --- refusals ---------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["mlx-adapter", "peft-adapter"])
def test_a_source_without_adapter_is_refused_for_adapter_formats(base, tmp_path, fmt):
    with pytest.raises(ExportError, match=r"not a checkpoint of an adapter run.*--format mlx\|hf exports merged"):
        export(base, tmp_path / "out", fmt=fmt)
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.partial").exists()


def test_cli_exports_an_adapter_and_refuses_a_plain_model(adapter_run, base, tmp_path, capsys):
    assert cli_export([str(adapter_run), "--format", "peft-adapter", "--out", str(tmp_path / "a")]) == 0
    assert (tmp_path / "a" / "adapter_model.safetensors").is_file()
    assert cli_export([str(base), "--format", "mlx-adapter", "--out", str(tmp_path / "b")]) == 2
    assert "--format mlx|hf exports merged weights" in capsys.readouterr().err

