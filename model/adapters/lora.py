"""LoRA and DoRA adapters on OpenELM through PEFT, and how an adapter run's checkpoints hold them.

PEFT puts the adapters into the model in place (`inject_adapter_in_model`): the model stays an
`OpenELM` whose target layers gain `lora_A`/`lora_B` (and DoRA's magnitude vector), and every
other parameter is frozen, so only the adapter trains and the base weights stay bit for bit.

A checkpoint of an adapter run is an ordinary model folder holding the merged weights (so
`elm-train eval`, `export` and `--init-from` take it like any checkpoint), with the adapter
beside it in PEFT's own layout under `adapter/` (`adapter_model.safetensors` and
`adapter_config.json`): what `--resume` reads and `export --format peft-adapter` hands out.
"""
from __future__ import annotations

import copy
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file, save
from torch import Tensor, nn

from model.adapters.files import ADAPTER_CONFIG, ADAPTER_DIR, ADAPTER_WEIGHTS, PEFT_PREFIX

TARGETS = ("qkv_proj", "out_proj", "proj_1", "proj_2")  # CoreNet's PEFT recipe (the embedding apart)
METHODS = ("lora", "dora")


class AdapterError(ValueError):
    """Adapter settings that cannot apply, or an adapter folder that does not fit the model."""


@dataclass(frozen=True)
class AdapterSettings:
    method: str = "lora"            # lora | dora (DoRA: LoRA plus a learned magnitude per output)
    rank: int = 32
    alpha: float = 32.0
    dropout: float = 0.1
    targets: tuple[str, ...] = TARGETS

    def __post_init__(self):
        if self.method not in METHODS:
            raise AdapterError(f"adapter method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.rank <= 0 or self.alpha <= 0 or not 0 <= self.dropout < 1:
            raise AdapterError(f"adapter rank and alpha must be positive and dropout in [0, 1), got rank {self.rank}, "
                               f"alpha {self.alpha}, dropout {self.dropout}")
        unknown = sorted(set(self.targets) - set(TARGETS) - {"token_embeddings"})
        if unknown or not self.targets:
            raise AdapterError(f"adapter targets must be among {', '.join(TARGETS)}, got {', '.join(self.targets)}")
        if "token_embeddings" in self.targets:
            # OpenELM ties the output projection to the token embedding: an adapter on it would change the logits
            # once merged but not while training (PEFT's embedding layer leaves the tied weight as it is).
            raise AdapterError("an adapter on token_embeddings is not supported: OpenELM ties it to the output "
                               "projection, so the merged model would not be the one trained; leave it out of "
                               "the targets")

    def peft_config(self, base: str | None = None) -> LoraConfig:
        return LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=list(self.targets), use_dora=self.method == "dora", bias="none",
                          task_type="CAUSAL_LM", base_model_name_or_path=base)

    def describe(self) -> dict:
        return {"method": self.method, "rank": self.rank, "alpha": self.alpha, "dropout": self.dropout,
                "targets": list(self.targets)}


def add_adapters(model: nn.Module, settings: AdapterSettings) -> nn.Module:
    """Put fresh adapters (B = 0: the model's output is unchanged) into `model` in place; freeze the rest."""
    model = inject_adapter_in_model(settings.peft_config(), model)
    for name, param in model.named_parameters():
        param.requires_grad = "lora_" in name
    return model


def adapter_state(model: nn.Module) -> dict[str, Tensor]:
    """The adapter's tensors under the keys PEFT saves (`base_model.model.<module>.lora_A.weight`, ...)."""
    return {PEFT_PREFIX + k: v.detach().to("cpu", torch.float32).contiguous()
            for k, v in get_peft_model_state_dict(model).items()}


def load_adapter_state(model: nn.Module, tensors: dict[str, Tensor], where: str) -> None:
    """Set the adapter of `model` from PEFT-keyed tensors; a key that does not fit is refused with `where`."""
    ours = set(get_peft_model_state_dict(model))
    given = {k.removeprefix(PEFT_PREFIX): v for k, v in tensors.items()}
    if set(given) != ours:
        missing, extra = sorted(ours - set(given)), sorted(set(given) - ours)
        raise AdapterError(f"{where}: the adapter does not fit the model (missing {missing[:3]}, "
                           f"unexpected {extra[:3]})")
    set_peft_model_state_dict(model, given)


def merged_state(model: nn.Module) -> dict[str, Tensor]:
    """The model's state with every adapter merged into its layer's weight, in the plain model's layout.

    Each adapted layer is merged in a copy (one layer at a time), so the model itself is untouched: an
    unmerge afterwards would not give the base weights back bit for bit.
    """
    merged_weights = {}
    for name, module in model.named_modules():
        if isinstance(module, BaseTunerLayer):
            layer = copy.deepcopy(module)
            layer.merge(safe_merge=True)
            merged_weights[f"{name}.weight"] = layer.get_base_layer().weight.detach()
    out = {}
    for key, value in model.state_dict().items():
        if "lora_" in key:
            continue
        key = key.replace(".base_layer.", ".")
        out[key] = merged_weights.get(key, value)
    return out


def adapter_files(model: nn.Module, settings: AdapterSettings, base: str | None) -> dict[str, bytes]:
    """The adapter folder's two files (relative names under `adapter/`) in PEFT's format."""
    with tempfile.TemporaryDirectory() as tmp:
        settings.peft_config(base).save_pretrained(tmp)  # PEFT writes its own adapter_config.json
        config = (Path(tmp) / ADAPTER_CONFIG).read_bytes()
    return {f"{ADAPTER_DIR}/{ADAPTER_WEIGHTS}": save(adapter_state(model), metadata={"format": "pt"}),
            f"{ADAPTER_DIR}/{ADAPTER_CONFIG}": config}


def read_adapter_settings(folder: str | Path) -> AdapterSettings:
    """The settings of a PEFT adapter folder (`adapter_config.json`)."""
    path = Path(folder) / ADAPTER_CONFIG
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise AdapterError(f"{path}: not a readable PEFT adapter config ({e})") from None
    if not isinstance(cfg, dict) or "r" not in cfg or "lora_alpha" not in cfg:
        raise AdapterError(f"{path}: not a LoRA/DoRA adapter config (no r and lora_alpha)")
    targets = set(cfg.get("target_modules") or [])
    return AdapterSettings("dora" if cfg.get("use_dora") else "lora", int(cfg["r"]), float(cfg["lora_alpha"]),
                           float(cfg.get("lora_dropout", 0.0)),
                           tuple(t for t in TARGETS if t in targets) + tuple(sorted(targets - set(TARGETS))))


def load_adapter_folder(model: nn.Module, folder: str | Path) -> nn.Module:
    """`model` with the adapter of a PEFT folder (`adapter_config.json`, `adapter_model.safetensors`) put into it."""
    folder = Path(folder)
    settings = read_adapter_settings(folder)
    weights = folder / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise AdapterError(f"{folder}: no {ADAPTER_WEIGHTS} beside {ADAPTER_CONFIG}")
    model = add_adapters(model, settings)
    load_adapter_state(model, load_file(str(weights)), str(weights))
    return model


class AdapterCheckpoints:
    """The trainer's `CheckpointWeights` for an adapter run: merged weights in the folder, the adapter beside."""

    def __init__(self, settings: AdapterSettings, base: str | None):
        self.settings, self.base = settings, base

    def to_checkpoint(self, model: nn.Module) -> tuple[dict[str, Tensor], dict[str, bytes]]:
        return merged_state(model), adapter_files(model, self.settings, self.base)

    def from_checkpoint(self, model: nn.Module, folder: Path, saved: dict[str, Tensor]) -> dict[str, Tensor]:
        path = Path(folder) / ADAPTER_DIR / ADAPTER_WEIGHTS
        if not path.is_file():
            raise AdapterError(f"{folder}: an adapter run's checkpoint must hold {ADAPTER_DIR}/{ADAPTER_WEIGHTS}")
        load_adapter_state(model, load_file(str(path)), str(path))
        return model.state_dict()
