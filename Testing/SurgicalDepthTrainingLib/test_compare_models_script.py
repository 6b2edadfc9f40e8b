"""``Testing/benchmarks/compare_models.py``: the paired comparison that decides whether a candidate model's small
change on a held-out set is a regression or noise (issue #15's no-regression condition)."""
from __future__ import annotations

import numpy as np
from benchmark_scripts import load_script


def test_paired_interval_resamples_pairs_and_matches_the_normal_approximation():
    """Bugs caught: the two models' units resampled independently (unpaired: a clip-to-clip spread 30× the
    difference would hide a consistent 0.01 regression), the sign the wrong way round, the interval's tails at
    another level. Reference: for 400 units the percentile interval is mean ± 1.96 s / √n to a few per cent."""
    paired_interval = load_script("compare_models").paired_interval
    rng = np.random.default_rng(1)
    first = rng.uniform(0.05, 0.6, 400)  # units differ a lot from each other...
    other = first + 0.01 + rng.normal(0, 0.02, 400)  # ...the candidate is consistently 0.01 worse
    mean, low, high = paired_interval(first, other)
    diff = other - first
    half = 1.96 * diff.std(ddof=1) / np.sqrt(len(diff))
    assert mean == diff.mean() and 0 < low < mean < high
    assert abs(low - (mean - half)) < 0.05 * half and abs(high - (mean + half)) < 0.05 * half
    assert paired_interval(other, first)[0] == -mean
    constant = paired_interval(np.array([0.1, 0.3, 0.2]), np.array([0.12, 0.32, 0.22]))
    assert np.allclose(constant, 0.02)
