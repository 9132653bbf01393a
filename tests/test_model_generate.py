"""Decoding: KV-cache generation equals full recomputation; sampling filters; EOS stopping."""
from __future__ import annotations

import pytest
import torch

from model.generate import apply_repetition_penalty, top_p_filter
from model.openelm import OpenELM
from model.presets import get_preset


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return OpenELM(get_preset("tiny")).eval()


@pytest.fixture(scope="module")
def prompt():
    return torch.randint(0, 32000, (2, 6), generator=torch.Generator().manual_seed(7))


@torch.no_grad()
def greedy_by_recomputation(model, ids: torch.Tensor, steps: int) -> torch.Tensor:
    for _ in range(steps):
        ids = torch.cat((ids, model(ids)[:, -1].argmax(-1, keepdim=True)), dim=1)
    return ids


def test_cached_greedy_generation_equals_full_recomputation(tiny, prompt):
    cached = tiny.generate(prompt, max_new_tokens=12, eos_id=None)
    assert cached.shape == (2, 18)
    assert torch.equal(cached, greedy_by_recomputation(tiny, prompt, 12))


def test_generation_keeps_the_prompt_and_restores_training_mode(tiny, prompt):
    tiny.train()
    try:
        out = tiny.generate(prompt, max_new_tokens=3, eos_id=None)
        assert tiny.training
    finally:
        tiny.eval()
    assert torch.equal(out[:, :6], prompt)


def test_generation_stops_at_eos_and_pads_finished_rows(tiny, prompt):
    free = tiny.generate(prompt[:1], max_new_tokens=10, eos_id=None)
    eos = int(free[0, 6 + 3])  # pretend the 4th generated token is EOS
    first = (free[0, 6:] == eos).nonzero()[0].item()
    stopped = tiny.generate(prompt[:1], max_new_tokens=10, eos_id=eos)
    assert stopped.shape[1] == 6 + first + 1
    assert torch.equal(stopped, free[:, : 6 + first + 1])

    both = tiny.generate(prompt, max_new_tokens=10, eos_id=eos)
    row0 = both[0, 6:]
    assert (row0[first:] == eos).all()  # row 0 is done; it holds EOS while row 1 keeps going


def test_tiny_top_p_sampling_is_greedy(tiny, prompt):
    greedy = tiny.generate(prompt, max_new_tokens=8, eos_id=None)
    nucleus = tiny.generate(prompt, max_new_tokens=8, temperature=1.0, top_p=1e-6, eos_id=None,
                            generator=torch.Generator().manual_seed(0))
    assert torch.equal(greedy, nucleus)


def test_sampling_is_reproducible_with_a_seeded_generator_and_varies_without(tiny, prompt):
    def sample(seed: int) -> torch.Tensor:
        return tiny.generate(prompt, max_new_tokens=8, temperature=1.0, eos_id=None,
                             generator=torch.Generator().manual_seed(seed))
    assert torch.equal(sample(1), sample(1))
    assert not torch.equal(sample(1), sample(2))


def test_top_p_keeps_the_smallest_nucleus_reaching_p():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    kept = lambda p: torch.isfinite(top_p_filter(logits, p))[0].tolist()  # noqa: E731
    assert kept(0.7) == [True, True, False, False]
    assert kept(0.85) == [True, True, True, False]
    assert kept(0.1) == [True, False, False, False]
    shuffled = logits[:, [2, 0, 3, 1]]
    assert torch.isfinite(top_p_filter(shuffled, 0.7))[0].tolist() == [False, True, False, True]


def test_repetition_penalty_divides_positive_and_multiplies_negative_seen_logits():
    logits = torch.tensor([[2.0, -1.0, 3.0, 0.5]])
    seen = torch.tensor([[0, 1, 1]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -2.0, 3.0, 0.5]]


def test_repetition_penalty_changes_greedy_choices(tiny, prompt):
    plain = tiny.generate(prompt, max_new_tokens=16, eos_id=None)
    penalised = tiny.generate(prompt, max_new_tokens=16, repetition_penalty=100.0, eos_id=None)
    assert not torch.equal(plain, penalised)
    for row in penalised[:, 6:]:  # a heavy penalty forbids repeats among the generated tokens
        assert len(set(row.tolist())) == len(row)


@pytest.mark.parametrize("kwargs, message", [
    (dict(top_p=0.0), "top_p"), (dict(temperature=-1.0), "temperature"),
    (dict(repetition_penalty=0.0), "repetition_penalty"), (dict(max_new_tokens=-1), "max_new_tokens"),
])
def test_bad_decoding_arguments_are_named(tiny, prompt, kwargs, message):
    args = dict(max_new_tokens=2) | kwargs
    with pytest.raises(ValueError, match=message):
        tiny.generate(prompt, **args)
