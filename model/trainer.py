"""`elm-train`: train OpenELM on a built corpus with CoreNet's recipe; `elm-train plot RUN_DIR`.

The loop reads top to bottom: set the step's LR, pull the global batch as micro-batches,
forward and backward each (gradients synchronised on the last), clip, step, log, evaluate,
checkpoint. The recipe (defaults, schedule, loss) lives in `model.recipe`, checkpoints in
`model.checkpoint`, records and plots in `model.metrics`.

Run folder: `run.json` (provenance), `config.yaml` (the resolved settings), `metrics.jsonl`,
`checkpoints/step_{N:08d}/` and, at the end, `curves.png`.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from torch import Tensor, nn

from model import checkpoint as ckpt
from model.config import PRESETS, OpenELMConfig, get_preset
from model.metrics import CURVES_FILE, METRICS_FILE, MetricsLog, ProgressBar, plot_run
from model.openelm import OpenELM
from model.recipe import (FIELD_NAMES, PRESET_DEFAULTS, RESUME_INVARIANTS, ConfigError, TrainConfig, autocast_dtype,
                          build_optimizer, language_model_loss, learning_rate, load_yaml_config, resolve_config)

RUN_JSON = "run.json"
CONFIG_YAML = "config.yaml"
SAMPLE_BUILD_HINT = "elm-corpus build manifests/openelm.yaml --sample"
DEFAULT_MANIFEST = "manifests/openelm.yaml"
IGNORE_INDEX = -100


class TrainError(RuntimeError):
    """A run that cannot start or go on; the message says what is wrong and what to do."""


class NonFiniteLoss(TrainError):
    """The loss or gradient norm became NaN or Inf; the last good checkpoint is kept."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------- distributed setup

@dataclass
class Cluster:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def sum(self, values: list[float]) -> list[float]:
        """Elementwise sum over ranks, in float64 so token counts stay exact."""
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.distributed:
            dist.all_reduce(t)
        return t.tolist()

    def gather(self, obj: Any) -> list[Any]:
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


def start_cluster(cfg: TrainConfig) -> Cluster:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cfg.device == "auto":
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.device)
        if device.type == "cuda" and device.index is None:
            device = torch.device(f"cuda:{local_rank}")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Cluster(rank, world_size, local_rank, device)


@contextlib.contextmanager
def process_settings(cfg: TrainConfig):
    """CPU threads and subnormal flushing for the run, restored afterwards (callers may be test processes)."""
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    flushing = False
    if cfg.flush_denormal:
        import numpy as np
        np.finfo(np.float32), np.finfo(np.float64)  # cached first, or numpy warns it sees no subnormals
        # Tiny softmax probabilities and Adam moments go subnormal after some steps; x86 math then crawls.
        flushing = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        if flushing:
            torch.set_flush_denormal(False)


# ---------------------------------------------------------------- data and model checks

def _data_root() -> Path:
    from corpus.paths import data_root
    return Path(data_root())


@dataclass
class TrainingData:
    """Where the tokens come from: a built corpus folder, or (`--stream`) the live pipelines of a manifest."""
    name: str
    folder: Path | None      # the built corpus; None when streaming
    fingerprint: str | None  # the manifest fingerprint the shards were (or would be) built with
    tokenizer: dict          # spec, sha256, vocab_size
    manifest: Any = None     # streaming only: the manifest whose sources are tokenized on the fly
    sample: bool = False     # streaming only: read the offline sample mirror

    def where(self) -> str:
        return str(self.folder) if self.folder is not None else f"the live pipeline of manifest {self.manifest.name}"

    def sampler(self, cfg: TrainConfig, split: str, cluster: Cluster):
        """This rank's share of the mixture. Ranks take alternate blocks of one micro-batch, so together
        they read exactly the sequences one process would."""
        from corpus.mixing.sampler import MixtureSampler
        kwargs = dict(weights=cfg.weights, mode=cfg.sampler_mode, seed=cfg.seed, split=split, rank=cluster.rank,
                      world_size=cluster.world_size, batch_size=cfg.micro_batch_size)
        try:
            if self.folder is not None:
                return MixtureSampler(self.folder, cfg.sequence_length, **kwargs)
            return MixtureSampler(None, cfg.sequence_length, streams=self._streams(cfg), manifest=self.manifest,
                                  **kwargs)
        except ValueError as e:
            raise TrainError(f"cannot sample {self.where()} ({split} split): {e}") from None

    def _streams(self, cfg: TrainConfig) -> dict:
        import functools

        import ray
        from pipelines.stream import stream_source
        if not ray.is_initialized():  # started here so that no single stream owns (and shuts down) Ray
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            ray.init(num_cpus=cfg.stream_workers, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        return {s.name: functools.partial(stream_source, self.manifest, s.name, sample=self.sample,
                                          workers=cfg.stream_workers) for s in self.manifest.sources}


def resolve_corpus(name_or_dir: str | None) -> TrainingData:
    """A built corpus by name (under the data root) or folder; a missing or unfinished one is refused with what to run."""
    if not name_or_dir:
        raise TrainError(f"no corpus given: pass --corpus NAME (a corpus under {_data_root() / 'corpora'}) "
                         f"or a corpus folder; build the sample one with '{SAMPLE_BUILD_HINT}' (--corpus openelm-sample)")
    given = Path(name_or_dir).expanduser()
    # A bare name is looked up under the data root; anything with a path separator is a folder.
    folder = given if os.sep in name_or_dir or (given / "corpus.json").exists() else _data_root() / "corpora" / name_or_dir
    if not folder.is_dir():
        built = sorted(p.name for p in (_data_root() / "corpora").glob("*") if (p / "corpus.json").exists())
        raise TrainError(f"corpus {name_or_dir!r} not found: {folder} does not exist. Build it first, e.g. "
                         f"'{SAMPLE_BUILD_HINT}' for the sample corpus 'openelm-sample'"
                         + (f"; built corpora: {', '.join(built)}" if built else ""))
    from corpus.store.layout import read_corpus_json
    try:
        info = read_corpus_json(folder)
    except FileNotFoundError:
        raise TrainError(f"{folder} holds no corpus.json, so its build never finished; rerun 'elm-corpus build' "
                         f"with the same manifest to complete it") from None
    tokenizer = info.get("tokenizer") or {}
    if not tokenizer.get("vocab_size") or not tokenizer.get("sha256"):
        raise TrainError(f"{folder}/corpus.json records no tokenizer (vocab_size, sha256); rebuild it with "
                         f"'elm-corpus build'")
    if int(info.get("totals", {}).get("tokens", 1)) <= 0:
        raise TrainError(f"{folder}: the corpus holds no tokens; check 'elm-corpus stats {folder}' for what was dropped")
    # The folder's name is what --corpus takes (a sample build of manifest 'openelm' is 'openelm-sample').
    return TrainingData(folder.name, folder, info.get("manifest_fingerprint"),
                        {k: tokenizer.get(k) for k in ("spec", "sha256", "vocab_size")})


def resolve_stream(cfg: TrainConfig) -> TrainingData:
    """The manifest to stream (`--manifest`, default manifests/openelm.yaml) and its tokenizer."""
    from corpus.manifest import load_manifest
    from corpus.tokenizer.tokenizer import Tokenizer
    try:
        manifest = load_manifest(cfg.manifest or DEFAULT_MANIFEST)
        tokenizer = Tokenizer(manifest.tokenizer.model, manifest.text.normalize)
    except (OSError, ValueError, RuntimeError) as e:
        raise TrainError(f"--stream: {e}") from None
    name = cfg.corpus or (f"{manifest.name}-sample" if cfg.stream_sample else manifest.name)
    return TrainingData(name, None, manifest.build_fingerprint(tokenizer.sha256),
                        {"spec": tokenizer.spec, "sha256": tokenizer.sha256, "vocab_size": tokenizer.vocab_size},
                        manifest=manifest, sample=cfg.stream_sample)


def check_vocabulary(data: TrainingData, model_config: OpenELMConfig, where: str) -> None:
    tok = data.tokenizer
    if int(tok["vocab_size"]) != model_config.vocab_size:
        raise TrainError(
            f"{data.where()} was tokenized with {tok.get('spec')} ({tok['vocab_size']} pieces), but the model "
            f"({where}) has a vocabulary of {model_config.vocab_size}. Train with --vocab-size {tok['vocab_size']} "
            f"(a fresh model), or rebuild the corpus with a {model_config.vocab_size}-piece tokenizer "
            f"(tokenizer.model in the manifest, then 'elm-corpus build MANIFEST')")


def build_model_config(cfg: TrainConfig) -> tuple[OpenELMConfig, dict[str, Tensor] | None]:
    """The model's config and, with --init-from, the weights to start from."""
    if cfg.init_from:
        from model.hf_folder import HFFolderError, load_hf_folder
        try:
            config, model = load_hf_folder(cfg.init_from)
        except (HFFolderError, OSError) as e:
            raise TrainError(f"--init-from: {e}") from None
        if cfg.vocab_size and cfg.vocab_size != config.vocab_size:
            raise ConfigError(f"--vocab-size {cfg.vocab_size} conflicts with --init-from {cfg.init_from} "
                              f"(vocabulary {config.vocab_size})")
        return config, model.state_dict()
    try:
        config = get_preset(cfg.model)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if cfg.vocab_size:
        config = dataclasses.replace(config, vocab_size=cfg.vocab_size)
    return config, None


def check_init_tokenizer(cfg: TrainConfig, data: TrainingData) -> None:
    """A starting checkpoint that ships its tokenizer must share the corpus's."""
    if not cfg.init_from:
        return
    beside = Path(cfg.init_from) / "tokenizer.model"
    if beside.is_file():
        import hashlib
        sha = hashlib.sha256(beside.read_bytes()).hexdigest()
        if sha != data.tokenizer["sha256"]:
            raise TrainError(f"{beside} (sha256 {sha[:12]}) is not the tokenizer {data.where()} uses (sha256 "
                             f"{data.tokenizer['sha256'][:12]}); rebuild the corpus with it")


class MicroBatches:
    """(inputs, targets) micro-batches of this rank, read in this process.

    No DataLoader workers: the sampler then counts what was taken, and its state after the
    last micro-batch of a step is exactly where a resumed run must start.
    """

    def __init__(self, sampler, device: torch.device):
        self._batches = sampler.batches()
        self.device = device

    def next(self) -> tuple[Tensor, Tensor]:
        batch = next(self._batches)
        return batch["input_ids"].to(self.device, non_blocking=True), batch["labels"].to(self.device, non_blocking=True)


# ---------------------------------------------------------------- model wrapping and state

def wrap_model(model: OpenELM, cfg: TrainConfig, cluster: Cluster) -> nn.Module:
    """FSDP (per decoder layer, then the root) or DDP across ranks; torch.compile on request."""
    if cfg.fsdp and cluster.distributed:
        from torch.distributed.fsdp import fully_shard
        for layer in model.transformer.layers:
            fully_shard(layer)
        fully_shard(model)
        wrapped: nn.Module = model
    elif cluster.distributed:
        from torch.nn.parallel import DistributedDataParallel
        wrapped = DistributedDataParallel(model, device_ids=[cluster.device.index] if cluster.device.type == "cuda"
                                          else None)
    else:
        wrapped = model
    if cfg.compile:
        wrapped = torch.compile(wrapped)
    return wrapped


def full_state(model: OpenELM, optimizer: torch.optim.Optimizer, cfg: TrainConfig, cluster: Cluster):
    """Model and optimizer state with every tensor whole on rank 0 (gathered when sharded)."""
    if cfg.fsdp and cluster.distributed:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
        return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return model.state_dict(), optimizer.state_dict()


def load_full_state(model: OpenELM, optimizer: torch.optim.Optimizer, model_state: dict, optim_state: dict,
                    cfg: TrainConfig, cluster: Cluster) -> None:
    if cfg.fsdp and cluster.distributed:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict
        set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state,
                       options=StateDictOptions(full_state_dict=True))
        return
    model.load_state_dict(model_state, strict=True)
    optimizer.load_state_dict(optim_state)


# ---------------------------------------------------------------- run folder

def default_run_dir(cfg: TrainConfig) -> Path:
    data_name = Path(cfg.corpus).name if cfg.corpus else ("stream" if cfg.stream else "corpus")
    return Path("runs") / f"{cfg.model}-{data_name}"


def write_run_json(run_dir: Path, run: dict) -> None:
    from corpus.store.files import atomic_write_json
    atomic_write_json(run_dir / RUN_JSON, run)


def prepare_run(cfg_yaml: dict, flags: dict, resume: bool, cluster: Cluster) -> tuple[TrainConfig, Path, Path | None]:
    """Resolve the config (a resumed run starts from its saved one), check it, find the checkpoint to resume."""
    preview = resolve_config(cfg_yaml, flags, cluster.world_size)
    run_dir = Path(preview.out) if preview.out else default_run_dir(preview)
    saved_path = run_dir / CONFIG_YAML
    if resume and not saved_path.exists():
        # The same command can then start a job and restart it after preemption.
        if cluster.is_main:
            print(f"elm-train: nothing to resume in {run_dir}; starting a new run", file=sys.stderr)
        resume = False
    if not resume:
        existing = ckpt.latest_checkpoint(run_dir)
        if existing is not None:
            raise TrainError(f"{run_dir} already holds a run (checkpoint {existing.name}); pass --resume to continue "
                             f"it, or choose another --out")
        preview.out = str(run_dir)
        return preview, run_dir, None
    saved = yaml.safe_load(saved_path.read_text()) or {}
    cfg = resolve_config(cfg_yaml, flags, cluster.world_size, base=saved)
    changed = [k for k in RESUME_INVARIANTS if saved.get(k) != getattr(cfg, k)]
    if changed:
        raise TrainError(f"--resume: {', '.join(f'{k} ({saved.get(k)!r} -> {getattr(cfg, k)!r})' for k in changed)} "
                         f"differ from the run in {run_dir}; a resumed run must read the same data with the same model")
    cfg.out = str(run_dir)
    return cfg, run_dir, ckpt.latest_checkpoint(run_dir)


# ---------------------------------------------------------------- training

@dataclass
class TrainResult:
    run_dir: Path
    steps_done: int
    train_loss: float | None
    val_loss: float | None
    tokens_seen: int
    tokens_per_s: float


def forward_backward(model: nn.Module, micro: list[tuple[Tensor, Tensor]], cfg: TrainConfig, cluster: Cluster,
                     amp: torch.dtype | None) -> tuple[float, float, int]:
    """Accumulate the gradient of one global batch; return its mean cross entropy, mean lse^2, target count.

    Every micro-batch's summed loss is divided by the target count of the whole global batch
    (all ranks), so any split into micro-batches and ranks gives the same gradient.
    """
    local_tokens = sum(int((targets != IGNORE_INDEX).sum()) for _, targets in micro)
    global_tokens = max(cluster.sum([float(local_tokens)])[0], 1.0)
    scale = cluster.world_size / global_tokens  # DDP and FSDP average gradients over ranks
    ce_sum = z_sum = torch.zeros((), dtype=torch.float64, device=cluster.device)
    for i, (inputs, targets) in enumerate(micro):
        sync = i == len(micro) - 1 or not hasattr(model, "no_sync")  # DDP reduces gradients on the last only
        with contextlib.nullcontext() if sync else model.no_sync():
            with torch.autocast(cluster.device.type, dtype=amp, enabled=amp is not None):
                logits = model(inputs)
            sums = language_model_loss(logits, targets, cfg.z_loss, IGNORE_INDEX)
            (sums.total * scale).backward()
        ce_sum, z_sum = ce_sum + sums.ce, z_sum + sums.z
    ce_sum, z_sum = cluster.sum([float(ce_sum), float(z_sum)])
    return ce_sum / global_tokens, z_sum / global_tokens, int(global_tokens)


def evaluate(model: nn.Module, batches: list[tuple[Tensor, Tensor]], cfg: TrainConfig, cluster: Cluster,
             amp: torch.dtype | None) -> tuple[float, int]:
    """Mean cross entropy over the held-out batches of every rank."""
    model.eval()
    ce, tokens = 0.0, 0
    with torch.no_grad():
        for inputs, targets in batches:
            with torch.autocast(cluster.device.type, dtype=amp, enabled=amp is not None):
                sums = language_model_loss(model(inputs), targets, 0.0, IGNORE_INDEX)
            ce += float(sums.ce)
            tokens += sums.tokens
    model.train()
    ce, tokens = cluster.sum([ce, float(tokens)])
    return (ce / tokens if tokens else float("nan")), int(tokens)


def train(cfg: TrainConfig, run_dir: Path, resume_from: Path | None, cluster: Cluster) -> TrainResult:
    data = resolve_stream(cfg) if cfg.stream else resolve_corpus(cfg.corpus)
    model_config, init_weights = build_model_config(cfg)
    check_vocabulary(data, model_config, f"--init-from {cfg.init_from}" if cfg.init_from
                     else f"preset {cfg.model}" + (f" with --vocab-size {cfg.vocab_size}" if cfg.vocab_size else ""))
    check_init_tokenizer(cfg, data)
    if cfg.sequence_length > model_config.rope_max_length:
        raise ConfigError(f"sequence_length {cfg.sequence_length} exceeds the model's rope_max_length "
                          f"{model_config.rope_max_length}")
    tokenizer = data.tokenizer
    run_path = run_dir / RUN_JSON
    previous_run = json.loads(run_path.read_text()) if resume_from is not None and run_path.exists() else {}
    if previous_run and previous_run.get("tokenizer", {}).get("sha256") not in (None, tokenizer["sha256"]):
        raise TrainError(f"--resume: {run_dir} was trained with tokenizer sha256 {previous_run['tokenizer']['sha256'][:12]}, "
                         f"but {data.where()} now holds tokens of {tokenizer['sha256'][:12]}; the corpus was rebuilt "
                         f"with another tokenizer")

    torch.manual_seed(cfg.seed)
    model = OpenELM(model_config, gradient_checkpointing=cfg.activation_checkpointing)
    if init_weights is not None:
        model.load_state_dict(init_weights, strict=True)
    model.to(cluster.device)
    train_model = wrap_model(model, cfg, cluster)
    optimizer = build_optimizer(model, cfg)  # after wrapping: fully_shard swaps parameters for sharded ones
    amp = autocast_dtype(cfg, cluster.device)

    sampler = data.sampler(cfg, "train", cluster)
    step, tokens_seen, last_val = 0, 0, None
    if resume_from is not None:
        model_state, trainer_state, state = ckpt.load_checkpoint(resume_from)
        load_full_state(model, optimizer, model_state, trainer_state["optimizer"], cfg, cluster)
        # The sampler's state is the global stream position, the same on every rank and for any world size.
        sampler.load_state_dict(trainer_state["sampler"])
        rngs = trainer_state["rng"]
        ckpt.restore_rng_state(rngs[cluster.rank] if cluster.rank < len(rngs) else rngs[0])
        step, tokens_seen, last_val = int(state["step"]), int(state["tokens_seen"]), state.get("val_loss")
    batches = MicroBatches(sampler, cluster.device)

    metrics = MetricsLog(run_dir / METRICS_FILE, enabled=cluster.is_main)
    if cluster.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpt.remove_stale_temporaries(run_dir)
        metrics.truncate_after(step)
        cfg.save_yaml(run_dir / CONFIG_YAML)
    run = {
        # With --init-from the folder decides the shapes: name the preset only if they are one.
        "preset": cfg.model if not cfg.init_from else next(
            (name for name, preset in PRESETS.items() if preset == model_config), None),
        "init_from": cfg.init_from,
        "corpus": {"name": data.name, "dir": str(data.folder.resolve()) if data.folder is not None else None,
                   "fingerprint": data.fingerprint},
        "tokenizer": {"spec": tokenizer.get("spec"), "sha256": tokenizer["sha256"],
                      "vocab_size": int(tokenizer["vocab_size"])},
        "model_config": model_config.to_hf_config(),
        "parameters": model_config.num_parameters(),
        "world_size": cluster.world_size, "device": str(cluster.device),
        "dtype": str(amp).replace("torch.", "") if amp else "float32",
        "torch_version": torch.__version__,
        "steps_planned": cfg.steps, "steps_done": step, "tokens_seen": tokens_seen,
        "final_train_loss": previous_run.get("final_train_loss"), "final_val_loss": previous_run.get("final_val_loss"),
        "started_at": previous_run.get("started_at", _now()), "ended_at": None, "status": "running",
        "resumed_from": previous_run.get("resumed_from", []) + ([resume_from.name] if resume_from else []),
    }
    if cluster.is_main:
        write_run_json(run_dir, run)

    val_batches: list[tuple[Tensor, Tensor]] | None = None

    def run_validation(at_step: int) -> float | None:
        nonlocal val_batches
        if val_batches is None:  # the same held-out batches every time, read once
            val_batches = []
            if data.folder is None:
                progress.note("no validation while streaming: the live held-out split is too sparse to gather")
                return None
            val_stream = MicroBatches(data.sampler(cfg, "val", cluster), cluster.device)
            # Ranks share the held-out batches (rounded up to a multiple of the world size, so every rank runs
            # the same number of forwards): any world size evaluates the same sequences.
            per_rank = -(-cfg.eval_batches // cluster.world_size)
            try:
                val_batches = [val_stream.next() for _ in range(per_rank)]
            except (StopIteration, ValueError) as e:
                progress.note(f"no validation: the held-out split gives no batch ({e})")
        if not val_batches:
            return None
        val_loss, val_tokens = evaluate(train_model, val_batches, cfg, cluster, amp)
        metrics.write({"kind": "val", "step": at_step, "val_loss": val_loss, "tokens": val_tokens})
        progress.note(f"step {at_step}: val_loss {val_loss:.4f}")
        return val_loss

    def save(at_step: int, train_loss: float | None) -> None:
        model_state, optim_state = full_state(model, optimizer, cfg, cluster)
        sampler_state = sampler.state_dict()
        rngs = cluster.gather(ckpt.capture_rng_state())
        if cluster.is_main:
            trainer_state = {"optimizer": optim_state, "scheduler": {"step": at_step, "warmup_steps": cfg.warmup_steps,
                                                                     "max_lr": cfg.max_lr, "steps": cfg.steps},
                             "sampler": sampler_state, "rng": rngs, "world_size": cluster.world_size}
            ckpt.save_checkpoint(run_dir, at_step, model_state, model_config.to_hf_config(), trainer_state,
                                 {"tokens_seen": tokens_seen, "train_loss": train_loss, "val_loss": last_val,
                                  "saved_at": _now()}, cfg.keep_checkpoints)
            run.update(steps_done=at_step, tokens_seen=tokens_seen, final_train_loss=train_loss,
                       final_val_loss=last_val)
            write_run_json(run_dir, run)
        if cluster.distributed:
            dist.barrier()

    progress = ProgressBar(cfg.steps, step, cfg.log_every, enabled=cfg.progress and cluster.is_main)
    params = [p for p in model.parameters() if p.requires_grad]
    train_loss = previous_run.get("final_train_loss")
    started = time.perf_counter()
    start_step, start_tokens = step, tokens_seen
    try:
        while step < cfg.steps:
            step_started = time.perf_counter()
            lr = learning_rate(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr

            micro = [batches.next() for _ in range(cfg.gradient_accumulation)]
            loss, z_loss, global_tokens = forward_backward(train_model, micro, cfg, cluster, amp)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
            if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                last_good = ckpt.latest_checkpoint(run_dir)
                what = (f"the loss is {loss}" if not math.isfinite(loss)
                        else f"the gradient norm is {grad_norm} (loss {loss:.4f})")
                raise NonFiniteLoss(
                    f"step {step + 1}: {what} at lr {lr:.3g}; training stopped before applying this update. "
                    f"The last good checkpoint is {last_good if last_good else 'none (none was written yet)'}; "
                    f"lower --max-lr or lengthen --warmup-steps, then rerun with --resume")
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens_seen += global_tokens
            train_loss = loss

            step_time = time.perf_counter() - step_started
            tokens_per_s = global_tokens / step_time if step_time > 0 else 0.0
            metrics.write({"kind": "train", "step": step, "loss": loss, "z_loss": z_loss,
                           "lr": lr, "grad_norm": grad_norm, "tokens": tokens_seen, "tokens_per_s": tokens_per_s,
                           "elapsed_s": time.perf_counter() - started})
            progress.update(step, loss, tokens_per_s, lr)
            if step % cfg.log_every == 0 or step == cfg.steps:
                metrics.write({"kind": "mixture", "step": step, "sources": _plain(sampler.shares())})
            if step % cfg.eval_every == 0 or step == cfg.steps:
                last_val = run_validation(step)
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                save(step, train_loss)
    except (NonFiniteLoss, KeyboardInterrupt) as stop:
        if cluster.is_main:
            status = "stopped: non-finite loss" if isinstance(stop, NonFiniteLoss) else "interrupted"
            run.update(status=status, ended_at=_now())
            write_run_json(run_dir, run)
        raise
    finally:
        progress.close()
        metrics.close()

    elapsed = time.perf_counter() - started
    steps_run = step - start_step
    mean_rate = (tokens_seen - start_tokens) / elapsed if elapsed > 0 and steps_run else 0.0
    if cluster.is_main:
        run.update(status="complete", ended_at=_now(), steps_done=step, tokens_seen=tokens_seen,
                   final_train_loss=train_loss, final_val_loss=last_val)
        write_run_json(run_dir, run)
        plot_run(run_dir)
        _print_summary(run_dir, sampler, train_loss, last_val, mean_rate)
    return TrainResult(run_dir, step, train_loss, last_val, tokens_seen, mean_rate)


def _plain(value: Any) -> Any:
    """Sampler share tables as JSON-ready data."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):
        return value.item()
    return value


def _print_summary(run_dir: Path, sampler, train_loss, val_loss, rate: float) -> None:
    val = f"{val_loss:.4f}" if val_loss is not None else "n/a"
    speed = f"{rate:,.0f} tokens/s" if rate else "nothing left to train"
    print(f"done: {run_dir}  train loss {train_loss:.4f}  val loss {val}  {speed}; curves in {run_dir / CURVES_FILE}")
    shares = _plain(sampler.shares())
    if shares:
        print(f"  {'source':<28}{'target':>8}{'achieved':>10}")
        for name, row in shares.items():
            if row["target"] == 0 and row["achieved"] == 0:
                continue
            print(f"  {name:<28}{row['target'] * 100:>7.2f}%{row['achieved'] * 100:>9.2f}%")


# ---------------------------------------------------------------- command line

FLAG_HELP = {
    "corpus": "corpus name under <data root>/corpora (e.g. openelm-sample) or a corpus folder",
    "model": "preset: tiny, small, openelm-270m, openelm-450m, openelm-1.1b, openelm-3b",
    "init_from": "start from the weights of a Hugging Face-format folder (e.g. a run's checkpoints/step_N)",
    "vocab_size": "override the preset's vocabulary (must equal the corpus tokenizer's)",
    "out": "run folder (default runs/<model>-<corpus>)",
    "seed": "seeds the initial weights and the sampler's order",
    "steps": "optimizer steps in the whole run",
    "sequence_length": "tokens per training sequence",
    "global_batch_tokens": "tokens per optimizer step over all ranks (a multiple of micro batch x length x ranks)",
    "micro_batch_size": "sequences per forward pass on one rank; the rest is gradient accumulation",
    "max_lr": "peak learning rate (CoreNet: 5.3e-3 270M, 3.9e-3 450M, 2.4e-3 1.1B, 1.2e-3 3B)",
    "min_lr_ratio": "final LR as a fraction of the peak, reached by cosine decay",
    "warmup_init_lr": "LR of the first warmup step",
    "warmup_steps": "linear warmup length (default 5000, at most a tenth of the run)",
    "beta1": "AdamW beta1", "beta2": "AdamW beta2", "eps": "AdamW epsilon",
    "weight_decay": "AdamW weight decay for matrices (norms get none)",
    "grad_clip": "clip the global gradient norm to this",
    "z_loss": "coefficient of mean logsumexp(logits)^2 added to the loss",
    "device": "auto, cpu, cuda, cuda:N or mps",
    "dtype": "auto (bf16 autocast on CUDA, else fp32), bf16 or fp32",
    "compile": "torch.compile the model",
    "activation_checkpointing": "recompute each decoder layer in backward (less memory)",
    "fsdp": "shard parameters, gradients and optimizer state (FSDP2) under torchrun",
    "threads": "torch CPU threads per process (default torch's; 1 is best on a busy machine)",
    "flush_denormal": "CPU: treat subnormal floats as zero (they slow x86 math)",
    "sampler_mode": "pack (every token trained) or corenet (one truncated, padded chunk per sequence)",
    "stream": "tokenize the manifest's sources live on Ray instead of reading a built corpus",
    "manifest": "the manifest --stream reads (default manifests/openelm.yaml)",
    "stream_sample": "--stream the offline sample mirror instead of the upstream files",
    "stream_workers": "Ray workers for --stream",
    "log_every": "steps between progress lines and mixture records",
    "eval_every": "steps between validation-loss evaluations",
    "eval_batches": "held-out micro-batches per evaluation, over all ranks",
    "checkpoint_every": "steps between checkpoints (one is always written at the end)",
    "keep_checkpoints": "how many of the newest checkpoints to keep",
    "progress": "show a progress bar (or progress lines when not on a terminal)",
}

_FLAG_TYPES = {"corpus": str, "init_from": str, "vocab_size": int, "out": str, "warmup_steps": int, "threads": int,
               "manifest": str}


def _parse_weights(text: str) -> dict[str, float]:
    """`source=0.5,other=0.5` or a JSON object."""
    text = text.strip()
    if text.startswith("{"):
        return {str(k): float(v) for k, v in json.loads(text).items()}
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"--weights expects source=weight pairs, got {part!r}")
        out[name.strip()] = float(value)
    return out


def _describe_default(name: str, default: Any) -> str:
    if default is None:
        return ""
    per_preset = any(name in values for values in PRESET_DEFAULTS.values())
    return f" (default: {default}, or the preset's)" if per_preset else f" (default: {default})"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="elm-train", description=(
        "Train OpenELM on a built corpus with CoreNet's recipe. Every setting below can also be given in a YAML "
        "run config (--config); flags win. `elm-train plot RUN_DIR` draws a run's curves."))
    p.add_argument("--config", metavar="YAML", help="run config: a mapping of the settings below (underscored names)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        if f.name == "gradient_accumulation":
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        help_text = FLAG_HELP.get(f.name, f.name) + _describe_default(f.name, default)
        if isinstance(default, bool):
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif f.name == "weights":
            p.add_argument(flag, dest=f.name, type=_parse_weights, default=None,
                           help="mixture weights, source=w,... or JSON (default: the manifest's)")
        else:
            kind = _FLAG_TYPES.get(f.name, type(default))
            p.add_argument(flag, dest=f.name, type=kind, default=None, help=help_text)
    return p


def cli_train(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    flags = {k: v for k, v in vars(args).items() if k in FIELD_NAMES and v is not None}
    cluster = cfg = None
    try:
        yaml_values = load_yaml_config(args.config) if args.config else {}
        base = resolve_config(yaml_values, flags)  # device and threads are needed before the rest
        cluster = start_cluster(base)
        cfg, run_dir, resume_from = prepare_run(yaml_values, flags, args.resume, cluster)
        with process_settings(cfg):
            train(cfg, run_dir, resume_from, cluster)
        return 0
    except NonFiniteLoss as e:
        print(f"elm-train: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        where = f" in {cfg.out}" if cfg is not None else ""
        print(f"elm-train: interrupted; rerun the same command with --resume to continue from the last "
              f"checkpoint{where}", file=sys.stderr)
        return 130
    except (TrainError, ConfigError) as e:
        print(f"elm-train: {e}", file=sys.stderr)
        return 2
    finally:
        if cluster is not None and cluster.distributed and dist.is_initialized():
            dist.destroy_process_group()


def cli_plot(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="elm-train plot", description="Draw a run's loss and LR curves to PNG.")
    p.add_argument("run_dir")
    p.add_argument("--out", default=None, help=f"PNG path (default RUN_DIR/{CURVES_FILE})")
    args = p.parse_args(argv)
    try:
        out = plot_run(args.run_dir, args.out)
    except FileNotFoundError as e:
        print(f"elm-train plot: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0
