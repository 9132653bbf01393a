"""The language-model loss: cross entropy plus PaLM's z-loss, summed over the targets that are not padding.

Sums, not means: the trainer divides by the target count of the whole global batch (every
micro-batch, every rank), so any split of a batch gives the same gradient. A loss function
for the `Trainer` takes (logits, targets) and returns `LossSums`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from model.train.data import IGNORE_INDEX


@dataclass
class LossSums:
    """Per-batch sums; divide by the token count of the whole global batch, across ranks."""
    total: Tensor   # what the gradient is taken of: cross entropy + z_loss coefficient x lse^2 (has grad)
    loss: Tensor    # the reported loss summed (no grad): cross entropy for language modelling, an objective's own
    z: Tensor       # lse^2 summed (no grad)
    tokens: int     # valid target tokens
    extras: dict[str, Tensor] = field(default_factory=dict)  # other sums to report as means (no grad)


class _CrossEntropyAndLogZ(torch.autograd.Function):
    """Sums of cross entropy and of logsumexp^2 over valid rows, with a hand-written backward.

    The output layer dominates small models on the CPU; this keeps one float32 copy of the
    logits (their exponentials, reused as the softmax in backward) instead of the several
    full-size temporaries autograd's logsumexp/gather graph makes.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        dtype = torch.promote_types(logits.dtype, torch.float32)
        peak = logits.max(dim=-1, keepdim=True).values.to(dtype)
        exps = (logits - peak).exp_()  # float32 by type promotion: the one full-size buffer
        sums = exps.sum(dim=-1)
        lse = peak.squeeze(-1) + sums.log()
        target_logits = logits.gather(1, targets.unsqueeze(1)).squeeze(1).to(dtype)
        mask = valid.to(dtype)
        ce = ((lse - target_logits) * mask).sum()
        z = (lse.square() * mask).sum()
        ctx.save_for_backward(exps, sums, lse, targets, mask)
        ctx.logits_dtype = logits.dtype
        return ce, z

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_ce: Tensor, grad_z: Tensor):
        exps, sums, lse, targets, mask = ctx.saved_tensors
        # d ce_i / d logits = softmax_i - onehot_i ;  d lse_i^2 / d logits = 2 lse_i softmax_i
        row = (grad_ce + 2.0 * grad_z * lse) * mask / sums
        # exps is not needed again: reuse it (a second backward through this graph then fails loudly).
        grad = exps.mul_(row.unsqueeze(1))
        grad.scatter_add_(1, targets.unsqueeze(1), (-grad_ce * mask).unsqueeze(1))
        return grad.to(ctx.logits_dtype), None, None


def language_model_loss(logits: Tensor, targets: Tensor, z_loss: float,
                        ignore_index: int = IGNORE_INDEX) -> LossSums:
    """Cross entropy plus PaLM's z-loss (z_loss x logsumexp(logits)^2) over targets != ignore_index, in float32."""
    logits = logits.reshape(-1, logits.shape[-1])
    targets = targets.reshape(-1)
    valid = targets != ignore_index
    ce, z = _CrossEntropyAndLogZ.apply(logits, targets.clamp(min=0), valid)
    total = ce + z_loss * z if z_loss else ce
    return LossSums(total=total, loss=ce.detach(), z=z.detach(), tokens=int(valid.sum()))
