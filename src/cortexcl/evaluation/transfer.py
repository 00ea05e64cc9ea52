"""Backbones used on other data than they were tuned on, and fair comparisons on matched images.

A backbone tuned on subject *m* (or on the pooled subjects) and used to encode subject *t* is
named ``<method>-from-<source>``, e.g. ``cl-from-subj02``. When *t*'s test images include images
that tuned the backbone (the NSD shared images, matched by NSD id), they are dropped from *t*'s
test part (docs/method.md §1.3), and every baseline it is compared with is scored on the same rows:
its saved test predictions are re-scored, which needs no refit because the ridge fit never
sees test rows. `compare_results` runs the paired tests of two results (unit: the test image)
on the rows they share, from the files of the two result folders alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cortexcl.atomic import atomic_save_npy
from cortexcl.encoding.pipeline import TEST_PREDICTION, TEST_RESPONSES, TEST_ROWS
from cortexcl.errors import InputError
from cortexcl.metrics import pearson_r
from cortexcl.statistics import N_BOOTSTRAP, N_PERMUTATIONS, ImageComparison, compare_predictions

SOURCE_SEPARATOR = "-from-"
MATCHED = "matched"


def transfer_method(method: str, source: str) -> str:
    """Name of ``method``'s backbone tuned on ``source`` (a subject or ``pooled``)."""
    return f"{method}{SOURCE_SEPARATOR}{source}"


def split_transfer(name: str) -> tuple[str, str | None]:
    """``"cl-from-subj02"`` → ``("cl", "subj02")``; a plain method name → ``(name, None)``."""
    method, separator, source = name.partition(SOURCE_SEPARATOR)
    return (method, source) if separator else (name, None)


def rescore(result_dir: Path, rows: np.ndarray, responses: np.ndarray) -> np.ndarray:
    """Per-voxel test r of a saved encoding result on a subset of its test rows.

    Parameters
    ----------
    result_dir : Path
        An encoding result folder (holds ``test_rows.npy`` and ``test_prediction.npy``).
    rows : array of int
        Image indices, all among the result's test rows.
    responses : numpy.ndarray of shape (n_images, n_voxels)
        Measured responses of the ROI (all images).

    Raises
    ------
    InputError
        If the result lacks its predictions or does not cover ``rows``.
    """
    rows_file, prediction_file = result_dir / TEST_ROWS, result_dir / TEST_PREDICTION
    if not (rows_file.is_file() and prediction_file.is_file()):
        raise InputError(f"{result_dir}: no saved test predictions; encode it again")
    saved_rows = np.load(rows_file)
    position = {int(row): i for i, row in enumerate(saved_rows)}
    missing = [int(row) for row in rows if int(row) not in position]
    if missing:
        raise InputError(f"{rows_file}: {len(missing)} requested test images were not scored")
    prediction = np.load(prediction_file)[[position[int(row)] for row in rows]]
    return pearson_r(responses[rows], prediction).astype(np.float32)


def write_matched_baselines(result_dir: Path, baseline_dirs: dict[str, Path],
                            responses: np.ndarray) -> list[str]:
    """Re-score each baseline on the test rows of ``result_dir``; save ``matched/<name>.npy``.

    Returns
    -------
    list of str
        The baselines written (those whose results exist).
    """
    rows = np.load(result_dir / TEST_ROWS)
    written = []
    for name, folder in baseline_dirs.items():
        if (folder / TEST_ROWS).is_file():
            atomic_save_npy(result_dir / MATCHED / f"{name}.npy", rescore(folder, rows, responses))
            written.append(name)
    return written


def matched_baseline(result_dir: Path, baseline: str, fallback: Path) -> np.ndarray | None:
    """The baseline's per-voxel r on ``result_dir``'s test rows.

    The matched scores when the result dropped test images, else the baseline's own
    ``voxel_r.npy`` in ``fallback`` (None when neither exists).
    """
    matched = result_dir / MATCHED / f"{baseline}.npy"
    if matched.is_file():
        return np.load(matched)
    own = fallback / "voxel_r.npy"
    return np.load(own) if own.is_file() else None


def _test_outputs(result_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(test rows, measured responses, predictions) saved in an encoding result folder."""
    files = [result_dir / name for name in (TEST_ROWS, TEST_RESPONSES, TEST_PREDICTION)]
    missing = [path.name for path in files if not path.is_file()]
    if missing:
        raise InputError(f"{result_dir}: no {', '.join(missing)} (encoded by an older cortexcl?); "
                         f"encode it again")
    rows, responses, prediction = (np.load(path) for path in files)
    if not (responses.shape == prediction.shape and responses.shape[0] == rows.size):
        raise InputError(f"{result_dir}: test rows, responses and predictions do not match in "
                         f"shape ({rows.size}, {responses.shape}, {prediction.shape})")
    return rows, responses, prediction


def shared_test_data(result_dir: Path,
                     baseline_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Measured responses and both results' predictions on the test rows the two share.

    A result that dropped test images (a pooled or transferred backbone) is compared with its
    baseline on its own remaining rows; rows are taken in the result's order.

    Returns
    -------
    responses, prediction, baseline_prediction : numpy.ndarray of shape (n_shared, n_voxels)

    Raises
    ------
    InputError
        If a folder lacks its test outputs, the two results cover different vertices, or
        their saved responses differ on a shared row (results of different data).
    """
    rows, responses, prediction = _test_outputs(result_dir)
    base_rows, base_responses, base_prediction = _test_outputs(baseline_dir)
    if responses.shape[1] != base_responses.shape[1]:
        raise InputError(f"{result_dir}: {responses.shape[1]} vertices, but {baseline_dir} has "
                         f"{base_responses.shape[1]}")
    shared = np.isin(rows, base_rows)
    position = {int(row): i for i, row in enumerate(base_rows)}
    base = [position[int(row)] for row in rows[shared]]
    responses = responses[shared]
    if not np.array_equal(responses, base_responses[base]):
        raise InputError(f"{result_dir}: its test responses differ from those of {baseline_dir} "
                         f"on the same images")
    return responses, prediction[shared], base_prediction[base]


def compare_results(result_dir: Path, baseline_dir: Path, *, seed: int,
                    n_permutations: int = N_PERMUTATIONS,
                    n_bootstrap: int = N_BOOTSTRAP) -> ImageComparison:
    """Paired comparison of a result with a baseline on their shared test images.

    Δr (result − baseline, mean over vertices), its bootstrap 95 % interval and the
    permutation p-value, all with the test image as the unit (see
    `cortexcl.statistics.compare_predictions`).

    Raises
    ------
    InputError
        As `shared_test_data`, or if fewer than 3 test images are shared.
    """
    responses, prediction, baseline = shared_test_data(result_dir, baseline_dir)
    try:
        return compare_predictions(responses, prediction, baseline, seed=seed,
                                   n_permutations=n_permutations, n_bootstrap=n_bootstrap)
    except InputError as error:
        raise InputError(f"{result_dir} vs {baseline_dir.name}: {error}") from None


def train_image_ids(image_ids: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Image ids of a subject's training images (those that tuned its backbones)."""
    return np.asarray(image_ids)[np.asarray(train, dtype=np.int64)]
