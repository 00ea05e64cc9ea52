"""Tests of the pooled multi-subject contrastive model and its hidden size."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from cortexcl.errors import InputError
from cortexcl.models import TUNING_METHODS
from cortexcl.models.contrastive import info_nce
from cortexcl.models.pooled import PooledContrastiveModel, pooled_hidden_size
from tiny_backbone import random_pairs, seeded, tiny_alexnet

COUNTS = {"subj02": 52, "subj01": 37, "subj03": 0}


def make_model(counts=COUNTS, h: int = 44, **kwargs) -> PooledContrastiveModel:
    backbone = tiny_alexnet()
    return seeded(lambda: PooledContrastiveModel(backbone, counts, h, **kwargs), 1)


def test_structure():
    model = make_model()
    assert model.subjects == ("subj01", "subj02")
    assert list(model.w_y.keys()) == ["subj01", "subj02"]
    assert model.vertex_counts == {"subj01": 37, "subj02": 52}
    assert (model.h, model.z) == (44, 11)  # z = floor(0.25 h)
    assert model.w_x.weight.shape == (44, 1000) and model.w_x.bias is None
    assert model.w_y["subj01"].weight.shape == (44, 37) and model.w_y["subj01"].bias is None
    assert model.w_y["subj02"].weight.shape == (44, 52)
    assert model.head.out.weight.shape == (11, 44)
    assert "w_y.subj02.weight" in model.state_dict()
    assert make_model(h=30, z=5).head.out.weight.shape == (5, 30)


def test_loss_per_subject():
    model = make_model().eval()
    for subject, n in (("subj01", 37), ("subj02", 52)):
        images, responses = random_pairs(6, n, seed=n)
        z_y = model.embed_responses(responses, subject)
        assert z_y.shape == (6, 11)
        expected = info_nce(model.embed_images(images), z_y, temperature=0.3)
        torch.testing.assert_close(model.loss(images, responses, subject=subject), expected)


def test_gradients_reach_shared_parts_and_only_the_batch_subject():
    model = make_model().train()
    images, responses = random_pairs(8, 52, seed=1)
    model.loss(images, responses, subject="subj02").backward()
    assert model.w_y["subj01"].weight.grad is None
    for name, parameter in model.named_parameters():
        if name.startswith("w_y.subj01") or name in ("head.fc1.bias", "head.fc2.bias"):
            continue
        assert parameter.grad is not None and parameter.grad.abs().max() > 0, name


def test_bad_subjects_and_batches():
    model = make_model().train()
    images, responses = random_pairs(4, 37, seed=2)
    with pytest.raises(InputError, match="unknown subject 'subj03'; subjects: subj01, subj02"):
        model.loss(images, responses, subject="subj03")
    with pytest.raises(ValueError, match=r"expected shape \(batch, 52\)"):
        model.loss(images, responses, subject="subj02")
    with pytest.raises(ValueError, match="at least 2"):
        model.loss(images[:1], responses[:1], subject="subj01")
    with pytest.raises(InputError, match="no subject"):
        make_model({"subj01": 0})
    with pytest.raises(InputError, match="bad subject"):
        make_model({"subj.01": 20})
    with pytest.raises(InputError, match="bad subject"):
        make_model({"subj01": -1})


def test_hidden_size_avg_const_and_override(appendix_a):
    assert pooled_hidden_size(COUNTS, "avg") == 44  # floor((37 + 52) / 2); subj03 has none
    assert pooled_hidden_size({"a": 20, "b": 21, "c": 21}, "avg") == 20
    sizes = [n for (_, _, roi), n in appendix_a.items() if roi != "all"]  # the 31 ROIs
    largest = pooled_hidden_size(COUNTS, "const", all_roi_sizes=sizes)
    assert largest == max(sizes) == 5741  # EBA, subject 5 rh
    assert math.floor(0.25 * largest) == 1435
    assert pooled_hidden_size(COUNTS, "const", all_roi_sizes=[3, 900, 12]) == 900
    assert pooled_hidden_size(COUNTS, "const", all_roi_sizes=[3], override=64) == 64
    assert pooled_hidden_size(COUNTS, "avg", override=7) == 7


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (({"a": 0}, "avg"), "no subject"),
        ((COUNTS, "const"), "needs the ROI sizes"),
        ((COUNTS, "const", []), "needs the ROI sizes"),
        ((COUNTS, "median"), "unknown mode 'median'"),
        ((COUNTS, "avg", None, 0), "positive override"),
    ],
)
def test_hidden_size_errors(args, message):
    with pytest.raises(InputError, match=message):
        pooled_hidden_size(*args)


def test_registry_build():
    spec = TUNING_METHODS["pooled"]
    assert spec.multi_subject
    settings = SimpleNamespace(temperature=0.2, hidden_override=None)
    backbone = tiny_alexnet()
    model = seeded(lambda: spec.build(backbone, COUNTS, settings, mode="avg"))
    assert isinstance(model, PooledContrastiveModel) and model.backbone is backbone
    assert (model.h, model.z, model.temperature, model.symmetric) == (44, 11, 0.2, False)
    model = seeded(
        lambda: spec.build(
            backbone,
            COUNTS,
            SimpleNamespace(temperature=0.3, hidden_override=None),
            mode="const",
            all_roi_sizes=[37, 52, 60],
        )
    )
    assert (model.h, model.z) == (60, 15)
    settings = SimpleNamespace(temperature=0.3, hidden_override=30, symmetric=True)
    model = seeded(lambda: spec.build(backbone, COUNTS, settings, mode="const"))
    assert (model.h, model.z, model.symmetric) == (30, 7, True)
