"""The ablation's statistics, checked against cases worked by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest

from model.ablate.intervals import better_of, paired_difference, seed_spread

# Student t's 97.5th percentile in closed form: 2 degrees of freedom, (2p - 1) / sqrt(2p(1 - p)) at p = 0.975
# (tables: 4.303); 1 degree of freedom (Cauchy), tan(pi (p - 1/2)) (tables: 12.706).
T_975_DF2 = 4.302652729749464
T_975_DF1 = 12.706204736174696


def test_three_seeds_give_the_student_t_interval():
    spread = seed_spread([1.0, 2.0, 3.0])
    # mean 2; sample std sqrt(((1-2)^2 + 0 + (3-2)^2) / 2) = 1; half width t * 1 / sqrt(3)
    half = T_975_DF2 / math.sqrt(3)
    assert spread.mean == 2.0 and spread.std == pytest.approx(1.0, abs=1e-15)
    assert (spread.ci_low, spread.ci_high) == (pytest.approx(2 - half, abs=1e-12), pytest.approx(2 + half, abs=1e-12))
    assert spread.ci_low == pytest.approx(-0.48414, abs=1e-5)
    assert spread.values == (1.0, 2.0, 3.0)


def test_two_seeds_give_the_wide_interval_of_one_degree_of_freedom():
    spread = seed_spread([1.0, 3.0])  # std sqrt(2), standard error sqrt(2)/sqrt(2) = 1
    assert (spread.ci_low, spread.ci_high) == (pytest.approx(2 - T_975_DF1), pytest.approx(2 + T_975_DF1))


def test_one_seed_has_no_spread_and_no_interval():
    spread = seed_spread([0.25])
    assert (spread.mean, spread.std, spread.ci_low, spread.ci_high) == (0.25, 0.0, None, None)
    assert spread.as_dict() == {"mean": 0.25, "std": 0.0, "ci_low": None, "ci_high": None, "values": [0.25]}


def test_a_constant_difference_on_every_item_has_a_zero_width_interval():
    items = np.linspace(0.0, 1.0, 50)  # items differ, but b is a shifted by exactly 0.5 on each one, every seed
    a = [items + 0.5, items + 0.5]
    b = [items, items, items]
    d = paired_difference(a, b, "acc", names=("a", "b"), resamples=500)
    assert d.difference == pytest.approx(0.5, abs=1e-12)
    assert (d.ci_low, d.ci_high) == (pytest.approx(0.5, abs=1e-12), pytest.approx(0.5, abs=1e-12))
    assert (d.better, d.includes_zero) == ("a", False)


def test_identical_variants_of_one_seed_differ_by_exactly_zero_and_decide_nothing():
    scores = [[0.0, 1.0, 1.0, 0.0, 1.0]]
    d = paired_difference(scores, scores, "acc")
    assert (d.difference, d.ci_low, d.ci_high, d.better, d.includes_zero) == (0.0, 0.0, 0.0, None, True)


def test_seeds_alone_spread_the_interval_over_their_means():
    # a's two seeds score 0 and 1 on every item, b scores 0: a resample's mean of a is 0, 0.5 or 1 (chances 1/4,
    # 1/2, 1/4), so the 2.5th and 97.5th percentiles are exactly 0 and 1.
    a = [np.zeros(20), np.ones(20)]
    b = [np.zeros(20)]
    d = paired_difference(a, b, "acc")
    assert (d.difference, d.ci_low, d.ci_high, d.includes_zero) == (0.5, 0.0, 1.0, True)


def test_a_clear_winner_has_an_interval_away_from_zero():
    rng = np.random.default_rng(7)
    strong = [(rng.random(300) < 0.8).astype(float) for _ in range(3)]
    weak = [(rng.random(300) < 0.3).astype(float) for _ in range(3)]
    d = paired_difference(strong, weak, "acc_norm", names=("strong", "weak"))
    assert 0.4 < d.difference < 0.6 and 0 < d.ci_low < d.difference < d.ci_high
    assert (d.better, d.includes_zero) == ("strong", False)


def test_variants_drawn_alike_straddle_zero():
    rng = np.random.default_rng(11)
    a = [rng.normal(1.2, 0.3, 200) for _ in range(2)]
    b = [rng.normal(1.2, 0.3, 200) for _ in range(2)]
    d = paired_difference(a, b, "bpb")
    assert d.ci_low < 0 < d.ci_high and d.includes_zero


def test_bits_per_byte_is_better_lower():
    a, b = [[0.9, 1.1, 1.0]], [[1.4, 1.6, 1.5]]
    d = paired_difference(a, b, "bpb", names=("a", "b"))
    assert d.difference == pytest.approx(-0.5) and d.better == "a" and not d.includes_zero
    assert better_of("acc", -0.5, "a", "b") == "b"
    assert better_of("bpb", 0.0, "a", "b") is None


def test_the_bootstrap_is_the_same_on_every_run_and_its_key_seeds_it():
    rng = np.random.default_rng(3)
    a, b = [rng.random(40) for _ in range(2)], [rng.random(40) for _ in range(2)]
    first = paired_difference(a, b, "acc", key="x|y|piqa|acc")
    assert paired_difference(a, b, "acc", key="x|y|piqa|acc") == first
    assert paired_difference(a, b, "acc", key="x|y|arc_easy|acc").ci_low != first.ci_low


def test_variants_scored_on_different_items_cannot_be_paired():
    with pytest.raises(ValueError, match="different items: 3 against 2"):
        paired_difference([[1.0, 0.0, 1.0]], [[1.0, 0.0]], "acc")
