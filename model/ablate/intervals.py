"""The statistics of an ablation: how far seeds move a variant's score, and whether one variant beats another.

Two questions, two methods, both at 95%:

- A variant's score (`seed_spread`): over its seeds, the mean, the sample standard deviation (ddof=1) and a
  Student t interval, mean ± t(0.975, n-1) · std / √n. An ablation has a handful of seeds, where a normal
  quantile would give too narrow an interval; t is the small-sample interval for a mean, taking per-seed scores
  as roughly normal. One seed says nothing of the spread: std is 0 and there is no interval (`None`), rather
  than a zero-width one that would claim certainty.

- A difference between two variants on one task (`paired_difference`): A's mean per-item score minus B's, with a
  percentile bootstrap over items and seeds. Both variants are scored on the same items, so a resample draws one
  set of item indices (with replacement) for both, which keeps the items' own difficulty out of the difference;
  seeds are not paired across variants, so each variant's seeds are drawn on their own (with replacement). The
  statistic of a resample is the mean over its items of (A's mean over its drawn seeds minus B's). The generator
  is seeded from a fixed seed and a key naming the comparison, so the report is the same on every run and a
  variant added later leaves the intervals of the pairs already there unchanged.

Which way a metric improves is eval's `HIGHER_IS_BETTER` (model.eval.item_scores), read by the spec's
`aggregate` and by the report.
"""
from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.special import stdtrit  # Student t's quantile; scipy.stats costs a second to import

from model.eval.item_scores import HIGHER_IS_BETTER

CONFIDENCE = 0.95
RESAMPLES = 2000
BOOTSTRAP_SEED = 0
_BLOCK = 250  # resamples drawn at once: bounds the memory of a task with many items

# The per-item metrics an ablation compares, and which way each improves. A new metric is one line here.


@dataclass(frozen=True)
class Spread:
    """A score over seeds: mean, sample std, the t interval (None with one seed) and the per-seed values."""
    mean: float
    std: float
    ci_low: float | None
    ci_high: float | None
    values: tuple[float, ...]

    def as_dict(self) -> dict:
        return {**asdict(self), "values": list(self.values)}


@dataclass(frozen=True)
class Difference:
    """A's score minus B's on one task and metric, its bootstrap interval, and which variant the point estimate
    favours (None on a tie). An interval that includes zero is no decision, whatever `better` says."""
    difference: float
    ci_low: float
    ci_high: float
    better: str | None
    includes_zero: bool

    def as_dict(self) -> dict:
        return asdict(self)


def seed_spread(values: Sequence[float], confidence: float = CONFIDENCE) -> Spread:
    """Mean, sample std and the Student t interval of per-seed values (see the module docstring)."""
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"a spread needs one value per seed, got {x.shape}")
    mean = float(x.mean())
    if x.size == 1:
        return Spread(mean, 0.0, None, None, tuple(x.tolist()))
    std = float(x.std(ddof=1))
    half = float(stdtrit(x.size - 1, 0.5 + confidence / 2)) * std / math.sqrt(x.size)
    return Spread(mean, std, mean - half, mean + half, tuple(x.tolist()))


def better_of(metric: str, difference: float, a: str, b: str) -> str | None:
    """The variant a difference (a minus b) in `metric` favours; None on a tie."""
    if difference == 0:
        return None
    a_higher = difference > 0
    return a if a_higher == HIGHER_IS_BETTER[metric] else b


def paired_difference(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]], metric: str,
                      names: tuple[str, str] = ("a", "b"), key: str = "", resamples: int = RESAMPLES,
                      seed: int = BOOTSTRAP_SEED, confidence: float = CONFIDENCE) -> Difference:
    """A minus B in `metric` with a bootstrap interval over items and seeds (see the module docstring).

    `a` and `b`: per seed, the per-item values in doc order (seeds x items; the same items for both). `key` names
    the comparison (variants, task, metric) and seeds the generator with `seed`."""
    a_values, b_values = _seeds_by_items(a, "a"), _seeds_by_items(b, "b")
    if a_values.shape[1] != b_values.shape[1]:
        raise ValueError(f"the variants were scored on different items: {a_values.shape[1]} against "
                         f"{b_values.shape[1]}; a paired comparison needs the same items in the same order")
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    draws = np.concatenate([_resampled_differences(a_values, b_values, rng, min(_BLOCK, resamples - done))
                            for done in range(0, resamples, _BLOCK)])
    tail = 100 * (1 - confidence) / 2
    low, high = (float(v) for v in np.percentile(draws, [tail, 100 - tail]))
    difference = float(a_values.mean() - b_values.mean())
    return Difference(difference, low, high, better_of(metric, difference, *names), low <= 0 <= high)


def _seeds_by_items(values: Sequence[Sequence[float]], name: str) -> np.ndarray:
    if len({len(row) for row in values}) > 1:
        raise ValueError(f"{name}: its seeds were scored on different numbers of items")
    x = np.asarray(values, dtype=float)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name}: expected per-item values for each seed (seeds x items), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: per-item values must be finite numbers")
    return x


def _resampled_differences(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, count: int) -> np.ndarray:
    """`count` bootstrap statistics: seeds drawn per variant, one draw of items shared by both."""
    def per_item_means(x: np.ndarray) -> np.ndarray:  # (count, items): each resample's mean over its drawn seeds
        seeds = x.shape[0]
        drawn = rng.integers(0, seeds, size=(count, seeds))
        times = (drawn[:, :, None] == np.arange(seeds)).sum(axis=1)  # how often each seed was drawn
        return times @ x / seeds

    per_item = per_item_means(a) - per_item_means(b)
    items = rng.integers(0, per_item.shape[1], size=per_item.shape)
    return np.take_along_axis(per_item, items, axis=1).mean(axis=1)
