"""The mixture schedule and the keyed permutation, on their own (no corpus needed)."""
from __future__ import annotations

import numpy as np
import pytest

from corpus.manifest import load_manifest
from corpus.mixing.schedule import TokenMixture
from corpus.mixing.permutation import KeyedPermutation

L = 2048


def _deal(mix: TokenMixture, steps: int, cost) -> list[int]:
    """Run the schedule ``steps`` times; after every step assert the one-sequence bound."""
    picks = []
    for _ in range(steps):
        s = mix.pick([cost(i, mix.items[i]) for i in range(len(mix.names))])
        mix.commit(s, cost(s, mix.items[s]))
        picks.append(s)
        total = mix.segment_total
        for i, w in enumerate(mix.weights):
            assert abs(mix.segment_tokens[i] - w * total) <= L, (mix.sequences, mix.names[i])
    return picks


def test_openelm_mix_stays_within_one_sequence_of_target_at_every_prefix():
    shares = load_manifest("manifests/openelm.yaml").target_shares()
    mix = TokenMixture(list(shares), list(shares.values()))
    picks = _deal(mix, 20_000, lambda s, k: L)
    # Even the smallest share (Dolma wiki, ~0.24%) is served, at its rate.
    smallest = min(range(len(shares)), key=lambda i: mix.weights[i])
    assert picks.count(smallest) == pytest.approx(20_000 * mix.weights[smallest], abs=1)


@pytest.mark.parametrize("seed", range(6))
def test_skewed_random_weights_stay_within_one_sequence(seed):
    # Many sources with Dirichlet(0.1) weights: the plain largest-deficit rule breaks the bound here.
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.full(int(rng.integers(8, 20)), 0.1))
    mix = TokenMixture([f"s{i}" for i in range(len(weights))], list(weights))
    _deal(mix, 3000, lambda s, k: L)


@pytest.mark.parametrize("seed", range(4))
def test_unequal_sequence_costs_stay_within_one_sequence_of_token_target(seed):
    # corenet mode: each sequence costs its own chunk's tokens (here 1..L).
    rng = np.random.default_rng(100 + seed)
    weights = rng.dirichlet(np.full(int(rng.integers(3, 14)), 0.5))
    lengths = rng.integers(1, L + 1, size=(len(weights), 4000))
    mix = TokenMixture([f"s{i}" for i in range(len(weights))], list(weights))
    _deal(mix, 3000, lambda s, k: int(lengths[s, k]))


def test_schedule_is_a_pure_function_of_its_counters():
    w = [5.0, 3.0, 1.0, 0.0]
    full = TokenMixture(list("abcd"), w)
    picks = _deal(full, 500, lambda s, k: L)
    resumed = TokenMixture(list("abcd"), w)
    first = _deal(resumed, 137, lambda s, k: L)
    resumed = TokenMixture.from_state(list("abcd"), resumed.state())
    assert first + _deal(resumed, 363, lambda s, k: L) == picks
    assert 3 not in picks  # weight 0 is never served


def test_reweighting_keeps_stream_positions_and_restarts_the_segment():
    mix = TokenMixture(["a", "b"], [1.0, 1.0])
    _deal(mix, 100, lambda s, k: L)
    items = list(mix.items)
    new = mix.reweighted([1.0, 3.0])
    assert new.items == items and new.segment_tokens == [0, 0] and new.segment_start == 100
    _deal(new, 100, lambda s, k: L)
    assert new.segment_tokens == [25 * L, 75 * L]
    assert new.tokens == [(items[0] + 25) * L, (items[1] + 75) * L]


def test_weights_must_be_non_negative_and_not_all_zero():
    with pytest.raises(ValueError, match="sum to zero"):
        TokenMixture(["a", "b"], [0.0, 0.0])
    with pytest.raises(ValueError, match=">= 0"):
        TokenMixture(["a", "b"], [1.0, -1.0])


@pytest.mark.parametrize("n", [1, 2, 3, 5, 64, 1000, 4097])
def test_keyed_permutation_is_a_bijection(n):
    values = KeyedPermutation(n, key=42)(np.arange(n))
    assert sorted(values.tolist()) == list(range(n))


def test_keyed_permutation_depends_on_its_key_and_nothing_else():
    a = KeyedPermutation(1000, key=1)(np.arange(1000))
    assert np.array_equal(a, KeyedPermutation(1000, key=1)(np.arange(1000)))
    assert not np.array_equal(a, KeyedPermutation(1000, key=2)(np.arange(1000)))
    assert not np.array_equal(a, np.arange(1000))
    # Any slice of positions gives the same values as the whole.
    assert np.array_equal(a[300:310], KeyedPermutation(1000, key=1)(np.arange(300, 310)))
