"""Paired tests with the test image or the subject as the unit, and multiple-comparison
corrections, against direct NumPy loops, scipy and statsmodels."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from cortexcl import statistics
from cortexcl.errors import InputError
from cortexcl.evaluation.single_subject import group_summary
from cortexcl.metrics import paired_wilcoxon, pearson_r
from cortexcl.statistics import (
    adjust_families,
    benjamini_hochberg,
    compare_predictions,
    derive_seed,
    holm,
    image_bootstrap,
    image_permutation_test,
    subject_tests,
)


def standardized(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(axis=0)) / x.std(axis=0)


def data(n: int, n_vertices: int, seed: int, gain: float = 0.0):
    """Responses and two models' predictions; model A is better by ``gain``."""
    rng = np.random.default_rng(seed)
    y = rng.normal(size=(n, n_vertices))
    a = y * (1.0 + gain) + rng.normal(size=(n, n_vertices))
    b = y + rng.normal(size=(n, n_vertices))
    return y, a, b


def direct_delta(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(pearson_r(y, a) - pearson_r(y, b)))


def swapped_deltas(y: np.ndarray, a: np.ndarray, b: np.ndarray, masks) -> np.ndarray:
    """Δ for every swap mask, by swapping rows of the standardised predictions in a loop."""
    za, zb = standardized(a), standardized(b)
    out = []
    for mask in masks:
        swap = np.asarray(mask, dtype=bool)[:, None]
        out.append(direct_delta(y, np.where(swap, zb, za), np.where(swap, za, zb)))
    return np.array(out)


def test_exact_permutation_p_enumerates_every_swap():
    y, a, b = data(9, 5, seed=1, gain=0.5)
    result = image_permutation_test(y, a, b, n_permutations=1000)
    assert result.exact and result.null_distribution.size == 2**9
    masks = list(itertools.product([0, 1], repeat=9))
    null = swapped_deltas(y, a, b, masks)
    observed = direct_delta(y, a, b)
    assert result.statistic == pytest.approx(observed, abs=1e-12)
    np.testing.assert_allclose(np.sort(result.null_distribution), np.sort(null), atol=1e-12)
    assert result.pvalue == pytest.approx(np.mean(np.abs(null) >= abs(observed) - 1e-12))
    assert 0 < result.pvalue < 1


def test_exact_permutation_p_equals_scipy():
    y, a, b = data(8, 4, seed=2, gain=0.3)
    stack = np.vstack([standardized(a), standardized(b)])

    def statistic(rows_a: np.ndarray, rows_b: np.ndarray) -> float:
        return direct_delta(y, stack[rows_a], stack[rows_b])

    expected = stats.permutation_test((np.arange(8), np.arange(8, 16)), statistic,
                                      permutation_type="samples", n_resamples=np.inf)
    result = image_permutation_test(y, a, b, n_permutations=256)
    assert result.exact
    assert result.pvalue == pytest.approx(expected.pvalue, rel=1e-12)
    assert result.statistic == pytest.approx(expected.statistic, abs=1e-12)


def test_random_permutation_p_equals_a_loop_over_the_same_swaps():
    y, a, b = data(24, 7, seed=3, gain=0.2)
    result = image_permutation_test(y, a, b, n_permutations=300, seed=11)
    masks = np.random.default_rng(11).integers(0, 2, size=(300, 24), dtype=np.int8)
    null = swapped_deltas(y, a, b, masks)
    assert not result.exact
    np.testing.assert_allclose(result.null_distribution, null, atol=1e-12)
    extreme = np.sum(np.abs(null) >= abs(direct_delta(y, a, b)) - 1e-12)
    assert result.pvalue == pytest.approx((1 + extreme) / 301)
    again = image_permutation_test(y, a, b, n_permutations=300, seed=11)
    assert again.pvalue == result.pvalue
    other = image_permutation_test(y, a, b, n_permutations=300, seed=12)
    assert not np.array_equal(other.null_distribution, result.null_distribution)


def test_bootstrap_equals_a_loop_over_the_same_resamples():
    y, a, b = data(15, 4, seed=4, gain=0.4)
    result = image_bootstrap(y, a, b, n_bootstrap=200, confidence=0.9, seed=5)
    indices = np.random.default_rng(5).integers(0, 15, size=(200, 15))
    expected = np.array([direct_delta(y[rows], a[rows], b[rows]) for rows in indices])
    np.testing.assert_allclose(result.distribution, expected, atol=1e-10)
    low, high = np.quantile(expected, [0.05, 0.95])
    assert (result.low, result.high) == pytest.approx((low, high), abs=1e-10)


def test_blocks_of_vertices_and_resamples_change_nothing(monkeypatch):
    y, a, b = data(20, 9, seed=12, gain=0.3)
    whole = (image_permutation_test(y, a, b, n_permutations=70, seed=2),
             image_bootstrap(y, a, b, n_bootstrap=70, seed=2))
    monkeypatch.setattr(statistics, "_BLOCK_ENTRIES", 200)  # 1-3 vertices, few resamples
    blocked = (image_permutation_test(y, a, b, n_permutations=70, seed=2),
               image_bootstrap(y, a, b, n_bootstrap=70, seed=2))
    np.testing.assert_allclose(blocked[0].null_distribution, whole[0].null_distribution,
                               atol=1e-12)
    assert blocked[0].pvalue == whole[0].pvalue
    np.testing.assert_allclose(blocked[1].distribution, whole[1].distribution, atol=1e-12)


def test_constant_columns_score_zero_as_pearson_r_does():
    y, a, b = data(10, 3, seed=6)
    y[:, 0] = 2.0  # a constant response column
    a[:, 1] = -1.0  # a constant prediction column
    result = image_permutation_test(y, a, b, n_permutations=2000)
    assert result.statistic == pytest.approx(direct_delta(y, a, b), abs=1e-12)
    interval = image_bootstrap(y, a, b, n_bootstrap=50, seed=1)
    indices = np.random.default_rng(1).integers(0, 10, size=(50, 10))
    expected = [direct_delta(y[rows], a[rows], b[rows]) for rows in indices]
    np.testing.assert_allclose(interval.distribution, expected, atol=1e-10)


def test_identical_models_give_p_one_and_no_difference():
    y, a, _ = data(40, 6, seed=7)
    result = compare_predictions(y, a, a.copy(), seed=0, n_permutations=500, n_bootstrap=200)
    assert result.p == 1.0
    assert result.delta_r == 0.0 and result.ci_low == 0.0 and result.ci_high == 0.0
    assert result.pct_improved == 0.0 and result.n_images == 40


def test_strong_effect_gives_small_p_and_an_interval_above_zero():
    y, a, b = data(60, 20, seed=8, gain=1.0)
    result = compare_predictions(y, a, b, seed=1, n_permutations=999, n_bootstrap=500)
    assert result.delta_r == pytest.approx(direct_delta(y, a, b), abs=1e-12)
    assert result.p == pytest.approx(1 / 1000)
    assert 0 < result.ci_low < result.delta_r < result.ci_high
    assert result.pct_improved == 100.0 * np.mean(pearson_r(y, a) > pearson_r(y, b))
    # The direction flips with the models; the p-value does not.
    reverse = compare_predictions(y, b, a, seed=1, n_permutations=999, n_bootstrap=500)
    assert reverse.delta_r == pytest.approx(-result.delta_r)
    assert reverse.p == result.p


def test_image_test_holds_its_level_where_the_vertex_test_does_not():
    """Null data whose prediction errors are shared by all vertices of an image: the
    Wilcoxon test over vertices rejects far too often, the image permutation test does not."""
    rng = np.random.default_rng(9)
    n, n_vertices, n_sims = 30, 25, 200
    loading = rng.normal(1.0, 0.3, n_vertices)
    image_test, vertex_test = [], []
    for sim in range(n_sims):
        y = rng.normal(size=(n, n_vertices))
        a, b = (y + np.outer(rng.normal(size=n), loading)
                + 0.5 * rng.normal(size=(n, n_vertices)) for _ in range(2))
        image_test.append(image_permutation_test(y, a, b, n_permutations=200,
                                                 seed=sim).pvalue < 0.05)
        vertex_test.append(paired_wilcoxon(pearson_r(y, a), pearson_r(y, b)) < 0.05)
    assert np.mean(image_test) <= 0.09  # 0.05 with these seeds
    assert np.mean(vertex_test) >= 0.25  # 0.4 with these seeds


def test_bad_input_is_one_line_errors():
    y, a, b = data(10, 3, seed=10)
    with pytest.raises(InputError, match="differ in shape"):
        image_permutation_test(y, a, b[:, :2])
    with pytest.raises(InputError, match="n_images >= 3"):
        image_permutation_test(y[:2], a[:2], b[:2])
    a[0, 0] = np.nan
    with pytest.raises(InputError, match="NaN or infinity"):
        image_bootstrap(y, a, b)
    with pytest.raises(InputError, match="n_permutations"):
        image_permutation_test(y, b, b, n_permutations=0)
    with pytest.raises(InputError, match="confidence"):
        image_bootstrap(y, b, b, confidence=1.0)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        holm([0.5, 1.2])
    with pytest.raises(InputError, match="NaN or infinity"):
        subject_tests([0.1, np.nan])


@pytest.mark.parametrize("seed", range(4))
def test_holm_and_bh_equal_statsmodels(seed):
    rng = np.random.default_rng(seed)
    p = rng.uniform(0, 0.2, 17) ** 2
    p[3] = p[5]  # a tie
    p[[2, 9]] = np.nan  # comparisons not made: not in the family
    tested = ~np.isnan(p)
    for ours, method in ((holm, "holm"), (benjamini_hochberg, "fdr_bh")):
        adjusted = ours(p)
        assert np.isnan(adjusted[~tested]).all()
        np.testing.assert_allclose(adjusted[tested], multipletests(p[tested], method=method)[1],
                                   rtol=1e-12)
    assert np.isnan(holm([np.nan])).all() and holm([]).size == 0


def test_holm_known_answer():
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    np.testing.assert_allclose(benjamini_hochberg([0.01, 0.04, 0.03]), [0.03, 0.04, 0.04])


def test_adjust_families_adjusts_within_each_group():
    table = pd.DataFrame({"method": ["cl", "cl", "cl", "rt", "rt"],
                          "p_vs_untuned": [0.01, 0.04, np.nan, 0.02, 0.5]})
    adjust_families(table, ["p_vs_untuned"], by=["method"])
    assert list(table.columns) == ["method", "p_vs_untuned", "p_holm_vs_untuned",
                                   "p_bh_vs_untuned"]
    np.testing.assert_allclose(table["p_holm_vs_untuned"], [0.02, 0.04, np.nan, 0.04, 0.5])
    np.testing.assert_allclose(table["p_bh_vs_untuned"], [0.02, 0.04, np.nan, 0.04, 0.5])


def test_subject_tests_known_answers():
    differences = np.array([0.3, 0.1, 0.2, 0.4, 0.25, -0.05])
    result = subject_tests(differences)
    signs = np.array(list(itertools.product([1, -1], repeat=6)))
    null = signs @ differences / 6
    assert result["p_signflip"] == pytest.approx(np.mean(np.abs(null) >= differences.mean()))
    assert result["p_signflip"] == pytest.approx(4 / 64)
    assert result["p_wilcoxon"] == pytest.approx(stats.wilcoxon(differences).pvalue)
    assert result["p_t"] == pytest.approx(stats.ttest_1samp(differences, 0.0).pvalue)
    assert result["min_p_exact"] == 2 / 64 and result["note"] == ""
    assert result["n_subjects"] == 6 and result["mean_difference"] == pytest.approx(0.2)


def test_subject_tests_say_why_they_cannot_decide():
    one = subject_tests([0.3])
    assert np.isnan([one["p_signflip"], one["p_wilcoxon"], one["p_t"]]).all()
    assert "needs 2 or more" in one["note"]
    four = subject_tests([0.3, 0.2, 0.4, 0.1])
    assert four["p_signflip"] == pytest.approx(0.125) and four["min_p_exact"] == 0.125
    assert "cannot give p < 0.05" in four["note"]
    zero = subject_tests([0.0, 0.0, 0.0])
    assert zero["p_signflip"] == zero["p_wilcoxon"] == zero["p_t"] == 1.0
    equal = subject_tests([0.2] * 6)
    assert np.isnan(equal["p_t"]) and "t test is undefined" in equal["note"]
    assert equal["p_signflip"] == pytest.approx(2 / 64)


def test_derive_seed_is_stable_and_distinct():
    assert derive_seed(0, "a/b") == derive_seed(0, "a/b")
    assert len({derive_seed(0, "a/b"), derive_seed(1, "a/b"), derive_seed(0, "a/c")}) == 3


def test_group_summary_tests_across_subjects_with_adjustments():
    rng = np.random.default_rng(13)
    rows = []
    for subject in [f"subj0{i}" for i in range(1, 7)]:
        for roi in ("V1v", "hV4", "FFA-1"):
            untuned = rng.uniform(0.1, 0.4)
            rows += [{"subject": subject, "hemisphere": "lh", "roi": roi, "method": "untuned",
                      "mean_r": untuned},
                     {"subject": subject, "hemisphere": "lh", "roi": roi, "method": "cl",
                      "mean_r": untuned + rng.normal(0.02, 0.02)}]
    table = pd.DataFrame(rows)
    groups = group_summary(table).set_index(["group", "method"])
    assert set(groups.index.get_level_values("group")) == {"early", "higher", "early+higher"}
    wide = table.pivot_table(index=["subject", "roi"], columns="method", values="mean_r")
    gain = (wide["cl"] - wide["untuned"]).unstack("roi")
    early = subject_tests(gain[["V1v", "hV4"]].mean(axis=1).to_numpy())
    row = groups.loc[("early", "cl")]
    assert row["p_unit"] == "subject" and row["n_subjects"] == 6
    for test in ("signflip", "wilcoxon", "t"):
        assert row[f"p_{test}_vs_untuned"] == pytest.approx(early[f"p_{test}"])
    assert row["min_p_exact"] == 2 / 64 and row["note"] == ""
    cl = groups.xs("cl", level="method")
    np.testing.assert_allclose(cl["p_t_holm_vs_untuned"], holm(cl["p_t_vs_untuned"]))
    np.testing.assert_allclose(cl["p_t_bh_vs_untuned"], benjamini_hochberg(cl["p_t_vs_untuned"]))
    assert np.isnan(groups.loc[("early", "untuned"), "p_t_vs_untuned"])
