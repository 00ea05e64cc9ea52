"""Encoding against the simulator's known truth (random-init AlexNet: no weights offline).

Measured on this simulated subject (1,200 images, 112-px input, lh): the mean over ROIs of
test r / sqrt(noise ceiling) rises with the number of images; the early ROIs' val r falls
off in the deep layers (classifier.2 at 0.88–0.94 of their best layer) while the category
ROIs' stays flat (0.96–1.0), and early ROIs select earlier layers on average.
"""

from __future__ import annotations

import numpy as np
import pytest

from cortexcl import (
    CANDIDATE_LAYERS,
    EncodingModel,
    extract_features,
    load_alexnet,
    load_subject,
    make_splits,
    simulate_subject,
)

EARLY = ("V1v", "V2d", "hV4")
CATEGORY = ("FFA-1", "PPA", "EBA", "VWFA-1")


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    root = tmp_path_factory.mktemp("truth")
    simulate_subject(root, n_images=1200, n_test_images=0, image_size=128, roi_scale=0.05,
                     progress=False)
    subject = load_subject(root, 1, image_size=112, cache_dir=root / "cache", progress=False)
    features = extract_features(load_alexnet("none", seed=0), subject.images, progress=False)
    results = {}
    for n in (300, 1200):
        split = make_splits(n, seed=0)
        subset = {layer: values[:n] for layer, values in features.items()}
        for roi in EARLY + CATEGORY:
            model = EncodingModel(progress=False).fit(subset, subject.responses("lh", roi)[:n],
                                                      split)
            ceiling = subject.noise_ceiling("lh", split.test)[subject.roi_indices("lh", roi)]
            scores = model.layer_scores_.set_index("layer")["mean_val_r"]
            results[n, roi] = (model.best_layer_, float(model.test_r_.mean()),
                               float(np.sqrt(ceiling).mean()),
                               float(scores["classifier.2"] / scores.max()))
    return results


def test_test_r_approaches_the_noise_ceiling_as_images_grow(encoded):
    def fraction_of_ceiling(n):
        return np.mean([encoded[n, roi][1] / encoded[n, roi][2] for roi in EARLY + CATEGORY])

    for roi in EARLY + CATEGORY:
        _, r, ceiling, _ = encoded[1200, roi]
        assert 0 < r <= ceiling + 0.05, roi
    assert fraction_of_ceiling(1200) > fraction_of_ceiling(300) + 0.05
    assert np.mean([encoded[1200, roi][1] / encoded[1200, roi][2] for roi in EARLY]) > 0.7


def test_early_rois_are_best_predicted_by_earlier_layers_than_category_rois(encoded):
    def depth(rois):
        return np.mean([CANDIDATE_LAYERS.index(encoded[1200, roi][0]) for roi in rois])

    def deep_over_best(rois):
        return np.mean([encoded[1200, roi][3] for roi in rois])

    assert depth(EARLY) < depth(CATEGORY)
    assert deep_over_best(EARLY) < deep_over_best(CATEGORY) - 0.02
