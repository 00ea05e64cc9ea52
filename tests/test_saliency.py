"""Salience maps, the flip-controlled lateralisation index and its statistics (method §7.2)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import stats
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch import nn

from cortexcl.data.images import ImageStore
from cortexcl.encoding.features import extract_features
from cortexcl.errors import InputError
from cortexcl.evaluation.saliency import (
    ProbeNetwork,
    attribute,
    bootstrap_ci,
    flip_control,
    lateralization,
    lateralization_index,
    one_sample_test,
    paired_test,
    probe_head,
    saliency_examples,
    summary_table,
    write_summary,
)
from cortexcl.models.backbones import load_alexnet
from cortexcl.report.saliency_figures import draw_saliency_overlays


class SpatialGain(nn.Module):
    """Multiplies activations by a fixed spatial mask: a built-in preference for one region."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask


class ToyNet(nn.Module):
    """1×1 convolutions (+ an optional spatial gain), global average pool, linear classifier.

    Without a gain every operation commutes with mirroring, so the network has no preference
    for either half of the image: only the content can make its maps asymmetric.
    """

    def __init__(self, size: int = 16, gain: torch.Tensor | None = None, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        conv = nn.Conv2d(3, 6, kernel_size=1)
        linear = nn.Linear(6, 3)
        with torch.no_grad():
            for parameter in (*conv.parameters(), *linear.parameters()):
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
            conv.weight.abs_()  # positive responses to bright pixels
            linear.weight.abs_()
        mask = gain if gain is not None else torch.ones(size, size)
        self.features = nn.Sequential(conv, nn.ReLU(), SpatialGain(mask))
        self.classifier = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


class TensorImages:
    """Normalised images held in a tensor, served like an `ImageStore`."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def batches(self, indices, batch_size, device=None):
        index = torch.as_tensor(np.asarray(indices))
        yield from (chunk.to(device) for chunk in torch.split(self.images[index], batch_size))


def half_gain(size: int, axis: str = "horizontal", strong: float = 3.0) -> torch.Tensor:
    """A mask weighting the right half (or the top half) ``strong`` times the other half."""
    mask = torch.ones(size, size)
    if axis == "horizontal":
        mask[:, size // 2 :] = strong
    else:
        mask[: size // 2, :] = strong
    return mask


def blob_images(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Dim noise images with a bright square in a random place of the left half."""
    generator = torch.Generator().manual_seed(seed)
    images = 0.1 * torch.rand(n, 3, size, size, generator=generator)
    for i in range(n):
        top = int(torch.randint(0, size - 4, (1,), generator=generator))
        left = int(torch.randint(0, size // 2 - 4, (1,), generator=generator))
        images[i, :, top : top + 4, left : left + 4] += 2.0
    return images


def gradcam_by_hand(network: nn.Module, layer: nn.Module, images: torch.Tensor,
                    targets: torch.Tensor) -> torch.Tensor:
    """GradCAM from a forward hook and autograd: ReLU(Σ_k mean(∂y/∂A_k) A_k), upsampled."""
    captured = {}
    handle = layer.register_forward_hook(lambda _m, _i, out: captured.update(a=out))
    try:
        logits = network(images)
    finally:
        handle.remove()
    activation = captured["a"]
    (gradient,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), activation)
    weights = gradient.mean((2, 3), keepdim=True)
    cam = F.relu((weights * activation).sum(1, keepdim=True))
    return F.interpolate(cam, size=images.shape[-2:], mode="bilinear",
                         align_corners=False)[:, 0].detach()


@pytest.fixture(scope="module")
def alexnet_probe() -> ProbeNetwork:
    generator = np.random.default_rng(0)
    head = probe_head(generator.normal(size=(5, 4096)) * 0.05, generator.normal(size=5),
                      generator.normal(size=4096), generator.uniform(0.5, 2.0, 4096))
    return ProbeNetwork(load_alexnet("none", seed=0), head)


# probe head -----------------------------------------------------------------------------------


@pytest.mark.parametrize("n_classes", [2, 3])
def test_probe_head_reproduces_sklearn_decision_function(n_classes):
    rng = np.random.default_rng(1)
    features = rng.normal(loc=3.0, scale=rng.uniform(0.5, 4.0, 20), size=(150, 20))
    labels = rng.integers(0, n_classes, 150)
    features[np.arange(150), labels] += 2.0  # learnable
    scaler = StandardScaler().fit(features)
    probe = LogisticRegression(max_iter=5000).fit(scaler.transform(features), labels)
    head = probe_head(probe.coef_, probe.intercept_, scaler.mean_, scaler.scale_)
    with torch.no_grad():
        logits = head(torch.from_numpy(features).float()).numpy()
    expected = probe.decision_function(scaler.transform(features))
    np.testing.assert_allclose(logits.reshape(expected.shape), expected, atol=1e-4)


def test_probe_head_refuses_mismatched_shapes():
    with pytest.raises(InputError, match="do not fit"):
        probe_head(np.ones((3, 4)), np.ones(3), np.ones(5), np.ones(4))
    with pytest.raises(InputError, match="positive"):
        probe_head(np.ones((3, 4)), np.ones(3), np.ones(4), np.zeros(4))


def test_probe_network_is_fc7_then_head_and_leaves_backbone_alone(alexnet_probe):
    backbone = load_alexnet("none", seed=0).train()
    network = ProbeNetwork(backbone, alexnet_probe.head)
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    fc7 = extract_features(backbone, TensorImages(images), ["classifier.5"], device="cpu",
                           progress=False)["classifier.5"]
    with torch.no_grad():
        expected = alexnet_probe.head(torch.from_numpy(fc7))
        np.testing.assert_allclose(network(images).numpy(), expected.numpy(), rtol=1e-4,
                                   atol=1e-4)
    assert backbone.training and not network.training and network.backbone is not backbone
    assert not any(module._forward_hooks for module in network.modules())


# lateralisation index -------------------------------------------------------------------------


def test_lateralization_index_known_answers():
    right, left, symmetric = np.zeros((3, 8, 8)), np.zeros((8, 8)), np.ones((8, 8))
    right[:, :, 4:] = np.arange(1, 4)[:, None, None]
    left[2:5, :4] = 7.0
    np.testing.assert_allclose(lateralization_index(right), [1, 1, 1], atol=1e-9)
    assert lateralization_index(left) == pytest.approx(-1.0)
    assert lateralization_index(symmetric) == pytest.approx(0.0)
    assert lateralization_index(np.zeros((8, 8))) == 0.0
    top = np.zeros((8, 8))
    top[:4] = 1.0
    assert lateralization_index(top, "vertical") == pytest.approx(1.0)
    assert lateralization_index(top, "horizontal") == pytest.approx(0.0)
    odd = np.zeros((2, 5))
    odd[:, 2], odd[:, 4] = 2.0, 1.0  # the middle column counts only in the denominator
    assert lateralization_index(odd) == pytest.approx(1 / 3)
    rng = np.random.default_rng(0)
    maps = rng.uniform(size=(4, 6, 6))
    np.testing.assert_allclose(lateralization_index(maps[..., ::-1]),
                               -lateralization_index(maps))
    with pytest.raises(ValueError, match="non-negative"):
        lateralization_index(-symmetric)
    with pytest.raises(InputError, match="axis"):
        lateralization_index(symmetric, "diagonal")


def test_flip_control_cancels_content_asymmetry():
    images = blob_images(6)
    frame = lateralization(ToyNet(), images, [0, 1, 2, 0, 1, 2], layer="features.2",
                           batch_size=4, device="cpu", progress=False)
    assert (frame["li"] < -0.3).all()  # the content sits on the left
    np.testing.assert_allclose(frame["li_flipped"], -frame["li"], atol=1e-5)
    np.testing.assert_allclose(frame["b"], 0.0, atol=1e-5)
    both = lateralization(ToyNet(), images, [2, 0, 0], indices=[5, 0, 3],
                          layer="features.2", axes=("horizontal", "vertical"), batch_size=2,
                          device="cpu", progress=False)
    assert list(both["axis"]) == ["horizontal"] * 3 + ["vertical"] * 3
    assert list(both["image"]) == [5, 0, 3] * 2
    np.testing.assert_allclose(both["li"][:3], frame["li"][[5, 0, 3]], rtol=1e-6)
    np.testing.assert_allclose(both["b"], 0.0, atol=1e-5)


@pytest.mark.parametrize("method", ["gradcam", "saliency", "integrated_gradients"])
@pytest.mark.parametrize("axis", ["horizontal", "vertical"])
def test_flip_control_keeps_a_built_in_preference(method, axis):
    network = ToyNet(gain=half_gain(16, axis))
    images = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    frame = lateralization(network, images, method=method, layer="features.2", axes=axis,
                           batch_size=2, device="cpu", n_steps=8, progress=False)
    assert (frame["li"] > 0.2).all() and (frame["li_flipped"] > 0.2).all()
    assert (frame["b"] > 0.2).all()
    np.testing.assert_array_equal(frame["target"], frame["target_flipped"])


# GradCAM --------------------------------------------------------------------------------------


def test_gradcam_matches_a_hand_computation_on_a_tiny_input():
    network = ToyNet(gain=half_gain(16)).eval()
    images = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    targets = torch.tensor([2, 0, 1])
    maps = attribute(network, images, targets.numpy(), layer="features.2", device="cpu",
                     progress=False)
    expected = gradcam_by_hand(network, network.features[2], images, targets)
    np.testing.assert_allclose(maps, expected.numpy(), rtol=1e-5, atol=1e-6)


def test_gradcam_on_alexnet_shape_sign_batching_and_hand_computation(alexnet_probe):
    images = torch.randn(4, 3, 96, 96, generator=torch.Generator().manual_seed(4))
    targets = np.array([0, 3, 1, 4])
    one = attribute(alexnet_probe, images, targets, batch_size=1, device="cpu", progress=False)
    four = attribute(alexnet_probe, images, targets, batch_size=4, device="cpu",
                     progress=False)
    assert one.shape == (4, 96, 96) and one.dtype == np.float32
    assert one.min() >= 0 and one.max() > 0
    np.testing.assert_allclose(one, four, rtol=1e-4, atol=1e-6 * float(one.max()))
    expected = gradcam_by_hand(alexnet_probe, alexnet_probe.backbone.features[12], images,
                               torch.from_numpy(targets))
    np.testing.assert_allclose(four, expected.numpy(), rtol=1e-4,
                               atol=1e-6 * float(one.max()))
    predicted = attribute(alexnet_probe, images, None, batch_size=2, device="cpu",
                          progress=False)
    with torch.no_grad():
        argmax = alexnet_probe(images).argmax(1)
    np.testing.assert_allclose(
        predicted, gradcam_by_hand(alexnet_probe, alexnet_probe.backbone.features[12], images,
                                   argmax).numpy(), rtol=1e-4, atol=1e-6 * float(one.max()))


def test_attribute_streams_float16_from_an_image_store(tmp_path):
    rng = np.random.default_rng(5)
    paths = []
    for i in range(5):
        paths.append(tmp_path / f"img{i}.png")
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(paths[-1])
    store = ImageStore(paths, size=16, cache_dir=tmp_path / "cache", progress=False)
    network, indices, targets = ToyNet(), [4, 0, 2], [1, 2, 0]
    memory = attribute(network, store, targets, indices=indices, layer="features.2",
                       batch_size=2, device="cpu", progress=False)
    on_disk = attribute(network, store, targets, indices=indices, layer="features.2",
                        batch_size=2, device="cpu", out_path=tmp_path / "maps" / "cam.npy",
                        progress=False)
    assert on_disk.dtype == np.float16 and on_disk.shape == (3, 16, 16)
    np.testing.assert_allclose(np.load(tmp_path / "maps" / "cam.npy"), memory, rtol=2e-3,
                               atol=1e-4)
    direct = attribute(network, store.tensor(indices), targets, layer="features.2",
                       device="cpu", progress=False)
    np.testing.assert_allclose(memory, direct, rtol=1e-6)
    with pytest.raises(InputError, match="targets"):
        attribute(network, store, [0, 1], indices=indices, layer="features.2", device="cpu",
                  progress=False)
    with pytest.raises(InputError, match="layer"):
        attribute(network, store, targets, indices=indices, layer="features.9", device="cpu",
                  progress=False)


# statistics -----------------------------------------------------------------------------------


def test_one_sample_and_paired_tests():
    rng = np.random.default_rng(6)
    shifted = rng.normal(0.2, 0.1, 60)
    result = one_sample_test(shifted, n_resamples=2000, seed=1)
    assert result["ci_low"] < result["mean"] < result["ci_high"]
    assert result["ci_low"] > 0 and result["p_value"] < 1e-6
    assert result["p_value"] == pytest.approx(stats.wilcoxon(shifted).pvalue)
    assert bootstrap_ci(shifted, 2000, seed=1) == bootstrap_ci(shifted, 2000, seed=1)
    standard_error = shifted.std(ddof=1) / np.sqrt(60)
    assert result["ci_high"] - result["ci_low"] == pytest.approx(2 * 1.96 * standard_error,
                                                                 rel=0.15)
    reference = shifted + rng.normal(0.0, 0.01, 60)
    paired = paired_test(shifted, reference, n_resamples=2000, seed=1)
    assert paired == one_sample_test(shifted - reference, n_resamples=2000, seed=1)
    assert one_sample_test(np.zeros(5), n_resamples=100)["p_value"] == 1.0
    np.testing.assert_allclose(flip_control([0.4, -0.2], [-0.4, 0.6]), [0.0, 0.2])


def test_summary_table_is_written_as_csv(tmp_path):
    rng = np.random.default_rng(7)
    per_model = {"lh": rng.normal(0.1, 0.1, 40), "rh": rng.normal(-0.1, 0.1, 40)}
    frame = summary_table(per_model, [("lh", "rh")], n_resamples=500, seed=0)
    assert list(frame["model"]) == ["lh", "rh", "lh"]
    assert list(frame["reference"]) == ["", "", "rh"]
    assert frame.loc[2, "mean"] == pytest.approx((per_model["lh"] - per_model["rh"]).mean())
    back = pd.read_csv(write_summary(frame, tmp_path / "tables" / "lateralization.csv"),
                       keep_default_na=False)
    np.testing.assert_allclose(back["p_value"], frame["p_value"])
    with pytest.raises(InputError, match="unknown"):
        summary_table(per_model, [("lh", "untuned")])


# figure ---------------------------------------------------------------------------------------


def test_overlay_figure(tmp_path):
    images_uint8 = np.random.default_rng(8).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    batch = torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float() / 255
    models = [saliency_examples(name, network, batch, [0, 1], layer="features.2", device="cpu")
              for name, network in (("untuned", ToyNet()), ("lh", ToyNet(gain=half_gain(16))))]
    assert models[1].maps.shape == (2, 16, 16)
    assert np.all((models[1].probability > 0) & (models[1].probability < 1))
    path = draw_saliency_overlays(images_uint8, models, tmp_path / "fig" / "saliency.png",
                                  image_labels=["a", "b"])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(InputError, match="do not match"):
        draw_saliency_overlays(images_uint8[:1], models, tmp_path / "bad.png")
