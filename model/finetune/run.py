"""A fine-tuning run assembled from a `FinetuneConfig`: the starting model, the examples, the loss, a `Trainer`.

Everything that can refuse the run (a model folder that is not one, a tokenizer that does not
fit it, data where most records fail) is checked before any training. The run folder is a
pretraining run's (config.yaml, run.json, metrics.jsonl, checkpoints/, curves.png) plus
`quarantine.jsonl` (the records that fit no format, with their place and reason) and, for an
objective with a reference (DPO, RSO), `reference_logps.pt` (the starting model's
log-probabilities of every pair, computed once, so a resumed run uses the very same reference).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from model.adapters.lora import AdapterCheckpoints, add_adapters
from model.eval.harness import task_evaluator
from model.finetune.batches import ExampleBatches, ShuffledBatches
from model.finetune.config import FinetuneConfig
from model.finetune.objectives.preference import reference_logps
from model.train.config import TrainError
from model.train.data import Batch
from model.train.distributed import Cluster, autocast_dtype
from model.train.run import read_run_json
from model.train.trainer import Trainer

QUARANTINE_FILE = "quarantine.jsonl"
REFERENCE_FILE = "reference_logps.pt"


@dataclass
class Examples:
    """One split's tokenized examples and what became of its records."""
    examples: list
    records: int        # records read
    quarantined: int    # records that fit no format, or kept no trained token
    truncated: int      # examples cut to the sequence length


def load_examples(spec: str, cfg: FinetuneConfig, tokenizer, quarantine_path: Path | None) -> Examples:
    """Read `spec`, keep what fits the objective's record kind, tokenize; the rest is quarantined (and written)."""
    from model.finetune.examples import tokenize_all
    from model.finetune.records import DataError, load
    try:
        parsed, quarantine = load(spec, cfg.objective.records)
        examples = tokenize_all(parsed, tokenizer, quarantine, cfg.sequence_length, cfg.max_prompt_length)
    except DataError as e:
        raise TrainError(str(e)) from None
    finally:
        if quarantine_path is not None and "quarantine" in locals() and len(quarantine):
            quarantine.write(quarantine_path)
    return Examples(examples, quarantine.seen, len(quarantine), sum(e.truncated for e in examples))


class FinetuneData:
    """The trainer's `DataSource` for fine-tuning: shuffled training examples and the held-out ones in order."""

    def __init__(self, train: ExampleBatches, val: ExampleBatches | None, tokenizer: dict):
        self.train, self.val, self.tokenizer = train, val, tokenizer

    def train_batches(self, cfg: FinetuneConfig, cluster: Cluster) -> ShuffledBatches:
        return ShuffledBatches(self.train, cfg.micro_batch_size, cfg.seed, cluster.rank, cluster.world_size,
                               cluster.device)

    def held_out(self, cfg: FinetuneConfig, cluster: Cluster) -> tuple[list[Batch], str | None]:
        if self.val is None:
            return [], "no validation: pass --val-data for a validation loss"
        # Kept by the trainer and evaluated again at every --eval-every, so gathered once.
        return list(self.val.in_order(cfg.micro_batch_size, cluster.device, cluster.rank, cluster.world_size)), None

    def close(self) -> None:
        pass  # the examples live in this process; nothing to let go


def attach_reference(model, splits: list[ExampleBatches], cfg: FinetuneConfig, cluster: Cluster,
                     path: Path) -> None:
    """Give preference examples the starting model's log-probabilities: read from `path`, or computed and saved."""
    saved = torch.load(path, map_location="cpu") if path.is_file() else None
    sizes = [len(s.examples) for s in splits]
    if saved is not None and [len(t) for t in saved] == sizes:
        for split, tensor in zip(splits, saved):
            split.reference = tensor
        return
    amp = autocast_dtype(cfg, cluster.device)
    autocast = functools.partial(torch.autocast, cluster.device.type, dtype=amp, enabled=amp is not None)
    model = model.to(cluster.device)
    for split in splits:
        rows = reference_logps(model, split.in_order(cfg.micro_batch_size, cluster.device), autocast)
        n, micro = len(split.examples), cfg.micro_batch_size
        # Each micro-batch of k pairs is its k chosen rows, then its k rejected rows.
        per_batch = rows.split([2 * min(micro, n - s) for s in range(0, n, micro)])
        chosen = torch.cat([b[:len(b) // 2] for b in per_batch])
        rejected = torch.cat([b[len(b) // 2:] for b in per_batch])
        split.reference = torch.stack([chosen, rejected], dim=1)
    if cluster.is_main:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save([s.reference for s in splits], path)


def build_finetune_trainer(cfg: FinetuneConfig, run_dir: Path, resume_from: Path | None, cluster: Cluster) -> Trainer:
    """The fine-tuning run of `cfg` in `run_dir`, resumed from `resume_from` if given, ready to `train()`."""
    from model.hf_folder import load_hf_folder
    from model.source import SourceError, resolve_source, resolve_tokenizer
    try:
        source = resolve_source(cfg.init_from, cfg.step)
        model_config, model = load_hf_folder(source.weights_dir)
        tokenizer = resolve_tokenizer(source, cfg.tokenizer)
    except (SourceError, OSError, ValueError) as e:
        raise TrainError(f"--init-from: {e}") from None
    if tokenizer.vocab_size != model_config.vocab_size:
        raise TrainError(f"{source.weights_dir}: the model has a vocabulary of {model_config.vocab_size} but the "
                         f"tokenizer {tokenizer.spec} has {tokenizer.vocab_size} pieces; pass --tokenizer")
    if cfg.sequence_length > model_config.rope_max_length:
        raise TrainError(f"--sequence-length {cfg.sequence_length} exceeds the model's rope_max_length "
                         f"{model_config.rope_max_length}")
    run_dir.mkdir(parents=True, exist_ok=True)
    train = load_examples(cfg.data, cfg, tokenizer, run_dir / QUARANTINE_FILE if cluster.is_main else None)
    val = load_examples(cfg.val_data, cfg, tokenizer, None) if cfg.val_data else None
    cfg.set_steps(len(train.examples), cluster.world_size)

    objective = cfg.objective
    splits = [ExampleBatches(train.examples, objective.records, tokenizer.eos_id)]
    if val is not None:
        splits.append(ExampleBatches(val.examples, objective.records, tokenizer.eos_id))
    if objective.needs_reference:  # before the adapters go in: the reference is the starting model
        attach_reference(model, splits, cfg, cluster, run_dir / REFERENCE_FILE)

    settings = cfg.adapter_settings()
    weights = None
    torch.manual_seed(cfg.seed)  # the adapters' initial A matrices, then adapter dropout, draw from it
    if settings is not None:
        model = add_adapters(model, settings)
        weights = AdapterCheckpoints(settings, str(source.weights_dir))
    tokenizer_facts = {"spec": tokenizer.spec, "sha256": tokenizer.sha256, "vocab_size": tokenizer.vocab_size}
    data = FinetuneData(splits[0], splits[1] if len(splits) > 1 else None, tokenizer_facts)
    trainer = Trainer(cfg, run_dir, cluster, model, data, loss_fn=objective.loss(cfg),
                      task_eval=task_evaluator(cfg, data, cluster), count_fn=objective.count, weights=weights)
    if train.quarantined:
        trainer.notes.append(f"{train.quarantined} of {train.records} training records quarantined (no format fits, "
                             f"or nothing is left to train), each with its place and reason: {run_dir / QUARANTINE_FILE}")
    if cfg.capped_sequence_length:
        trainer.notes.append(f"sequence length {cfg.sequence_length}: the model's context (max_context_length), not "
                             f"{cfg.capped_sequence_length}; --sequence-length sets it")
    previous = read_run_json(run_dir) if resume_from is not None else {}
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    trainer.start(resume_from, previous=previous, facts={
        "kind": "finetune", "method": cfg.method, "recipe": cfg.recipe, "init_from": str(cfg.init_from),
        "base_weights": str(source.weights_dir), "tokenizer": tokenizer_facts,
        "model_config": model_config.to_hf_config(), "parameters": model_config.num_parameters(),
        "trainable_parameters": trainable, "adapter": settings.describe() if settings else None,
        "data": {"train": cfg.data, "train_records": train.records, "train_examples": len(train.examples),
                 "quarantined": train.quarantined, "truncated": train.truncated,
                 "val": cfg.val_data, "val_examples": len(val.examples) if val else 0},
    })
    return trainer
