"""Scores of encoding models: per-voxel Pearson r, noise ceilings and paired comparisons.

See docs/method.md §3.4. Every function takes plain arrays and returns numpy values; "voxel" and
"vertex" mean the same thing here (one column of a response matrix).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

# Columns are processed in blocks of this many entries so that float64 copies stay small.
_BLOCK_ENTRIES = 1 << 24


def pearson_r(y_true: ArrayLike, y_pred: ArrayLike) -> np.ndarray:
    """Pearson correlation between matching columns of two arrays.

    Parameters
    ----------
    y_true, y_pred : array_like of shape (n_samples,) or (n_samples, n_columns)
        Measured and predicted responses; rows are samples (images).

    Returns
    -------
    numpy.ndarray
        float64 r per column (shape ``y_true.shape[1:]``). A column that is constant in
        either array has r = 0.

    Raises
    ------
    ValueError
        If the shapes differ or there are fewer than two samples.
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"pearson_r: shapes differ, {y_true.shape} vs {y_pred.shape}")
    if y_true.ndim not in (1, 2) or y_true.shape[0] < 2:
        raise ValueError(f"pearson_r: need (n_samples >= 2[, n_columns]), got {y_true.shape}")
    if y_true.ndim == 1:
        return pearson_r(y_true[:, None], y_pred[:, None])[0]
    n_rows, n_columns = y_true.shape
    r = np.zeros(n_columns, dtype=np.float64)
    step = max(1, _BLOCK_ENTRIES // n_rows)
    for start in range(0, n_columns, step):
        block = slice(start, start + step)
        a = np.asarray(y_true[:, block], dtype=np.float64)
        b = np.asarray(y_pred[:, block], dtype=np.float64)
        varies = (np.ptp(a, axis=0) > 0) & (np.ptp(b, axis=0) > 0)
        a = a - a.mean(axis=0)
        b = b - b.mean(axis=0)
        denominator = np.sqrt(np.einsum("ij,ij->j", a, a) * np.einsum("ij,ij->j", b, b))
        numerator = np.einsum("ij,ij->j", a, b)
        with np.errstate(invalid="ignore", divide="ignore"):
            r[block] = np.where(varies & (denominator > 0), numerator / denominator, 0.0)
    return np.clip(r, -1.0, 1.0)


def zscore_columns(values: np.ndarray) -> np.ndarray:
    """z-score each column over the rows: ``(x - mean) / sd`` with the population SD.

    Parameters
    ----------
    values : numpy.ndarray
        (n_rows, n_columns) floats, e.g. the betas of one session or run (trials × vertices).

    Returns
    -------
    numpy.ndarray
        Of the same shape and dtype; a constant column becomes all 0 (it has no sd), so a
        column is all 0 exactly when it was constant.
    """
    mean, sd = values.mean(axis=0), values.std(axis=0)
    return np.divide(values - mean, sd, out=np.zeros_like(values), where=sd > 0)


def noise_ceiling(ncsnr: ArrayLike, n_repeats: ArrayLike) -> np.ndarray:
    """Noise ceiling of each voxel for a set of evaluation images (docs/method.md §3.4).

    ``NC = ncsnr² / (ncsnr² + (A/3 + B/2 + C) / (A + B + C))`` with A, B, C the numbers of
    evaluation images shown 3, 2 and 1 times; the fraction is the mean of ``1 / n_repeats``.

    Parameters
    ----------
    ncsnr : array_like of shape (n_voxels,)
        Noise-ceiling signal-to-noise ratio per voxel (non-negative).
    n_repeats : array_like of shape (n_images,)
        How many trials were averaged for each evaluation image (positive integers).

    Returns
    -------
    numpy.ndarray
        float64 noise ceiling per voxel, a fraction in [0, 1].

    Raises
    ------
    ValueError
        If ``n_repeats`` is empty or holds values below 1, or ``ncsnr`` is negative or NaN.
    """
    ncsnr = np.asarray(ncsnr, dtype=np.float64)
    n_repeats = np.asarray(n_repeats).reshape(-1)
    if n_repeats.size == 0 or np.any(n_repeats < 1):
        raise ValueError("noise_ceiling: n_repeats must be a non-empty array of counts >= 1")
    if not np.all(ncsnr >= 0):
        raise ValueError("noise_ceiling: ncsnr must be non-negative and not NaN")
    noise_fraction = float(np.mean(1.0 / n_repeats.astype(np.float64)))
    signal = ncsnr**2
    return signal / (signal + noise_fraction)


def nc_normalized_score(r: ArrayLike, nc: ArrayLike) -> np.ndarray:
    """Noise-ceiling-normalised score ``100 r² / NC`` (the Algonauts 2023 convention).

    Parameters
    ----------
    r : array_like
        Pearson r per voxel.
    nc : array_like
        Noise ceiling per voxel as a fraction (see :func:`noise_ceiling`).

    Returns
    -------
    numpy.ndarray
        float64 score in [0, 100]: negative r scores 0 and scores above 100 are capped at 100.
        A voxel with ``nc == 0`` scores 100 when r > 0, else 0: the challenge's evaluation code
        replaces a zero ncsnr by 1e-14 before dividing, so those voxels stay in the mean
        (count them with ``np.sum(nc == 0)`` to report them).
    """
    r = np.asarray(r, dtype=np.float64)
    nc = np.asarray(nc, dtype=np.float64)
    explained = np.where(r > 0, r, 0.0) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        score = np.where(nc > 0, 100.0 * explained / nc, np.where(explained > 0, 100.0, 0.0))
    return np.minimum(score, 100.0)


def _paired(r_a: ArrayLike, r_b: ArrayLike, name: str) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(r_a, dtype=np.float64).reshape(-1)
    b = np.asarray(r_b, dtype=np.float64).reshape(-1)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"{name}: need two non-empty arrays of equal size, got {a.size}, {b.size}")
    return a, b


def percent_improved(r_a: ArrayLike, r_b: ArrayLike) -> float:
    """Percentage of voxels where A scores strictly higher than B: ``100 · mean(r_a > r_b)``."""
    a, b = _paired(r_a, r_b, "percent_improved")
    return float(100.0 * np.mean(a > b))


def paired_wilcoxon(r_a: ArrayLike, r_b: ArrayLike) -> float:
    """Two-sided p-value of the Wilcoxon signed-rank test of A vs B over voxels.

    Uses :func:`scipy.stats.wilcoxon`; when every paired difference is zero the p-value is 1.
    The test treats the voxels as independent replicates, which the voxels of one ROI are not
    (they share the test images and correlated noise): it rejects true nulls far too often
    (``benchmarks/calibration.py`` runs it as the reference it was). Compare two models with
    `cortexcl.statistics.compare_predictions` (unit: the test image) instead.
    """
    a, b = _paired(r_a, r_b, "paired_wilcoxon")
    if np.all(a == b):
        return 1.0
    return float(stats.wilcoxon(a, b, alternative="two-sided").pvalue)


def summarize_r(r: ArrayLike) -> dict[str, float]:
    """Mean and median of per-voxel r: ``{"mean": …, "median": …}``."""
    r = np.asarray(r, dtype=np.float64).reshape(-1)
    if r.size == 0:
        raise ValueError("summarize_r: no values")
    return {"mean": float(np.mean(r)), "median": float(np.median(r))}
