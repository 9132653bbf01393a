"""Autoregressive decoding for OpenELM with a KV cache: greedy, temperature, top-p, repetition penalty."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def apply_repetition_penalty(logits: Tensor, seen_ids: Tensor, penalty: float) -> Tensor:
    """Make tokens already in `seen_ids` less likely: positive logits divided by `penalty`, negative multiplied."""
    scores = logits.gather(-1, seen_ids)
    scores = torch.where(scores > 0, scores / penalty, scores * penalty)
    return logits.scatter(-1, seen_ids, scores)


def top_p_filter(logits: Tensor, top_p: float) -> Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches `top_p`; the rest get -inf."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.float().softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # the top token has 0 here, so one token always survives
    sorted_logits = sorted_logits.masked_fill(mass_before >= top_p, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, order, sorted_logits)


def sample_next(logits: Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> Tensor:
    """One token id per row of `logits` (batch, vocab): argmax at temperature 0, else a nucleus sample."""
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_p < 1.0:
        logits = top_p_filter(logits, top_p)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model, input_ids: Tensor, max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
             repetition_penalty: float = 1.0, eos_id: int | None = 2,
             generator: torch.Generator | None = None, stop: Callable[[Tensor], bool] | None = None) -> Tensor:
    """Extend every prompt row of `input_ids` (batch, length) by up to `max_new_tokens` tokens.

    Prompts in a batch share one length (no padding). A row that emits `eos_id` is finished:
    its later positions hold `eos_id`, and decoding stops once every row is finished.
    `stop(tokens)`, if given, is asked after every step and ends decoding when it says so
    (stop strings). Returns (batch, length + generated) token ids; `eos_id=None` never stops early.
    """
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must be a non-empty (batch, length) tensor, got shape {tuple(input_ids.shape)}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if repetition_penalty <= 0:
        raise ValueError(f"repetition_penalty must be > 0, got {repetition_penalty}")

    was_training = model.training
    model.eval()
    try:
        batch, length = input_ids.shape
        tokens = input_ids
        if max_new_tokens == 0:
            return tokens
        cache = model.make_cache(batch, length + max_new_tokens)
        finished = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
        logits = model(input_ids, cache=cache)[:, -1]
        for step in range(max_new_tokens):
            if repetition_penalty != 1.0:
                logits = apply_repetition_penalty(logits, tokens, repetition_penalty)
            next_ids = sample_next(logits, temperature, top_p, generator)
            if eos_id is not None:
                next_ids = next_ids.masked_fill(finished, eos_id)
                finished |= next_ids == eos_id
            tokens = torch.cat((tokens, next_ids[:, None]), dim=1)
            if (eos_id is not None and bool(finished.all())) or step == max_new_tokens - 1:
                break
            if stop is not None and stop(tokens):
                break
            logits = model(next_ids[:, None], cache=cache)[:, -1]
        return tokens
    finally:
        model.train(was_training)
