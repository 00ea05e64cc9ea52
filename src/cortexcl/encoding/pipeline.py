"""Encode the ROIs of one subject with one backbone and write the results to a run directory."""

from __future__ import annotations

import io
import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cortexcl.atomic import atomic_save_npy, atomic_write_json, atomic_write_text
from cortexcl.config import EncodingConfig
from cortexcl.data.rois import HEMISPHERES, WHOLE_HEMISPHERE
from cortexcl.data.splits import Split, check_split, make_splits
from cortexcl.data.subject import Subject
from cortexcl.encoding.features import extract_features
from cortexcl.encoding.model import EncodingModel, PCACache
from cortexcl.errors import InputError
from cortexcl.metrics import nc_normalized_score, summarize_r
from cortexcl.models.backbones import (
    build_backbone,
    describe_weights,
    get_backbone,
    initial_weights,
)
from cortexcl.rundir import RunDirectory

TABLE_KEY = ("subject", "hemisphere", "roi", "method")

TEST_ROWS = "test_rows.npy"
TEST_PREDICTION = "test_prediction.npy"
TEST_RESPONSES = "test_responses.npy"
# Version of the files in an encoding result folder: the study runner re-encodes results
# written with another version (2: the measured test responses were added).
RESULT_FORMAT = 3
SHARED_SELECTION = "shared_selection.json"


def subject_split(subject: Subject, seed: int, settings: EncodingConfig) -> Split:
    """The subject's train / val / test split under ``settings`` (protocol and split kind).

    ``split: sessions`` puts the images shown only in the held-out sessions in test
    (`Subject.held_out_images`); ``random`` draws every part at random.

    Raises
    ------
    InputError
        If ``split: sessions`` is asked of a subject without sessions or without held-out
        images.
    """
    test = None
    if settings.split == "sessions":
        test = subject.held_out_images()
        if test is None:
            raise InputError(f"encoding.split: sessions needs a layout with scan sessions "
                             f"(nsd); {subject.root} has none")
        if test.size == 0:
            raise InputError(f"encoding.split: sessions: {subject.name} has no image shown only "
                             f"in its last three sessions (read more than three sessions)")
    return make_splits(subject.n_images, seed=seed, protocol=settings.protocol, test=test)


def check_subject_data(subject: Subject, hemispheres: Sequence[str], seed: int,
                       settings: EncodingConfig) -> None:
    """The checks of a subject's data that come before anything of a run is written.

    The split must be large enough to fit, select and score (`check_split`), the
    noise-ceiling data (when present) must be valid, and every image must decode (all are
    decoded into the image cache the encodings then read).

    Raises
    ------
    InputError
        Naming the file at fault.
    """
    check_split(subject_split(subject, seed, settings), str(subject.root))
    for hemisphere in hemispheres:
        subject.noise_ceiling(hemisphere)
    subject.images.array()


def read_shared_selection(run: RunDirectory, subject: str, hemispheres: Sequence[str],
                          rois: Sequence[str]) -> dict[tuple[str, str], tuple[str, float]]:
    """The (layer, α) the untuned backbone chose for each ROI (selection P-A).

    Raises
    ------
    InputError
        If the untuned encoding of an ROI has not recorded its choice.
    """
    pairs = {}
    for hemisphere in hemispheres:
        for roi in rois:
            path = run.encoding_dir(subject, hemisphere, roi, "untuned") / SHARED_SELECTION
            try:
                record = json.loads(path.read_text())
                pairs[hemisphere, roi] = (str(record["layer"]), float(record["alpha"]))
            except (OSError, ValueError, KeyError, TypeError):
                raise InputError(f"{path}: no shared selection of the untuned backbone; "
                                 "encode the untuned backbone first") from None
    return pairs


def without_images(split: Split, image_ids: np.ndarray,
                   excluded_ids: np.ndarray) -> tuple[Split, int, int]:
    """The split with every val and test image whose id is in ``excluded_ids`` removed.

    A backbone tuned on other subjects' images must neither be selected (val) nor scored
    (test) on them; its train part is the target's own and stays whole.

    Returns
    -------
    split, n_test_dropped, n_val_dropped
        The reduced split and the numbers of test and val images dropped.
    """
    ids, excluded = np.asarray(image_ids), np.asarray(excluded_ids)
    keep_test = ~np.isin(ids[split.test], excluded)
    keep_val = ~np.isin(ids[split.val], excluded)
    reduced = Split(split.train, split.val[keep_val], split.test[keep_test], split.seed,
                    split.protocol, split.folds)
    return (reduced, int(keep_test.size - keep_test.sum()),
            int(keep_val.size - keep_val.sum()))


def record_split(run: RunDirectory, subject: Subject, seed: int,
                 settings: EncodingConfig) -> Split:
    """Make the subject's split (`subject_split`) and record it in the run, or reuse the
    recorded one.

    Raises
    ------
    InputError
        If the run already holds a different split for this subject.
    """
    split = subject_split(subject, seed, settings)
    path = run.split_path(subject.name)
    if path.exists():
        recorded = Split.load(path)
        if recorded.to_dict() != split.to_dict():
            raise InputError(
                f"{path}: the run already holds a {recorded.protocol} split with seed "
                f"{recorded.seed} for {subject.name}; use another output folder for seed {seed} "
                f"({settings.protocol}, {settings.split} split)"
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
    backbone: str = "alexnet",
    method: str = "untuned",
    split_seed: int = 0,
    seed: int | None = None,
    settings: EncodingConfig | None = None,
    min_vertices: int = 20,
    device: str | torch.device | None = None,
    progress: bool = True,
    exclude_ids: np.ndarray | None = None,
    shared: Mapping[tuple[str, str], tuple[str, float]] | None = None,
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
        Where the results go: ``encoding/<subject>/<hemi>/<roi>/<method>/``, or its
        ``seed-<seed>/`` subfolder for a tuned backbone.
    hemispheres : sequence of {"lh", "rh"}
        Hemispheres to encode.
    rois : str or sequence of str
        ROI names or groups (``early``, ``higher``, ``streams``, ``early+higher``), or ``all``
        for every vertex of the hemisphere.
    weights : {"imagenet", "none"} or path
        Backbone weights; ``none`` is a random initialisation and is recorded as such.
    backbone : str
        The network (`cortexcl.models.backbones.get_backbone`); its input normalisation is
        used and its default candidate layers unless ``settings.layers`` names others.
    method : str
        Name of the backbone in tables and paths.
    split_seed : int
        Seed of the split and of a random initialisation (``weights="none"``).
    seed : int, optional
        Tuning seed of a tuned backbone (a study's replicate): recorded in the results
        (``seed``) and part of their folder; None for an untuned backbone.
    settings : EncodingConfig, optional
        Protocol (docs/method.md §3.3), PCA components, refit, α grid, standardisation and
        images per forward pass; the defaults of `EncodingConfig` when omitted.
    min_vertices : int
        ROIs with fewer vertices are excluded and listed.
    device : str or torch.device, optional
        Where the backbone runs; the GPU when one is present.
    progress : bool
        Show progress bars.
    exclude_ids : array of int, optional
        Image ids (NSD ids) to drop from the val and test parts: the images another subject's
        data tuned the backbone with (docs/method.md §1.3, shared NSD images). The counts are
        recorded (``n_test_dropped``, ``n_val_dropped``).
    shared : mapping, optional
        With ``settings.selection == "shared-untuned"``: ``{(hemisphere, roi): (layer, α)}``
        chosen on the untuned backbone (see `read_shared_selection`). Without it, this is the
        untuned backbone: the pair is chosen here (`EncodingModel.select_shared`) and saved as
        ``shared_selection.json`` in each result folder.

    Returns
    -------
    encoded, excluded : pandas.DataFrame
        One row per encoded (hemisphere, ROI), and one per ROI left out for its size.
    """
    for hemisphere in hemispheres:
        if hemisphere not in subject.hemispheres:
            raise InputError(f"--hemisphere: unknown hemisphere {hemisphere!r}; use "
                             f"{' or '.join(subject.hemispheres)}")
    settings = settings or EncodingConfig()
    roi_names = subject.expand_rois(rois)
    split = record_split(run, subject, split_seed, settings)
    n_dropped = n_val_dropped = 0
    if exclude_ids is not None:
        split, n_dropped, n_val_dropped = without_images(split, subject.image_ids, exclude_ids)
    spec = get_backbone(backbone)
    network = build_backbone(spec.name, weights, seed=split_seed)
    weights_label = describe_weights(weights, seed=split_seed)
    context = {"backbone": spec.name, "weights": weights_label,
               "initial_weights": initial_weights(weights, split_seed),
               "protocol": settings.protocol, "split_seed": split_seed,
               # The paper protocol's final fit is the 85 % tuning split (its train part).
               "refit": settings.refit if settings.protocol == "clean" else "train",
               "alpha_grid": settings.alpha_grid, "standardize": settings.standardize,
               "n_train": len(split.train), "n_val": len(split.val), "n_test": len(split.test),
               "n_test_dropped": n_dropped, "n_val_dropped": n_val_dropped,
               "data_hash": subject.data_hash()}
    rows, excluded = [], []
    with tempfile.TemporaryDirectory(dir=run.root, prefix=".features-") as feature_dir:
        features = extract_features(network, subject.images.normalized(spec.mean, spec.std),
                                    layers=settings.layers or spec.layers,
                                    batch_size=settings.batch_size,
                                    device=device, out_dir=feature_dir, progress=progress)
        pca_cache = PCACache()
        for hemisphere in hemispheres:
            responses = subject.responses(hemisphere)
            ceiling = subject.noise_ceiling(hemisphere, split.test)
            for roi in roi_names:
                columns = (np.arange(responses.shape[1]) if roi == WHOLE_HEMISPHERE
                           else subject.roi_indices(hemisphere, roi))
                if columns.size < min_vertices:
                    dropped = subject.data_notes(hemisphere, roi).get("n_nan_vertices", 0)
                    reason = (f"no vertices in {hemisphere}" if columns.size == 0
                              else f"fewer than {min_vertices} vertices")
                    excluded.append({"subject": subject.name, "hemisphere": hemisphere,
                                     "roi": roi, "method": method, "n_vertices": columns.size,
                                     "reason": reason + (f" ({dropped} left out for NaN betas)"
                                                         if dropped else "")})
                    continue
                roi_responses = responses[:, columns]
                options = {"n_components": settings.n_components, "refit": settings.refit,
                           "standardize": settings.standardize,
                           "alpha_scale": settings.alpha_grid, "progress": progress,
                           "cache": pca_cache}
                used, pair = features, None
                if settings.selection == "shared-untuned":
                    pair = (shared[hemisphere, roi] if shared is not None else EncodingModel(
                        **options).select_shared(features, roi_responses, split))
                    used, options["alphas"] = {pair[0]: features[pair[0]]}, [pair[1]]
                model = EncodingModel(**options).fit(used, roi_responses, split)
                if pair is not None:
                    folder = run.encoding_dir(subject.name, hemisphere, roi, method, seed)
                    atomic_write_json(folder / SHARED_SELECTION,
                                      {"layer": pair[0], "alpha": pair[1],
                                       "alpha_grid": settings.alpha_grid})
                nc = None if ceiling is None else ceiling[columns]
                # r is 0 where the measured or predicted test responses are constant: count them.
                test_responses = roi_responses[split.test]
                constant = (np.ptp(test_responses, axis=0) == 0) \
                    | (np.ptp(model.predictions_, axis=0) == 0)
                rows.append(_write_result(run, subject, hemisphere, roi, method, seed, model,
                                          nc, split.test, test_responses,
                                          {**context, **subject.data_notes(hemisphere, roi),
                                           "n_constant": int(constant.sum())}))
    return pd.DataFrame(rows), pd.DataFrame(excluded)


def _write_result(run: RunDirectory, subject: Subject, hemisphere: str, roi: str, method: str,
                  seed: int | None, model: EncodingModel, noise_ceiling: np.ndarray | None,
                  test_rows: np.ndarray, test_responses: np.ndarray, context: dict) -> dict:
    out = run.encoding_dir(subject.name, hemisphere, roi, method, seed)
    atomic_save_npy(out / "voxel_r.npy", model.test_r_.astype(np.float32))
    # The test rows, with the measured responses and predictions of those rows in the same
    # order: the paired tests of the tables need nothing else (cortexcl.statistics).
    atomic_save_npy(out / TEST_ROWS, np.asarray(test_rows, dtype=np.int64))
    atomic_save_npy(out / TEST_RESPONSES, np.asarray(test_responses, dtype=np.float32))
    atomic_save_npy(out / TEST_PREDICTION, model.predictions_.astype(np.float32))
    atomic_save_npy(out / "alphas.npy", model.alphas_.astype(np.float32))
    atomic_save_npy(out / "absolute_alphas.npy", model.absolute_alphas_.astype(np.float32))
    buffer = io.StringIO()
    model.layer_scores_.to_csv(buffer, index=False)
    atomic_write_text(out / "layer_scores.csv", buffer.getvalue())
    stats = summarize_r(model.test_r_)
    summary = {
        "subject": subject.name,
        "hemisphere": hemisphere,
        "roi": roi,
        "method": method,
        "seed": seed,
        "n_vertices": int(model.test_r_.size),
        "best_layer": model.best_layer_,
        "mean_r": stats["mean"],
        "median_r": stats["median"],
        "mean_val_r": float(np.mean(model.val_r_)),
        "layer_margin": model.layer_margin_,
        "layer_stability": model.layer_stability_,
        "pct_alpha_at_low_edge": 100.0 * model.alpha_edges_["low"] / model.test_r_.size,
        "pct_alpha_at_high_edge": 100.0 * model.alpha_edges_["high"] / model.test_r_.size,
    }
    if noise_ceiling is not None:
        score = nc_normalized_score(model.test_r_, noise_ceiling)
        summary["mean_nc_score"] = float(np.mean(score))
        summary["mean_noise_ceiling"] = float(np.mean(noise_ceiling))
        summary["n_zero_ceiling"] = int(np.sum(noise_ceiling == 0))
    summary.update(context)
    atomic_write_json(out / "summary.json", summary)
    return summary
