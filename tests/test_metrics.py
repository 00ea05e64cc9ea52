"""Metrics against scipy and hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from cortexcl.metrics import (
    nc_normalized_score,
    noise_ceiling,
    paired_wilcoxon,
    pearson_r,
    percent_improved,
    summarize_r,
    zscore_columns,
)


def test_pearson_r_matches_scipy_per_column():
    rng = np.random.default_rng(0)
    y = rng.standard_normal((50, 7)).astype(np.float32)
    p = (0.5 * y + rng.standard_normal((50, 7))).astype(np.float32)
    p[:, 3] = -y[:, 3] * 2 + 1  # perfect negative correlation
    r = pearson_r(y, p)
    assert r.dtype == np.float64 and r.shape == (7,)
    expected = [stats.pearsonr(y[:, j].astype(np.float64), p[:, j]).statistic for j in range(7)]
    np.testing.assert_allclose(r, expected, atol=1e-12)
    assert r[3] == pytest.approx(-1.0)
    assert pearson_r(y[:, 0], p[:, 0]) == pytest.approx(expected[0], abs=1e-12)


def test_pearson_r_float64_accumulation_on_large_offsets():
    rng = np.random.default_rng(1)
    y = rng.standard_normal((1000, 2))
    p = y + 0.1 * rng.standard_normal((1000, 2))
    shifted = (p + 1e4).astype(np.float32)  # a float32 sum of squares would lose this
    expected = [stats.pearsonr(y[:, j], shifted[:, j].astype(np.float64)).statistic
                for j in range(2)]
    np.testing.assert_allclose(pearson_r(y.astype(np.float32), shifted), expected, atol=1e-7)


def test_pearson_r_constant_columns_are_zero():
    y = np.array([[1.0, 2.0, 0.1], [2.0, 2.0, 0.1], [3.0, 2.0, 0.1]])
    p = np.array([[5.0, 1.0, 1.0], [5.0, 2.0, 2.0], [5.0, 3.0, 3.0]])
    np.testing.assert_array_equal(pearson_r(y, p), [0.0, 0.0, 0.0])


def test_pearson_r_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shapes differ"):
        pearson_r(np.zeros((4, 2)), np.zeros((4, 3)))


def test_noise_ceiling_formula_by_hand():
    # A = 2 images with 3 repeats, B = 1 with 2, C = 1 with 1:
    # (A/3 + B/2 + C) / (A + B + C) = (2/3 + 1/2 + 1) / 4 = 13/24
    repeats = np.array([3, 3, 2, 1])
    ncsnr = np.array([0.0, 1.0, 2.0])
    expected = ncsnr**2 / (ncsnr**2 + 13 / 24)
    np.testing.assert_allclose(noise_ceiling(ncsnr, repeats), expected, rtol=1e-12)
    # all images with 3 repeats, ncsnr 1: 1 / (1 + 1/3) = 0.75
    assert noise_ceiling([1.0], [3, 3, 3])[0] == pytest.approx(0.75)
    nc = noise_ceiling(np.linspace(0, 10, 11), [1, 2, 3])
    assert np.all((nc >= 0) & (nc <= 1))


@pytest.mark.parametrize("repeats", [[], [0, 1], [3, -1]])
def test_noise_ceiling_rejects_bad_repeats(repeats):
    with pytest.raises(ValueError, match="n_repeats"):
        noise_ceiling([1.0], repeats)


def test_nc_normalized_score_caps_negatives_and_zero_ceilings():
    r = np.array([0.5, -0.3, 0.9, 0.5, 0.2, -0.1, 0.0])
    nc = np.array([0.5, 0.5, 0.5, 0.0, 0.04, 0.0, 0.0])
    score = nc_normalized_score(r, nc)
    # A zero ceiling scores 100 for r > 0, else 0 (the challenge's ncsnr = 1e-14 rule).
    np.testing.assert_allclose(score, [50.0, 0.0, 100.0, 100.0, 100.0, 0.0, 0.0])


def test_percent_improved_is_strict():
    a = np.array([0.2, 0.5, 0.1, 0.3])
    b = np.array([0.1, 0.5, 0.2, 0.3])
    assert percent_improved(a, b) == 25.0  # ties do not count
    assert percent_improved(b, a) == 25.0
    assert percent_improved(a, a) == 0.0
    with pytest.raises(ValueError):
        percent_improved(a, b[:3])


def test_paired_wilcoxon_matches_scipy():
    rng = np.random.default_rng(2)
    a = rng.standard_normal(60)
    b = a + 0.5 + 0.5 * rng.standard_normal(60)
    assert paired_wilcoxon(a, b) == pytest.approx(stats.wilcoxon(a, b).pvalue, rel=1e-12)
    assert paired_wilcoxon(a, b) < 0.05
    assert paired_wilcoxon(a, a) == 1.0


def test_summarize_r():
    assert summarize_r([0.1, 0.2, 0.6]) == pytest.approx({"mean": 0.3, "median": 0.2})


def test_zscore_columns_matches_scipy_and_zeroes_constant_columns():
    values = np.random.default_rng(0).normal(3.0, 2.0, (40, 5))
    values[:, 2] = 7.0
    z = zscore_columns(values)
    varying = [0, 1, 3, 4]
    expected = stats.zscore(values[:, varying], axis=0)  # population sd, as NSD and NOD use
    np.testing.assert_allclose(z[:, varying], expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(z[:, 2], 0.0)
