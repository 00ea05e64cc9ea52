"""Paired comparisons of encoding models with the right unit of replication (method §3.4).

Two units are used, and every p-value says which one it has:

* **test image** (``P_UNIT_IMAGE``), within one subject × hemisphere × ROI. Vertices share the
  test images and correlated noise, so they are not independent replicates; the images are.
  `image_permutation_test` exchanges the two models' predictions image by image, and
  `image_bootstrap` resamples images; both recompute every vertex's r and use the ROI's mean
  difference in r as the statistic. `compare_predictions` runs both.
* **subject** (``P_UNIT_SUBJECT``), across subjects: one number per subject (for instance a
  group's mean r, averaged within the subject first), tested by `subject_tests`.

The spread over tuning seeds (``P_UNIT_SEED``) describes how much a result depends on the
tuning run (head initialisation, batch order); its interval is not a test of the method.

`holm` and `benjamini_hochberg` adjust the p-values of one family of comparisons, and
`adjust_families` adds both next to the raw p-values of a table.

References: Good (2005), *Permutation, Parametric and Bootstrap Tests of Hypotheses*, §3 (paired
exchange of observations; the +1 correction of a Monte Carlo p-value is Phipson & Smyth 2010,
*Stat. Appl. Genet. Mol. Biol.* 9:39); Efron & Tibshirani (1993), *An Introduction to the
Bootstrap*, §13.3 (percentile interval); Holm (1979), *Scand. J. Statist.* 6:65-70; Benjamini &
Hochberg (1995), *J. R. Statist. Soc. B* 57:289-300.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats

from cortexcl.errors import InputError
from cortexcl.metrics import pearson_r, percent_improved

P_UNIT_IMAGE = "test image"
P_UNIT_SUBJECT = "subject"
P_UNIT_SEED = "tuning seed"
N_PERMUTATIONS = 10_000
N_BOOTSTRAP = 5_000
CONFIDENCE = 0.95
# Exact tests enumerate every sign pattern up to this many units (2^16 patterns).
MAX_EXACT_UNITS = 16
# Resampled statistics closer than this to the observed one count as ties (rounding).
_TIE = 1e-12
# Vertices and resamples are processed in blocks whose float64 arrays hold this many entries
# (32 MiB), so that memory stays bounded for whole-hemisphere ROIs.
_BLOCK_ENTRIES = 1 << 22
# A resampled column with a variance below this (data are standardised) is constant: r = 0.
_CONSTANT = 1e-12


@dataclass(frozen=True)
class PermutationResult:
    """Result of a paired permutation test.

    Attributes
    ----------
    statistic : float
        The observed statistic.
    pvalue : float
        Two-sided p-value.
    null_distribution : numpy.ndarray of shape (n_resamples,)
        The statistic under every exchange drawn (or every possible one when ``exact``).
    exact : bool
        Whether every possible exchange was enumerated (then ``pvalue`` is the fraction of them
        at least as extreme, the observed one included), or exchanges were drawn at random
        (then ``pvalue = (1 + #{|null| >= |statistic|}) / (1 + n_resamples)``).
    """

    statistic: float
    pvalue: float
    null_distribution: np.ndarray
    exact: bool


@dataclass(frozen=True)
class BootstrapResult:
    """Percentile bootstrap interval of a statistic.

    Attributes
    ----------
    low, high : float
        The interval's bounds: the (1 − confidence)/2 and (1 + confidence)/2 quantiles of
        ``distribution`` (``numpy.quantile``, linear interpolation).
    distribution : numpy.ndarray of shape (n_resamples,)
        The statistic on every resample.
    """

    low: float
    high: float
    distribution: np.ndarray


@dataclass(frozen=True)
class ImageComparison:
    """Model A vs model B on the same test images of one subject × hemisphere × ROI.

    Attributes
    ----------
    delta_r : float
        Mean over vertices of r_A − r_B (Pearson r over the test images).
    ci_low, ci_high : float
        Percentile bootstrap interval of ``delta_r`` over test images.
    p : float
        Two-sided p-value of the image-wise permutation test of ``delta_r``.
    pct_improved : float
        Percentage of vertices with r_A > r_B (descriptive; no test attached).
    n_images : int
        Test images compared.
    """

    delta_r: float
    ci_low: float
    ci_high: float
    p: float
    pct_improved: float
    n_images: int


def derive_seed(seed: int, key: str) -> int:
    """A reproducible seed for one named computation, derived from a base seed.

    ``SeedSequence([seed, *key.encode()])``: different keys give independent streams, and the
    same (seed, key) always gives the same seed.
    """
    return int(np.random.SeedSequence([seed, *key.encode()]).generate_state(1)[0])


def _standardized(values: np.ndarray) -> np.ndarray:
    """float64 copy centred and scaled to unit variance per column; constant columns → 0."""
    values = np.asarray(values, dtype=np.float64)
    centred = values - values.mean(axis=0)
    varies = np.ptp(values, axis=0) > 0
    scale = np.sqrt(np.mean(centred**2, axis=0))
    return np.where(varies, centred / np.where(varies, scale, 1.0), 0.0)


def _check_triplet(responses: ArrayLike, prediction_a: ArrayLike,
                   prediction_b: ArrayLike) -> list[np.ndarray]:
    arrays = [np.asarray(x) for x in (responses, prediction_a, prediction_b)]
    shapes = {x.shape for x in arrays}
    if len(shapes) != 1:
        raise InputError(f"paired comparison: responses and predictions differ in shape "
                         f"({', '.join(str(x.shape) for x in arrays)})")
    shape = arrays[0].shape
    if len(shape) != 2 or shape[0] < 3 or shape[1] < 1:
        raise InputError(f"paired comparison: need (n_images >= 3, n_vertices >= 1) arrays, "
                         f"got {shape}")
    if not all(np.isfinite(x).all() for x in arrays):
        raise InputError("paired comparison: responses or predictions hold NaN or infinity")
    return arrays


def _blocks(arrays: list[np.ndarray],
            n_products: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Standardised (responses, A, B) for consecutive blocks of vertices.

    A block is narrow enough that the ``n_products`` columns per vertex that the resamples
    multiply stay within `_BLOCK_ENTRIES`.
    """
    n_images, n_vertices = arrays[0].shape
    width = max(1, _BLOCK_ENTRIES // (n_products * n_images))
    for start in range(0, n_vertices, width):
        yield tuple(_standardized(x[:, start:start + width]) for x in arrays)


def _row_blocks(n_rows: int, n_columns: int) -> Iterator[slice]:
    """Blocks of resamples whose products with ``n_columns`` columns stay within bounds."""
    step = max(1, _BLOCK_ENTRIES // max(1, n_columns))
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


def _r_from_sums(s_yp: np.ndarray, s_p: np.ndarray, s_pp: np.ndarray, s_yy: np.ndarray,
                 n: int) -> np.ndarray:
    """Pearson r per column from sums over images, for responses with mean zero.

    ``r = Σyp / sqrt(Σy² · (Σp² − (Σp)²/n))``; r = 0 where either side is constant.
    """
    variance_p = s_pp - s_p**2 / n
    denominator = s_yy * variance_p
    ok = (s_yy > _CONSTANT * n) & (variance_p > _CONSTANT * n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ok, s_yp / np.sqrt(np.where(ok, denominator, 1.0)), 0.0)


def image_permutation_test(responses: ArrayLike, prediction_a: ArrayLike,
                           prediction_b: ArrayLike, *, n_permutations: int = N_PERMUTATIONS,
                           seed: int = 0) -> PermutationResult:
    """Paired permutation test of two models' predictions with the test image as the unit.

    Statistic: Δ = mean over vertices of (r_A − r_B), r the Pearson correlation over images
    between measured and predicted responses. Under H0 the two models are exchangeable image by
    image: for each image, the whole row of A's predictions (every vertex) may be swapped with
    B's. A swap pattern is a subset of images; each is applied to all vertices at once, so the
    correlation between vertices is kept. Before swapping, each model's predictions are
    standardised per vertex over the images (mean 0, variance 1), which leaves r_A, r_B and Δ
    unchanged but puts the two models on one scale, so that a swapped row does not mix
    offsets or scales.

    Computation: with swap masks S (n_resamples × n_images, 0/1), D = B − A and standardised
    responses y, the sums that r needs are single matrix products: Σ y·A' = Σ y·A + S (y ⊙ D),
    Σ A' = S D, Σ A'² = Σ A² + S (B² − A²), and likewise for B' (signs reversed).

    Parameters
    ----------
    responses : array_like of shape (n_images, n_vertices)
        Measured responses on the test images.
    prediction_a, prediction_b : array_like of shape (n_images, n_vertices)
        The two models' predictions of the same images, rows in the same order.
    n_permutations : int
        Random swap patterns, ``rng.integers(0, 2, (n_permutations, n_images), dtype=int8)``
        (each image swapped with probability 1/2). When
        ``2 ** n_images <= n_permutations``, every pattern is enumerated instead and the
        test is exact.
    seed : int
        Seed of ``numpy.random.default_rng``; the same seed gives the same p-value.

    Returns
    -------
    PermutationResult
        Δ, the two-sided p-value and the null distribution. Identical predictions give Δ = 0
        and p = 1.

    Raises
    ------
    InputError
        If the arrays differ in shape, have fewer than 3 images, or hold non-finite values, or
        ``n_permutations < 1``.
    """
    arrays = _check_triplet(responses, prediction_a, prediction_b)
    if n_permutations < 1:
        raise InputError(f"n_permutations must be at least 1, got {n_permutations}")
    n, n_vertices = arrays[0].shape
    exact = n <= MAX_EXACT_UNITS and 2**n <= n_permutations
    if exact:
        masks = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1).astype(np.int8)
    else:
        masks = np.random.default_rng(seed).integers(0, 2, size=(n_permutations, n),
                                                     dtype=np.int8)
    total = 0.0
    null = np.zeros(len(masks))
    for y, a, b in _blocks(arrays, 3):
        d = b - a
        s_yy = np.sum(y * y, axis=0)
        base_ya, base_yb = np.sum(y * a, axis=0), np.sum(y * b, axis=0)
        base_aa, base_bb = np.sum(a * a, axis=0), np.sum(b * b, axis=0)
        zero = np.zeros(y.shape[1])
        total += np.sum(_r_from_sums(base_ya, zero, base_aa, s_yy, n)
                        - _r_from_sums(base_yb, zero, base_bb, s_yy, n))
        columns = np.hstack([y * d, d, b * b - a * a])
        for rows in _row_blocks(len(masks), columns.shape[1]):
            sums = masks[rows].astype(np.float64) @ columns
            s_yd, s_d, s_dd = np.split(sums, 3, axis=1)
            r_a = _r_from_sums(base_ya + s_yd, s_d, base_aa + s_dd, s_yy, n)
            r_b = _r_from_sums(base_yb - s_yd, -s_d, base_bb - s_dd, s_yy, n)
            null[rows] += np.sum(r_a - r_b, axis=1)
    statistic = total / n_vertices
    null /= n_vertices
    extreme = int(np.sum(np.abs(null) >= abs(statistic) - _TIE))
    pvalue = extreme / len(null) if exact else (1 + extreme) / (1 + len(null))
    return PermutationResult(statistic, min(1.0, pvalue), null, exact)


def image_bootstrap(responses: ArrayLike, prediction_a: ArrayLike, prediction_b: ArrayLike,
                    *, n_bootstrap: int = N_BOOTSTRAP, confidence: float = CONFIDENCE,
                    seed: int = 0) -> BootstrapResult:
    """Percentile bootstrap interval of Δ = mean over vertices of (r_A − r_B), over test images.

    Each resample draws ``n_images`` images with replacement (the same images for both models
    and every vertex), recomputes every vertex's r for both models on them and takes Δ. A
    resample is applied as image counts c, so the weighted sums Σ c·y·p, Σ c·y, Σ c·p, Σ c·y²,
    Σ c·p² are single matrix products; a vertex that a resample leaves constant has r = 0 (as
    in `cortexcl.metrics.pearson_r`).

    Parameters
    ----------
    responses, prediction_a, prediction_b : array_like of shape (n_images, n_vertices)
        As in `image_permutation_test`.
    n_bootstrap : int
        Resamples; their image indices are ``rng.integers(0, n_images, (n_bootstrap,
        n_images))``.
    confidence : float
        Coverage of the interval, in (0, 1).
    seed : int
        Seed of ``numpy.random.default_rng``.

    Returns
    -------
    BootstrapResult

    Raises
    ------
    InputError
        On arrays as in `image_permutation_test`, ``n_bootstrap < 1`` or a confidence
        outside (0, 1).
    """
    arrays = _check_triplet(responses, prediction_a, prediction_b)
    if n_bootstrap < 1:
        raise InputError(f"n_bootstrap must be at least 1, got {n_bootstrap}")
    if not 0 < confidence < 1:
        raise InputError(f"confidence must be in (0, 1), got {confidence}")
    n, n_vertices = arrays[0].shape
    indices = np.random.default_rng(seed).integers(0, n, size=(n_bootstrap, n))
    distribution = np.zeros(n_bootstrap)
    for y, a, b in _blocks(arrays, 8):
        columns = np.hstack([y, a, b, y * y, a * a, b * b, y * a, y * b])
        for rows in _row_blocks(n_bootstrap, columns.shape[1]):
            block = indices[rows]
            size = len(block)
            counts = np.bincount((block + n * np.arange(size)[:, None]).ravel(),
                                 minlength=size * n).reshape(size, n).astype(np.float64)
            s_y, s_a, s_b, s_yy, s_aa, s_bb, s_ya, s_yb = np.split(counts @ columns, 8, axis=1)
            # Centre the responses of the resample: Σ(y − ȳ)p = Σyp − Σy Σp / n.
            s_yy_centred = s_yy - s_y**2 / n
            r_a = _r_from_sums(s_ya - s_y * s_a / n, s_a, s_aa, s_yy_centred, n)
            r_b = _r_from_sums(s_yb - s_y * s_b / n, s_b, s_bb, s_yy_centred, n)
            distribution[rows] += np.sum(r_a - r_b, axis=1)
    distribution /= n_vertices
    low, high = np.quantile(distribution, [(1 - confidence) / 2, (1 + confidence) / 2])
    return BootstrapResult(float(low), float(high), distribution)


def compare_predictions(responses: ArrayLike, prediction_a: ArrayLike, prediction_b: ArrayLike,
                        *, seed: int, n_permutations: int = N_PERMUTATIONS,
                        n_bootstrap: int = N_BOOTSTRAP,
                        confidence: float = CONFIDENCE) -> ImageComparison:
    """Model A vs model B on the same test images: Δr, its bootstrap CI and permutation p.

    The permutation test and the bootstrap draw from two streams derived from ``seed``
    (`derive_seed` with the keys ``"permutation"`` and ``"bootstrap"``). See
    `image_permutation_test` and `image_bootstrap` for the parameters.

    Returns
    -------
    ImageComparison
    """
    test = image_permutation_test(responses, prediction_a, prediction_b,
                                  n_permutations=n_permutations,
                                  seed=derive_seed(seed, "permutation"))
    interval = image_bootstrap(responses, prediction_a, prediction_b, n_bootstrap=n_bootstrap,
                               confidence=confidence, seed=derive_seed(seed, "bootstrap"))
    improved = percent_improved(pearson_r(responses, prediction_a),
                                pearson_r(responses, prediction_b))
    return ImageComparison(test.statistic, interval.low, interval.high, test.pvalue, improved,
                           int(np.shape(responses)[0]))


def _sign_flip_pvalue(differences: np.ndarray, n_permutations: int, seed: int) -> float:
    """Two-sided sign-flip permutation p of the mean (exact up to `MAX_EXACT_UNITS` units)."""
    n = differences.size
    if n <= MAX_EXACT_UNITS:
        signs = 1.0 - 2.0 * ((np.arange(2**n)[:, None] >> np.arange(n)) & 1)
    else:
        signs = 1.0 - 2.0 * np.random.default_rng(seed).integers(0, 2, (n_permutations, n))
    null = signs @ differences / n
    extreme = int(np.sum(np.abs(null) >= abs(differences.mean()) - _TIE))
    return extreme / len(null) if n <= MAX_EXACT_UNITS else (1 + extreme) / (1 + len(null))


def subject_tests(differences: ArrayLike, *, alpha: float = 0.05,
                  n_permutations: int = N_PERMUTATIONS, seed: int = 0) -> dict[str, object]:
    """Tests of a paired difference across subjects (the unit of replication is the subject).

    Parameters
    ----------
    differences : array_like of shape (n_subjects,)
        One paired difference per subject (average any entries within a subject first).
    alpha : float
        Level used only for the note on the smallest attainable p-value.
    n_permutations, seed
        Random sign patterns of the sign-flip test beyond `MAX_EXACT_UNITS` subjects (exact
        enumeration below).

    Returns
    -------
    dict
        ``n_subjects``; ``mean_difference``; ``p_signflip`` (two-sided sign-flip permutation
        test of the mean, exact); ``p_wilcoxon`` (Wilcoxon signed-rank,
        `scipy.stats.wilcoxon`, exact for small samples without ties); ``p_t`` (one-sample t
        test of the mean against 0, i.e. the paired t test); ``min_p_exact`` (2 / 2ⁿ, the
        smallest two-sided p the sign-flip and exact Wilcoxon tests can give); ``note``
        (empty, or why p-values are NaN or cannot fall below ``alpha``). With fewer than two
        subjects every p is NaN; when every difference is zero every p is 1; when all
        differences are equal and nonzero the t test is undefined (NaN).

    Raises
    ------
    InputError
        If a difference is not finite.
    """
    d = np.asarray(differences, dtype=np.float64).reshape(-1)
    if not np.isfinite(d).all():
        raise InputError("subject_tests: differences hold NaN or infinity")
    n = d.size
    result: dict[str, object] = {
        "n_subjects": n, "mean_difference": float(d.mean()) if n else np.nan,
        "p_signflip": np.nan, "p_wilcoxon": np.nan, "p_t": np.nan,
        "min_p_exact": 2.0 / 2.0**n if n else np.nan, "note": ""}
    if n < 2:
        result["note"] = f"{n} subject(s): no test across subjects (needs 2 or more)"
        return result
    if np.all(d == 0):
        result.update(p_signflip=1.0, p_wilcoxon=1.0, p_t=1.0, note="every difference is 0")
        return result
    result["p_signflip"] = _sign_flip_pvalue(d, n_permutations, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", UserWarning)
        result["p_wilcoxon"] = float(stats.wilcoxon(d).pvalue)
        result["p_t"] = (float(stats.ttest_1samp(d, 0.0).pvalue) if np.ptp(d) > 0
                         else np.nan)
    notes = []
    if np.ptp(d) == 0:
        notes.append("every difference is equal: the t test is undefined")
    if 2.0 / 2.0**n >= alpha:
        notes.append(f"{n} subjects: the exact sign-flip and Wilcoxon tests cannot give "
                     f"p < {alpha:g} (smallest p = {2.0 / 2.0**n:.3g})")
    result["note"] = "; ".join(notes)
    return result


def _adjust_family(pvalues: ArrayLike, name: str,
                   adjust: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``adjust`` applied to the tested (non-NaN) p-values of a family; NaN stays NaN."""
    p = np.asarray(pvalues, dtype=np.float64).reshape(-1)
    tested = ~np.isnan(p)
    if np.any((p[tested] < 0) | (p[tested] > 1)):
        raise InputError(f"{name}: p-values must lie in [0, 1]")
    adjusted = np.full(p.shape, np.nan)
    if tested.any():
        adjusted[tested] = adjust(p[tested])
    return adjusted


def holm(pvalues: ArrayLike) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error rate) of one family of tests.

    With the m tested p-values sorted, p_(1) ≤ … ≤ p_(m): adjusted p_(i) =
    max_{j ≤ i} min(1, (m − j + 1) p_(j)) (Holm 1979). NaN entries (comparisons not made)
    stay NaN and do not count in m.

    Parameters
    ----------
    pvalues : array_like of shape (n,)

    Returns
    -------
    numpy.ndarray of shape (n,)

    Raises
    ------
    InputError
        If a p-value lies outside [0, 1].
    """
    def step_down(values: np.ndarray) -> np.ndarray:
        m = values.size
        order = np.argsort(values, kind="stable")
        result = np.empty(m)
        result[order] = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m))
                                                         * values[order]))
        return result

    return _adjust_family(pvalues, "holm", step_down)


def benjamini_hochberg(pvalues: ArrayLike) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (false discovery rate) of one family of tests.

    Adjusted p_(i) = min_{j ≥ i} min(1, m p_(j) / j) for the m tested p-values sorted
    ascending (Benjamini & Hochberg 1995), computed by
    `scipy.stats.false_discovery_control`. NaN entries stay NaN and do not count in m.

    Parameters
    ----------
    pvalues : array_like of shape (n,)

    Returns
    -------
    numpy.ndarray of shape (n,)

    Raises
    ------
    InputError
        If a p-value lies outside [0, 1].
    """
    return _adjust_family(pvalues, "benjamini_hochberg",
                          lambda values: stats.false_discovery_control(values, method="bh"))


def adjusted_name(column: str, correction: str) -> str:
    """Column of a corrected p-value: ``p_vs_rt`` → ``p_holm_vs_rt``, ``p_t`` → ``p_t_holm``."""
    head, separator, tail = column.partition("_vs_")
    return f"{head}_{correction}{separator}{tail}"


def adjust_families(table: pd.DataFrame, columns: Sequence[str], by: Sequence[str]) -> None:
    """Add Holm and Benjamini–Hochberg adjusted columns next to raw p-value columns, in place.

    A family is one p-value column within one group of ``by`` (e.g. one method's
    comparisons with one baseline across every subject × hemisphere × ROI); NaN p-values
    (comparisons not made) are not counted. See `holm` and `benjamini_hochberg`.
    """
    for column in columns:
        for correction, adjust in (("holm", holm), ("bh", benjamini_hochberg)):
            values = pd.Series(np.nan, index=table.index)
            for _, family in table.groupby(list(by), sort=False, dropna=False)[column]:
                values[family.index] = adjust(family.to_numpy())
            position = table.columns.get_loc(column) + (1 if correction == "holm" else 2)
            table.insert(position, adjusted_name(column, correction), values)
