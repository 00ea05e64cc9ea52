"""Layer activations: shapes, values, float16 streaming to disk, error handling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cortexcl.data.images import ImageStore
from cortexcl.encoding.features import extract_features, feature_path
from cortexcl.errors import InputError
from cortexcl.models.backbones import CANDIDATE_LAYERS, load_alexnet

DIMS_224 = {"features.2": 46656, "features.5": 32448, "features.7": 64896, "features.9": 43264,
            "features.12": 9216, "classifier.2": 4096, "classifier.5": 4096, "classifier.6": 1000}


class FakeImages:
    """Random normalised images with the `ImageStore` batch API."""

    def __init__(self, n: int, size: int, fail_after: int | None = None) -> None:
        generator = torch.Generator().manual_seed(0)
        self.data = torch.randn(n, 3, size, size, generator=generator)
        self.fail_after = fail_after

    def __len__(self) -> int:
        return len(self.data)

    def batches(self, indices, batch_size, device=None):
        indices = np.asarray(indices)
        for start in range(0, indices.size, batch_size):
            if self.fail_after is not None and start >= self.fail_after:
                raise RuntimeError("image source failed")
            yield self.data[indices[start : start + batch_size]].to(device)


@pytest.fixture(scope="module")
def model():
    return load_alexnet("none", seed=0)


def test_candidate_layer_dimensions_at_224(model):
    features = extract_features(model, FakeImages(2, 224), batch_size=2, progress=False)
    assert list(features) == list(CANDIDATE_LAYERS)
    for layer, array in features.items():
        assert array.shape == (2, DIMS_224[layer]) and array.dtype == np.float32


def test_values_match_a_plain_forward_pass(model):
    images = FakeImages(5, 64)
    features = extract_features(model, images, layers=("features.12", "classifier.6"),
                                indices=[4, 0, 2], batch_size=2, progress=False)
    with torch.no_grad():
        x = images.data[[4, 0, 2]]
        conv = model.features(x).flatten(1).numpy()
        logits = model(x).numpy()
    np.testing.assert_allclose(features["features.12"], conv, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(features["classifier.6"], logits, rtol=1e-4, atol=1e-5)


def test_model_is_left_as_it_was(model):
    model.train()
    try:
        extract_features(model, FakeImages(2, 64), layers=("classifier.2",), progress=False)
        assert model.training
    finally:
        model.eval()


def test_out_dir_streams_float16_memory_maps(model, tmp_path):
    images = FakeImages(7, 64)
    layers = ("features.2", "classifier.5")
    in_memory = extract_features(model, images, layers=layers, batch_size=3, progress=False)
    on_disk = extract_features(model, images, layers=layers, batch_size=3,
                               out_dir=tmp_path / "features", progress=False)
    for layer in layers:
        array = on_disk[layer]
        assert isinstance(array, np.memmap) and array.mode == "r"
        assert array.dtype == np.float16 and array.shape == in_memory[layer].shape
        assert Path(array.filename) == feature_path(tmp_path / "features", layer)
        np.testing.assert_array_equal(array, in_memory[layer].astype(np.float16))
    assert sorted(p.name for p in (tmp_path / "features").iterdir()) == [
        "classifier.5.npy", "features.2.npy"]


def test_failure_leaves_no_partial_files(model, tmp_path):
    with pytest.raises(RuntimeError, match="image source failed"):
        extract_features(model, FakeImages(6, 64, fail_after=2), layers=("classifier.6",),
                         batch_size=2, out_dir=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_float16_overflow_is_reported(tmp_path):
    big = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2))
    torch.nn.init.constant_(big[1].weight, 1e5)
    with pytest.raises(InputError, match="beyond float16"):
        extract_features(big, FakeImages(2, 4), layers=("1",), out_dir=tmp_path, progress=False)
    features = extract_features(big, FakeImages(2, 4), layers=("1",), progress=False)
    assert np.abs(features["1"]).max() > 65504


def test_bad_arguments_are_input_errors(model):
    with pytest.raises(InputError, match="unknown module"):
        extract_features(model, FakeImages(2, 64), layers=("features.99",), progress=False)
    with pytest.raises(InputError, match="batch_size"):
        extract_features(model, FakeImages(2, 64), batch_size=0, progress=False)


def test_works_with_an_image_store(model, tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (80, 80, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    store = ImageStore(paths, size=64, cache_dir=tmp_path / "cache", progress=False)
    features = extract_features(model, store, layers=("classifier.6",), progress=False)
    with torch.no_grad():
        expected = model(store.tensor([0, 1, 2])).numpy()
    np.testing.assert_allclose(features["classifier.6"], expected, rtol=1e-4, atol=1e-5)
