"""Tests of the regression-tuned (RT) baseline model."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cortexcl.errors import InputError
from cortexcl.models import TUNING_METHODS
from cortexcl.models.regression import RegressionModel
from tiny_backbone import random_pairs, seeded, tiny_alexnet


def make_model(n_vertices: int = 37) -> RegressionModel:
    backbone = tiny_alexnet()
    return seeded(lambda: RegressionModel(backbone, n_vertices), 1)


def test_loss_is_the_mean_squared_error_over_batch_and_vertices():
    model = make_model(37).eval()
    images, responses = random_pairs(6, 37, seed=1)
    with torch.no_grad():
        a = model.backbone(images).double().numpy()
        loss = model.loss(images, responses, subject="subj01").item()
        predictions = model.predict(images)
    w = model.readout.weight.detach().double().numpy()
    b = model.readout.bias.detach().double().numpy()
    expected = a @ w.T + b
    np.testing.assert_allclose(predictions.numpy(), expected, rtol=1e-5, atol=1e-6)
    mse = np.mean((expected - responses.double().numpy()) ** 2)
    assert loss == pytest.approx(mse, rel=1e-5)
    assert predictions.shape == (6, 37)


def test_gradients_reach_backbone_and_readout():
    model = make_model(20).train()
    images, responses = random_pairs(1, 20, seed=2)  # RT has no BatchNorm: batches of 1 are fine
    model.loss(images, responses).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().max() > 0, name
    assert model.readout.weight.shape == (20, 1000)


def test_registry_build_and_bad_input():
    backbone = tiny_alexnet()
    model = TUNING_METHODS["rt"].build(backbone, {"subj05": 30}, SimpleNamespace(lr=2.5e-5))
    assert isinstance(model, RegressionModel) and model.backbone is backbone
    assert model.n_vertices == 30
    images, responses = random_pairs(3, 30, seed=3)
    with pytest.raises(ValueError, match="responses"):
        model.loss(images, responses[:, :29])
    with pytest.raises(InputError):
        RegressionModel(backbone, 0)
