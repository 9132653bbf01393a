"""The named model sizes, each one definition: its architecture and the training defaults that go with it.

`get_preset(name)` gives the architecture (an `OpenELMConfig`); `training_defaults(name)`
gives the run settings the preset changes from CoreNet's defaults (keys are
`model.train.config.TrainConfig` fields; `resolve_config` layers them under YAML and flags).
The four released sizes follow CoreNet (`gpt_configs` and `projects/openelm/pretraining_configs`);
`tiny` and `small` are this project's CPU and GPU smoke sizes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from model.config import OpenELMConfig


@dataclass(frozen=True)
class Preset:
    """One named size: the model's shapes and the run settings it trains with by default."""

    architecture: OpenELMConfig
    training: dict[str, Any] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    # ~4.7M parameters (4.1M of them the tied embedding): minutes on 2 CPU cores (validation loss ~5.4 on the
    # sample corpus); small batches learn more per token here.
    "tiny": Preset(
        OpenELMConfig(num_transformer_layers=4, model_dim=128, head_dim=16, ffn_dim_divisor=64,
                      max_context_length=512, rope_max_length=1024),
        dict(max_lr=1e-2, steps=500, sequence_length=128, global_batch_tokens=8 * 128, micro_batch_size=8,
             checkpoint_every=100, eval_every=50, eval_batches=8, log_every=10)),
    # ~35M parameters: a quick GPU smoke run or a longer CPU run, same layer-wise scaling.
    "small": Preset(
        OpenELMConfig(num_transformer_layers=8, model_dim=512, head_dim=32, ffn_dim_divisor=128,
                      max_context_length=1024, rope_max_length=2048),
        dict(max_lr=3e-3, steps=5000, sequence_length=1024, global_batch_tokens=64 * 1024, micro_batch_size=16,
             checkpoint_every=500, eval_every=250)),
    # Apple's four released sizes, with CoreNet's peak LR, activation checkpointing and sharding per size.
    "openelm-270m": Preset(OpenELMConfig(num_transformer_layers=16, model_dim=1280, head_dim=64),
                           dict(max_lr=5.3e-3, activation_checkpointing=False)),
    "openelm-450m": Preset(OpenELMConfig(num_transformer_layers=20, model_dim=1536, head_dim=64),
                           dict(max_lr=3.9e-3, activation_checkpointing=True)),
    "openelm-1.1b": Preset(OpenELMConfig(num_transformer_layers=28, model_dim=2048, head_dim=64),
                           dict(max_lr=2.4e-3, activation_checkpointing=True)),
    "openelm-3b": Preset(OpenELMConfig(num_transformer_layers=36, model_dim=3072, head_dim=128),
                         dict(max_lr=1.2e-3, activation_checkpointing=True, fsdp=True)),
}


def get_preset(name: str) -> OpenELMConfig:
    """The architecture of the preset called `name`; a clear error listing the choices otherwise."""
    try:
        return PRESETS[name].architecture
    except KeyError:
        raise ValueError(f"unknown OpenELM preset {name!r}; choose one of {sorted(PRESETS)}") from None


def training_defaults(name: str) -> dict[str, Any]:
    """The run settings preset `name` sets (a copy); none for a name that is not a preset."""
    preset = PRESETS.get(name)
    return dict(preset.training) if preset is not None else {}


def preset_settings() -> set[str]:
    """The run settings that some preset sets (their defaults depend on --model)."""
    return {key for preset in PRESETS.values() for key in preset.training}


def preset_name(config: OpenELMConfig) -> str | None:
    """The preset whose architecture `config` is, if any (a model read from a folder may be one)."""
    return next((name for name, preset in PRESETS.items() if preset.architecture == config), None)
