"""EncodingModel: agreement with scikit-learn / himalaya, selection, leakage, determinism."""

from __future__ import annotations

import os
from functools import partial

import numpy as np
import pandas as pd
import pytest
from himalaya.ridge import Ridge as HimalayaRidge
from sklearn.decomposition import PCA
from sklearn.linear_model import Ridge
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from cortexcl.data.splits import make_splits
from cortexcl.encoding.model import ALPHAS, EncodingModel, PCACache, iter_columns, pca_scores
from cortexcl.errors import InputError
from cortexcl.metrics import pearson_r

# The published absolute α grid: what the comparisons with scikit-learn and himalaya use.
Absolute = partial(EncodingModel, alpha_scale="absolute")

N_IMAGES = 400
N_LATENT = 8
LOW_NOISE, HIGH_NOISE = 0.5, 3.0


def _relu_features(rng, latent, n_features, spread=1.0):
    mixing = rng.standard_normal((latent.shape[1], n_features))
    noise = 0.3 * rng.standard_normal((latent.shape[0], n_features))
    return np.maximum(spread * latent @ mixing + noise + 0.5, 0).astype(np.float32)


@pytest.fixture(autouse=True, scope="module")
def _single_threaded_blas():
    # The scikit-learn references run on OpenBLAS, whose threads contend with torch's on small
    # problems (seconds instead of milliseconds); one thread keeps this file fast.
    with threadpool_limits(1, user_api="blas"):
        yield


@pytest.fixture(scope="module")
def synthetic():
    """Voxels are a linear function of the latent causes of layer "b"; "a" is unrelated."""
    rng = np.random.default_rng(0)
    latent = rng.standard_normal((N_IMAGES, N_LATENT))
    features = {
        "a": _relu_features(rng, rng.standard_normal((N_IMAGES, N_LATENT)), 500),
        "b": _relu_features(rng, latent, 500),
        "c": _relu_features(rng, latent[:, :2], 60),  # fewer features than images
    }
    weights = rng.standard_normal((N_LATENT, 40)) / np.sqrt(N_LATENT)
    signal = latent @ weights  # unit variance per voxel on average
    noise_sd = np.repeat([LOW_NOISE, HIGH_NOISE], 20)
    responses = (signal + rng.standard_normal(signal.shape) * noise_sd).astype(np.float32)
    theory = signal.std(0) / np.sqrt(signal.var(0) + noise_sd**2)
    return features, responses, theory, noise_sd


@pytest.fixture(scope="module")
def fitted(synthetic):
    features, responses, _, _ = synthetic
    split = make_splits(N_IMAGES, seed=0)
    return Absolute(n_components=30, progress=False).fit(features, responses, split), split


def _sklearn_r(x, y, fit, other, k, alphas, scale_rows=None):
    """Reference: (StandardScaler →) PCA(full) → Ridge per α, Pearson r on ``other``."""
    x = x.astype(np.float64)
    if scale_rows is not None:
        x = StandardScaler().fit(x[scale_rows]).transform(x)
    pca = PCA(k, svd_solver="full").fit(x[fit])
    z_fit, z_other = pca.transform(x[fit]), pca.transform(x[other])
    return np.stack([pearson_r(y[other], Ridge(alpha=a).fit(z_fit, y[fit]).predict(z_other))
                     for a in alphas])


def test_pca_matches_sklearn_on_held_out_rows():
    rng = np.random.default_rng(1)
    for n_features in (900, 120):  # Gram (features > rows) and covariance paths
        latent = rng.standard_normal((260, 40)) * np.exp(-np.arange(40) / 8)
        x = _relu_features(rng, latent, n_features, spread=2.0)
        z_fit, z_other, variance = pca_scores(x[:200], x[200:], 20)
        reference = PCA(20, svd_solver="full").fit(x[:200].astype(np.float64))
        expected = reference.transform(x[200:].astype(np.float64))
        signs = np.sign(np.sum(z_fit * reference.transform(x[:200].astype(np.float64)), 0))
        scale = np.abs(expected).max(0)
        # agreement up to one sign per component, within 1e-4 of each component's range
        np.testing.assert_array_less(np.abs(z_other * signs - expected).max(0) / scale, 1e-4)
        np.testing.assert_allclose(variance, reference.explained_variance_, rtol=1e-4)


def test_sign_convention_is_deterministic():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((50, 300)).astype(np.float32)
    z_fit, _, _ = pca_scores(x[:40], x[40:], 10)
    for _ in range(2):
        again, _, _ = pca_scores(x[:40].copy(), x[40:].copy(), 10)
        np.testing.assert_array_equal(z_fit, again)


@pytest.mark.parametrize("layer", ["b", "c"])
def test_ridge_with_per_voxel_alpha_equals_sklearn_and_himalaya(synthetic, layer):
    features, responses, _, _ = synthetic
    split = make_splits(N_IMAGES, seed=0)
    model = Absolute(n_components=30, progress=False)
    model.fit({layer: features[layer]}, responses, split)
    fit_rows = np.concatenate([split.train, split.val])
    z_fit, z_test, _ = pca_scores(features[layer][fit_rows], features[layer][split.test], 30)
    z_fit, z_test = z_fit.astype(np.float64), z_test.astype(np.float64)
    expected = np.empty_like(model.predictions_, dtype=np.float64)
    for alpha in np.unique(model.alphas_):
        voxels = model.alphas_ == alpha
        reference = Ridge(alpha=alpha).fit(z_fit, responses[fit_rows][:, voxels])
        expected[:, voxels] = reference.predict(z_test)
    scale = expected.std()
    # float32 (ours) vs float64 (references): within 5e-4 of the prediction scale
    np.testing.assert_allclose(model.predictions_, expected, atol=5e-4 * scale)
    himalaya = HimalayaRidge(alpha=model.alphas_, fit_intercept=True)
    himalaya.fit(z_fit, responses[fit_rows].astype(np.float64))
    np.testing.assert_allclose(model.predictions_, himalaya.predict(z_test), atol=5e-4 * scale)
    np.testing.assert_allclose(model.test_r_, pearson_r(responses[split.test], expected),
                               atol=1e-4)


def test_selection_scores_equal_sklearn_pipeline(synthetic):
    features, responses, _, _ = synthetic
    split = make_splits(N_IMAGES, seed=0)
    for standardize in (False, True):
        model = Absolute(n_components=30, standardize=standardize, progress=False)
        model.fit({"b": features["b"]}, responses, split)
        r = _sklearn_r(features["b"], responses, split.train, split.val, 30, ALPHAS,
                       scale_rows=split.train if standardize else None)
        np.testing.assert_allclose(model.val_r_, r.max(0), atol=1e-4)
        chosen = ALPHAS[np.argmax(r, axis=0)]
        agree = np.mean(chosen == model.alphas_)
        assert agree >= 0.95  # exact up to near-ties of float32 vs float64 scores


def test_picks_the_informative_layer_and_reaches_theory(fitted, synthetic):
    model, split = fitted
    _, _, theory, noise_sd = synthetic
    assert model.best_layer_ == "b"
    scores = model.layer_scores_.set_index("layer")
    assert list(model.layer_scores_.columns) == ["layer", "mean_val_r", "median_val_r",
                                                 "n_components", "selected", "stability"]
    assert scores.loc["b", "selected"] and not scores.loc[["a", "c"], "selected"].any()
    assert scores.loc["a", "mean_val_r"] < 0.2 < scores.loc["b", "mean_val_r"]
    assert (scores["n_components"] == 30).all()
    assert model.predictions_.shape == (split.test.size, 40)
    # 60 test images: per-voxel r is noisy, the ROI mean is close to the ceiling of the truth
    for group in (noise_sd == LOW_NOISE, noise_sd == HIGH_NOISE):
        assert abs(model.test_r_[group].mean() - theory[group].mean()) < 0.1
    # more noise -> more shrinkage
    log_alpha = np.log10(model.alphas_)
    assert log_alpha[noise_sd == HIGH_NOISE].mean() > log_alpha[noise_sd == LOW_NOISE].mean() + 0.5


def test_test_rows_never_influence_selection(synthetic, fitted):
    features, responses, _, _ = synthetic
    model, split = fitted
    rng = np.random.default_rng(99)
    poisoned_features = {}
    for layer, array in features.items():
        poisoned = array.copy()
        poisoned[split.test] = rng.uniform(0, 1e4, (split.test.size, array.shape[1]))
        poisoned_features[layer] = poisoned
    poisoned_responses = responses.copy()
    poisoned_responses[split.test] = rng.uniform(-1e3, 1e3, (split.test.size, 40))
    other = Absolute(n_components=30, progress=False)
    other.fit(poisoned_features, poisoned_responses, split)
    assert other.best_layer_ == model.best_layer_
    np.testing.assert_array_equal(other.alphas_, model.alphas_)
    np.testing.assert_array_equal(other.val_r_, model.val_r_)
    pd.testing.assert_frame_equal(other.layer_scores_, model.layer_scores_, check_exact=True)
    assert not np.allclose(other.test_r_, model.test_r_)


def test_same_inputs_give_identical_outputs(synthetic, fitted):
    features, responses, _, _ = synthetic
    model, split = fitted
    again = Absolute(n_components=30, progress=False).fit(features, responses, split)
    for name in ("alphas_", "val_r_", "test_r_", "predictions_"):
        np.testing.assert_array_equal(getattr(again, name), getattr(model, name))
    pd.testing.assert_frame_equal(again.layer_scores_, model.layer_scores_, check_exact=True)


def test_float16_memory_maps_give_the_same_fit(synthetic, tmp_path):
    features, responses, _, _ = synthetic
    split = make_splits(N_IMAGES, seed=0)
    half, maps = {}, {}
    for layer, array in features.items():
        half[layer] = array.astype(np.float16).astype(np.float32)
        np.save(tmp_path / f"{layer}.npy", array.astype(np.float16))
        maps[layer] = np.load(tmp_path / f"{layer}.npy", mmap_mode="r")
    from_memory = Absolute(n_components=30, progress=False).fit(half, responses, split)
    from_disk = Absolute(n_components=30, progress=False).fit(maps, responses, split)
    np.testing.assert_array_equal(from_disk.predictions_, from_memory.predictions_)
    np.testing.assert_array_equal(from_disk.val_r_, from_memory.val_r_)


def test_iter_columns_reads_row_segments_of_files(tmp_path, monkeypatch):
    data = np.arange(50 * 11, dtype=np.float16).reshape(50, 11)
    np.save(tmp_path / "x.npy", data)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    rows = np.random.default_rng(3).permutation(45)[:31]
    for array in (mapped, mapped[5:], data):  # whole file (read), a view, in memory (indexed)
        blocks = list(iter_columns(array, rows, 4))
        assert [columns for columns, _ in blocks] == [slice(0, 4), slice(4, 8), slice(8, 11)]
        assert all(block.dtype == np.float16 for _, block in blocks)  # kept as stored
        np.testing.assert_array_equal(np.hstack([b for _, b in blocks]), np.asarray(array)[rows])
    monkeypatch.setattr(os, "preadv", lambda *args: 0)  # the file shrank while being read
    with pytest.raises(InputError, match="shorter"):
        list(iter_columns(mapped, rows, 4))


def test_refit_on_train_only_uses_train_pca(synthetic):
    features, responses, _, _ = synthetic
    split = make_splits(N_IMAGES, seed=0)
    model = Absolute(n_components=30, refit="train", progress=False)
    model.fit({"b": features["b"]}, responses, split)
    z_fit, z_test, _ = pca_scores(features["b"][split.train], features["b"][split.test], 30)
    expected = np.column_stack([
        Ridge(alpha=a).fit(z_fit, responses[split.train][:, [v]]).predict(z_test).reshape(-1)
        for v, a in enumerate(model.alphas_)])
    np.testing.assert_allclose(model.predictions_, expected, atol=1e-4 * expected.std())


def test_paper_protocol_reports_cross_validated_r(synthetic):
    features, responses, _, _ = synthetic
    split = make_splits(N_IMAGES, seed=0, protocol="paper")
    layers = {"a": features["a"], "b": features["b"]}
    model = Absolute(n_components=30, progress=False).fit(layers, responses, split)
    assert model.best_layer_ == "b"
    folds = [_sklearn_r(features["b"], responses, tr, va, 30, ALPHAS) for tr, va in split.folds]
    cv_r = np.mean(folds, axis=0)
    np.testing.assert_allclose(model.val_r_, cv_r.max(0), atol=1e-4)
    np.testing.assert_allclose(model.layer_scores_.set_index("layer").loc["b", "mean_val_r"],
                               cv_r.max(0).mean(), atol=1e-5)
    assert model.test_r_.shape == (40,) and model.predictions_.shape == (split.test.size, 40)


def test_tie_goes_to_the_earlier_candidate_layer(synthetic):
    features, responses, _, _ = synthetic
    split = make_splits(N_IMAGES, seed=0)
    same = features["b"]
    model = Absolute(n_components=30, progress=False)
    model.fit({"classifier.5": same, "features.9": same.copy()}, responses, split)
    assert model.best_layer_ == "features.9"
    assert list(model.layer_scores_["layer"]) == ["features.9", "classifier.5"]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"alphas": [1.0, -1.0]}, "alphas"),
    ({"refit": "val"}, "refit"),
    ({"n_components": 0}, "n_components"),
])
def test_bad_settings_are_input_errors(synthetic, kwargs, message):
    features, responses, _, _ = synthetic
    with pytest.raises(InputError, match=message):
        EncodingModel(progress=False, **kwargs).fit(features, responses, make_splits(N_IMAGES))


def test_mismatched_rows_are_input_errors(synthetic):
    features, responses, _, _ = synthetic
    with pytest.raises(InputError, match=r"^features and responses disagree on the number of "
                                         r"images: features b has 399 rows, responses 400"):
        EncodingModel(progress=False).fit({"b": features["b"][:-1]}, responses,
                                          make_splits(N_IMAGES))
    split = make_splits(N_IMAGES)
    for part in (split.train, split.val, split.test):  # test rows too: r would be NaN
        bad = responses.copy()
        bad[part[0], [0, 3]] = np.nan
        with pytest.raises(InputError, match="responses: 2 voxels have NaN or infinite values"):
            EncodingModel(progress=False).fit({"b": features["b"]}, bad, split)


def test_more_components_than_training_images(synthetic):
    features, responses, _, _ = synthetic
    split = make_splits(80, seed=1)  # 60 train rows, 68 train+val rows for the refit
    model = Absolute(n_components=1000, progress=False)
    model.fit({"b": features["b"][:80], "c": features["c"][:80]}, responses[:80], split)
    scores = model.layer_scores_.set_index("layer")["n_components"]
    assert scores.to_dict() == {"b": 60, "c": 60}
    assert model.n_components_ == (68 if model.best_layer_ == "b" else 60)
    assert np.all(np.isfinite(model.test_r_)) and np.all(np.isfinite(model.predictions_))


def test_pca_cache_shares_decompositions_across_rois(synthetic, fitted, monkeypatch):
    features, responses, _, _ = synthetic
    whole, split = fitted
    cache = PCACache()
    computed = []
    original = EncodingModel._layer_matrix

    def counting(self, array, *args, **kwargs):
        computed.append(args[2])
        return original(self, array, *args, **kwargs)

    monkeypatch.setattr(EncodingModel, "_layer_matrix", counting)
    rois = [np.arange(0, 25), np.arange(25, 40)]
    models = [Absolute(n_components=30, progress=False, cache=cache)
              .fit(features, responses[:, roi], split) for roi in rois]
    assert computed == ["a", "b", "c"] and len(cache) == 3  # the second ROI reused them all
    for model, roi in zip(models, rois, strict=True):
        alone = Absolute(n_components=30, progress=False)
        alone.fit(features, responses[:, roi], split)
        np.testing.assert_array_equal(model.predictions_, alone.predictions_)
        np.testing.assert_array_equal(model.val_r_, alone.val_r_)
        np.testing.assert_allclose(model.val_r_, whole.val_r_[roi], atol=1e-12)  # per voxel
    other_split = make_splits(N_IMAGES, seed=1)
    Absolute(n_components=30, progress=False, cache=cache).fit(
        {"b": features["b"]}, responses, other_split)
    assert computed[-1] == "b" and len(cache) == 4  # another split is another entry


# Scale-free ridge and the uncertainty of the layer choice


@pytest.mark.parametrize("factor", [1e-3, 1e3])
def test_relative_alpha_grid_is_scale_free(synthetic, factor):
    """Activations 1000 times smaller or larger: the same choices and the same test r."""
    features, responses, _, _ = synthetic
    split = make_splits(N_IMAGES, seed=0)
    base = EncodingModel(n_components=30, progress=False).fit(features, responses, split)
    scaled = EncodingModel(n_components=30, progress=False).fit(
        {name: array * np.float32(factor) for name, array in features.items()}, responses, split)
    assert scaled.best_layer_ == base.best_layer_
    np.testing.assert_array_equal(scaled.alphas_, base.alphas_)
    np.testing.assert_allclose(scaled.test_r_, base.test_r_, atol=1e-4)
    np.testing.assert_allclose(scaled.absolute_alphas_, base.absolute_alphas_ * factor**2,
                               rtol=1e-3)
    # The absolute grid is not: smaller activations push voxels onto its smallest α.
    plain, tiny = (Absolute(n_components=30, progress=False).fit(
        {"b": features["b"] * np.float32(scale)}, responses, split) for scale in (1, 1e-3))
    assert tiny.alpha_edges_["low"] > plain.alpha_edges_["low"] + 10


def test_absolute_alpha_is_the_relative_one_times_the_mean_eigenvalue(synthetic, fitted):
    features, responses, _, _ = synthetic
    _, split = fitted
    model = EncodingModel(n_components=30, refit="train", progress=False)
    model.fit({"b": features["b"]}, responses, split)
    pca = PCA(30, svd_solver="full").fit(features["b"][split.train].astype(np.float64))
    mean_eigenvalue = pca.explained_variance_.mean() * (split.train.size - 1)
    np.testing.assert_allclose(model.absolute_alphas_, model.alphas_ * mean_eigenvalue,
                               rtol=1e-4)
    grid = np.logspace(-4, 4, 9)
    assert model.alpha_edges_ == {"low": int(np.sum(model.alphas_ == grid[0])),
                                  "high": int(np.sum(model.alphas_ == grid[-1]))}


def test_layer_choice_margin_and_stability(synthetic):
    features, responses, _, _ = synthetic
    split = make_splits(N_IMAGES, seed=0)
    rng = np.random.default_rng(5)
    near = features["b"] + rng.normal(0, 0.3, features["b"].shape).astype(np.float32)
    model = EncodingModel(n_components=30, progress=False).fit(
        {"a": features["a"], "b": features["b"], "b-noisy": near}, responses, split)
    scores = model.layer_scores_.set_index("layer")
    assert model.best_layer_ == "b"
    ranked = scores["mean_val_r"].sort_values(ascending=False)
    assert model.layer_margin_ == pytest.approx(ranked.iloc[0] - ranked.iloc[1])
    assert scores["stability"].sum() == pytest.approx(1.0)
    assert scores.loc["a", "stability"] == 0.0  # the unrelated layer never wins
    assert model.layer_stability_ == scores.loc["b", "stability"]
    # A near-equal layer wins a good share of the resamples: the choice is uncertain.
    assert 0.2 < scores.loc["b-noisy", "stability"] < 0.8
    clear = EncodingModel(n_components=30, progress=False).fit(
        {"a": features["a"], "b": features["b"]}, responses, split)
    assert clear.layer_stability_ == 1.0 and clear.layer_margin_ > 0.3
    again = EncodingModel(n_components=30, progress=False).fit(
        {"a": features["a"], "b": features["b"], "b-noisy": near}, responses, split)
    assert again.layer_stability_ == model.layer_stability_  # seeded


def test_shared_selection_follows_the_published_rule(synthetic):
    """P-A: per fold and layer the α of the best ROI-mean r; the layer with the best
    fold-averaged ROI-mean r; the α chosen on most folds (scikit-learn as the reference)."""
    features, responses, _, _ = synthetic
    split = make_splits(N_IMAGES, seed=0, protocol="paper")
    layers = {"a": features["a"], "b": features["b"], "c": features["c"]}
    layer, alpha = Absolute(n_components=30, progress=False).select_shared(layers, responses,
                                                                           split)
    expected = {}
    for name, x in layers.items():
        roi_mean = np.stack([_sklearn_r(x, responses, tr, va, 30, ALPHAS).mean(axis=1)
                             for tr, va in split.folds])  # (folds, alphas)
        votes = np.bincount(roi_mean.argmax(axis=1), minlength=ALPHAS.size)
        expected[name] = (roi_mean.max(axis=1).mean(), ALPHAS[np.argmax(votes)])
    best = max(expected, key=lambda name: expected[name][0])
    assert (layer, alpha) == (best, expected[best][1])
    # Every backbone then uses that pair: one layer, one α for all vertices.
    model = EncodingModel(n_components=30, progress=False, alpha_scale="absolute",
                          alphas=[alpha]).fit({layer: layers[layer]}, responses, split)
    assert model.best_layer_ == layer and np.all(model.alphas_ == alpha)
