"""The settings of a fine-tuning run: `FinetuneConfig` (the shared settings with fine-tuning's defaults, and its own)
and the recipes.

A recipe is a layer of defaults under the run config and the flags, as a preset is for
pretraining (`model.train.config.resolve_config` layers them):

- `openelm-peft`: CoreNet's LoRA/DoRA recipe for OpenELM (shared/OPENELM.md section 7): rank 32,
  alpha 32, dropout 0.1 on qkv_proj, out_proj, proj_1, proj_2; AdamW (0.9, 0.95) without weight
  decay; cosine from 3e-4 to 3e-5 after 1000 warmup steps; 3 epochs; sequences of 2048.
- `openelm-instruct`: the preference optimisation that made OpenELM-Instruct: beta 0.01, sequences
  of 1024 with prompts of at most 512, warmup a tenth of the run, cosine to zero, no weight
  decay, and per model size its epochs, learning rate and loss (hinge, i.e. RSO, except 1.1B's
  sigmoid, i.e. DPO). A model of another size takes the 270M row.

Without a recipe the defaults are a plain fine-tuning run's: 3 epochs, LR 2e-5, cosine to zero,
sequences of 2048. A sequence length not given (the recipe's, or 2048) is cut to the starting
model's context (`max_context_length`), and the run says so.
`--steps` overrides `--epochs`; with epochs the step count is known once the data is read
(`set_steps`).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar

from model.adapters.lora import METHODS as ADAPTER_METHODS
from model.adapters.lora import TARGETS, AdapterSettings
from model.config import OpenELMConfig
from model.finetune.objectives import OBJECTIVES, Objective
from model.train.config import ConfigError, RunConfig, check_batch_and_schedule
from model.train.settings import run_config, setting

ADAPTERS = ("none", *ADAPTER_METHODS)
RECIPES = ("openelm-instruct", "openelm-peft")

PEFT_RECIPE: dict[str, Any] = {
    "adapter": "lora", "lora_rank": 32, "lora_alpha": 32.0, "lora_dropout": 0.1, "lora_targets": ",".join(TARGETS),
    "max_lr": 3e-4, "min_lr_ratio": 0.1, "warmup_steps": 1000, "beta1": 0.9, "beta2": 0.95, "weight_decay": 0.0,
    "grad_clip": 1.0, "epochs": 3.0, "sequence_length": 2048,
}
# OpenELM-Instruct per size: (epochs, peak LR, method).
INSTRUCT_BY_SIZE: dict[str, tuple[float, float, str]] = {
    "openelm-270m": (5.0, 2e-5, "rso"),
    "openelm-450m": (8.0, 3e-5, "rso"),
    "openelm-1.1b": (5.0, 5e-5, "dpo"),
    "openelm-3b": (10.0, 1e-4, "rso"),
}
INSTRUCT_RECIPE: dict[str, Any] = {
    "beta": 0.01, "sequence_length": 1024, "max_prompt_length": 512, "min_lr_ratio": 0.0, "weight_decay": 0.0,
    "beta1": 0.9, "beta2": 0.999,  # the alignment handbook's AdamW (transformers' defaults)
}


@run_config("finetune", required=("init_from", "data"))
class FinetuneConfig(RunConfig):
    """A fine-tuning run: the shared settings with fine-tuning's defaults (`RunConfig`), and these."""

    step: int | None = setting(None, "with an --init-from run: the checkpoint step to start from (default: its "
                                     "newest)")
    data: str | None = setting(None, "training records: a jsonl, jsonl.gz, json or parquet file, a folder of them, "
                                     "a datasets folder or name")
    val_data: str | None = setting(None, "held-out records in the same formats, for the validation loss")
    method: str = setting("sft", "the objective: " + "; ".join(f"{o.name}: {o.help}" for o in OBJECTIVES.values())
                          + " (lora, dora: sft with that adapter)")
    adapter: str = setting("none", "which weights train: none (all), lora or dora (PEFT adapters, the rest frozen)",
                           choices=ADAPTERS)
    recipe: str | None = setting(None, "openelm-peft (CoreNet's LoRA/DoRA settings) or openelm-instruct "
                                       "(OpenELM-Instruct's DPO/RSO per size)")
    epochs: float = setting(3.0, "passes over the training data (--steps overrides)")
    tokenizer: str | None = setting(None, "the SentencePiece model when the model folder has none (Apple's releases "
                                          "ship none)")
    beta: float = setting(0.01, "DPO/RSO: the strength of the pull toward the reference (starting) model")
    orpo_lambda: float = setting(0.1, "ORPO: the weight of the odds-ratio term beside the SFT term")
    max_prompt_length: int | None = setting(None, "preference pairs: prompt tokens kept, cut on the left (default "
                                                  "half of --sequence-length)")
    lora_rank: int = setting(32, "adapter rank")
    lora_alpha: float = setting(32.0, "adapter alpha (the update is scaled by alpha / rank)")
    lora_dropout: float = setting(0.1, "dropout on the adapter's input")
    lora_targets: str = setting(",".join(TARGETS), f"comma-separated layers given adapters ({', '.join(TARGETS)})")
    instruct_size: str | None = setting(None, flag=False)  # the OpenELM-Instruct row a recipe run took (recorded)
    capped_sequence_length: int | None = setting(None, flag=False)  # the default length the model's context cut

    RESUME_INVARIANTS: ClassVar[tuple[str, ...]] = (
        "init_from", "step", "data", "val_data", "method", "seed", "sequence_length", "global_batch_tokens",
        "micro_batch_size", "adapter", "beta", "orpo_lambda", "max_prompt_length", "lora_rank", "lora_alpha",
        "lora_targets", "lora_dropout")

    @classmethod
    def defaults(cls, merged: dict[str, Any]) -> dict[str, Any]:
        """The recipe's values, and a sequence length not given capped at the starting model's context."""
        recipe = merged.get("recipe")
        start = starting_config(merged.get("init_from"), merged.get("step"))
        if recipe is None:
            values = {}
        elif recipe == "openelm-peft":
            values = dict(PEFT_RECIPE)
        elif recipe == "openelm-instruct":
            size = instruct_size(start)
            epochs, lr, method = INSTRUCT_BY_SIZE[size]
            values = dict(INSTRUCT_RECIPE, epochs=epochs, max_lr=lr, method=method, instruct_size=size)
        else:
            raise ConfigError(f"--recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")
        wanted = values.get("sequence_length", cls.sequence_length)
        if "sequence_length" not in merged and start is not None and wanted > start.max_context_length:
            length = start.max_context_length
            values.update(sequence_length=length, capped_sequence_length=wanted)
            if values.get("max_prompt_length", 0) >= length:  # the recipe's prompt share of the shorter length
                values["max_prompt_length"] = values["max_prompt_length"] * length // wanted
        return values

    def default_run_dir(self) -> Path:
        data = Path(str(self.data or "data")).name.split(".")[0] or "data"
        how = self.method if self.adapter == "none" else f"{self.method}-{self.adapter}"
        return Path("runs") / f"finetune-{how}-{data}"

    def check_and_derive(self, world_size: int) -> None:
        if self.method in ADAPTER_METHODS:  # `--method lora|dora`, as before objectives and adapters were two flags
            self.method, self.adapter = "sft", self.method
        if self.method not in OBJECTIVES:
            raise ConfigError(f"--method must be one of {', '.join(OBJECTIVES)} (or lora, dora: sft with that "
                              f"adapter), got {self.method!r}")
        self.check_settings()
        if self.fsdp:
            raise ConfigError("--fsdp is not supported by finetune yet; use DDP (torchrun without --fsdp)")
        if not self.beta > 0:
            raise ConfigError(f"--beta must be positive, got {self.beta}")
        if not self.orpo_lambda >= 0:
            raise ConfigError(f"--orpo-lambda must be >= 0, got {self.orpo_lambda}")
        if self.steps is None and not (self.epochs and self.epochs > 0):
            raise ConfigError("give --steps N or --epochs E (a positive number)")
        if self.global_batch_tokens is None:
            self.global_batch_tokens = self.micro_batch_size * self.sequence_length * world_size
        if self.max_prompt_length is None:
            self.max_prompt_length = self.sequence_length // 2
        if not 0 < self.max_prompt_length < self.sequence_length:
            raise ConfigError(f"--max-prompt-length must lie in (0, --sequence-length {self.sequence_length}), "
                              f"got {self.max_prompt_length}")
        self.adapter_settings()  # refuses bad adapter settings now
        steps = self.steps
        if steps is None:
            self.steps = 1  # checked and derived with a stand-in; set_steps gives the real count and warmup
        recipe_warmup = self.warmup_steps
        check_batch_and_schedule(self, world_size)
        if steps is None:
            self.steps, self.warmup_steps = None, recipe_warmup
        else:
            self.warmup_steps = self._warmup(recipe_warmup)

    def _warmup(self, given: int | None) -> int:
        """A tenth of the run (the Instruct recipe's warmup ratio) unless given; the PEFT recipe's 1000 steps are
        cut to a tenth of a run too short for them (as pretraining's 5000 are)."""
        tenth = max(1, math.ceil(self.steps / 10))
        if given is None:
            return tenth
        return min(given, tenth) if self.recipe == "openelm-peft" else given

    def set_steps(self, train_examples: int, world_size: int) -> None:
        """The step count of `epochs` passes over `train_examples` (pairs for DPO/RSO), and the warmup from it."""
        if self.steps is not None:
            return
        per_step = self.micro_batch_size * self.gradient_accumulation * world_size
        self.steps = max(1, math.ceil(self.epochs * train_examples / per_step))
        self.warmup_steps = self._warmup(self.warmup_steps)

    @property
    def objective(self) -> Objective:
        return OBJECTIVES[self.method]

    def adapter_settings(self) -> AdapterSettings | None:
        if self.adapter == "none":
            return None
        try:
            return AdapterSettings(self.adapter, int(self.lora_rank), float(self.lora_alpha), float(self.lora_dropout),
                                   tuple(t.strip() for t in str(self.lora_targets).split(",") if t.strip()))
        except ValueError as e:
            raise ConfigError(str(e)) from None


def starting_config(init_from: str | None, step: int | None) -> OpenELMConfig | None:
    """The architecture of the model `init_from` names, None when it cannot be read (the run then refuses it, with
    its reason, when it loads the model)."""
    from model.hf_folder import read_hf_config
    from model.source import resolve_source
    if not init_from:
        return None
    try:
        # config.json only: the weights are hashed once, when the run loads them
        return read_hf_config(resolve_source(init_from, step, verify=False).weights_dir)[1]
    except (OSError, ValueError):
        return None


def instruct_size(start: OpenELMConfig | None) -> str:
    """The OpenELM-Instruct row for the starting model: its preset by shape, else the 270M row."""
    from model.presets import preset_name
    name = preset_name(start) if start is not None else None
    return name if name in INSTRUCT_BY_SIZE else "openelm-270m"
