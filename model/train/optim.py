"""The optimizer and its schedule: CoreNet's AdamW with decay on matrices only, linear warmup then cosine decay."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from model.train.config import TrainConfig


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """LR for optimizer update `step` (0-based): linear warmup from `warmup_init_lr`, then cosine to min."""
    max_lr, min_lr = cfg.max_lr, cfg.max_lr * cfg.min_lr_ratio
    warmup = int(cfg.warmup_steps or 0)
    if step < warmup:
        return cfg.warmup_init_lr + (max_lr - cfg.warmup_init_lr) * step / warmup
    decay_steps = max(1, cfg.steps - warmup)
    progress = min(1.0, (step - warmup) / decay_steps)
    return min_lr + 0.5 * (max_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay every matrix (embedding included, as CoreNet); never a 1-D parameter (the norms)."""
    decay, no_decay = [], []
    for _, param in model.named_parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    return [dict(params=decay, weight_decay=weight_decay), dict(params=no_decay, weight_decay=0.0)]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(parameter_groups(model, cfg.weight_decay), lr=cfg.warmup_init_lr,
                             betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
