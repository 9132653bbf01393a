"""The settings of a run: `RunConfig` (what every run has), `TrainConfig` (pretraining's), how they resolve.

Each setting is declared once, with its help, type and per-owner defaults (`model.train.settings`):
the shared ones on `RunConfig` with CoreNet's OpenELM defaults, pretraining's own on `TrainConfig`,
fine-tuning's on `model.finetune.config.FinetuneConfig`. `resolve_config` layers, from weakest
to strongest, those defaults, the preset's (or a recipe's) values, a saved run's config, a YAML
run config and command-line flags, then fills what depends on the others (warmup length,
gradient accumulation). The resolved config is what a run folder's `config.yaml` holds and what
`--resume` reads back.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar

import yaml

from corpus.mixing.packing import MODES as SAMPLER_MODES
from model.presets import PRESETS, training_defaults
from model.train.settings import BOTH, run_config, setting, settings_of

# CoreNet's full run: warmup length and total steps (projects/openelm/pretraining_configs).
CORENET_WARMUP_STEPS = 5000
CORENET_TOTAL_STEPS = 350_000
# CoreNet's global batch: 2048 sequences of 2048 tokens.
CORENET_BATCH_TOKENS = 2048 * 2048


class ConfigError(ValueError):
    """A run setting that is missing, unknown or inconsistent; the message names it."""


class TrainError(RuntimeError):
    """A run that cannot start or go on; the message says what is wrong and what to do."""


def parse_weights(text: str) -> dict[str, float]:
    """Mixture weights from a flag: `source=0.5,other=0.5` or a JSON object."""
    text = text.strip()
    if text.startswith("{"):
        return {str(k): float(v) for k, v in json.loads(text).items()}
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep:
            # argparse prints an ArgumentTypeError's own message (any other error as "invalid value")
            raise argparse.ArgumentTypeError(f"--weights expects source=weight pairs, got {part!r}")
        out[name.strip()] = float(value)
    return out


@run_config(BOTH)
class RunConfig:
    """The settings every run has: what it starts from, its batch, optimizer, compute and records.

    Field names are the YAML keys; `--max-lr` sets `max_lr`. The defaults are CoreNet's OpenELM
    pretraining recipe; a default named per owner (`finetune=`) is fine-tuning's own."""

    init_from: str | None = setting(None, "start from the weights of a Hugging Face-format folder (e.g. a run's "
                                          "checkpoints/step_N)")
    out: str | None = setting(None, "run folder (default under runs/, named after the run)")
    seed: int = setting(0, "seeds the initial weights (or adapters) and the data order")

    # Batch: the global batch in tokens, split into micro-batches per rank and accumulated.
    steps: int | None = setting(CORENET_TOTAL_STEPS, "optimizer steps in the whole run", finetune=None)
    sequence_length: int = setting(2048, "tokens per training sequence (fine-tuning: the recipe's, or 2048, at most "
                                         "the starting model's context unless given)")
    global_batch_tokens: int | None = setting(
        CORENET_BATCH_TOKENS, "tokens per optimizer step over all ranks (a multiple of micro batch x length x ranks)",
        finetune=None)
    micro_batch_size: int = setting(8, "sequences per forward pass on one rank; the rest is gradient accumulation")

    # Optimizer and schedule (CoreNet: AdamW, linear warmup from 1e-6, cosine to 0.1 x max).
    max_lr: float = setting(5.3e-3, "peak learning rate (CoreNet: 5.3e-3 270M, 3.9e-3 450M, 2.4e-3 1.1B, 1.2e-3 3B)",
                            finetune=2e-5)
    min_lr_ratio: float = setting(0.1, "final LR as a fraction of the peak, reached by cosine decay", finetune=0.0)
    warmup_init_lr: float = setting(1e-6, "LR of the first warmup step")
    warmup_steps: int | None = setting(None, "linear warmup length (pretraining: 5000, at most a tenth of the run; "
                                             "fine-tuning: a tenth of the run)")
    beta1: float = setting(0.9, "AdamW beta1")
    beta2: float = setting(0.95, "AdamW beta2")
    eps: float = setting(1e-8, "AdamW epsilon")
    weight_decay: float = setting(0.1, "AdamW weight decay for matrices (norms get none)", finetune=0.0)
    grad_clip: float = setting(1.0, "clip the global gradient norm to this")
    z_loss: float = setting(1e-4, "coefficient of mean logsumexp(logits)^2 added to the loss", finetune=0.0)

    # Compute.
    device: str = setting("auto", "auto, cpu, cuda, cuda:N or mps")
    dtype: str = setting("auto", "auto (bf16 autocast on CUDA, else fp32), bf16 or fp32",
                         choices=("auto", "bf16", "fp32"))
    compile: bool = setting(False, "torch.compile the model")
    activation_checkpointing: bool = setting(False, "recompute each decoder layer in backward (less memory)")
    fsdp: bool = setting(False, "shard parameters, gradients and optimizer state (FSDP2) under torchrun")
    threads: int | None = setting(None, "torch CPU threads per process (default torch's; 1 is best on a busy machine)")
    flush_denormal: bool = setting(True, "CPU: treat subnormal floats as zero (they slow x86 math up to ~10x)")

    # Observability and safety.
    log_every: int = setting(10, "steps between progress lines and mixture records")
    eval_every: int = setting(100, "steps between validation-loss evaluations", finetune=50)
    checkpoint_every: int = setting(500, "steps between checkpoints (one is always written at the end)",
                                    finetune=200)
    keep_checkpoints: int = setting(3, "how many of the newest checkpoints to keep")
    progress: bool = setting(True, "show a progress bar (or progress lines when not on a terminal)")

    # Benchmark tasks (lm-evaluation-harness) while training: a task set or lm-eval task names.
    eval_tasks: str | None = setting(None, "lm-eval tasks or a task set (docs/eval.md) to run while training")
    eval_tasks_every: int | None = setting(None, "steps between task evaluations (default: at every checkpoint)")
    eval_tasks_limit: int | None = setting(None, "examples per task in those evaluations (default: all)")
    eval_tasks_include: str | None = setting(None, "a folder of extra task YAMLs in lm-eval's format")

    # Derived by resolve_config; stored so a resumed run needs no recomputation.
    gradient_accumulation: int = setting(0, flag=False)

    # Values a resumed run must share with the run it continues: anything else changes the data or the model.
    RESUME_INVARIANTS: ClassVar[tuple[str, ...]] = ()

    @property
    def tokens_per_micro_batch(self) -> int:
        return self.micro_batch_size * self.sequence_length

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def defaults(cls, merged: dict[str, Any]) -> dict[str, Any]:
        """The values under the run config and flags (`merged`): a preset's or a recipe's ({}: the fields')."""
        return {}

    def default_run_dir(self) -> Path:
        raise NotImplementedError

    def check_and_derive(self, world_size: int) -> None:
        self.check_settings()
        check_batch_and_schedule(self, world_size)

    def check_settings(self) -> None:
        """Refuse a required setting left out and a value outside a setting's choices, naming the flag."""
        for s in settings_of(type(self)):
            value = getattr(self, s.name)
            if s.required and value in (None, ""):
                raise ConfigError(f"{s.flag} is required: {s.help}")
            if s.choices and value not in s.choices:
                raise ConfigError(f"{s.flag} must be one of {', '.join(s.choices)}, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


@run_config("pretraining")
class TrainConfig(RunConfig):
    """A pretraining run: what it trains on (a built corpus or a live stream) and what model it trains."""

    corpus: str | None = setting(None, "corpus name under <data root>/corpora (e.g. openelm-sample), a corpus "
                                       "folder, or a URI (s3://bucket/prefix)")
    corpus_cache: str | None = setting(None, "folder for the local copy of a --corpus on an object store: each shard "
                                             "downloaded once, checked against its ledger sha256, then memory-mapped "
                                             "(default <data root>/cache)")
    model: str = setting("tiny", "the model's size preset (model/presets.py)", choices=tuple(PRESETS))
    vocab_size: int | None = setting(None, "override the preset's vocabulary (must equal the corpus tokenizer's)")
    sampler_mode: str = setting("pack", "pack (every token trained) or corenet (one truncated, padded chunk per "
                                        "sequence)", choices=SAMPLER_MODES)
    weights: dict[str, float] | None = setting(None, "mixture weights, source=w,... or JSON (default: the manifest's)",
                                               parse=parse_weights)
    eval_batches: int = setting(4, "held-out micro-batches per evaluation, over all ranks")

    # The live stream instead of a built corpus.
    stream: bool = setting(False, "tokenize the manifest's sources live on Ray instead of reading a built corpus")
    manifest: str | None = setting(None, "the manifest --stream reads (default manifests/openelm.yaml)")
    stream_sample: bool = setting(False, "--stream the offline sample mirror instead of the upstream files")
    stream_workers: int = setting(2, "Ray CPUs for --stream's pipeline; the feed starts 2 units ahead per worker")
    stream_unit_bytes: int = setting(64 << 20, "input bytes per --stream work unit (64 MiB; small units make resume "
                                               "tests cheap)")
    ray_address: str | None = setting(None, "a Ray cluster (its head's host:port) to run --stream's pipeline on; every "
                                            "node that trains must be one of its nodes (default: a local Ray of "
                                            "--stream-workers CPUs)")

    RESUME_INVARIANTS: ClassVar[tuple[str, ...]] = (
        "corpus", "model", "vocab_size", "seed", "sequence_length", "global_batch_tokens", "sampler_mode", "weights",
        "stream", "manifest", "stream_sample", "stream_unit_bytes")

    @classmethod
    def defaults(cls, merged: dict[str, Any]) -> dict[str, Any]:
        """The preset's training settings."""
        return training_defaults(merged.get("model", cls.model))

    def default_run_dir(self) -> Path:
        data_name = Path(self.corpus).name if self.corpus else ("stream" if self.stream else "corpus")
        return Path("runs") / f"{self.model}-{data_name}"


def merge_settings(yaml_values: dict[str, Any] | None, flag_values: dict[str, Any] | None,
                   base: dict[str, Any] | None = None, kind: type[RunConfig] = TrainConfig) -> dict[str, Any]:
    """The layers of a run's settings, weakest first: the fields' defaults, `kind.defaults` (the preset's, or a
    recipe's), `base` (a saved run's config), the YAML run config, the flags; unknown keys are refused by name."""
    names = kind.field_names()
    merged: dict[str, Any] = {}
    for layer_name, layer in (("saved run config", base), ("run config", yaml_values), ("flags", flag_values)):
        for key in layer or {}:
            if key not in names:
                raise ConfigError(f"{layer_name}: unknown setting {key!r}; known settings: {', '.join(names)}")
        merged.update({k: v for k, v in (layer or {}).items() if v is not None})
    values = kind.defaults(merged)
    values.update(merged)
    values["gradient_accumulation"] = 0  # always derived from the batch settings and the world size
    return values


def resolve_config(yaml_values: dict[str, Any] | None, flag_values: dict[str, Any] | None,
                   world_size: int = 1, base: dict[str, Any] | None = None, kind: type[RunConfig] = TrainConfig):
    """The run's config from its layers (`merge_settings`), checked, with the rest derived."""
    return checked_config(kind, merge_settings(yaml_values, flag_values, base, kind), world_size)


def checked_config(kind: type[RunConfig], values: dict[str, Any], world_size: int):
    """A config of `kind` from merged values (`merge_settings`), checked, with the rest derived."""
    cfg = kind(**values)
    cfg.check_and_derive(world_size)
    return cfg


def check_batch_and_schedule(cfg: RunConfig, world_size: int) -> None:
    """Refuse impossible batch, schedule and evaluation settings; derive gradient accumulation and warmup."""
    for name in ("steps", "sequence_length", "global_batch_tokens", "micro_batch_size", "log_every",
                 "eval_every", "checkpoint_every", "keep_checkpoints", "eval_batches", "stream_workers",
                 "stream_unit_bytes"):
        if hasattr(cfg, name) and int(getattr(cfg, name)) <= 0:
            raise ConfigError(f"{name} must be a positive integer, got {getattr(cfg, name)!r}")
    for name in ("max_lr", "warmup_init_lr", "eps"):
        if not float(getattr(cfg, name)) > 0:
            raise ConfigError(f"{name} must be positive, got {getattr(cfg, name)!r}")
    if not 0 <= cfg.min_lr_ratio <= 1:
        raise ConfigError(f"min_lr_ratio must lie in [0, 1], got {cfg.min_lr_ratio}")
    per_step = cfg.tokens_per_micro_batch * world_size
    if cfg.global_batch_tokens % per_step:
        raise ConfigError(
            f"global_batch_tokens {cfg.global_batch_tokens} is not a multiple of micro_batch_size x "
            f"sequence_length x world size = {cfg.micro_batch_size} x {cfg.sequence_length} x {world_size} = "
            f"{per_step}; change --global-batch-tokens or --micro-batch-size")
    cfg.gradient_accumulation = cfg.global_batch_tokens // per_step
    if cfg.warmup_steps is None:
        # A short run keeps CoreNet's shape: warmup is at most a tenth of it.
        cfg.warmup_steps = min(CORENET_WARMUP_STEPS, max(1, cfg.steps // 10))
    if cfg.eval_tasks_every is None:
        cfg.eval_tasks_every = cfg.checkpoint_every
    if cfg.eval_tasks_every <= 0 or (cfg.eval_tasks_limit is not None and cfg.eval_tasks_limit <= 0):
        raise ConfigError(f"eval_tasks_every and eval_tasks_limit must be positive, got {cfg.eval_tasks_every} and "
                          f"{cfg.eval_tasks_limit}")
    if cfg.warmup_steps < 0:
        raise ConfigError(f"warmup_steps must be >= 0, got {cfg.warmup_steps}")


def load_yaml_config(path: str | Path, kind: type[RunConfig] = TrainConfig) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"run config {path} does not exist")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a run config is a mapping of setting: value, got {type(values).__name__}")
    names = kind.field_names()
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s) {unknown}; known settings: {', '.join(names)}")
    return values
