"""ORPO: odds-ratio preference optimisation (Hong, Lee and Thorne 2024), which needs no reference model.

Per pair, with P(y|x) the completion's mean per-token probability (exp of its mean token
log-probability) and odds(y|x) = P / (1 - P):

    loss = NLL(y_w|x) + lambda * -log sigmoid(log odds(y_w|x) - log odds(y_l|x))

where NLL is the chosen completion's mean token negative log-likelihood (the SFT term), and
lambda (`--orpo-lambda`) weighs the odds-ratio term. The loss is a mean over pairs, as DPO's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from model.finetune.objectives.objective import Objective, pairs
from model.finetune.objectives.preference import sequence_logps, trained_tokens
from model.train.data import IGNORE_INDEX
from model.train.loss import LossSums

REPORTED = ("nll_chosen", "log_odds_ratio", "odds_ratio_loss", "odds_accuracy", "logp_chosen", "logp_rejected")


def log_odds(mean_logp: Tensor) -> Tensor:
    """log(P / (1 - P)) for P = exp(mean_logp) < 1; expm1 keeps 1 - P exact when P is small."""
    return mean_logp - torch.log(-torch.expm1(mean_logp))


def orpo_losses(chosen_mean_logp: Tensor, rejected_mean_logp: Tensor, lam: float) -> tuple[Tensor, Tensor, Tensor]:
    """(per-pair loss, the odds-ratio term, the log odds ratio) from each completion's mean token log-probability."""
    ratio = log_odds(chosen_mean_logp) - log_odds(rejected_mean_logp)
    odds_term = -F.logsigmoid(ratio)
    return -chosen_mean_logp + lam * odds_term, odds_term, ratio


class OddsRatioLoss:
    """The trainer's loss for ORPO: `(logits, targets) -> LossSums` summed over pairs (chosen rows, then rejected)."""

    def __init__(self, lam: float):
        if not lam >= 0:
            raise ValueError(f"the ORPO lambda must be >= 0, got {lam}")
        self.lam = lam

    def __call__(self, logits: Tensor, targets: Tensor) -> LossSums:
        # Rows with no trained token cannot occur: tokenizing quarantines a pair whose completion is cut away.
        mean = sequence_logps(logits, targets) / (targets != IGNORE_INDEX).sum(dim=-1).clamp(min=1)
        chosen, rejected = mean.chunk(2)
        losses, odds_term, ratio = orpo_losses(chosen, rejected, self.lam)
        total = losses.sum()
        extras = {"nll_chosen": -chosen.detach().sum(), "log_odds_ratio": ratio.detach().sum(),
                  "odds_ratio_loss": odds_term.detach().sum(), "odds_accuracy": (ratio > 0).float().sum(),
                  "logp_chosen": chosen.detach().sum(), "logp_rejected": rejected.detach().sum()}
        return LossSums(total=total, loss=total.detach(), z=torch.zeros((), device=total.device),
                        tokens=trained_tokens(targets), extras=extras)


ORPO = Objective("orpo", "odds-ratio preference optimisation: SFT on the chosen plus lambda x the odds-ratio loss, "
                 "no reference model", records="preference", needs_reference=False,
                 loss=lambda cfg: OddsRatioLoss(cfg.orpo_lambda), metrics=REPORTED, count=pairs)
