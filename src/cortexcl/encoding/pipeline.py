"""Encode the ROIs of one subject with one backbone and write the results to a run directory."""

from __future__ import annotations

import io
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cortexcl.atomic import atomic_save_npy, atomic_write_json, atomic_write_text
from cortexcl.data.algonauts import Subject
from cortexcl.data.rois import HEMISPHERES, WHOLE_HEMISPHERE
from cortexcl.data.splits import Split, make_splits
from cortexcl.encoding.features import extract_features
from cortexcl.encoding.model import ALPHAS, EncodingModel, PCACache
from cortexcl.errors import InputError
from cortexcl.metrics import nc_normalized_score, summarize_r
from cortexcl.models.backbones import describe_weights, load_alexnet
from cortexcl.study.store import RunDirectory

TABLE_KEY = ("subject", "hemisphere", "roi", "method")
TEST_ROWS = "test_rows.npy"
TEST_PREDICTION = "test_prediction.npy"
TEST_RESPONSES = "test_responses.npy"
# Version of the files in an encoding result folder: the study runner re-encodes results
# written with another version (2: the measured test responses were added).
RESULT_FORMAT = 2


def without_test_images(split: Split, image_ids: np.ndarray,
                        excluded_ids: np.ndarray) -> tuple[Split, int]:
    """The split with every test image whose id is in ``excluded_ids`` removed.

    Returns
    -------
    split, n_dropped
        The reduced split (train and val unchanged) and the number of test images dropped.
    """
    keep = ~np.isin(np.asarray(image_ids)[split.test], np.asarray(excluded_ids))
    reduced = Split(split.train, split.val, split.test[keep], split.seed, split.protocol,
                    split.folds)
    return reduced, int(keep.size - keep.sum())


def record_split(run: RunDirectory, subject: Subject, seed: int, protocol: str) -> Split:
    """Make the subject's split and record it in the run, or reuse the recorded one.

    Raises
    ------
    InputError
        If the run already holds a different split for this subject.
    """
    split = make_splits(subject.n_images, seed=seed, protocol=protocol)
    path = run.split_path(subject.name)
    if path.exists():
        recorded = Split.load(path)
        if recorded.to_dict() != split.to_dict():
            raise InputError(
                f"{path}: the run already holds a {recorded.protocol} split with seed "
                f"{recorded.seed} for {subject.name}; use another output folder for seed {seed} "
                f"({protocol})"
            )
    else:
        split.save(path)
    return split


def encode_subject(
    subject: Subject,
    run: RunDirectory,
    *,
    hemispheres: Sequence[str] = HEMISPHERES,
    rois: str | Sequence[str] = "early",
    weights: str | Path = "imagenet",
    method: str = "untuned",
    seed: int = 0,
    protocol: str = "clean",
    n_components: int = 1000,
    alphas: np.ndarray = ALPHAS,
    refit: str = "train+val",
    min_vertices: int = 20,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    progress: bool = True,
    exclude_test_ids: np.ndarray | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fit encoding models for every requested ROI of one subject with one backbone.

    Features of every candidate layer are extracted once for all images (streamed to float16
    files in the run directory, removed afterwards) and shared by all hemispheres and ROIs, and
    so is each layer's PCA (it depends on the features and the split only). Each ROI gets its
    own ridge models, α per vertex and layer per ROI chosen on the validation part, and
    per-vertex test r (see `EncodingModel`).

    Parameters
    ----------
    subject : Subject
        The subject to encode (an Algonauts `Subject`, or any reader's subject with the same
        interface, e.g. `cortexcl.data.nod.NODSubject`).
    run : RunDirectory
        Where the results go: ``encoding/<subject>/<hemi>/<roi>/<method>/``.
    hemispheres : sequence of {"lh", "rh"}
        Hemispheres to encode.
    rois : str or sequence of str
        ROI names or groups (``early``, ``higher``, ``streams``, ``early+higher``), or ``all``
        for every vertex of the hemisphere.
    weights : {"imagenet", "none"} or path
        Backbone weights; ``none`` is a random initialisation and is recorded as such.
    method : str
        Name of the backbone in tables and paths.
    seed : int
        Seed of the split and of a random initialisation.
    protocol : {"clean", "paper"}
        Evaluation protocol (METHOD.md §3.3).
    n_components, alphas, refit
        Passed to `EncodingModel`.
    min_vertices : int
        ROIs with fewer vertices are excluded and listed.
    batch_size : int
        Images per forward pass.
    device : str or torch.device, optional
        Where the backbone runs; the GPU when one is present.
    progress : bool
        Show progress bars.
    exclude_test_ids : array of int, optional
        Image ids (NSD ids) to drop from the test part: the images another subject's data
        tuned the backbone with (METHOD.md §1.3, shared NSD images). The count is recorded.

    Returns
    -------
    encoded, excluded : pandas.DataFrame
        One row per encoded (hemisphere, ROI), and one per ROI left out for its size.
    """
    for hemisphere in hemispheres:
        if hemisphere not in HEMISPHERES:
            raise InputError(f"--hemisphere: unknown hemisphere {hemisphere!r}; use lh or rh")
    roi_names = subject.expand_rois(rois)
    split = record_split(run, subject, seed, protocol)
    n_dropped = 0
    if exclude_test_ids is not None:
        split, n_dropped = without_test_images(split, subject.image_ids, exclude_test_ids)
    backbone = load_alexnet(weights, seed=seed)
    weights_label = describe_weights(weights, seed=seed)
    context = {"weights": weights_label, "protocol": protocol, "seed": seed, "refit": refit,
               "n_train": len(split.train), "n_val": len(split.val), "n_test": len(split.test),
               "n_test_dropped": n_dropped, "data_hash": subject.data_hash()}
    rows, excluded = [], []
    with tempfile.TemporaryDirectory(dir=run.root, prefix=".features-") as feature_dir:
        features = extract_features(backbone, subject.images, batch_size=batch_size,
                                    device=device, out_dir=feature_dir, progress=progress)
        pca_cache = PCACache()
        for hemisphere in hemispheres:
            responses = subject.responses(hemisphere)
            ceiling = subject.noise_ceiling(hemisphere, split.test)
            for roi in roi_names:
                columns = (np.arange(responses.shape[1]) if roi == WHOLE_HEMISPHERE
                           else subject.roi_indices(hemisphere, roi))
                if columns.size < min_vertices:
                    excluded.append({"subject": subject.name, "hemisphere": hemisphere,
                                     "roi": roi, "method": method, "n_vertices": columns.size,
                                     "reason": f"fewer than {min_vertices} vertices"})
                    continue
                roi_responses = responses[:, columns]
                model = EncodingModel(n_components=n_components, alphas=alphas, refit=refit,
                                      progress=progress, cache=pca_cache)
                model.fit(features, roi_responses, split)
                nc = None if ceiling is None else ceiling[columns]
                rows.append(_write_result(run, subject, hemisphere, roi, method, model, nc,
                                          split.test, roi_responses[split.test], context))
    return pd.DataFrame(rows), pd.DataFrame(excluded)


def _write_result(run: RunDirectory, subject: Subject, hemisphere: str, roi: str, method: str,
                  model: EncodingModel, noise_ceiling: np.ndarray | None,
                  test_rows: np.ndarray, test_responses: np.ndarray, context: dict) -> dict:
    out = run.encoding_dir(subject.name, hemisphere, roi, method)
    atomic_save_npy(out / "voxel_r.npy", model.test_r_.astype(np.float32))
    # The test rows, with the measured responses and predictions of those rows in the same
    # order: the paired tests of the tables need nothing else (cortexcl.statistics).
    atomic_save_npy(out / TEST_ROWS, np.asarray(test_rows, dtype=np.int64))
    atomic_save_npy(out / TEST_RESPONSES, np.asarray(test_responses, dtype=np.float32))
    atomic_save_npy(out / TEST_PREDICTION, model.predictions_.astype(np.float32))
    atomic_save_npy(out / "alphas.npy", model.alphas_.astype(np.float32))
    buffer = io.StringIO()
    model.layer_scores_.to_csv(buffer, index=False)
    atomic_write_text(out / "layer_scores.csv", buffer.getvalue())
    stats = summarize_r(model.test_r_)
    summary = {
        "subject": subject.name,
        "hemisphere": hemisphere,
        "roi": roi,
        "method": method,
        "n_vertices": int(model.test_r_.size),
        "best_layer": model.best_layer_,
        "mean_r": stats["mean"],
        "median_r": stats["median"],
        "mean_val_r": float(np.mean(model.val_r_)),
    }
    if noise_ceiling is not None:
        score = nc_normalized_score(model.test_r_, noise_ceiling)
        summary["mean_nc_score"] = float(np.nanmean(score))
        summary["mean_noise_ceiling"] = float(np.mean(noise_ceiling))
    summary.update(context)
    atomic_write_json(out / "summary.json", summary)
    return summary
