"""Tests of freezing named backbone layers."""

from __future__ import annotations

import pytest
from torchvision.models import alexnet

from cortexcl.errors import InputError
from cortexcl.models.freezing import freeze_layers
from tiny_backbone import seeded, tiny_alexnet


def trainable(module) -> list[str]:
    return [name for name, p in module.named_parameters() if p.requires_grad]


def test_freeze_one_layer_and_a_prefix():
    backbone = tiny_alexnet()
    assert freeze_layers(backbone, ["features.0"]) == ["features.0.weight", "features.0.bias"]
    assert trainable(backbone) == [
        "features.2.weight",
        "features.2.bias",
        "classifier.1.weight",
        "classifier.1.bias",
    ]
    frozen = freeze_layers(backbone, ["features", "features.2"])
    assert frozen == [f"features.{i}.{kind}" for i in (0, 2) for kind in ("weight", "bias")]
    assert trainable(backbone) == ["classifier.1.weight", "classifier.1.bias"]
    assert freeze_layers(backbone, []) == []


def test_names_match_whole_layer_numbers_on_alexnet():
    backbone = seeded(alexnet)
    with pytest.raises(InputError, match="'features.1' selects no parameters"):
        freeze_layers(backbone, ["features.1"])  # a ReLU; features.10 is not under it
    assert freeze_layers(backbone, ["features.10"]) == ["features.10.weight", "features.10.bias"]
    assert len(trainable(backbone)) == 14


@pytest.mark.parametrize("name", ["features.1", "feat", "classifier.7", ""])
def test_unknown_layer(name):
    backbone = tiny_alexnet()
    with pytest.raises(InputError) as info:
        freeze_layers(backbone, [name])
    message = str(info.value)
    assert repr(name) in message and "features.0, features.2, classifier.1" in message
    assert trainable(backbone) == [n for n, _ in backbone.named_parameters()]
