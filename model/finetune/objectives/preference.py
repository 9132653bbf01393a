"""Preference objectives against a reference model: DPO (sigmoid) and RSO (hinge), with their rewards.

Written here rather than taken from TRL: TRL's DPO loss lives inside its trainer's
`_compute_loss`, which runs a transformers model (its `labels`, `fused_lm_head` and
`log_probs` outputs) through accelerate; the project's model and trainer are neither. The
formulas are the published ones (Rafailov et al. 2023 for DPO; Liu et al. 2024, "Statistical
Rejection Sampling", for the hinge loss, as TRL's `loss_type="hinge"` and the alignment
handbook use it):

    z = beta * ((log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x)))
    DPO: -log sigmoid(z)        RSO: max(0, 1 - z)

A batch holds the chosen completions in its first half and the rejected ones in its second,
pair i in rows i and i + n; the reference log-probabilities come with the batch (computed once
with the starting model, `reference_logps`), so no second model is held while training.
With an adapter the reference is the base model the adapter starts from (its update is zero).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.finetune.objectives.objective import Objective, pairs
from model.train.data import IGNORE_INDEX
from model.train.loss import LossSums

LOSSES = ("sigmoid", "hinge")
REPORTED = ("reward_chosen", "reward_rejected", "reward_margin", "reward_accuracy", "logp_chosen", "logp_rejected")


def sequence_logps(logits: Tensor, targets: Tensor) -> Tensor:
    """Per row, the summed log-probability of its targets (those != IGNORE_INDEX), in float32."""
    valid = targets != IGNORE_INDEX
    logprobs = F.log_softmax(logits.float(), dim=-1)
    picked = logprobs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * valid).sum(dim=-1)


def trained_tokens(targets: Tensor) -> int:
    return int((targets != IGNORE_INDEX).sum())


def preference_losses(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor,
                      beta: float, loss: str) -> tuple[Tensor, Tensor, Tensor]:
    """(per-pair loss, chosen reward, rejected reward); rewards are beta x the log-ratio to the reference."""
    if loss not in LOSSES:
        raise ValueError(f"preference loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    chosen_reward = beta * (policy_chosen - ref_chosen)
    rejected_reward = beta * (policy_rejected - ref_rejected)
    z = chosen_reward - rejected_reward
    losses = -F.logsigmoid(z) if loss == "sigmoid" else torch.relu(1 - z)
    return losses, chosen_reward.detach(), rejected_reward.detach()


class PreferenceLoss:
    """The trainer's loss for DPO/RSO: `(logits, targets, ref_logps) -> LossSums` summed over pairs."""

    def __init__(self, beta: float, loss: str):
        if loss not in LOSSES:
            raise ValueError(f"preference loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        self.beta, self.loss = beta, loss

    def __call__(self, logits: Tensor, targets: Tensor, ref_logps: Tensor) -> LossSums:
        logps = sequence_logps(logits, targets)
        chosen, rejected = logps.chunk(2)
        ref_chosen, ref_rejected = ref_logps.to(logps).chunk(2)
        losses, r_chosen, r_rejected = preference_losses(chosen, rejected, ref_chosen, ref_rejected, self.beta,
                                                         self.loss)
        total = losses.sum()
        zero = torch.zeros((), device=total.device)
        extras = {"reward_chosen": r_chosen.sum(), "reward_rejected": r_rejected.sum(),
                  "reward_margin": (r_chosen - r_rejected).sum(),
                  "reward_accuracy": (r_chosen > r_rejected).float().sum(),
                  "logp_chosen": chosen.detach().sum(), "logp_rejected": rejected.detach().sum()}
        return LossSums(total=total, loss=total.detach(), z=zero, tokens=trained_tokens(targets), extras=extras)


@torch.no_grad()
def reference_logps(model: nn.Module, batches, autocast=None) -> Tensor:
    """The starting model's summed log-probability of every row of `batches` ((inputs, targets, ...) each), in order."""
    was_training = model.training
    model.eval()
    out = []
    for inputs, targets, *_ in batches:
        with autocast() if autocast is not None else torch.autocast("cpu", enabled=False):
            out.append(sequence_logps(model(inputs), targets).cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


DPO = Objective("dpo", "direct preference optimisation (sigmoid loss) against the starting model", records="preference",
                needs_reference=True, loss=lambda cfg: PreferenceLoss(cfg.beta, "sigmoid"), metrics=REPORTED,
                count=pairs)
RSO = Objective("rso", "statistical rejection sampling optimisation (hinge loss) against the starting model",
                records="preference", needs_reference=True, loss=lambda cfg: PreferenceLoss(cfg.beta, "hinge"),
                metrics=REPORTED, count=pairs)
