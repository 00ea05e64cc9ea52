"""Tests of the InfoNCE loss and the contrastive tuning model."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from torchvision.models import alexnet

from cortexcl.errors import InputError
from cortexcl.models import TUNING_METHODS
from cortexcl.models.contrastive import ContrastiveModel, cosine_similarities, info_nce
from tiny_backbone import random_pairs, seeded, tiny_alexnet

CL_SETTINGS = SimpleNamespace(
    h_ratio=0.8, z_ratio=0.2, temperature=0.3, symmetric=False, frozen=[], regression_weight=0.0
)


def reference_info_nce(z_x: np.ndarray, z_y: np.ndarray, tau: float, symmetric: bool) -> float:
    """docs/method.md §2.2 written out: S_ij = cos(z_y,i, z_x,j); image j's softmax runs over i."""
    unit_x = z_x / np.linalg.norm(z_x, axis=1, keepdims=True)
    unit_y = z_y / np.linalg.norm(z_y, axis=1, keepdims=True)
    s = unit_y @ unit_x.T
    image_to_response = np.mean(logsumexp(s / tau, axis=0) - np.diag(s) / tau)
    if not symmetric:
        return float(image_to_response)
    response_to_image = np.mean(logsumexp(s / tau, axis=1) - np.diag(s) / tau)
    return float((image_to_response + response_to_image) / 2)


def embeddings(batch: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    z_x = torch.randn(batch, dim, generator=generator, dtype=torch.float64)
    z_y = z_x + torch.randn(batch, dim, generator=generator, dtype=torch.float64)
    return z_x, z_y


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize(("batch", "tau"), [(2, 0.3), (7, 0.05), (33, 0.3), (16, 2.0)])
def test_info_nce_matches_numpy(batch, tau, symmetric):
    z_x, z_y = embeddings(batch, 5, seed=batch)
    expected = reference_info_nce(z_x.numpy(), z_y.numpy(), tau, symmetric)
    loss = info_nce(z_x, z_y, temperature=tau, symmetric=symmetric)
    assert loss.dtype == torch.float64 and loss.ndim == 0
    assert loss.item() == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_info_nce_direction():
    z_x, z_y = embeddings(9, 4, seed=3)
    forward, backward = info_nce(z_x, z_y), info_nce(z_y, z_x)
    assert forward.item() != pytest.approx(backward.item(), rel=1e-6)
    torch.testing.assert_close(
        info_nce(z_x, z_y, symmetric=True), info_nce(z_y, z_x, symmetric=True)
    )
    torch.testing.assert_close(info_nce(z_x, z_y, symmetric=True), (forward + backward) / 2)
    s = cosine_similarities(z_x, z_y)
    torch.testing.assert_close(
        s[2, 5], torch.nn.functional.cosine_similarity(z_y[2], z_x[5], dim=0)
    )


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("batch", [1, 4, 100])
def test_info_nce_is_log_b_for_identical_embeddings(batch, symmetric):
    constant = torch.ones(batch, 6, dtype=torch.float64)
    assert info_nce(constant, 3 * constant, symmetric=symmetric).item() == pytest.approx(
        math.log(batch), abs=1e-12
    )


def test_info_nce_known_values():
    eye = torch.eye(8, dtype=torch.float64)
    # Perfectly aligned orthogonal pairs: S = I; each softmax puts e^(1/tau) against 7 * e^0.
    tau = 0.1
    expected = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + 7))
    assert info_nce(eye, 5 * eye, temperature=tau).item() == pytest.approx(expected, rel=1e-12)
    assert info_nce(eye, eye, temperature=0.01).item() < 1e-40
    # Scale invariance: cosine similarity ignores the norms.
    z_x, z_y = embeddings(6, 3, seed=4)
    torch.testing.assert_close(info_nce(z_x, z_y), info_nce(2.5 * z_x, 0.1 * z_y))


def test_info_nce_runs_in_float32_under_autocast():
    z_x, z_y = (z.float() for z in embeddings(64, 32, seed=7))
    expected = info_nce(z_x, z_y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert cosine_similarities(z_x, z_y).dtype == torch.float32
        assert cosine_similarities(z_x.bfloat16(), z_y.bfloat16()).dtype == torch.float32
        loss = info_nce(z_x, z_y)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected)


def test_info_nce_gradient():
    z_x, z_y = embeddings(5, 3, seed=5)
    z_x.requires_grad_(True)
    z_y.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: info_nce(a, b, symmetric=True), (z_x, z_y))


def test_info_nce_rejects_bad_input():
    z_x, z_y = embeddings(4, 3, seed=6)
    with pytest.raises(ValueError, match="embeddings"):
        info_nce(z_x, z_y[:3])
    with pytest.raises(ValueError, match="embeddings"):
        info_nce(z_x[:0], z_y[:0])
    with pytest.raises(InputError, match="temperature"):
        info_nce(z_x, z_y, temperature=0.0)


def make_model(n_vertices: int = 37, seed: int = 0, dropout: float = 0.5, **kwargs):
    backbone = tiny_alexnet(seed, dropout=dropout)
    return seeded(lambda: ContrastiveModel(backbone, n_vertices, **kwargs), seed + 1)


def test_model_shapes_and_defaults():
    model = make_model(37)
    assert (model.h, model.z) == (29, 7)
    assert model.w_x.weight.shape == (29, 1000) and model.w_x.bias is None
    assert model.w_y.weight.shape == (29, 37) and model.w_y.bias is None
    assert model.regression is None
    assert not any(key.startswith("regression") for key in model.state_dict())
    images, responses = random_pairs(6, 37)
    assert model.embed_images(images).shape == (6, 7)
    assert model.embed_responses(responses).shape == (6, 7)
    other = make_model(37, h=10, z=4, temperature=0.5)
    assert other.head.out.weight.shape == (4, 10) and other.temperature == 0.5


def test_model_loss_is_info_nce_of_the_embeddings():
    model = make_model(37, symmetric=True).eval()
    images, responses = random_pairs(8, 37, seed=1)
    expected = info_nce(
        model.embed_images(images), model.embed_responses(responses), 0.3, symmetric=True
    )
    torch.testing.assert_close(model.loss(images, responses), expected)
    torch.testing.assert_close(model.loss(images, responses, subject="subj01"), expected)


def test_batch_norm_statistics_are_per_modality():
    model = make_model(37, dropout=0.0).train()
    concatenated = copy.deepcopy(model)
    images, responses = random_pairs(10, 37, seed=2)
    with torch.no_grad():
        h_x, h_y = model.w_x(model.backbone(images)), model.w_y(responses)
        separate = info_nce(copy.deepcopy(model.head)(h_x), copy.deepcopy(model.head)(h_y))
        loss = model.loss(images, responses)
        joint = concatenated.head(torch.cat([h_x, h_y]))
    torch.testing.assert_close(loss, separate)
    assert loss.item() != pytest.approx(info_nce(joint[:10], joint[10:]).item(), rel=1e-4)
    # Two updates of the running mean (one per modality) differ from one update on both.
    for name in ("bn1", "bn2"):
        per_modality = getattr(model.head, name)
        joint_bn = getattr(concatenated.head, name)
        assert per_modality.num_batches_tracked.item() == 2
        assert joint_bn.num_batches_tracked.item() == 1
        assert not torch.allclose(per_modality.running_mean, joint_bn.running_mean)
    m = model.head.bn1.momentum
    mean_x = model.head.fc1(h_x).mean(0).detach()
    mean_y = model.head.fc1(h_y).mean(0).detach()
    running = model.head.bn1.running_mean
    expected = [
        (1 - m) * m * first + m * second for first, second in ((mean_x, mean_y), (mean_y, mean_x))
    ]
    assert any(torch.allclose(running, e, atol=1e-6) for e in expected)


def test_gradients_reach_every_trainable_parameter():
    model = make_model(37, regression_weight=0.5).train()
    images, responses = random_pairs(8, 37, seed=3)
    model.loss(images, responses).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        if name in ("head.fc1.bias", "head.fc2.bias"):
            # A bias right before a training-mode BatchNorm is cancelled by the mean.
            assert parameter.grad.abs().max() < 1e-5, name
        else:
            assert parameter.grad.abs().max() > 0, name


def test_frozen_layers_get_no_gradient():
    settings = SimpleNamespace(**{**vars(CL_SETTINGS), "frozen": ["features.0"]})
    backbone = tiny_alexnet()
    model = seeded(lambda: TUNING_METHODS["cl"].build(backbone, {"subj01": 37}, settings))
    assert isinstance(model, ContrastiveModel) and model.backbone is backbone
    model.train()
    model.loss(*random_pairs(8, 37, seed=4)).backward()
    assert backbone.features[0].weight.grad is None and backbone.features[0].bias.grad is None
    assert backbone.features[2].weight.grad.abs().max() > 0
    assert model.w_y.weight.grad.abs().max() > 0


def test_mixed_objective():
    model = make_model(37, regression_weight=0.25).eval()
    assert model.regression.weight.shape == (37, 1000) and model.regression.bias is not None
    images, responses = random_pairs(6, 37, seed=5)
    a = model.backbone(images)
    z_x, z_y = model.head(model.w_x(a)), model.embed_responses(responses)
    mse = ((model.regression(a) - responses) ** 2).mean()
    torch.testing.assert_close(model.loss(images, responses), info_nce(z_x, z_y) + 0.25 * mse)
    with pytest.raises(InputError, match="regression_weight"):
        make_model(37, regression_weight=-1.0)


def test_from_settings():
    settings = SimpleNamespace(**{**vars(CL_SETTINGS), "h_ratio": 0.5, "symmetric": True})
    model = seeded(lambda: ContrastiveModel.from_settings(tiny_alexnet(), {"subj02": 40}, settings))
    assert (model.n_vertices, model.h, model.z, model.symmetric) == (40, 20, 8, True)
    with pytest.raises(InputError, match="one subject"):
        ContrastiveModel.from_settings(tiny_alexnet(), {"subj01": 40, "subj02": 41}, settings)


def test_bad_batches():
    model = make_model(37).train()
    images, responses = random_pairs(4, 37, seed=6)
    with pytest.raises(ValueError, match="at least 2"):
        model.loss(images[:1], responses[:1])
    with pytest.raises(ValueError, match="responses"):
        model.loss(images, responses[:, :36])
    with pytest.raises(ValueError, match="4 images but 3 responses"):
        model.loss(images, responses[:3])
    model.eval()
    assert model.loss(images[:1], responses[:1]).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(InputError):
        make_model(0)
    with pytest.raises(InputError, match="temperature"):
        make_model(37, temperature=-0.3)


def test_real_alexnet():
    backbone = seeded(lambda: alexnet(weights=None))
    model = seeded(lambda: ContrastiveModel(backbone, 37), 1).train()
    images, responses = random_pairs(4, 37, seed=7, size=64)
    loss = model.loss(images, responses)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert backbone.features[0].weight.grad.abs().max() > 0
    assert model.w_x.weight.shape == (29, 1000)
    model.eval()
    with torch.no_grad():
        assert model.embed_images(images).shape == (4, 7)


def test_training_steps_lower_the_loss():
    generator = torch.Generator().manual_seed(8)
    images = torch.randn(64, 3, 32, 32, generator=generator)
    mixing = torch.randn(3 * 8 * 8, 30, generator=generator)
    responses = torch.nn.functional.avg_pool2d(images, 4).flatten(1) @ mixing / 14
    model = make_model(30, dropout=0.0).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def full_set_loss() -> float:  # all 64 pairs, batch statistics, running ones untouched
        with torch.no_grad():
            return copy.deepcopy(model).loss(images, responses).item()

    before = full_set_loss()
    for step in range(40):
        batch = torch.randperm(64, generator=torch.Generator().manual_seed(step))[:32]
        loss = model.loss(images[batch], responses[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert before == pytest.approx(math.log(64), abs=0.5)
    assert full_set_loss() < before - 1.0
