"""Tests of freezing named backbone layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn
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


def test_frozen_batch_norm_keeps_its_running_statistics():
    """A frozen stage computes what it computed before tuning, in train mode too: its
    batch-norm layers normalise with their running statistics and never update them."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3),
                        nn.BatchNorm2d(4))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    freeze_layers(net, ["0", "1"])
    images = torch.randn(8, 3, 10, 10) * 3 + 1
    net.train()
    frozen_out = net[1](net[0](images))
    net(images)
    state = net.state_dict()
    for key in ("1.running_mean", "1.running_var", "1.num_batches_tracked"):
        assert torch.equal(state[key], before[key]), key
    assert not torch.equal(state["3.running_mean"], before["3.running_mean"])  # not frozen
    net.eval()
    torch.testing.assert_close(frozen_out, net[1](net[0](images)))
