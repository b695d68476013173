"""Noise floor of QiD: paired standard error and the exclusion policy."""

import numpy as np
import pytest

from qscale.errors import QscaleError
from qscale.evaluate.noise import NoisePolicy, paired_se, summarize_noise


def test_paired_se_is_se_of_differences():
    rng = np.random.default_rng(0)
    fp = rng.normal(3.0, 0.5, size=100)  # large per-window spread ...
    q = fp + 0.1 + rng.normal(0, 0.01, size=100)  # ... but a tight paired difference
    d = q - fp
    assert paired_se(fp, q) == pytest.approx(d.std(ddof=1) / 10)
    assert paired_se(fp, q) < 0.002 < fp.std() / 10


def test_paired_se_rejects_bad_input():
    with pytest.raises(QscaleError):
        paired_se(np.ones(3), np.ones(4))
    with pytest.raises(QscaleError):
        paired_se(np.ones(1), np.ones(1))


def test_policy_excludes_nonpositive_and_under_floor_and_counts_them():
    qid = np.array([0.5, 0.03, 0.0, -0.01, np.nan, 0.2])
    se = np.array([0.01, 0.02, 0.01, 0.01, 0.01, 0.01])
    policy = NoisePolicy(k=2.0)
    np.testing.assert_array_equal(policy.keep(qid, se), [True, False, False, False, False, True])
    s = summarize_noise(qid, se, np.array([2, 8, 8, 8, 8, 3]), policy)
    assert (s.n_points, s.n_excluded, s.n_nonpositive) == (6, 4, 2)
    assert s.median_qid_kept == pytest.approx(0.35)
    assert s.floor_ratio == pytest.approx(0.02 / 0.35)


def test_policy_rejects_negative_multiplier():
    with pytest.raises(QscaleError):
        NoisePolicy(k=-1)
