"""Classification probes (docs/method.md §5): data sets, cached features, split, probes, outputs."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from cortexcl.errors import InputError
from cortexcl.evaluation import classification as cl
from cortexcl.models.backbones import load_alexnet

N_ORIENTATIONS = 6


@pytest.fixture(autouse=True)
def _one_blas_thread():
    """Tiny fits: on a busy shared CPU, BLAS threads spinning cost more than they save."""
    with threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def backbone() -> torch.nn.Module:
    return load_alexnet("none", seed=0)


@pytest.fixture(scope="module")
def gratings(tmp_path_factory):
    """An ImageFolder of noisy gratings whose orientation (6 steps of 30°) is the class."""
    root = tmp_path_factory.mktemp("gratings")
    rng = np.random.default_rng(0)
    size = 72
    y, x = np.mgrid[0:size, 0:size] / size
    for label in range(N_ORIENTATIONS):
        folder = root / f"orientation{label}"
        folder.mkdir()
        theta = np.pi * label / N_ORIENTATIONS
        for i in range(20):
            frequency, phase = rng.uniform(3, 6), rng.uniform(0, 2 * np.pi)
            wave = np.sin(2 * np.pi * frequency * (np.cos(theta) * x + np.sin(theta) * y) + phase)
            pixels = 128 + 80 * wave[..., None] * rng.uniform(0.5, 1, 3)
            pixels += rng.normal(0, 20, (size, size, 3))
            image = np.clip(pixels, 0, 255).astype(np.uint8)
            Image.fromarray(image).save(folder / f"{i:03d}.png")
    return root


def _blobs(n: int, d: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping Gaussian classes with features of very different offsets and scales."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (classes, d))
    labels = rng.integers(0, classes, n)
    noise = rng.normal(0, 1.5, (n, d)) * rng.uniform(0.5, 3, d)
    return centres[labels] + noise + rng.normal(0, 2, d), labels


def test_probe_transform_matches_method():
    transform = cl.probe_transform()
    image = Image.fromarray(np.full((300, 400), 255, np.uint8))  # grayscale, 4:3
    tensor = transform(image)
    assert tensor.shape == (3, 224, 224)
    expected = (1 - np.array(cl.IMAGENET_MEAN)) / np.array(cl.IMAGENET_STD)
    np.testing.assert_allclose(tensor.mean(dim=(1, 2)).numpy(), expected, rtol=1e-5)
    assert "Resize(size=256" in repr(transform) and "CenterCrop(size=(224, 224))" in repr(transform)
    assert cl.probe_transform(64).transforms[1].size == 73


def test_split_is_seeded_randperm_with_published_sizes():
    for n, n_train in ((50000, 42500), (36500, 31025), (30607, 26015)):
        train, test = cl.probe_split(n)
        assert (train.size, test.size) == (n_train, n - n_train)
    train, test = cl.probe_split(100, seed=3)
    order = torch.randperm(100, generator=torch.Generator().manual_seed(3)).numpy()
    np.testing.assert_array_equal(np.concatenate([train, test]), order)
    assert train.size == 85


def test_top_k_accuracy_known_answers():
    probabilities = np.array([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7], [0.2, 0.5, 0.3]])
    classes = np.array([10, 20, 30])
    labels = np.array([10, 20, 30])
    assert cl.top_k_accuracy(probabilities, labels, classes, 1) == pytest.approx(1 / 3)
    assert cl.top_k_accuracy(probabilities, labels, classes, 2) == pytest.approx(1.0)
    assert np.isnan(cl.top_k_accuracy(probabilities, labels, classes, 5))


def test_sklearn_and_torch_probes_agree():
    x, y = _blobs(200, 20, 4, seed=0)
    x_test, _ = _blobs(100, 20, 4, seed=1)
    a = cl.fit_sklearn_probe(x, y, tol=1e-6)
    b = cl.fit_torch_probe(x, y, tol=1e-6)
    # No randomness: a refit differs only by BLAS rounding.
    np.testing.assert_allclose(cl.fit_torch_probe(x, y, tol=1e-6).coef, b.coef, rtol=1e-8)
    np.testing.assert_allclose(a.mean, b.mean, rtol=1e-10)
    np.testing.assert_allclose(a.scale, b.scale, rtol=1e-10)
    pa, pb = a.probabilities(x_test), b.probabilities(x_test)
    assert np.abs(pa - pb).max() < 1e-3
    assert (pa.argmax(1) == pb.argmax(1)).mean() >= 0.99
    # The published settings (tol 1e-4) give the same predictions.
    published = cl.fit_sklearn_probe(x, y).probabilities(x_test)
    torch_probe = cl.fit_torch_probe(x, y).probabilities(x_test)
    assert (published.argmax(1) == torch_probe.argmax(1)).mean() >= 0.99


def test_sklearn_probe_is_the_published_pipeline():
    x, y = _blobs(150, 8, 3, seed=2)
    probe = cl.fit_sklearn_probe(x, y)
    scaler = StandardScaler().fit(x)
    model = LogisticRegression(C=1.0, max_iter=5000).fit(scaler.transform(x), y)
    np.testing.assert_allclose(probe.probabilities(x), model.predict_proba(scaler.transform(x)),
                               atol=1e-12)


def test_two_class_probe_keeps_probabilities():
    x, y = _blobs(120, 5, 2, seed=4)
    probe = cl.fit_sklearn_probe(x, y)
    scaler = StandardScaler().fit(x)
    model = LogisticRegression(C=1.0, max_iter=5000).fit(scaler.transform(x), y)
    assert probe.coef.shape == (2, 5)
    np.testing.assert_allclose(probe.probabilities(x), model.predict_proba(scaler.transform(x)),
                               atol=1e-12)


def test_linear_probe_round_trip_and_folded_head(tmp_path):
    x, y = _blobs(120, 6, 3, seed=5)
    probe = cl.fit_torch_probe(x, y)
    loaded = cl.LinearProbe.load(probe.save(tmp_path / "probe"))
    np.testing.assert_allclose(loaded.logits(x), probe.logits(x), rtol=1e-4, atol=1e-4)
    weight = loaded.coef / loaded.scale
    bias = loaded.intercept - weight @ loaded.mean
    np.testing.assert_allclose(x @ weight.T + bias, loaded.logits(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError, match="not a probe folder"):
        cl.LinearProbe.load(tmp_path)


def test_probe_learns_orientation_well_above_chance(gratings, backbone, tmp_path):
    dataset = cl.open_dataset("imagefolder", gratings, transform=cl.probe_transform(64))
    assert len(dataset) == 20 * N_ORIENTATIONS
    table = cl.probe_backbones({"random": backbone}, dataset, tmp_path, probe="torch",
                               batch_size=40, device="cpu", progress=False)
    row = table.iloc[0]
    assert (row["n_train"], row["n_test"]) == (102, 18)
    assert row["top1"] >= 0.8  # chance is 1/6
    assert row["top5"] >= row["top1"]


def test_fake_pipeline_outputs_and_cache(backbone, tmp_path, monkeypatch):
    calls = []
    real = cl.extract_features
    monkeypatch.setattr(cl, "extract_features", lambda *a, **k: calls.append(1) or real(*a, **k))
    dataset = cl.fake_dataset(n_images=40, n_classes=6)
    cache = tmp_path / "cache"
    table = cl.probe_backbones({"a": backbone}, dataset, tmp_path / "out", batch_size=20,
                               device="cpu", cache_dir=cache, progress=False)
    assert list(table.columns) == list(cl.TABLE_COLUMNS)
    assert (table.loc[0, "n_train"], table.loc[0, "n_test"]) == (34, 6)
    folder = tmp_path / "out" / "fake" / "a"
    probabilities = np.load(folder / "probabilities.npy")
    assert probabilities.dtype == np.float32 and probabilities.shape == (6, 6)
    np.testing.assert_allclose(probabilities.sum(1), 1, rtol=1e-5)
    probe = cl.LinearProbe.load(folder)
    assert probe.coef.shape == (6, 4096) and probe.intercept.shape == (6,)
    assert probe.mean.shape == probe.scale.shape == (4096,)
    _, test = cl.probe_split(40)
    np.testing.assert_array_equal(np.load(folder / "test_indices.npy"), test)
    labels = np.load(folder / "labels.npy")
    np.testing.assert_array_equal(labels, [int(dataset.data[i][1]) for i in test])
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["seed"] == 0 and summary["probe"] == "sklearn"
    assert summary["layer"] == "classifier.5" and summary["n_classes"] == 6
    assert len(calls) == 1

    # Same backbone again (a second name): features come from the cache.
    again = cl.probe_backbones({"b": backbone}, dataset, tmp_path / "out", device="cpu",
                               cache_dir=cache, progress=False)
    assert len(calls) == 1
    assert again.loc[0, "top1"] == table.loc[0, "top1"]
    csv = pd.read_csv(tmp_path / "out" / cl.TABLE_NAME)
    assert sorted(csv["name"]) == ["a", "b"]
    # Other weights or another layer: extracted anew.
    other = load_alexnet("none", seed=1)
    features, _ = cl.extract_probe_features(other, dataset, layer="classifier.2", device="cpu",
                                            cache_dir=cache, progress=False)
    assert len(calls) == 2 and features.shape == (40, 4096)
    assert sum(1 for p in cache.iterdir() if not p.name.startswith(".")) == 2


@pytest.mark.parametrize("name", ["imagenet", "caltech256", "places365", "imagefolder"])
def test_missing_dataset_is_an_input_error(name, tmp_path):
    with pytest.raises(InputError, match=re.escape(str(tmp_path / "absent"))):
        cl.open_dataset(name, tmp_path / "absent")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match=name):
        cl.open_dataset(name, empty)
    assert list(empty.iterdir()) == []  # nothing downloaded


def test_bad_arguments_are_input_errors(backbone, tmp_path):
    with pytest.raises(InputError, match="unknown name"):
        cl.open_dataset("mnist", tmp_path)
    dataset = cl.fake_dataset(n_images=10)
    with pytest.raises(InputError, match="unknown module name.*features.99"):
        cl.extract_probe_features(backbone, dataset, layer="features.99", cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InputError, match="folder name"):
        cl.probe_backbones({"a/b": backbone}, dataset, tmp_path, progress=False)
    with pytest.raises(InputError, match="unknown kind"):
        cl.probe_backbones({"a": backbone}, dataset, tmp_path, probe="svm", progress=False)
