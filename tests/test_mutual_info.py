"""Tests of the InfoNCE mutual-information bound."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp

from cortexcl.errors import InputError
from cortexcl.evaluation.mutual_info import (
    DEFAULT_BETAS,
    common_k_bound,
    embed_pairs,
    infonce_bound,
    select_temperature_on_val,
)
from cortexcl.models.contrastive import ContrastiveModel
from cortexcl.models.pooled import PooledContrastiveModel
from tiny_backbone import random_pairs, seeded, tiny_alexnet


def reference_bound(z_x: np.ndarray, z_y: np.ndarray, tau: float) -> float:
    """docs/method.md §7.1 written out: f(i, j) = cos(z_x,i, z_y,j) / tau; rows are images."""
    unit_x = z_x / np.linalg.norm(z_x, axis=1, keepdims=True)
    unit_y = z_y / np.linalg.norm(z_y, axis=1, keepdims=True)
    f = unit_x @ unit_y.T / tau
    k = len(f)
    nats = np.mean(np.diag(f) - (logsumexp(f, axis=1) - np.log(k)))
    return float(nats / np.log(2))


def noisy_pairs(k: int, dim: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z_x = rng.standard_normal((k, dim))
    return z_x, z_x + noise * rng.standard_normal((k, dim))


@pytest.mark.parametrize("tau", [0.03, 0.3, 3.0])
def test_bound_matches_numpy(tau):
    z_x, z_y = noisy_pairs(50, 8, 1.0, seed=1)
    expected = reference_bound(z_x, z_y, tau)
    assert infonce_bound(z_x, z_y, tau) == pytest.approx(expected, rel=1e-10, abs=1e-12)
    tensors = torch.from_numpy(z_x).float(), torch.from_numpy(z_y).float()
    assert infonce_bound(*tensors, temperature=tau) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("noise", [0.0, 0.5, 3.0])
@pytest.mark.parametrize("tau", [0.01, 0.3, 10.0])
def test_bound_never_exceeds_log_k(noise, tau):
    z_x, z_y = noisy_pairs(40, 6, noise, seed=2)
    assert infonce_bound(z_x, z_y, tau) <= math.log2(40) + 1e-12


def test_bound_of_aligned_embeddings_reaches_log_k():
    z_x, _ = noisy_pairs(64, 128, 0.0, seed=3)
    assert infonce_bound(z_x, 2 * z_x, temperature=0.01) == pytest.approx(6.0, abs=1e-3)


def test_bound_of_independent_embeddings_is_near_zero():
    rng = np.random.default_rng(4)
    z_x, z_y = rng.standard_normal((2000, 256)), rng.standard_normal((2000, 256))
    bits = infonce_bound(z_x, z_y)
    assert -0.1 < bits < 0.01  # the finite-sample estimate sits slightly below 0
    _, best = select_temperature_on_val(z_x, z_y, betas=np.logspace(-2, 2, 50))
    assert best < 0.01


def test_temperature_selection():
    z_x, z_y = noisy_pairs(60, 16, 0.0, seed=5)
    beta, bits = select_temperature_on_val(z_x, z_y)
    # Aligned pairs: the bound grows as tau shrinks, so the smallest scale wins.
    assert beta == pytest.approx(DEFAULT_BETAS.min())
    assert bits == pytest.approx(infonce_bound(z_x, z_y, 0.3 * beta), rel=1e-12)
    assert bits > infonce_bound(z_x, z_y, 0.3)
    # No candidate beats beta = 1: beta = 1 and the bound at the base temperature.
    beta, bits = select_temperature_on_val(z_x, z_y, base=0.3, betas=[2.0, 5.0, 10.0])
    assert (beta, bits) == (1.0, infonce_bound(z_x, z_y, 0.3))


def test_temperature_selection_finds_an_interior_optimum():
    z_x, z_y = noisy_pairs(200, 8, 1.0, seed=6)
    betas = np.logspace(-2, 2, 200)
    beta, bits = select_temperature_on_val(z_x, z_y, betas=betas)
    direct = [reference_bound(z_x, z_y, 0.3 * b) for b in betas]
    assert betas.min() < beta < betas.max()
    assert beta == betas[int(np.argmax(direct))]
    assert bits == pytest.approx(max(direct), rel=1e-9)


@pytest.mark.parametrize("betas", [[], [0.5, -1.0], [[1.0]]])
def test_temperature_selection_rejects_bad_betas(betas):
    z_x, z_y = noisy_pairs(10, 4, 1.0, seed=7)
    with pytest.raises(InputError, match="betas"):
        select_temperature_on_val(z_x, z_y, betas=betas)


def test_common_k_bound():
    z_x, z_y = noisy_pairs(30, 6, 1.0, seed=8)
    full = infonce_bound(z_x, z_y)
    # Subsets of every pair are permutations, and the bound ignores the order of the pairs.
    rng = np.random.default_rng(0)
    assert common_k_bound(z_x, z_y, 30, 3, rng) == pytest.approx(full, rel=1e-12)
    value = common_k_bound(z_x, z_y, 12, 5, np.random.default_rng(1), temperature=0.2)
    replay = np.random.default_rng(1)
    subsets = [replay.choice(30, size=12, replace=False) for _ in range(5)]
    expected = np.mean([reference_bound(z_x[s], z_y[s], 0.2) for s in subsets])
    assert value == pytest.approx(expected, rel=1e-10)
    assert value <= math.log2(12)
    aligned = common_k_bound(z_x, z_x, 8, 4, np.random.default_rng(2), temperature=0.01)
    assert aligned == pytest.approx(3.0, abs=1e-3)
    for k, n_subsets in ((0, 1), (31, 1), (5, 0)):
        with pytest.raises(InputError, match="common K"):
            common_k_bound(z_x, z_y, k, n_subsets, rng)


def test_embed_pairs_in_eval_mode_without_gradients():
    backbone = tiny_alexnet()
    model = seeded(lambda: ContrastiveModel(backbone, 25), 1)
    model.train()
    model.loss(*random_pairs(8, 25, seed=1))  # moves the BatchNorm running statistics
    images, responses = random_pairs(7, 25, seed=2)
    z_x, z_y = embed_pairs(model, images.split(3), responses.numpy(), batch_size=2)
    assert model.training
    assert z_x.shape == z_y.shape == (7, 5) and z_x.dtype == torch.float32
    assert not z_x.requires_grad and not z_y.requires_grad
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(z_x, model.embed_images(images))
        torch.testing.assert_close(z_y, model.embed_responses(responses))
    with pytest.raises(ValueError, match="7 images but 6 responses"):
        embed_pairs(model, [images], responses[:6])


def test_embed_pairs_of_a_pooled_model():
    backbone = tiny_alexnet()
    model = seeded(lambda: PooledContrastiveModel(backbone, {"subj01": 37, "subj02": 52}, 40), 1)
    images, responses = random_pairs(5, 52, seed=3)
    z_x, z_y = embed_pairs(model, [images], responses, subject="subj02")
    assert z_x.shape == z_y.shape == (5, 10)
    with torch.no_grad():
        torch.testing.assert_close(z_y, model.eval().embed_responses(responses, "subj02"))
    bits = infonce_bound(z_x, z_y)
    assert bits <= math.log2(5)
