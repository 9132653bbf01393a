"""Supervised fine-tuning: the language-model loss (cross entropy plus z-loss) on the trained tokens only."""
from __future__ import annotations

import functools

from model.finetune.objectives.objective import Objective
from model.train.loss import language_model_loss

SFT = Objective("sft", "supervised fine-tuning: cross entropy on the completions (assistant turns)", records="sft",
                needs_reference=False, loss=lambda cfg: functools.partial(language_model_loss, z_loss=cfg.z_loss))
