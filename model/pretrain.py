"""Pretraining assembled from a `TrainConfig`: the corpus or stream, the model (a preset or --init-from), a Trainer
(with the benchmark tasks of `--eval-tasks` from `model.eval`, which is why this job sits above it).

Everything that can refuse the run (a corpus that does not fit the model's vocabulary, a
starting folder with another tokenizer, a resumed run whose corpus was rebuilt) is checked
before the model is built. A fine-tuning run would assemble its own data and loss the same
way and hand them to the same `Trainer`.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from model.config import OpenELMConfig
from model.eval.harness import task_evaluator
from model.openelm import OpenELM
from model.presets import get_preset, preset_name
from model.train.config import ConfigError, TrainConfig, TrainError
from model.train.data import check_init_tokenizer, check_vocabulary, resolve_data
from model.train.distributed import Cluster
from model.train.run import read_run_json
from model.train.trainer import Trainer

if TYPE_CHECKING:
    from corpus.mixing.corpus_source import CorpusSource


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


def check_resumed_tokenizer(previous: dict, corpus: CorpusSource, run_dir: Path) -> None:
    """A resumed run must read tokens of the tokenizer it was trained with."""
    sha = corpus.tokenizer["sha256"]
    if previous and previous.get("tokenizer", {}).get("sha256") not in (None, sha):
        raise TrainError(f"--resume: {run_dir} was trained with tokenizer sha256 {previous['tokenizer']['sha256'][:12]}, "
                         f"but {corpus.where()} now holds tokens of {sha[:12]}; the corpus was rebuilt "
                         f"with another tokenizer")


def build_trainer(cfg: TrainConfig, run_dir: Path, resume_from: Path | None, cluster: Cluster) -> Trainer:
    """The pretraining run of `cfg` in `run_dir`, resumed from `resume_from` if given, ready to `train()`."""
    data = resolve_data(cfg)
    corpus = data.corpus
    model_config, init_weights = build_model_config(cfg)
    check_vocabulary(corpus, model_config, f"--init-from {cfg.init_from}" if cfg.init_from
                     else f"preset {cfg.model}" + (f" with --vocab-size {cfg.vocab_size}" if cfg.vocab_size else ""))
    check_init_tokenizer(cfg.init_from, corpus)
    if cfg.sequence_length > model_config.rope_max_length:
        raise ConfigError(f"sequence_length {cfg.sequence_length} exceeds the model's rope_max_length "
                          f"{model_config.rope_max_length}")
    previous = read_run_json(run_dir) if resume_from is not None else {}
    check_resumed_tokenizer(previous, corpus, run_dir)

    torch.manual_seed(cfg.seed)
    model = OpenELM(model_config, gradient_checkpointing=cfg.activation_checkpointing)
    if init_weights is not None:
        model.load_state_dict(init_weights, strict=True)
    trainer = Trainer(cfg, run_dir, cluster, model, data, task_eval=task_evaluator(cfg, data, cluster))
    tokenizer = corpus.tokenizer
    trainer.start(resume_from, previous=previous, facts={
        # With --init-from the folder decides the shapes: name the preset only if they are one.
        "preset": preset_name(model_config) if cfg.init_from else cfg.model,
        "init_from": cfg.init_from,
        "corpus": corpus.describe(),
        "tokenizer": {"spec": tokenizer.get("spec"), "sha256": tokenizer["sha256"],
                      "vocab_size": int(tokenizer["vocab_size"])},
        "model_config": model_config.to_hf_config(),
        "parameters": model_config.num_parameters(),
    })
    return trainer
