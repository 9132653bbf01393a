"""The settings of a training run: `TrainConfig`, how it is resolved, and the errors a run reports.

`TrainConfig` holds every setting of a run, with CoreNet's OpenELM defaults. `resolve_config`
layers, from weakest to strongest, those defaults, the preset's own values (`model.presets`),
a YAML run config and command-line flags, then fills what depends on the others (warmup
length, gradient accumulation). The resolved config is what a run folder's `config.yaml`
holds and what `--resume` reads back.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from corpus.mixing.packing import MODES as SAMPLER_MODES
from model.presets import training_defaults

# CoreNet's full run: warmup length and total steps (projects/openelm/pretraining_configs).
CORENET_WARMUP_STEPS = 5000
CORENET_TOTAL_STEPS = 350_000
# CoreNet's global batch: 2048 sequences of 2048 tokens.
CORENET_BATCH_TOKENS = 2048 * 2048


class ConfigError(ValueError):
    """A run setting that is missing, unknown or inconsistent; the message names it."""


class TrainError(RuntimeError):
    """A run that cannot start or go on; the message says what is wrong and what to do."""


@dataclass
class TrainConfig:
    """Every setting of a training run. Field names are the YAML keys; `--max-lr` sets `max_lr`."""

    # What to train on and what to train.
    corpus: str | None = None          # a corpus name under <data root>/corpora, a folder, or a URI (s3://...)
    corpus_cache: str | None = None    # local copy of a corpus on an object store (default <data root>/cache)
    model: str = "tiny"                # preset name (model.presets.PRESETS)
    init_from: str | None = None       # a Hugging Face folder to start from instead of random weights
    vocab_size: int | None = None      # override the preset's vocabulary (must equal the tokenizer's)
    out: str | None = None             # run folder (default runs/<model>-<corpus>)
    seed: int = 0

    # Batch: the global batch in tokens, split into micro-batches per rank and accumulated.
    steps: int = CORENET_TOTAL_STEPS
    sequence_length: int = 2048
    global_batch_tokens: int = CORENET_BATCH_TOKENS
    micro_batch_size: int = 8          # sequences per forward pass on one rank

    # Optimizer and schedule (CoreNet: AdamW, linear warmup from 1e-6, cosine to 0.1 x max).
    max_lr: float = 5.3e-3
    min_lr_ratio: float = 0.1
    warmup_init_lr: float = 1e-6
    warmup_steps: int | None = None    # None: 5000, shortened to a tenth of the run for short runs
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    z_loss: float = 1e-4

    # Compute.
    device: str = "auto"               # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"                # auto (bf16 autocast where supported) | bf16 | fp32
    compile: bool = False
    activation_checkpointing: bool = False
    fsdp: bool = False
    threads: int | None = None         # torch CPU threads per process (None: torch's default)
    flush_denormal: bool = True        # CPU: treat subnormal floats as zero (they slow x86 math up to ~10x)

    # Data.
    sampler_mode: str = "pack"         # pack (every token trained) | corenet (truncate + pad, as CoreNet)
    weights: dict[str, float] | None = None  # mixture weights per source (None: the manifest's)
    stream: bool = False               # tokenize the manifest's sources live (Ray) instead of reading shards
    manifest: str | None = None        # the manifest to stream (default manifests/openelm.yaml)
    stream_sample: bool = False        # stream the offline sample mirror instead of the upstream files
    stream_workers: int = 2            # Ray CPUs for the live pipeline; the feed starts 2 units ahead per worker
    stream_unit_bytes: int = 64 << 20  # input bytes per streamed work unit (small units exercise resume in tests)
    ray_address: str | None = None     # a Ray cluster's head for the live pipeline (None: a local Ray)

    # Observability and safety.
    log_every: int = 10                # progress line / mixture record interval
    eval_every: int = 100
    eval_batches: int = 4              # micro-batches of the held-out split per evaluation, over all ranks
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    progress: bool = True

    # Benchmark tasks (lm-evaluation-harness) while training: a task set or lm-eval task names.
    eval_tasks: str | None = None
    eval_tasks_every: int | None = None    # steps between task evaluations (None: at every checkpoint)
    eval_tasks_limit: int | None = None    # examples per task (None: all)
    eval_tasks_include: str | None = None  # a folder of extra task YAMLs in lm-eval's format

    # Derived by resolve_config; stored so a resumed run needs no recomputation.
    gradient_accumulation: int = field(default=0)

    @property
    def tokens_per_micro_batch(self) -> int:
        return self.micro_batch_size * self.sequence_length

    # Values a resumed run must share with the run it continues: anything else changes the data or the model.
    RESUME_INVARIANTS = ("corpus", "model", "vocab_size", "seed", "sequence_length", "global_batch_tokens",
                         "sampler_mode", "weights", "stream", "manifest", "stream_sample", "stream_unit_bytes")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def defaults(cls, merged: dict[str, Any]) -> dict[str, Any]:
        """The values under the run config and flags (`merged`): the preset's training settings."""
        return training_defaults(merged.get("model", cls.model))

    def default_run_dir(self) -> Path:
        data_name = Path(self.corpus).name if self.corpus else ("stream" if self.stream else "corpus")
        return Path("runs") / f"{self.model}-{data_name}"

    def check_and_derive(self, world_size: int) -> None:
        _check_and_derive(self, world_size)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def resolve_config(yaml_values: dict[str, Any] | None, flag_values: dict[str, Any] | None,
                   world_size: int = 1, base: dict[str, Any] | None = None, kind: type[TrainConfig] = TrainConfig):
    """Merge defaults < `kind.defaults` (the preset's, or a recipe's) < `base` (a saved run's config) < YAML < flags,
    then derive the rest. `kind` is `TrainConfig` or a subclass with more settings (fine-tuning's)."""
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
    cfg = kind(**values)
    cfg.check_and_derive(world_size)
    return cfg


def _check_and_derive(cfg: TrainConfig, world_size: int) -> None:
    for name in ("steps", "sequence_length", "global_batch_tokens", "micro_batch_size", "log_every",
                 "eval_every", "checkpoint_every", "keep_checkpoints", "eval_batches", "stream_workers",
                 "stream_unit_bytes"):
        if int(getattr(cfg, name)) <= 0:
            raise ConfigError(f"{name} must be a positive integer, got {getattr(cfg, name)!r}")
    for name in ("max_lr", "warmup_init_lr", "eps"):
        if not float(getattr(cfg, name)) > 0:
            raise ConfigError(f"{name} must be positive, got {getattr(cfg, name)!r}")
    if not 0 <= cfg.min_lr_ratio <= 1:
        raise ConfigError(f"min_lr_ratio must lie in [0, 1], got {cfg.min_lr_ratio}")
    if cfg.sampler_mode not in SAMPLER_MODES:
        raise ConfigError(f"sampler_mode must be one of {', '.join(SAMPLER_MODES)}, got {cfg.sampler_mode!r}")
    if cfg.dtype not in ("auto", "bf16", "fp32"):
        raise ConfigError(f"dtype must be auto, bf16 or fp32, got {cfg.dtype!r}")
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


def load_yaml_config(path: str | Path, kind: type[TrainConfig] = TrainConfig) -> dict[str, Any]:
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
